"""Clients' metrics (evaluate replies, train metrics) under the same trust model as their
updates, in both Flower APIs: a bad reply is rejected with its reason, a claim buys no
weight, nothing makes a round raise."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from flower_helpers import SHAPES, random_model, reply
from flwr.app import Message, MetricRecord, RecordDict
from flwr.common import Code, EvaluateRes, FitRes, Status, ndarrays_to_parameters
from test_strategy import configured
from test_strategy_runs import Proxy

import flwr_flag
import flwr_flag.legacy
from flwr_flag.strategy.client_metrics import ClientMetrics, aggregate_metrics


def evaluate_reply(node_id: int, **metrics) -> Message:
    request = Message(content=RecordDict(), dst_node_id=node_id, message_type="evaluate")
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=request)


def honest_evaluations(n: int = 8) -> list[Message]:
    return [
        evaluate_reply(i + 1, **{"num-examples": 100, "accuracy": 0.9, "loss": 0.3})
        for i in range(n)
    ]


BAD_EVALUATIONS = {
    "negative count": ({"num-examples": -800, "accuracy": 0.9, "loss": 0.3}, "num-examples"),
    "zero count": ({"num-examples": 0, "accuracy": 0.9, "loss": 0.3}, "num-examples"),
    "missing count": ({"accuracy": 0.9, "loss": 0.3}, "num-examples is missing"),
    "missing key": ({"num-examples": 100, "loss": 0.3}, "differ"),
    "extra key": ({"num-examples": 100, "accuracy": 0.9, "loss": 0.3, "x": 1.0}, "differ"),
    "inf": ({"num-examples": 100, "accuracy": float("inf"), "loss": 0.3}, "finite"),
    "nan": ({"num-examples": 100, "accuracy": float("nan"), "loss": 0.3}, "finite"),
    "reserved": (
        {"num-examples": 100, "accuracy": 0.9, "loss": 0.3, "robust.selected-nodes": [1]},
        "namespace",
    ),
    "list length": ({"num-examples": 100, "accuracy": [0.9, 0.1], "loss": 0.3}, "differ"),
}


@pytest.mark.parametrize("case", sorted(BAD_EVALUATIONS))
def test_a_bad_evaluate_reply_is_rejected_with_its_reason(case, caplog):
    """Flower's aggregate_evaluate raises ZeroDivisionError on -800 among 800 and
    InconsistentMessageReplies on a missing key; here the reply is rejected, logged,
    and the others' metrics come through unchanged."""
    metrics, reason = BAD_EVALUATIONS[case]
    strategy = flwr_flag.FlagAggregator(num_byzantine=2, device="cpu", diagnostics="full")
    with caplog.at_level(logging.WARNING):
        record = strategy.aggregate_evaluate(
            1, [*honest_evaluations(), evaluate_reply(99, **metrics)]
        )
    assert record["accuracy"] == pytest.approx(0.9)
    assert record["loss"] == pytest.approx(0.3)
    assert record["robust.rejected"] == 1
    assert list(record["robust.rejected-nodes"]) == [99]
    assert "robust.selected-nodes" not in record
    assert any("node 99" in r.message and reason in r.message for r in caplog.records)


def test_a_huge_claimed_count_buys_no_weight_in_evaluation():
    """One reply claiming 1e18 examples at accuracy 0 made Flower's mean 7e-16."""
    strategy = flwr_flag.CTMA(num_byzantine=2, device="cpu", diagnostics="full")
    liar = evaluate_reply(99, **{"num-examples": 10**18, "accuracy": 0.0, "loss": 9.0})
    record = strategy.aggregate_evaluate(1, [*honest_evaluations(), liar])
    assert record["accuracy"] == pytest.approx(0.8)  # 8 x 0.9 and 0.0, each once
    assert record["robust.median.accuracy"] == pytest.approx(0.9)
    assert record["robust.rejected"] == 0


def test_duplicate_and_error_replies_in_evaluation():
    strategy = flwr_flag.Median(num_byzantine=1, device="cpu", diagnostics="full")
    twice = evaluate_reply(1, **{"num-examples": 100, "accuracy": 0.0, "loss": 9.0})
    request = Message(content=RecordDict(), dst_node_id=7, message_type="evaluate")
    from flwr.app import Error

    failed = Message(Error(300, "crashed"), reply_to=request)
    record = strategy.aggregate_evaluate(1, [*honest_evaluations(), twice, failed])
    assert record["accuracy"] == pytest.approx(0.9)
    assert list(record["robust.rejected-nodes"]) == [1]
    assert record["robust.failed"] == 1


def test_train_metrics_stay_out_of_the_robust_namespace_and_are_not_weighted_by_claims():
    """B3: a client's robust.selected-nodes appeared in the round's record, and client
    train metrics were averaged with the claimed counts."""
    global_model = random_model(0)
    honest = [
        reply(i + 1, random_model(i + 1), **{"num-examples": 10, "loss": 1.0}) for i in range(8)
    ]
    injected = reply(
        9,
        random_model(9),
        **{"num-examples": 10, "loss": 1.0, "robust.selected-nodes": [9, 9]},
    )
    liar = reply(10, random_model(10), **{"num-examples": 10**12, "loss": 500.0})
    strategy = configured(
        flwr_flag.Krum(num_byzantine=2, device="cpu", diagnostics="full"), global_model, 10
    )
    _, record = strategy.aggregate_train(1, [*honest, injected, liar])
    assert list(record["robust.selected-nodes"]) != [9, 9]
    if "loss" in record:
        assert record["loss"] <= 500.0 / 9 + 1
    assert record["robust.median.loss"] == pytest.approx(1.0)


def test_a_users_metrics_function_gets_only_the_accepted_replies():
    seen = []

    def mine(records, key):
        seen.append(len(records))
        return MetricRecord({"n": len(records)})

    strategy = flwr_flag.Median(
        num_byzantine=1, device="cpu", diagnostics="full", evaluate_metrics_aggr_fn=mine
    )
    bad = evaluate_reply(99, **{"num-examples": -1, "accuracy": 0.9, "loss": 0.3})
    record = strategy.aggregate_evaluate(1, [*honest_evaluations(), bad])
    assert seen == [8] and record["n"] == 8 and record["robust.rejected"] == 1


def test_tiny_claimed_counts_do_not_make_a_round_raise():
    """B4: counts of 5e-324 made the num-examples weights NaN and the round raise."""
    global_model = random_model(0)
    counts = [5e-324] * 7 + [100] * 3
    replies = [
        reply(i + 1, random_model(i + 1), **{"num-examples": c}) for i, c in enumerate(counts)
    ]
    strategy = configured(
        flwr_flag.GeometricMedian(
            num_byzantine=2, device="cpu", diagnostics="full", weighting="num-examples"
        ),
        global_model,
        10,
    )
    arrays, record = strategy.aggregate_train(1, replies)
    assert arrays is not None and record["robust.kept-model"] == 0
    assert all(np.isfinite(arrays[k].numpy()).all() for k in SHAPES)


def test_metrics_of_the_most_common_shape_win():
    replies = [ClientMetrics(i, {"num-examples": 1, "a": 1.0}) for i in range(3)]
    replies += [ClientMetrics(10 + i, {"num-examples": 1, "b": 5.0}) for i in range(2)]
    summary = aggregate_metrics(replies, "num-examples")
    assert summary.metrics == {"a": 1.0, "robust.median.a": 1.0}
    assert summary.accepted == [0, 1, 2] and sorted(summary.rejected) == [3, 4]


# Legacy API


def fit_result(node_id: int, model: dict, count: float = 10, /, **metrics):
    parameters = ndarrays_to_parameters([model[k] for k in SHAPES])
    return Proxy(node_id), FitRes(Status(Code.OK, ""), parameters, count, metrics)


def evaluation(node_id: int, loss: float, count: float, /, **metrics):
    return Proxy(node_id), EvaluateRes(Status(Code.OK, ""), loss, count, metrics)


@pytest.mark.parametrize(
    ("loss", "count", "metrics"),
    [
        (0.3, -800, {"accuracy": 0.9}),
        (float("nan"), 100, {"accuracy": 0.9}),
        (0.3, 100, {"accuracy": "high"}),
        (0.3, 100, {}),
    ],
)
def test_legacy_evaluation_rejects_a_bad_result(loss, count, metrics):
    strategy = flwr_flag.legacy.Median(num_byzantine=1, device="cpu", diagnostics="full")
    results = [evaluation(i + 1, 0.3, 100, accuracy=0.9) for i in range(6)]
    got_loss, got = strategy.aggregate_evaluate(
        1, [*results, evaluation(99, loss, count, **metrics)], []
    )
    assert got_loss == pytest.approx(0.3)
    assert got["accuracy"] == pytest.approx(0.9)
    assert got["robust.rejected"] == 1 and got["robust.rejected-nodes"] == "99"


def test_legacy_evaluation_counts_each_result_once():
    strategy = flwr_flag.legacy.Krum(num_byzantine=1, device="cpu", diagnostics="full")
    results = [evaluation(i + 1, 0.3, 100, accuracy=0.9) for i in range(4)]
    loss, metrics = strategy.aggregate_evaluate(
        1, [*results, evaluation(9, 100.0, 10**18, accuracy=0.0)], []
    )
    assert loss == pytest.approx((4 * 0.3 + 100.0) / 5)
    assert metrics["accuracy"] == pytest.approx(0.72)


def test_legacy_fit_honours_accept_failures_and_keeps_client_metrics():
    global_model = random_model(0)
    results = [fit_result(i + 1, random_model(i + 1), loss=float(i)) for i in range(7)]
    strict = flwr_flag.legacy.Median(
        num_byzantine=1, device="cpu", diagnostics="full", accept_failures=False
    )
    strict._sent = ndarrays_to_parameters([global_model[k] for k in SHAPES])
    assert strict.aggregate_fit(1, results, [RuntimeError("lost")]) == (None, {})
    lenient = flwr_flag.legacy.Median(num_byzantine=1, device="cpu", diagnostics="full")
    lenient._sent = strict._sent
    parameters, metrics = lenient.aggregate_fit(1, results, [RuntimeError("lost")])
    assert parameters is not None
    assert metrics["loss"] == pytest.approx(3.0) and metrics["robust.median.loss"] == 3.0
    calls = []
    own = flwr_flag.legacy.Median(
        num_byzantine=1,
        device="cpu",
        fit_metrics_aggregation_fn=lambda m: calls.append(m) or {"mine": len(m)},
    )
    own._sent = strict._sent
    _, metrics = own.aggregate_fit(1, results, [])
    assert metrics["mine"] == 7 and len(calls) == 1


class CidProxy(Proxy):
    """Like Flower's GrpcClientProxy: a cid, no node_id attribute."""

    def __init__(self, cid: str) -> None:
        super().__init__(0)
        del self.node_id
        self.cid = cid


def test_legacy_works_with_proxies_that_set_only_a_cid():
    """Flower's GrpcClientProxy (start_server) never sets node_id: AttributeError before."""
    global_model = random_model(0)
    strategy = flwr_flag.legacy.Median(num_byzantine=1, device="cpu", diagnostics="full")
    strategy._sent = ndarrays_to_parameters([global_model[k] for k in SHAPES])
    results = [
        (CidProxy(cid), fit_result(1, random_model(i + 1))[1])
        for i, cid in enumerate(["a1b2", "7", "c3d4", "e5"])
    ]
    parameters, metrics = strategy.aggregate_fit(1, results, [])
    assert parameters is not None and metrics["robust.rejected"] == 0


# The reply fuzzer, on the evaluate path of both APIs and on legacy fit metrics.

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

HONEST_METRICS = {"num-examples": 100, "accuracy": 0.9, "loss": 0.3}
# kind -> (metrics, accepted?)
FUZZ = {
    "huge-count": ({"num-examples": 10**18, "accuracy": 0.0, "loss": 9.0}, True),
    "tiny-count": ({"num-examples": 5e-324, "accuracy": 0.0, "loss": 9.0}, True),
    **{name: (metrics, False) for name, (metrics, _) in BAD_EVALUATIONS.items()},
    "string": ({"num-examples": 100, "accuracy": "high", "loss": 0.3}, False),
    "bool": ({"num-examples": True, "accuracy": 0.9, "loss": 0.3}, False),
    "overflow": ({"num-examples": 10**400, "accuracy": 0.9, "loss": 0.3}, False),
    "empty-list": ({"num-examples": 100, "accuracy": [], "loss": 0.3}, False),
}
LEGACY_ONLY = {"string", "bool", "overflow"}  # a MetricRecord refuses these values


def message_with(node_id: int, kind: str) -> Message:
    request = Message(content=RecordDict(), dst_node_id=node_id, message_type="evaluate")
    if kind == "no-record":
        return Message(RecordDict(), reply_to=request)
    if kind == "two-records":
        two = {"a": MetricRecord(HONEST_METRICS), "b": MetricRecord({"x": 1.0})}
        return Message(RecordDict(two), reply_to=request)
    if kind == "error":
        from flwr.app import Error

        return Message(Error(300, "crashed"), reply_to=request)
    return Message(RecordDict({"metrics": MetricRecord(FUZZ[kind][0])}), reply_to=request)


MESSAGE_KINDS = sorted(set(FUZZ) - LEGACY_ONLY | {"no-record", "two-records", "error"})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kinds=st.lists(st.sampled_from(MESSAGE_KINDS), min_size=0, max_size=7),
    duplicates=st.integers(0, 2),
    name=st.sampled_from(["median", "flag", "mean", "krum"]),
    order=st.randoms(use_true_random=False),
)
def test_evaluate_replies_never_raise(kinds, duplicates, name, order):
    """Any mix of replies: aggregate_evaluate returns finite metrics; 8 honest replies
    outnumber the rest, so the medians are the honest values."""
    from flwr_flag.strategy import STRATEGIES

    replies = honest_evaluations()
    replies += [message_with(100 + j, kind) for j, kind in enumerate(kinds)]
    replies += [evaluate_reply(1 + j, **FUZZ["huge-count"][0]) for j in range(duplicates)]
    tail = replies[8:]
    order.shuffle(tail)
    strategy = STRATEGIES[name](num_byzantine=1, device="cpu", diagnostics="full")
    record = strategy.aggregate_evaluate(1, replies[:8] + tail)
    values = [v for value in record.values() for v in np.ravel(value)]
    assert all(np.isfinite(values))
    assert record["robust.median.accuracy"] == pytest.approx(0.9)
    accepted = sum(FUZZ.get(k, (None, False))[1] for k in kinds)
    assert record["robust.received"] == 8 + len(kinds) + duplicates - kinds.count("error")
    assert record["robust.rejected"] == record["robust.received"] - 8 - accepted
    assert record["robust.failed"] == kinds.count("error")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kinds=st.lists(st.sampled_from(sorted(FUZZ)), min_size=0, max_size=7),
    losses=st.lists(st.sampled_from([0.3, float("nan"), float("inf"), -1.0, 1e308]), max_size=3),
    name=st.sampled_from(["Median", "FlagAggregator", "Mean"]),
)
def test_legacy_evaluate_and_fit_metrics_never_raise(kinds, losses, name):
    cls = getattr(flwr_flag.legacy, name)
    strategy = cls(num_byzantine=1, device="cpu", diagnostics="full")
    results = [evaluation(i + 1, 0.3, 100, accuracy=0.9) for i in range(8)]
    for j, kind in enumerate(kinds):
        metrics = dict(FUZZ[kind][0])
        count = metrics.pop("num-examples", None)
        results.append(evaluation(100 + j, 0.3, count, **metrics))
    results += [evaluation(200 + j, loss, 100, accuracy=0.9) for j, loss in enumerate(losses)]
    loss, metrics = strategy.aggregate_evaluate(1, results, [])
    assert np.isfinite(loss) and metrics["robust.median.accuracy"] == pytest.approx(0.9)
    global_model = random_model(0)
    strategy._sent = ndarrays_to_parameters([global_model[k] for k in SHAPES])
    fits = [fit_result(i + 1, random_model(i + 1), loss=0.3) for i in range(8)]
    for j, kind in enumerate(kinds):
        metrics = dict(FUZZ[kind][0])
        metrics.pop("num-examples", None)
        fits.append(fit_result(100 + j, random_model(100 + j), **metrics))
    parameters, scalars = strategy.aggregate_fit(1, fits, [])
    assert parameters is not None and scalars["robust.median.loss"] == pytest.approx(0.3)


def test_by_default_legacy_drops_client_metrics_as_fedavg_and_the_message_api_keeps_means():
    """Before: legacy fit metrics that FedAvg drops (no aggregation function) were
    averaged and reported, with a robust.median copy of each."""
    global_model = random_model(0)
    legacy = flwr_flag.legacy.Median(num_byzantine=1, device="cpu")
    legacy._sent = ndarrays_to_parameters([global_model[k] for k in SHAPES])
    fits = [fit_result(i + 1, random_model(i + 1), loss=0.3) for i in range(5)]
    _, metrics = legacy.aggregate_fit(1, fits, [])
    assert "loss" not in metrics and not any(k.startswith("robust.median") for k in metrics)
    assert metrics["robust.received"] == 5 and "robust.limited-nodes" in metrics
    _, metrics = legacy.aggregate_evaluate(
        1, [evaluation(i + 1, 0.3, 100, accuracy=0.9) for i in range(5)], []
    )
    assert "accuracy" not in metrics and metrics["robust.received"] == 5
    record = flwr_flag.Median(num_byzantine=1, device="cpu").aggregate_evaluate(
        1, honest_evaluations()
    )
    assert "accuracy" in record and not any(k.startswith("robust.median") for k in record)
