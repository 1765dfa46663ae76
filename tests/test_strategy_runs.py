"""Legacy-API parity, checkpoints and resume, and in-process end-to-end runs."""

from __future__ import annotations

import logging
from collections import OrderedDict

import numpy as np
import pytest
import torch
from flower_helpers import SHAPES, arrays_of, linear_app, random_model, reply
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from test_strategy import configured

import flwr_flag
import flwr_flag.legacy
from flwr_flag.inprocess import InProcessGrid
from flwr_flag.strategy import CheckpointStore
from flwr_flag.strategy.replies import Reply


class Proxy(ClientProxy):
    def __init__(self, node_id: int) -> None:
        super().__init__(str(node_id))
        self.node_id = node_id

    def get_properties(self, *a, **k): ...
    def get_parameters(self, *a, **k): ...
    def fit(self, *a, **k): ...
    def evaluate(self, *a, **k): ...
    def reconnect(self, *a, **k): ...


def manager_of(nodes: int) -> SimpleClientManager:
    """A legacy-API client manager with nodes 1..``nodes`` registered."""
    manager = SimpleClientManager()
    for node in range(1, nodes + 1):
        manager.register(Proxy(node))
    return manager


@pytest.mark.parametrize("rule", ["flag", "krum", "ctma", "trimmed-mean"])
def test_legacy_aggregate_fit_matches_message_api(rule):
    global_model = random_model(0)
    models = [random_model(i) for i in range(1, 9)]
    models[2] = {k: v * np.nan for k, v in models[2].items()}
    messages = [reply(i + 1, m, **{"num-examples": 3 + i}) for i, m in enumerate(models)]
    modern = configured(
        flwr_flag.RobustStrategy(rule=rule, num_byzantine=2, device="cpu"), global_model, 8
    )
    expected, metrics = modern.aggregate_train(1, messages)

    legacy = flwr_flag.legacy.RobustStrategy(rule=rule, num_byzantine=2, device="cpu")
    legacy._sent = ndarrays_to_parameters([global_model[k] for k in SHAPES])
    results = [
        (
            Proxy(i + 1),
            FitRes(Status(Code.OK, ""), ndarrays_to_parameters([m[k] for k in SHAPES]), 3 + i, {}),
        )
        for i, m in enumerate(models)
    ]
    parameters, scalars = legacy.aggregate_fit(1, results, failures=[])
    got = parameters_to_ndarrays(parameters)
    for k, array in zip(SHAPES, got, strict=True):
        np.testing.assert_array_equal(array, expected[k].numpy())
    assert (
        scalars["robust.rejected-nodes"]
        == "3"
        == ",".join(map(str, metrics["robust.rejected-nodes"]))
    )


def run(strategy, rounds: int, nan_node: int = -1, nodes: int = 7):
    grid = InProcessGrid(linear_app(), nodes, run_config={"nan-node": nan_node})
    initial = arrays_of({"w": np.zeros((3, 4), np.float32), "b": np.zeros(4, np.float32)})
    return strategy.start(grid=grid, initial_arrays=initial, num_rounds=rounds)


def test_nan_client_is_rejected_every_round_and_the_model_learns():
    result = run(flwr_flag.FlagAggregator(num_byzantine=1, device="cpu"), 6, nan_node=2)
    for r in range(1, 7):
        assert result.train_metrics_clientapp[r]["robust.rejected-nodes"] == [3]
    w = result.arrays["w"].numpy()
    assert np.isfinite(w).all()
    target = np.array([1.0, -2.0, 0.5, 3.0])
    assert np.abs(w - target).max() < np.abs(target).max() * 0.5


@pytest.mark.parametrize("rule", ["centered-clipping", "mean"])
def test_kill_and_resume_gives_the_uninterrupted_result(tmp_path, rule):
    def strategy(directory, resume=False):
        return flwr_flag.RobustStrategy(
            rule=rule,
            num_byzantine=1,
            device="cpu",
            server_lr=0.7,
            server_momentum=0.5,
            checkpoint_dir=str(directory),
            resume=resume,
        )

    straight = run(strategy(tmp_path / "a"), 6)
    run(strategy(tmp_path / "b"), 3)  # "killed" after round 3
    resumed = run(strategy(tmp_path / "b", resume=True), 6)
    # Equal up to float32 rounding: BLAS kernels may differ with memory alignment. A
    # lost momentum or previous-aggregate state changes the result far more than this.
    for k in SHAPES:
        np.testing.assert_allclose(
            resumed.arrays[k].numpy(), straight.arrays[k].numpy(), rtol=1e-6, atol=1e-7
        )
    assert sorted(resumed.train_metrics_clientapp) == [4, 5, 6]


def test_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path):
    store = CheckpointStore(tmp_path)
    model = random_model(1)
    store.save(1, dict(model), {})
    store.save(2, {k: v + 1 for k, v in model.items()}, {})
    newest = tmp_path / "round-000002.pt"
    newest.write_bytes(newest.read_bytes()[:100])
    checkpoint = store.latest()
    assert checkpoint.server_round == 1
    np.testing.assert_array_equal(checkpoint.arrays["w"], model["w"])
    assert list(checkpoint.arrays) == list(SHAPES)


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    for r in range(1, 5):
        store.save(r, dict(random_model(r)), {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round-000003.pt", "round-000004.pt"]


def test_a_new_run_refuses_a_directory_with_another_runs_checkpoints(tmp_path):
    """Before: a new run in a directory holding another run's rounds 7-8 deleted each
    checkpoint it wrote (older round numbers), and a later resume trained 0 rounds."""
    old = CheckpointStore(tmp_path)
    for r in (7, 8):
        old.save(r, dict(random_model(r)), {})
    with pytest.raises(ValueError, match=rf"{tmp_path}.*holds checkpoints of another run"):
        CheckpointStore(tmp_path)
    with pytest.raises(ValueError, match="resume=True"):
        flwr_flag.Krum(num_byzantine=1, checkpoint_dir=str(tmp_path))
    resumed = CheckpointStore(tmp_path, resume=True)
    assert resumed.run_id == old.run_id
    resumed.save(9, dict(random_model(9)), {})
    assert sorted(p.name for p in tmp_path.glob("round-*")) == [
        "round-000008.pt",
        "round-000009.pt",
    ]


@pytest.mark.parametrize(
    "payload",
    [
        lambda good: {k: v for k, v in good.items() if k != "state"},
        lambda good: {**good, "state": [1, 2]},
        lambda good: {**good, "arrays": {"w": 1}},
        lambda good: {**good, "run": None},
        lambda good: [good],
    ],
    ids=["no-state", "list-state", "array-not-tensor", "no-run", "not-a-mapping"],
)
def test_a_malformed_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, payload):
    """Before: a newest file without state, or a list state, raised KeyError/TypeError."""
    store = CheckpointStore(tmp_path)
    store.save(1, dict(random_model(1)), {})
    newest = store.save(2, dict(random_model(2)), {})
    good = torch.load(newest, weights_only=True)
    torch.save(payload(good), newest)
    assert CheckpointStore(tmp_path, resume=True).latest().server_round == 1


def test_an_unwritable_checkpoint_dir_fails_at_construction(tmp_path, monkeypatch):
    """Before: a read-only checkpoint_dir was accepted and failed after round 1 trained.
    (Tests run as root, whom a 0500 mode does not stop: the refusal is simulated.)"""
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(ValueError, match=rf"checkpoint_dir='{tmp_path}' is not writable"):
        flwr_flag.FlagAggregator(num_byzantine=1, checkpoint_dir=str(tmp_path))


def test_a_planted_link_at_a_temporary_name_is_never_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    directory = tmp_path / "checkpoints"
    store = CheckpointStore(directory)
    for name in ("round-000001.pt.tmp", ".round-000001.pt.tmp"):
        (directory / name).symlink_to(victim)
    store.save(1, dict(random_model(1)), {})
    assert victim.read_bytes() == b"precious"
    assert store.latest().server_round == 1


def late_replies_grid(num_nodes: int) -> InProcessGrid:
    """The in-process grid with Flower's deployment ``send_and_receive`` (HttpGrid's,
    which sleeps 3 s between pulls), whose replies are not in at the first pull of a
    round, as when clients are still training."""
    http_grid = pytest.importorskip("flwr.superlink.grid.http_grid")  # flwr >= 1.42

    class LateReplies(InProcessGrid):
        send_and_receive = http_grid.HttpGrid.send_and_receive

        def push_messages(self, messages):
            self.pulls = 0
            return super().push_messages(messages)

        def pull_messages(self, message_ids):
            self.pulls += 1
            return [] if self.pulls == 1 else super().pull_messages(message_ids)

    return LateReplies(linear_app(), num_nodes)


def test_replies_are_not_left_waiting_for_flowers_three_second_poll(monkeypatch):
    """Each round's replies are pulled again 0.1 s after a pull finds none, not 3 s
    (measured on a fake clock: the seconds the pull loops ask to sleep)."""
    import time

    from flwr.serverapp.strategy import FedAvg

    slept = []
    monkeypatch.setattr(time, "sleep", slept.append)
    initial = arrays_of({"w": np.zeros((3, 4), np.float32), "b": np.zeros(4, np.float32)})

    def rounds(strategy) -> int:
        slept.clear()
        result = strategy.start(grid=late_replies_grid(4), initial_arrays=initial, num_rounds=2)
        assert sorted(result.train_metrics_clientapp) == [1, 2]
        return sum(slept)

    assert rounds(FedAvg(fraction_evaluate=0.0)) >= 2 * 3  # Flower's own: 3 s a round
    ours = rounds(flwr_flag.Median(num_byzantine=1, device="cpu", fraction_evaluate=0.0))
    assert ours == pytest.approx(2 * 0.1)


def test_the_anytime_average_is_what_is_evaluated_and_returned():
    """With anytime_gamma_min, evaluate_fn sees x_t and the result is x_T: the AnyTime
    average of the models the plain run sends, round by round."""
    from flwr_flag.strategy.step import AnyTimeAverage

    initial = arrays_of({"w": np.zeros((3, 4), np.float32), "b": np.zeros(4, np.float32)})

    def start(**options):
        seen = []
        strategy = flwr_flag.Median(num_byzantine=1, device="cpu", **options)
        result = strategy.start(
            grid=InProcessGrid(linear_app(), 5),
            initial_arrays=initial,
            num_rounds=4,
            evaluate_fn=lambda r, a: seen.append({k: a[k].numpy().copy() for k in SHAPES}),
        )
        return seen, {k: result.arrays[k].numpy() for k in SHAPES}

    models, last = start()  # w_1 (the initial model) .. w_5, as evaluated
    averaged, output = start(anytime_gamma_min=0.1)
    expected = AnyTimeAverage(0.1)
    for r, model in enumerate(models):
        expected.add(model)
        for k in SHAPES:
            np.testing.assert_array_equal(averaged[r][k], expected.arrays()[k])
    for k in SHAPES:
        np.testing.assert_array_equal(output[k], expected.arrays()[k])
    assert not np.array_equal(output["w"], last["w"])


def test_kill_and_resume_keeps_the_anytime_average(tmp_path):
    def strategy(directory, resume=False):
        return flwr_flag.Median(
            num_byzantine=1,
            device="cpu",
            anytime_gamma_min=0.2,
            checkpoint_dir=str(directory),
            resume=resume,
        )

    straight = run(strategy(tmp_path / "a"), 6)
    run(strategy(tmp_path / "b"), 3)
    resumed = run(strategy(tmp_path / "b", resume=True), 6)
    for k in SHAPES:
        np.testing.assert_array_equal(resumed.arrays[k].numpy(), straight.arrays[k].numpy())


def test_resume_refuses_other_settings_and_names_them(tmp_path):
    """A FlagAggregator checkpoint resumed silently as Krum before."""
    run(flwr_flag.FlagAggregator(num_byzantine=1, device="cpu", checkpoint_dir=str(tmp_path)), 2)
    krum = flwr_flag.Krum(num_byzantine=1, device="cpu", checkpoint_dir=str(tmp_path), resume=True)
    with pytest.raises(ValueError, match=r'other settings \(rule: "flag" then, "krum" now\)'):
        run(krum, 3)


def test_resume_with_changes_drops_state_that_no_longer_applies(tmp_path, caplog):
    """Saved with momentum 0.9, resumed with 0, then with 0.9 again: the round-2 buffer
    came back at round 5 before. Now the change must be asked for, and the buffer is
    dropped at the first resume."""

    def mean(momentum: float, resume: bool = False, changes: bool = False):
        return flwr_flag.Mean(
            device="cpu",
            server_momentum=momentum,
            checkpoint_dir=str(tmp_path),
            resume=resume,
            resume_with_changes=changes,
        )

    run(mean(0.9), 2)
    with pytest.raises(ValueError, match=r"server_momentum: 0.9 then, 0.0 now"):
        run(mean(0.0, resume=True), 4)
    without = mean(0.0, resume=True, changes=True)
    with caplog.at_level(logging.WARNING, logger="flwr"):
        run(without, 4)
    assert without.core.step.buffer is None and "momentum" not in without.core.state_dict()
    assert "Resuming with a changed setting: server_momentum: 0.9 then, 0.0 now" in caplog.text
    again = mean(0.9, resume=True, changes=True)
    again.core.resume(OrderedDict((k, np.zeros(s, np.float32)) for k, s in SHAPES.items()))
    assert again.core.step.buffer is None


def test_rounds_that_keep_the_model_stop_the_run_loudly(caplog):
    """Before: every reply rejected (here by a norm bound no update meets) kept the
    model round after round, and the run ended with a normal result."""
    from flwr_flag.strategy.core import NotTrainingError

    strategy = flwr_flag.Median(device="cpu", max_update_norm=1e-9, max_kept_rounds=3)
    with pytest.raises(NotTrainingError, match=r"round 3: 3 rounds in a row kept the model"):
        run(strategy, 6)
    patient = flwr_flag.Median(device="cpu", max_update_norm=1e-9, max_kept_rounds=10)
    with pytest.raises(NotTrainingError, match="none of the 2 rounds changed the model"):
        run(patient, 2)
    relaxed = flwr_flag.Median(device="cpu", max_update_norm=1e-9, max_kept_rounds=None)
    assert run(relaxed, 2).train_metrics_clientapp[2]["robust.kept-model"] == 1


def test_a_round_that_trains_resets_the_count():
    core = flwr_flag.Mean(device="cpu", max_kept_rounds=2).core
    model = OrderedDict(w=np.zeros(3, np.float32))
    good = [Reply(1, {"w": np.ones(3, np.float32)}, 1)]
    bad = [Reply(1, {"w": np.full(3, np.nan, np.float32)}, 1)]
    for replies in (bad, good, bad, good):
        core.round(1, model, replies, 0)
    assert core.kept_in_a_row == 0 and core.rounds_stepped == 2
    core.round(5, model, bad, 0)
    with pytest.raises(RuntimeError, match="the last because 0 valid replies"):
        core.round(6, model, bad, 0)
