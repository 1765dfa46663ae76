"""The ClientApp's parts: behaviours, labels, augmentation, mu^2-SGD, data, settings."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from clients.augment import PIPELINES, augmented_views, build_pipeline
from clients.config import ClientSettings
from clients.data import dirichlet_indices, iid_indices, load_partition, load_test
from clients.optim import mu2_schedules, mu2_step
from flwr_flag.attacks import BEHAVIOURS, AttackContext, make_behaviour
from flwr_flag.attacks.colluding import MinMax, MinSum, alie_z

HONEST = np.linspace(-1, 1, 50).astype(np.float32)
SAMPLES = np.random.default_rng(0).normal(size=(5, 50)).astype(np.float32)


def context(seed: int = 0) -> AttackContext:
    return AttackContext(
        rng=np.random.default_rng(seed),
        server_round=3,
        num_nodes=10,
        num_byzantine=2,
        honest_samples=lambda k: SAMPLES[:k],
        honest_update_for=lambda pid: HONEST + pid,
    )


def run(name: str, **params):
    return make_behaviour(name, params).update(HONEST.copy(), context())


@pytest.mark.parametrize("k", [1.0, 3.0])
def test_sign_flip_and_scale(k):
    np.testing.assert_array_equal(run("sign-flip", k=k), -k * HONEST)
    np.testing.assert_array_equal(run("scale", k=k), k * HONEST)


def test_zero_constant_nan_inf_random():
    assert not run("zero").any()
    assert (run("constant", c=2.5) == 2.5).all()
    assert np.isnan(run("nan")).all()
    assert np.isposinf(run("inf")).all()
    random = run("random")
    assert ((random >= 0) & (random < 1)).all() and random.std() > 0.1


def test_gaussian_is_deterministic_given_the_seed():
    first, second = run("gaussian", sigma=0.5), run("gaussian", sigma=0.5)
    np.testing.assert_array_equal(first, second)
    assert 0.3 < (first - HONEST).std() < 0.7
    replaced = run("gaussian", sigma=0.5, mode="replace")
    assert abs(np.corrcoef(replaced, HONEST)[0, 1]) < 0.5


def test_alie_lies_within_mean_plus_minus_z_std_of_the_estimate():
    samples = SAMPLES[:4]
    mu, sigma = samples.mean(0), samples.std(0)
    z = alie_z(10, 2)
    out = run("alie")
    np.testing.assert_allclose(out, mu - z * sigma, rtol=1e-6)
    assert (np.abs(out - mu) <= abs(z) * sigma + 1e-6).all()
    np.testing.assert_allclose(
        run("alie", z=1.5, samples=5), SAMPLES.mean(0) - 1.5 * SAMPLES.std(0), rtol=1e-6
    )


def test_ipm():
    np.testing.assert_allclose(run("ipm", epsilon=0.5), -0.5 * SAMPLES[:4].mean(0), rtol=1e-6)


@pytest.mark.parametrize("cls", [MinMax, MinSum])
def test_min_max_and_min_sum_push_to_the_edge_of_their_condition(cls):
    out = run(cls.name, perturbation="std")
    benign = SAMPLES[:4]
    assert cls.accepts(out, benign)
    mu, sigma = benign.mean(0), benign.std(0)
    gamma = float(np.linalg.norm(out - mu) / np.linalg.norm(sigma))
    assert gamma > 0.1
    assert not cls.accepts(mu - 1.05 * gamma * sigma, benign)


def test_mimic_sends_the_target_update():
    np.testing.assert_array_equal(run("mimic", target=3), HONEST + 3)


@pytest.mark.parametrize("bits", [1, 7, 40])
def test_bit_flip_changes_exactly_that_many_bits(bits):
    out = run("bit-flip", bits=bits)
    diff = np.bitwise_xor(out.view(np.uint32), HONEST.view(np.uint32))
    assert sum(bin(int(d)).count("1") for d in diff) == bits


def test_crash_raises_drop_sends_nothing_straggle_sleeps():
    with pytest.raises(RuntimeError, match="simulated crash"):
        make_behaviour("crash", {}).before_reply(context())
    assert run("drop") is None
    start = time.perf_counter()
    make_behaviour("straggle", {"seconds": 0.05}).before_reply(context())
    assert time.perf_counter() - start >= 0.05


def test_honest_behaviour_changes_nothing():
    np.testing.assert_array_equal(run("honest"), HONEST)


def test_only_listed_nodes_misbehave():
    config = {"num-partitions": 5, "byzantine-nodes": "1,3", "attack": "sign-flip"}
    names = [
        ClientSettings.from_config(config, {"partition-id": i}).behaviour.name for i in range(5)
    ]
    assert names == ["honest", "sign-flip", "honest", "sign-flip", "honest"]
    count = ClientSettings.from_config({**config, "byzantine-nodes": 2}, {"partition-id": 1})
    assert count.behaviour.name == "sign-flip" and count.byzantine_nodes == (0, 1)
    host = ClientSettings.from_config(config, {"partition-id": 0, "byzantine": True})
    assert host.behaviour.name == "sign-flip"


def test_label_flip_changes_training_labels_not_the_test_set():
    y = torch.arange(10)
    np.testing.assert_array_equal(make_behaviour("label-flip", {}).labels(y, 10), 9 - y)
    before = load_test("digits").y.clone()
    settings = ClientSettings.from_config(
        {"num-partitions": 2, "byzantine-nodes": 1, "attack": "label-flip"}, {"partition-id": 0}
    )
    train = load_partition("digits", 0, 2)
    flipped = settings.behaviour.labels(train.y, train.num_classes)
    assert (flipped == 9 - train.y).all()
    assert (load_test("digits").y == before).all()


@pytest.mark.parametrize("clip", [0.0, 0.05])
def test_grad_clip_bounds_every_gradient_norm(clip):
    # One plain SGD step with lr = 1 moves the weights by exactly the (clipped) gradient.
    from clients.models import build_model, get_arrays
    from clients.train import batch_gradient, local_train

    settings = ClientSettings.from_config(
        {"num-partitions": 2, "lr": 1.0, "momentum": 0.0, "local-steps": 1, "grad-clip": clip},
        {"partition-id": 0},
    )
    data = load_partition("digits", 0, 2)
    model = build_model("cnn", (1, 8, 8), 10)
    before = np.concatenate([a.ravel() for a in get_arrays(model).values()])
    local_train(model, data, settings, lambda y: y, seed=0)
    after = np.concatenate([a.ravel() for a in get_arrays(model).values()])
    step = float(np.linalg.norm(after - before))
    gradient = batch_gradient(model, data, lambda y: y, settings, seed=0)
    norm = float(gradient(torch.nn.utils.parameters_to_vector(model.parameters())).norm())
    if clip:
        assert step == pytest.approx(clip, rel=1e-4) and norm == pytest.approx(clip, rel=1e-4)
    else:  # unclipped, the digits CNN's first gradients are several times longer
        assert step > 0.2 and norm > 0.2


@pytest.mark.parametrize("name", PIPELINES)
def test_augmentation_is_deterministic_and_keeps_shapes(name):
    x = torch.rand(6, 1, 8, 8)
    pipeline = build_pipeline(name, 8)
    views = augmented_views(x, pipeline, 3, seed=5)
    assert views.shape == (3, 6, 1, 8, 8) and views.dtype == torch.float32
    torch.testing.assert_close(views, augmented_views(x, pipeline, 3, seed=5))
    if name != "none":
        assert not torch.equal(views[0], views[1])
        assert not torch.equal(views, augmented_views(x, pipeline, 3, seed=6))


@pytest.mark.parametrize("name", PIPELINES)
def test_augmented_views_are_finite_images(name):
    # The warp's random perspective draws degenerate homographies on 8x8 digits (NaN
    # pixels at seeds 3, 4, 7 of 20): honest heavy-augment nodes then sent NaN updates,
    # were rejected, and left Bulyan (n = 4f + 3 exactly) below its requirement.
    x = load_partition("digits", 0, 15).x
    pipeline = build_pipeline(name, 8)
    for seed in range(20):
        views = augmented_views(x, pipeline, 1, seed)
        assert torch.isfinite(views).all(), seed
        assert views.min() >= 0 and views.max() <= 1


def test_mu2_sgd_matches_the_update_equations_and_converges():
    a = torch.tensor([[2.0, 0.3], [0.3, 1.0]], dtype=torch.float64)
    b = torch.tensor([1.0, -1.0], dtype=torch.float64)
    noise = iter(
        torch.randn(200, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.01
    )

    def gradient_on_batch():
        z = next(noise)  # one batch per round, used at both points
        return lambda x: a @ x - b + z

    w = torch.zeros(2, dtype=torch.float64)
    eta, beta_min, gamma_min = 0.3, 0.1, 0.1
    state = None
    x_prev = d_prev = None
    for t in range(1, 6):
        grad = gradient_on_batch()
        state = mu2_step(grad, w, state, beta_min, gamma_min)
        if t == 1:
            x, d = w, grad(w)
        else:
            beta, gamma = max(1 / t, beta_min), max(2 / (t + 1), gamma_min)
            x = (1 - gamma) * x_prev + gamma * w
            d = grad(x) + (1 - beta) * (d_prev - grad(x_prev))
        torch.testing.assert_close(state.x, x)
        torch.testing.assert_close(state.d, d)
        x_prev, d_prev = x, d
        w = w - eta * state.d
    assert mu2_schedules(3, 0.1, 0.1) == (1 / 3, 0.5)
    for _ in range(150):
        state = mu2_step(gradient_on_batch(), w, state, beta_min, gamma_min)
        w = w - eta * state.d
    torch.testing.assert_close(state.x, torch.linalg.solve(a, b), atol=0.05, rtol=0)


@pytest.mark.parametrize("split", ["iid", "dirichlet"])
def test_partitions_are_disjoint_and_cover(split):
    labels = np.random.default_rng(0).integers(0, 10, 1000)
    parts = iid_indices(1000, 7, 3) if split == "iid" else dirichlet_indices(labels, 7, 0.5, 3)
    joined = np.concatenate(parts)
    assert len(joined) == 1000 and len(np.unique(joined)) == 1000
    digits = [load_partition("digits", i, 4, split, 0.5, 1) for i in range(4)]
    assert sum(len(d) for d in digits) == len(load_partition("digits", 0, 1))


def test_flwr_datasets_path_on_a_local_parquet_set(tmp_path):
    from datasets import ClassLabel, Dataset, Features, Image
    from PIL import Image as PILImage

    rng = np.random.default_rng(0)
    features = Features({"image": Image(), "label": ClassLabel(num_classes=3)})
    for split, size in (("train", 60), ("test", 12)):
        rows = {
            "image": [
                PILImage.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8))
                for _ in range(size)
            ],
            "label": [i % 3 for i in range(size)],
        }
        Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / f"{split}.parquet"))
    files = {s: str(tmp_path / f"{s}.parquet") for s in ("train", "test")}
    parts = [load_partition("parquet", i, 3, "dirichlet", 1.0, 0, files) for i in range(3)]
    assert sum(len(p) for p in parts) == 60
    assert parts[0].x.shape[1:] == (1, 8, 8) and parts[0].x.max() <= 1
    assert parts[0].num_classes == 3
    assert len(load_test("parquet", 0, files)) == 12


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"attack": "sign-flop"}, r"attack='sign-flop' is not one of \["),
        ({"dataset": "imagenet"}, r"dataset='imagenet' is not one of"),
        ({"model": "vgg"}, r"model='vgg' is not one of"),
        ({"augment": "blur"}, r"augment='blur' is not one of"),
        ({"attack": "gaussian", "gaussian.sigma": -1.0}, r"sigma=-1.0 is out of range"),
        ({"partitioning": "dirichlet", "dirichlet-alpha": 0.0}, r"dirichlet-alpha=0.0"),
        ({"byzantine-nodes": 9}, r"names more nodes than the 4 partitions"),
        ({"attack": "alie", "alie.q": 1}, r"unknown parameter\(s\) \['q'\]"),
    ],
)
def test_bad_settings_fail_at_start(config, message):
    with pytest.raises(ValueError, match=message):
        ClientSettings.from_config({"num-partitions": 4, **config}, {"partition-id": 0})


def test_registry_maps_each_name_to_its_own_class():
    from flwr_flag.attacks import Behaviour

    assert BEHAVIOURS["honest"] is Behaviour
    assert all(cls.__dict__.get("name", "honest") == name for name, cls in BEHAVIOURS.items())


def test_every_behaviour_is_registered():
    assert {
        "honest",
        "sign-flip",
        "scale",
        "gaussian",
        "random",
        "zero",
        "constant",
        "label-flip",
        "alie",
        "ipm",
        "min-max",
        "min-sum",
        "mimic",
        "nan",
        "inf",
        "bit-flip",
        "crash",
        "straggle",
        "drop",
    } <= set(BEHAVIOURS)


@pytest.mark.parametrize(
    "optimizer", [{"optimizer": "mu2-sgd"}, {"worker-momentum": 0.9}], ids=["mu2-sgd", "momentum"]
)
def test_colluders_estimate_updates_the_way_honest_nodes_make_them(optimizer):
    """Before: the colluders' honest samples were plain local-SGD updates whatever the
    node's optimizer, a different scale from mu^2-SGD's -lr d_t (one gradient step) or
    the worker momentum. Now the estimated mean is within 2x of the honest update."""
    import copy

    from flwr.app import RecordDict

    from clients.app import Node
    from clients.models import build_model, get_arrays

    config = {"model": "mlp", "local-steps": 5, **optimizer}
    settings = ClientSettings.from_config(config, {"partition-id": 0, "num-partitions": 4})
    test = load_test("digits", 0, None)
    sent = get_arrays(build_model("mlp", tuple(test.x.shape[1:]), test.num_classes, 0))
    state = RecordDict()
    for server_round in range(1, 5):
        node = Node(settings, sent, server_round)
        before = copy.deepcopy(state)
        update, _, _ = node.honest_update(state)
    estimate = node.attack_context(before, {}).honest_samples(4).mean(axis=0)
    ratio = float(np.linalg.norm(estimate) / np.linalg.norm(update))
    assert 0.5 <= ratio <= 2.0, ratio


@pytest.mark.parametrize("optimizer", ["sgd", "mu2-sgd"])
def test_one_network_serves_every_update_from_the_received_model(optimizer):
    """One network per process serves every node's honest update and the colluders'
    samples: each call starts again from the arrays received and in training mode, so
    an update equals one made on a newly built network, after another node with other
    arrays and state trained the shared network and left it in eval mode."""
    import copy

    from flwr.app import RecordDict

    from clients.app import Node, network
    from clients.models import build_model, get_arrays

    config = {"model": "mlp", "local-steps": 3, "optimizer": optimizer}
    settings = ClientSettings.from_config(config, {"partition-id": 1, "num-partitions": 4})
    other = ClientSettings.from_config(config, {"partition-id": 3, "num-partitions": 4})
    test = load_test("digits", 0, None)
    shape = tuple(test.x.shape[1:])
    sent = get_arrays(build_model("mlp", shape, test.num_classes, 3))
    network.cache_clear()
    fresh = Node(settings, sent, 2).honest_update(RecordDict())[0]
    state = RecordDict()
    before = Node(other, get_arrays(build_model("mlp", shape, test.num_classes, 4)), 5)
    before.honest_update(state)
    before.attack_context(state, {}).honest_samples(2)  # trains the shared network
    before.model().eval()
    used = Node(settings, sent, 2)
    assert used.model() is before.model() and used.model().training
    np.testing.assert_array_equal(used.honest_update(copy.deepcopy(RecordDict()))[0], fresh)


def test_the_servers_anytime_average_is_the_clients_bit_for_bit():
    """mu^2-SGD on a quadratic: each round the client computes its query point x_t from
    the model w_t it receives (clients/optim.py), the server steps w and averages the
    models it sends (flwr_flag.strategy.step); the two x_t are equal to the bit."""
    from collections import OrderedDict

    from flwr_flag.strategy.step import AnyTimeAverage

    rng = np.random.default_rng(0)
    curvature = torch.from_numpy(rng.uniform(0.5, 2.0, 50).astype(np.float32))
    w = torch.from_numpy(rng.normal(size=50).astype(np.float32))
    server, state = AnyTimeAverage(0.1), None
    for _ in range(12):
        server.add(OrderedDict(w=w.numpy()))
        state = mu2_step(lambda x: curvature * x, w, state, beta_min=0.1, gamma_min=0.1)
        assert torch.equal(torch.from_numpy(server.arrays()["w"]), state.x)
        w = w - 0.3 * state.d
