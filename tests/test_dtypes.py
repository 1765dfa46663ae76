"""Every dtype a model holds, through a round: one rule (:mod:`flwr_flag.engine.dtypes`),
the same on the host passes and on the generic chunked passes a GPU runs."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from flower_helpers import arrays_of, reply
from flwr.app import ConfigRecord
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from test_strategy import FixedGrid
from test_strategy_runs import Proxy, manager_of

import flwr_flag.legacy
from flwr_flag.engine import ArraysSource, threads
from flwr_flag.engine.dtypes import add_update, difference_into
from flwr_flag.rules import RULES, aggregate
from flwr_flag.strategy import STRATEGIES
from flwr_flag.strategy.replies import Reply

# DETOX needs each row's group: tests/test_detox.py.
ALL_RULES = sorted(set(RULES) - {"detox"})


def test_differences_are_taken_wide_enough():
    out = np.empty(3, dtype=np.float32)
    difference_into(out, np.array([4, 3, 255], np.uint8), np.array([5, 5, 0], np.uint8))
    assert out.tolist() == [-1, -2, 255]
    difference_into(out, np.array([True, False, True]), np.array([False, True, True]))
    assert out.tolist() == [1, -1, 0]
    difference_into(out[:1], np.array([6e4], np.float16), np.array([-6e4], np.float16))
    assert out[0] == np.float32(np.float16(6e4)) * 2  # float16 alone overflows to inf
    big = np.array([2**62 + 12345], np.int64)
    difference_into(out[:1], big, big)
    assert out[0] == 0


def test_integers_are_rounded_saturated_and_exact_at_any_size():
    assert add_update(np.array([5], np.uint8), np.array([-0.6])).tolist() == [4]
    assert add_update(np.array([250, 3], np.uint8), np.array([10.0, -7.0])).tolist() == [255, 0]
    big = np.array([2**62 + 12345, 2**63 - 2], np.int64)
    assert add_update(big, np.zeros(2)).tolist() == big.tolist()
    assert add_update(big, np.array([1.0, 5.0])).tolist() == [2**62 + 12346, 2**63 - 1]
    counts = np.array([2**64 - 3], np.uint64)
    assert add_update(counts, np.array([-1e30])).tolist() == [0]
    assert add_update(np.array([1], np.int32), np.array([np.nan])) is None


def test_bools_take_the_aggregate_vote_and_a_tie_keeps_the_value():
    base = np.array([True, True, False, False])
    out = add_update(base, np.array([-0.6, -0.5, 0.5, 0.51]))
    assert out.dtype == np.bool_ and out.tolist() == [False, True, False, True]


def test_floats_sum_in_float32_at_least_and_overflow_keeps_the_model():
    half = np.array([-6e4], np.float16)
    out = add_update(half, np.array([12e4], np.float32))
    assert out.dtype == np.float16 and out[0] == np.float16(6e4)
    assert add_update(half, np.array([-1e4], np.float32)) is None  # -70000 overflows float16


MODEL = OrderedDict(
    weight=np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
    double=np.linspace(0, 2, 5),
    half=np.array([-6e4, 1.0, 2.5], np.float16),
    steps=np.array(10, np.int64),
    big=np.array([2**62 + 12345, -(2**60)], np.int64),
    quantised=np.array([5, 0, 255], np.uint8),
    mask=np.array([True, False, True, False]),
)


def replies_of(model: OrderedDict, n: int, seed: int = 0) -> list[list[np.ndarray]]:
    """``n`` replies that move every array of ``model`` but ``big`` (left unchanged)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        arrays = []
        for name, base in model.items():
            if name == "big":
                arrays.append(base.copy())
            elif base.dtype.kind == "b":
                arrays.append(rng.random(base.shape) < 0.5)
            elif base.dtype.kind in "iu":
                info = np.iinfo(base.dtype)
                moved = base.astype(np.float64) + rng.integers(-3, 4, base.shape)
                moved = np.clip(moved, max(info.min, -1e18), info.max)
                arrays.append(np.asarray(moved, dtype=base.dtype))
            else:
                moved = base.astype(np.float64) + (rng.normal(size=base.shape) + i / n)
                arrays.append(moved.astype(base.dtype))
        out.append(arrays)
    return out


def source(clients, model, host: bool) -> ArraysSource:
    made = ArraysSource(clients, base=list(model.values()), device="cpu", dtype=torch.float64)
    made.host_passes = host
    return made


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("rule", ALL_RULES)
def test_the_host_passes_and_the_generic_passes_agree_on_every_dtype(rule, workers, monkeypatch):
    """The code a GPU runs (the generic chunked passes), run on the CPU, against the
    host passes, on one worker and split between three (every piece a range of its
    own): same inputs in every dtype, same result within float tolerance. With a chunk
    smaller than an array, chunks cross array boundaries."""
    monkeypatch.setattr(threads, "MIN_WORK", 1)
    monkeypatch.setattr(threads, "host_workers", lambda: workers)
    clients = replies_of(MODEL, 11)
    host = aggregate(source(clients, MODEL, True), rule, 2).vector
    generic_source = source(clients, MODEL, False)
    generic_source.chunk_size = 5
    generic = aggregate(generic_source, rule, 2).vector
    torch.testing.assert_close(host, generic, rtol=1e-9, atol=1e-9)
    assert bool(torch.isfinite(host).all())


def core_round(name: str, model: OrderedDict, clients: list[list[np.ndarray]], f: int = 1):
    core = STRATEGIES[name](num_byzantine=f, device="cpu").core
    replies = [
        Reply(i + 1, dict(zip(model, arrays, strict=True)), 1) for i, arrays in enumerate(clients)
    ]
    return core.round(1, model, replies, 0)


@pytest.mark.parametrize("name", sorted(set(STRATEGIES) - {"detox"}))
def test_every_strategy_keeps_dtypes_and_returns_unchanged_arrays_to_the_bit(name):
    outcome = core_round(name, MODEL, replies_of(MODEL, 11), f=2)
    assert outcome.arrays is not None, outcome.metrics
    for key, base in MODEL.items():
        assert outcome.arrays[key].dtype == base.dtype and outcome.arrays[key].shape == base.shape
    assert outcome.arrays["big"].tobytes() == MODEL["big"].tobytes()


@pytest.mark.parametrize("name", ["mean", "trimmed-mean", "multi-krum", "median", "flag"])
def test_uint8_replies_aggregate_between_their_values(name):
    """The issue's case: base 5, four replies of 4 and three of 6 (uint8 wrapped to
    151-175 when the difference was taken in uint8)."""
    model = OrderedDict(q=np.array([5, 5], np.uint8), w=np.zeros(2, np.float32))
    clients = [[np.array([4, 4], np.uint8), np.ones(2, np.float32) * i] for i in range(4)]
    clients += [[np.array([6, 6], np.uint8), -np.ones(2, np.float32) * i] for i in range(3)]
    outcome = core_round(name, model, clients)
    assert outcome.metrics["robust.rejected"] == 0
    assert all(4 <= v <= 6 for v in outcome.arrays["q"].tolist())


BOOL_MODEL = OrderedDict(w=np.zeros(3, np.float32), mask=np.array([True, False, True]))


def bool_replies() -> list[list[np.ndarray]]:
    votes = [[True, True, False]] * 3 + [[False, True, True]] * 2
    return [[np.full(3, float(i), np.float32), np.array(v)] for i, v in enumerate(votes)]


def test_a_bool_buffer_takes_the_majority_in_the_message_api():
    strategy = STRATEGIES["median"](num_byzantine=1, device="cpu")
    list(strategy.configure_train(1, arrays_of(BOOL_MODEL), ConfigRecord(), FixedGrid(5)))
    messages = [
        reply(i + 1, dict(zip(BOOL_MODEL, a, strict=True)), **{"num-examples": 1})
        for i, a in enumerate(bool_replies())
    ]
    arrays, metrics = strategy.aggregate_train(1, messages)
    assert metrics["robust.rejected"] == 0
    assert arrays["mask"].numpy().tolist() == [True, True, False]


def test_a_bool_buffer_takes_the_majority_in_the_legacy_api():
    strategy = flwr_flag.legacy.Median(num_byzantine=1, device="cpu", min_available_clients=5)
    manager = manager_of(5)
    strategy.configure_fit(1, ndarrays_to_parameters(list(BOOL_MODEL.values())), manager)
    results = [
        (Proxy(i + 1), FitRes(Status(Code.OK, ""), ndarrays_to_parameters(a), 1, {}))
        for i, a in enumerate(bool_replies())
    ]
    parameters, metrics = strategy.aggregate_fit(1, results, [])
    assert metrics["robust.rejected"] == 0
    assert parameters_to_ndarrays(parameters)[1].tolist() == [True, True, False]


def test_resnet18_with_int_uint8_bool_and_float16_arrays_against_flowers_fedavg():
    """A real model's dtypes: ResNet-18's BatchNorm counters (int64), a uint8 and a bool
    buffer, a float16 head. Where Flower's FedAvg has an answer (the float arrays'
    mean) ours equals it; where it changes the dtype (integers and bools become
    float64 averages) ours keeps the dtype, rounds, and returns unchanged arrays to
    the bit."""
    torchvision = pytest.importorskip("torchvision")
    from flwr.app import MetricRecord, RecordDict
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    torch.manual_seed(0)
    state = torchvision.models.resnet18(num_classes=10).state_dict()
    model = OrderedDict((k, v.numpy()) for k, v in state.items())
    model["fc.weight"] = model["fc.weight"].astype(np.float16)
    model["quantised"] = np.arange(64, dtype=np.uint8)
    model["mask"] = np.arange(16) % 3 == 0
    rng = np.random.default_rng(1)
    clients = []
    for _ in range(5):
        arrays = OrderedDict()
        for key, base in model.items():
            if key.endswith("num_batches_tracked"):
                arrays[key] = np.asarray(base + 7)
            elif base.dtype.kind == "f" and not key.startswith("layer4"):
                noise = rng.normal(scale=1e-3, size=base.shape)
                arrays[key] = (base + noise).astype(base.dtype)
            else:  # layer4, the uint8 and the bool buffers: no client changes them
                arrays[key] = base.copy()
        clients.append(list(arrays.values()))
    ours = core_round("mean", model, clients, f=0).arrays
    records = [
        RecordDict(
            {
                "arrays": arrays_of(dict(zip(model, arrays, strict=True))),
                "m": MetricRecord({"num-examples": 1}),
            }
        )
        for arrays in clients
    ]
    flowers = aggregate_arrayrecords(records, "num-examples")
    for key, base in model.items():
        theirs = flowers[key].numpy()
        assert ours[key].dtype == base.dtype, key
        if key.endswith("num_batches_tracked"):
            assert int(ours[key]) == int(base) + 7 and theirs.dtype == np.float64
        elif key.startswith("layer4") or key in ("quantised", "mask"):
            assert ours[key].tobytes() == base.tobytes(), key
        else:
            np.testing.assert_allclose(ours[key], theirs, rtol=1e-3, atol=1e-3, err_msg=key)
