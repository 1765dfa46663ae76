"""Flower's strategy contract, checked on ours in both APIs.

The cases are those Flower's own strategy tests check (FedAvg's array and metric
averages, FedMedian, FedTrimmedAvg, Krum and Multi-Krum on three or four replies, 0-d
arrays, replies whose records do not match), written from their inputs and expected
outputs. Like Flower's tests they call ``aggregate_*`` without a prior ``configure_*``:
our strategies then take each reply's arrays as its update from zero, so the result is
the rule applied to the arrays themselves, as Flower's strategies compute it.

Divergences, each pinned by a test below:

* robust rules count each reply once (Flower weights by ``num-examples``); only
  ``Mean`` weights by the claimed counts, as FedAvg does;
* Krum needs ``n >= 2f + 3`` (Flower's runs Krum on three replies with one malicious);
  with three replies ours takes ``f = 0`` and picks the same one;
* a reply that Flower refuses with ``InconsistentMessageReplies`` (raised from the
  round) is rejected alone, with its reason, and the round goes on;
* the ArrayRecord is read under ``arrayrecord_key``; Flower takes a reply's one
  ArrayRecord whatever its key.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from test_strategy_runs import Proxy

import flwr_flag
import flwr_flag.legacy
from flwr_flag.strategy import STRATEGIES

ALL = sorted(set(STRATEGIES) - {"detox"})  # DETOX needs groups: tests/test_detox.py


def message_reply(node_id: int, arrays: list[np.ndarray], metrics: dict, key="arrays"):
    request = Message(content=RecordDict(), dst_node_id=node_id, message_type="train")
    record = ArrayRecord({str(i): Array(np.asarray(a)) for i, a in enumerate(arrays)})
    return Message(RecordDict({key: record, "metrics": MetricRecord(metrics)}), reply_to=request)


def run_message(name: str, replies: list[tuple[list[np.ndarray], dict]], f: int, **options):
    """Our Message-API strategy ``name`` on ``replies`` ((arrays, metrics) pairs)."""
    strategy = STRATEGIES[name](num_byzantine=f, device="cpu", **options)
    messages = [message_reply(i + 1, a, m) for i, (a, m) in enumerate(replies)]
    arrays, metrics = strategy.aggregate_train(1, messages)
    out = None if arrays is None else [arrays[k].numpy() for k in arrays.keys()]
    return out, metrics


def run_legacy(name: str, replies: list[tuple[list[np.ndarray], dict]], f: int, **options):
    """The legacy twin of ``name`` on the same replies, as FitRes."""
    cls = getattr(flwr_flag.legacy, STRATEGIES[name].__name__)
    strategy = cls(num_byzantine=f, device="cpu", **options)
    results = [
        (
            Proxy(i + 1),
            FitRes(
                Status(Code.OK, ""),
                ndarrays_to_parameters(a),
                m["num-examples"],
                {k: v for k, v in m.items() if k != "num-examples"},
            ),
        )
        for i, (a, m) in enumerate(replies)
    ]
    parameters, metrics = strategy.aggregate_fit(1, results, [])
    return None if parameters is None else parameters_to_ndarrays(parameters), metrics


APIS = {"message": run_message, "legacy": run_legacy}


def vectors(rows: list[list[float]], counts: list[float]):
    return [([np.array(r)], {"num-examples": c}) for r, c in zip(rows, counts, strict=True)]


@pytest.fixture(params=sorted(APIS))
def aggregate(request):
    return APIS[request.param]


def test_fedavg_averages_arrays_by_the_claimed_counts(aggregate):
    """Flower: three replies of four (7, 3) float64 arrays, weights 0.25 / 0.4 / 0.35."""
    rng = np.random.default_rng(0)
    weights = [0.25, 0.4, 0.35]
    arrays = [[rng.normal(size=(7, 3)) for _ in range(4)] for _ in weights]
    out, _ = aggregate(
        "mean", [(a, {"num-examples": w}) for a, w in zip(arrays, weights, strict=True)], 0
    )
    for i in range(4):
        expected = np.average([a[i] for a in arrays], axis=0, weights=weights)
        assert out[i].dtype == np.float64
        np.testing.assert_allclose(out[i], expected, rtol=0, atol=1e-14)


def test_fedavg_keeps_zero_dimensional_arrays(aggregate):
    values = [np.array(v) for v in (0.3, -1.2, 2.5)]
    weights = [0.25, 0.4, 0.35]
    out, _ = aggregate(
        "mean", [([v], {"num-examples": w}) for v, w in zip(values, weights, strict=True)], 0
    )
    assert out[0].shape == ()
    np.testing.assert_allclose(out[0], np.average(values, weights=weights), atol=1e-14)


def test_fedavg_averages_metrics_by_the_claimed_counts_and_robust_rules_count_each_once():
    """Flower: metrics {"a": 1, "b": 2.0, "c": [3 floats]} weighted 0.25 / 0.4 / 0.35."""
    rng = np.random.default_rng(1)
    weights = [0.25, 0.4, 0.35]
    lists = [rng.normal(size=3).tolist() for _ in weights]
    replies = [
        ([np.zeros(2)], {"num-examples": w, "a": 1, "b": 2.0 + i, "c": c})
        for i, (w, c) in enumerate(zip(weights, lists, strict=True))
    ]
    _, mean = run_message("mean", replies, 0)
    assert mean["a"] == pytest.approx(1.0)
    assert mean["b"] == pytest.approx(np.average([2.0, 3.0, 4.0], weights=weights))
    np.testing.assert_allclose(mean["c"], np.average(lists, axis=0, weights=weights))
    _, median = run_message("median", replies, 1)
    assert median["b"] == pytest.approx(3.0)  # divergence: each reply once


def test_fedmedian_case(aggregate):
    replies = vectors([[1.0, 0.2, 0.5, 1.0], [0.2, 0.5, 1.0, 0.2], [0.5, 1.0, 0.2, 0.5]], [5, 2, 9])
    out, _ = aggregate("median", replies, 1)
    np.testing.assert_array_equal(out[0], [0.5, 0.5, 0.5, 0.5])


def test_fedtrimmedavg_cases(aggregate):
    rows = [[0.5, 0.5, 0.5, 0.5], [1.0, 0.2, 0.5, 1.0], [0.2, 0.5, 1.0, 0.2], [0.5, 1.0, 0.2, 0.5]]
    out, _ = aggregate("trimmed-mean", vectors(rows, [1, 5, 2, 9]), 1)
    np.testing.assert_array_equal(out[0], [0.5, 0.5, 0.5, 0.5])
    scalars = [([np.array(v)], {"num-examples": 1}) for v in (0.5, 1.0, 2.0, 100.0)]
    out, _ = aggregate("trimmed-mean", scalars, 1)
    assert out[0].shape == ()
    np.testing.assert_array_equal(out[0], np.array(1.5))


def test_krum_cases(aggregate):
    """Flower runs Krum on three replies with one malicious; ours needs n >= 2f + 3, so
    it keeps the model at f = 1 and, at f = 0, picks the same reply."""
    replies = vectors([[0.2] * 4, [0.7] * 4, [1.0] * 4], [5, 5, 5])
    kept, metrics = aggregate("krum", replies, 1)
    assert kept is None and metrics["robust.kept-model"] == 1
    out, _ = aggregate("krum", replies, 0)
    np.testing.assert_array_equal(out[0], [0.7] * 4)
    out, _ = aggregate("multi-krum", vectors([[0.2] * 4, [0.5] * 4, [1.0] * 4], [5] * 3), 0, m=2)
    np.testing.assert_allclose(out[0], [0.35] * 4, atol=1e-15)


@pytest.mark.parametrize("name", ALL)
def test_identical_replies_give_that_reply_in_their_own_dtype(aggregate, name):
    """Any strategy: n equal float64 replies (and a 0-d array) aggregate to themselves,
    in float64 (Flower's FedAvg is exact here; ours was float32 before)."""
    value = [np.full((3, 2), 0.1234567890123), np.array(-2.5)]
    out, _ = aggregate(name, [(value, {"num-examples": 10})] * 7, 1)
    assert [a.dtype for a in out] == [np.float64, np.float64] and out[1].shape == ()
    np.testing.assert_allclose(out[0], value[0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(out[1], value[1], rtol=0, atol=1e-15)


INCONSISTENT = {
    "weighting key not a scalar": ({"num-examples": [0.123]}, "arrays"),
    "no weighting key": ({"loss": 0.01}, "arrays"),
    "another ArrayRecord key": ({"num-examples": 5}, "global-model"),
}


@pytest.mark.parametrize("case", sorted(INCONSISTENT))
@pytest.mark.parametrize("name", ALL)
def test_a_reply_flower_refuses_is_rejected_alone(name, case):
    """Flower raises InconsistentMessageReplies from the round; ours rejects the reply."""
    metrics, key = INCONSISTENT[case]
    good = [message_reply(i + 1, [np.full(4, 0.5)], {"num-examples": 5}) for i in range(7)]
    strategy = STRATEGIES[name](num_byzantine=1, device="cpu")
    arrays, record = strategy.aggregate_train(
        1, [*good, message_reply(99, [np.full(4, 9.0)], metrics, key=key)]
    )
    assert record["robust.rejected"] == 1 and list(record["robust.rejected-nodes"]) == [99]
    np.testing.assert_allclose(arrays["0"].numpy(), np.full(4, 0.5))


def test_a_custom_arrayrecord_key_is_honoured():
    strategy = flwr_flag.Median(num_byzantine=1, device="cpu", arrayrecord_key="model")
    replies = [
        message_reply(i + 1, [np.full(2, v)], {"num-examples": 1}, key="model")
        for i, v in enumerate((1.0, 2.0, 3.0))
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_array_equal(arrays["0"].numpy(), [2.0, 2.0])
