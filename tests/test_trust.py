"""A client's word is not evidence: what a reply claims about itself buys no influence,
and nothing it sends makes a round raise (both Flower APIs)."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
import torch
from flower_helpers import SHAPES, arrays_of, linear_app, random_model, reply
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import (
    Code,
    FitRes,
    Parameters,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_strategy import configured
from test_strategy_runs import Proxy

import flwr_flag
import flwr_flag.legacy
from flwr_flag.inprocess import InProcessGrid
from flwr_flag.strategy import STRATEGIES

F = 2
HONEST = 9
ROBUST = sorted(set(STRATEGIES) - {"mean", "detox"})
# One iteration of centered clipping from v0 = 0 moves a clipped distance towards every
# reply, the attackers' included: its step does not depend on the claims, but it is not
# inside the honest box (tests/test_properties.py excepts it for the same reason).
NOT_IN_THE_BOX = {"centered-clipping"}
CLAIMS = [1, 1e9, 1e308, 2**62]


def population(seed: int = 1):
    """The global model, 9 honest models near ``w + 1`` and 2 attackers at ``w - 10``."""
    global_model = random_model(0)
    rng = np.random.default_rng(seed)
    honest = [
        {
            k: global_model[k] + 1 + rng.normal(scale=0.05, size=v.shape).astype(np.float32)
            for k, v in global_model.items()
        }
        for _ in range(HONEST)
    ]
    attackers = [{k: global_model[k] - 10 for k in SHAPES} for _ in range(F)]
    return global_model, honest, attackers


def message_step(cls, options, global_model, models, counts, f=F):
    messages = [
        reply(i + 1, m, **{"num-examples": c})
        for i, (m, c) in enumerate(zip(models, counts, strict=True))
    ]
    strategy = configured(cls(num_byzantine=f, device="cpu", **options), global_model, len(models))
    arrays, _ = strategy.aggregate_train(1, messages)
    return None if arrays is None else {k: arrays[k].numpy() for k in SHAPES}


def legacy_step(cls, options, global_model, models, counts):
    strategy = cls(num_byzantine=F, device="cpu", **options)
    strategy._sent = ndarrays_to_parameters([global_model[k] for k in SHAPES])
    results = [
        (
            Proxy(i + 1),
            FitRes(Status(Code.OK, ""), ndarrays_to_parameters([m[k] for k in SHAPES]), c, {}),
        )
        for i, (m, c) in enumerate(zip(models, counts, strict=True))
    ]
    parameters, _ = strategy.aggregate_fit(1, results, failures=[])
    if parameters is None:
        return None
    return dict(zip(SHAPES, parameters_to_ndarrays(parameters), strict=True))


APIS = {
    "message": (lambda name: STRATEGIES[name], message_step),
    "legacy": (lambda name: getattr(flwr_flag.legacy, STRATEGIES[name].__name__), legacy_step),
}


def flat_step(arrays, global_model) -> np.ndarray:
    return np.concatenate([(arrays[k] - global_model[k]).ravel() for k in SHAPES])


@pytest.mark.parametrize("api", sorted(APIS))
@pytest.mark.parametrize("name", ROBUST)
def test_claimed_counts_buy_no_influence(api, name):
    """Attackers claiming any count move no robust rule: the step is the one they get
    claiming what honest nodes claim, and it stays inside the honest replies' box."""
    lookup, step = APIS[api]
    global_model, honest, attackers = population()
    models = honest + attackers
    fair = step(lookup(name), {}, global_model, models, [100] * len(models))
    assert fair is not None
    honest_steps = np.stack([flat_step(m, global_model) for m in honest])
    for claim in CLAIMS:
        got = step(lookup(name), {}, global_model, models, [100] * HONEST + [claim] * F)
        for k in SHAPES:
            np.testing.assert_array_equal(got[k], fair[k], err_msg=f"claim {claim}")
    if name not in NOT_IN_THE_BOX:
        moved = flat_step(fair, global_model)
        assert np.all(moved >= honest_steps.min(0) - 1e-5)
        assert np.all(moved <= honest_steps.max(0) + 1e-5)
    else:
        assert flat_step(fair, global_model).min() > 0


@pytest.mark.parametrize("api", sorted(APIS))
@pytest.mark.parametrize("claim", [1e9, 1e308, 2**62])
def test_opt_in_weighting_caps_any_one_replys_share(api, claim):
    """``weighting="num-examples"`` with cap c: one reply claiming anything among nine
    claiming 100 holds exactly c / (c + 9) of the weight."""
    lookup, step = APIS[api]
    global_model, honest, attackers = population()
    models = honest + attackers[:1]
    counts = [100] * HONEST + [claim]
    options = {"weighting": "num-examples", "max_weight_ratio": 3.0}
    got = flat_step(step(lookup("mean"), options, global_model, models, counts), global_model)
    share = 3.0 / (3.0 + HONEST)
    honest_mean = np.stack([flat_step(m, global_model) for m in honest]).mean(0)
    np.testing.assert_allclose(got, (1 - share) * honest_mean + share * -10.0, rtol=1e-5)


def test_mean_is_fedavg_and_says_which_weighting_it_used():
    global_model, honest, _ = population()
    counts = [10 * (i + 1) for i in range(HONEST)]
    messages = [
        reply(i + 1, m, **{"num-examples": c})
        for i, (m, c) in enumerate(zip(honest, counts, strict=True))
    ]
    mean = configured(flwr_flag.Mean(device="cpu", diagnostics="full"), global_model, HONEST)
    arrays, metrics = mean.aggregate_train(1, messages)
    expected = sum(c * flat_step(m, global_model) for m, c in zip(honest, counts, strict=True))
    np.testing.assert_allclose(
        flat_step({k: arrays[k].numpy() for k in SHAPES}, global_model),
        expected / sum(counts),
        rtol=1e-5,
    )
    assert metrics["robust.weighted-by-num-examples"] == 1
    krum = flwr_flag.Krum(num_byzantine=1, device="cpu", diagnostics="full")
    _, metrics = configured(krum, global_model, HONEST).aggregate_train(1, messages)
    assert metrics["robust.weighted-by-num-examples"] == 0


@pytest.mark.parametrize("claim", [float("inf"), float("nan"), -5, 0, 10**400, "many", True])
def test_malformed_counts_are_rejected(claim, caplog):
    global_model, honest, _ = population()
    models = honest[:5]
    counts = [100] * 4 + [claim]
    with caplog.at_level(logging.WARNING, logger="flwr"):
        got = legacy_step(flwr_flag.legacy.Median, {}, global_model, models, counts)
    assert "rejected reply from node 5: num-examples" in caplog.text
    # Node 5 is caught, so the four left hold at most F - 1 attackers.
    expected = message_step(flwr_flag.Median, {}, global_model, models[:4], [100] * 4, f=F - 1)
    assert got is not None and expected is not None
    for k in SHAPES:
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-6)


def test_detox_counts_each_winner_once():
    """Two attackers form the majority of one group and claim huge counts: the second
    stage's bucket means count their winner once, exactly as when they claim 100."""
    global_model, honest, attackers = population()

    def run(claim):
        strategy = configured(flwr_flag.Detox(num_byzantine=F, device="cpu"), global_model, 15)
        spoiled = sorted(n for n, g in strategy.groups.items() if g == 0)[:2]
        messages = [
            reply(node, attackers[0], **{"num-examples": claim})
            if node in spoiled
            else reply(node, honest[group], **{"num-examples": 100})
            for node, group in sorted(strategy.groups.items())
        ]
        torch.manual_seed(0)  # the default second stage's bucketing draws from it
        arrays, _ = strategy.aggregate_train(1, messages)
        return flat_step({k: arrays[k].numpy() for k in SHAPES}, global_model)

    fair = run(100)
    for claim in (1e9, 1e308):
        np.testing.assert_array_equal(run(claim), fair)
    honest_steps = np.stack([flat_step(m, global_model) for m in honest[1:5]])
    assert np.all(fair >= honest_steps.min(0) - 1e-5)
    assert np.all(fair <= honest_steps.max(0) + 1e-5)


def malformed(kind: str, node_id: int, model: dict) -> Message:
    """A reply from ``node_id`` that is broken in the way ``kind`` says."""
    good = arrays_of(model)
    metrics = MetricRecord({"num-examples": 100})
    if kind == "torch-stype":
        w = good["w"]
        arrays = ArrayRecord({"w": Array(w.dtype, tuple(w.shape), "torch", w.data), "b": good["b"]})
    elif kind == "garbage-bytes":
        arrays = ArrayRecord(
            {"w": Array("float32", (3, 4), "numpy.ndarray", b"\x93NUMPY garbage"), "b": good["b"]}
        )
    elif kind == "object-dtype":
        buffer = io.BytesIO()
        np.save(buffer, np.empty((3, 4), dtype=object), allow_pickle=True)
        arrays = ArrayRecord(
            {"w": Array("object", (3, 4), "numpy.ndarray", buffer.getvalue()), "b": good["b"]}
        )
    else:
        arrays = good
    content = RecordDict({"arrays": arrays, "metrics": metrics})
    if kind == "bad-partition":
        content["node"] = ConfigRecord({"partition-id": "x"})
    if kind == "negative-partition":
        content["node"] = ConfigRecord({"partition-id": -3})
    if kind == "two-array-records":
        content = RecordDict({"a": good, "b": arrays_of(model), "metrics": metrics})
    request = Message(content=RecordDict(), dst_node_id=node_id, message_type="train")
    return Message(content, reply_to=request)


KINDS = [
    "torch-stype",
    "garbage-bytes",
    "object-dtype",
    "bad-partition",
    "negative-partition",
    "two-array-records",
    "duplicate",
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=6),
    name=st.sampled_from(sorted(set(STRATEGIES) - {"detox"})),
    order=st.randoms(use_true_random=False),
)
def test_malformed_replies_never_raise_and_valid_ones_aggregate_alone(kinds, name, order):
    global_model, honest, _ = population()
    valid = [reply(i + 1, m, **{"num-examples": 100}) for i, m in enumerate(honest)]
    broken = []
    for j, kind in enumerate(kinds):
        if kind == "duplicate":  # a second reply from a node that already replied
            broken.append(reply(1 + j % HONEST, random_model(50 + j), **{"num-examples": 1e9}))
        else:
            broken.append(malformed(kind, 100 + j, random_model(50 + j)))
    # Valid replies come first from each node; the rest arrive in any order after.
    mixed = valid + broken
    tail = mixed[HONEST:]
    order.shuffle(tail)
    mixed = valid + tail
    cls = STRATEGIES[name]
    caught = sum(kind != "duplicate" for kind in kinds)  # nodes with no valid reply
    alone = configured(cls(num_byzantine=max(1 - caught, 0), device="cpu"), global_model, HONEST)
    expected, _ = alone.aggregate_train(1, valid)
    strategy = configured(cls(num_byzantine=1, device="cpu"), global_model, len(mixed))
    arrays, metrics = strategy.aggregate_train(1, mixed)
    for k in SHAPES:
        np.testing.assert_array_equal(arrays[k].numpy(), expected[k].numpy())
    assert metrics["robust.rejected"] == len(broken)


def test_decoding_failures_are_logged_with_their_reason(caplog):
    global_model, honest, _ = population()
    messages = [reply(i + 1, m, **{"num-examples": 100}) for i, m in enumerate(honest)]
    messages += [
        malformed("torch-stype", 50, honest[0]),
        malformed("bad-partition", 51, honest[0]),
        reply(3, honest[0], **{"num-examples": 100}),
    ]
    strategy = configured(flwr_flag.CTMA(num_byzantine=2, device="cpu"), global_model, 12)
    with caplog.at_level(logging.WARNING, logger="flwr"):
        _, metrics = strategy.aggregate_train(1, messages)
    assert metrics["robust.rejected-nodes"] == [3, 50, 51]
    assert "node 50: reply cannot be decoded (TypeError: Unsupported serialization" in caplog.text
    said = "node 51: reply cannot be decoded (InvalidParameterError: config record 'node'"
    assert f"{said}: partition-id=" in caplog.text
    assert "node 3: node 3 replied more than once; its first reply (#2)" in caplog.text
    assert strategy.partitions == {}


def test_legacy_undecodable_parameters_are_rejected(caplog):
    global_model, honest, _ = population()
    strategy = flwr_flag.legacy.Krum(num_byzantine=1, device="cpu")
    strategy._sent = ndarrays_to_parameters([global_model[k] for k in SHAPES])
    results = [
        (
            Proxy(i + 1),
            FitRes(Status(Code.OK, ""), ndarrays_to_parameters([m[k] for k in SHAPES]), 100, {}),
        )
        for i, m in enumerate(honest)
    ]
    garbage = Parameters(tensors=[b"garbage", b"more"], tensor_type="numpy.ndarray")
    results.append((Proxy(77), FitRes(Status(Code.OK, ""), garbage, 100, {})))
    results.append((Proxy(1), results[1][1]))
    with caplog.at_level(logging.WARNING, logger="flwr"):
        parameters, scalars = strategy.aggregate_fit(1, results, failures=[])
    assert parameters is not None
    assert scalars["robust.rejected-nodes"] == "1,77"
    assert "node 77: reply cannot be decoded" in caplog.text


def hostile_app() -> ClientApp:
    """The linear app, except partition 0 sends garbage bytes and partition 1 a
    malformed ``node`` record."""
    honest = linear_app()
    app = ClientApp()

    @app.train()
    def train(message: Message, context) -> Message:
        answer = honest(message, context)
        pid = int(context.node_config["partition-id"])
        if pid == 0:
            answer.content["arrays"]["w"] = Array("float32", (3, 4), "numpy.ndarray", b"junk")
        if pid == 1:
            answer.content["node"] = ConfigRecord({"partition-id": "x"})
        return answer

    @app.evaluate()
    def evaluate(message: Message, context) -> Message:
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 1})}), reply_to=message)

    return app


def test_start_survives_hostile_replies():
    grid = InProcessGrid(hostile_app(), 7)
    initial = arrays_of({"w": np.zeros((3, 4), np.float32), "b": np.zeros(4, np.float32)})
    strategy = flwr_flag.GeometricMedian(num_byzantine=2, device="cpu")
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=3)
    for r in (1, 2, 3):
        assert result.train_metrics_clientapp[r]["robust.rejected"] == 2
        assert result.train_metrics_clientapp[r]["robust.kept-model"] == 0
    assert np.abs(result.arrays["w"].numpy()).max() > 0


@pytest.mark.parametrize("api", sorted(APIS))
def test_weighted_ctma_trims_the_weight_the_liars_can_hold(api):
    """With claimed counts trusted (capped), CTMA's default trim is the weight of the f
    heaviest replies: attackers at the cap are trimmed whole. (Trimming f / n of the
    weight, as before, left them a third of it and moved the step to -0.7.)"""
    lookup, step = APIS[api]
    global_model, honest, attackers = population()
    models = honest + attackers
    options = {"weighting": "num-examples", "max_weight_ratio": 2.0}
    counts = [100] * HONEST + [1e9] * F
    moved = flat_step(step(lookup("ctma"), options, global_model, models, counts), global_model)
    honest_steps = np.stack([flat_step(m, global_model) for m in honest])
    assert np.all(moved >= honest_steps.min(0) - 1e-5)
    assert np.all(moved <= honest_steps.max(0) + 1e-5)
