"""Message-API strategies: reply validation, parity with the engine and with Flower."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from flower_helpers import SHAPES, arrays_of, random_model, reply
from flwr.app import ConfigRecord

import flwr_flag
import flwr_flag.legacy
from flwr_flag.rules import aggregate
from flwr_flag.strategy import STRATEGIES
from flwr_flag.strategy.replies import Reply


class FixedGrid:
    """Just enough Grid for configure_train: a fixed set of node ids."""

    def __init__(self, n: int) -> None:
        self.n = n

    def get_node_ids(self):
        return list(range(1, self.n + 1))


def configured(strategy, global_model: dict, n: int):
    list(strategy.configure_train(1, arrays_of(global_model), ConfigRecord(), FixedGrid(n)))
    return strategy


def updates_of(models: list[dict], global_model: dict) -> torch.Tensor:
    return torch.stack(
        [
            torch.from_numpy(np.concatenate([(m[k] - global_model[k]).ravel() for k in SHAPES]))
            for m in models
        ]
    ).double()


def snapshot(messages) -> list:
    return [
        None if m.has_error() else {k: v.numpy().tobytes() for k, v in m.content["arrays"].items()}
        for m in messages
    ]


def bad_replies(global_model: dict) -> dict[int, tuple]:
    """Node id -> (reply, substring of the logged reason)."""
    base = random_model(50)
    nan = {**base, "w": base["w"] * np.nan}
    inf = {**base, "b": np.full(4, np.inf, dtype=np.float32)}
    return {
        101: (reply(101, {"w": base["w"]}, **{"num-examples": 5}), "missing ['b']"),
        102: (reply(102, {**base, "z": base["b"]}, **{"num-examples": 5}), "unexpected ['z']"),
        103: (
            reply(103, {**base, "b": np.zeros(5, np.float32)}, **{"num-examples": 5}),
            "array 'b' is float32[5], expected float32[4]",
        ),
        104: (
            reply(104, {**base, "w": base["w"].astype(np.float64)}, **{"num-examples": 5}),
            "array 'w' is float64[3, 4]",
        ),
        105: (reply(105, base), "num-examples is missing"),
        106: (reply(106, base, **{"num-examples": 0}), "num-examples=0 must be"),
        107: (reply(107, nan, **{"num-examples": 5}), "NaN or Inf"),
        108: (reply(108, inf, **{"num-examples": 5}), "NaN or Inf"),
        109: (
            reply(109, {k: v * 1e4 for k, v in base.items()}, **{"num-examples": 5}),
            "exceeds max_update_norm",
        ),
    }


@pytest.mark.parametrize("rule", ["krum", "flag", "median", "ctma", "centered-clipping"])
def test_invalid_replies_are_rejected_and_valid_ones_aggregated(rule, caplog):
    global_model = random_model(0)
    good = [random_model(i) for i in range(1, 10)]
    counts = list(range(10, 19))
    messages = [
        reply(i + 1, m, **{"num-examples": c})
        for i, (m, c) in enumerate(zip(good, counts, strict=True))
    ]
    bad = bad_replies(global_model)
    messages += [r for r, _ in bad.values()] + [reply(110, None)]
    before = snapshot(messages)
    strategy = configured(
        STRATEGIES[rule](num_byzantine=2, device="cpu", max_update_norm=1e3),
        global_model,
        len(messages),
    )
    with caplog.at_level(logging.WARNING, logger="flwr"):
        arrays, metrics = strategy.aggregate_train(1, messages)
    assert metrics["robust.rejected-nodes"] == sorted(bad)
    assert metrics["robust.failed"] == 1
    assert metrics["robust.received"] == len(messages) - 1
    for node, (_, reason) in bad.items():
        assert any(f"node {node}: " in r.message and reason in r.message for r in caplog.records), (
            node,
            reason,
        )
    # Every node with only rejected replies is one of the f = 2: none is left.
    assert metrics["robust.f"] == 0
    expected, _ = aggregate(updates_of(good, global_model), rule, 0)  # each reply once
    got = updates_of([{k: arrays[k].numpy() for k in SHAPES}], global_model)[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert list(arrays.keys()) == list(SHAPES)
    assert all(arrays[k].numpy().dtype == np.float32 for k in SHAPES)
    assert snapshot(messages) == before  # replies are never mutated


def test_too_few_valid_replies_keep_the_model(caplog):
    # One malformed reply is one caught node: the rule gets f = 2 - 1 for the 5 left.
    # (Bulyan with f = 2 samples 11 nodes; 5 of them did not answer.)
    global_model = random_model(0)
    messages = [reply(i + 1, random_model(i), **{"num-examples": 3}) for i in range(6)]
    messages[0] = reply(1, {"w": global_model["w"]}, **{"num-examples": 3})
    strategy = configured(flwr_flag.Bulyan(num_byzantine=2, device="cpu"), global_model, 11)
    with caplog.at_level(logging.WARNING, logger="flwr"):
        arrays, metrics = strategy.aggregate_train(1, messages)
    assert arrays is None
    assert metrics["robust.kept-model"] == 1 and metrics["robust.f"] == 1
    assert "5 valid replies, but bulyan with f=1 needs n >= 4f + 3" in caplog.text


@pytest.mark.parametrize("fault", ["nan", "malformed"])
def test_a_caught_node_leaves_the_rule_f_minus_one(fault):
    # Bulyan at n = 4f + 3: before, one NaN reply left 14 < 15 replies and every round
    # kept the model; the caught node is one of the f, so f = 2 covers the 14 left.
    global_model = random_model(0)
    models = [random_model(i) for i in range(1, 16)]
    models[0] = (
        {k: np.full_like(v, np.nan) for k, v in global_model.items()}
        if fault == "nan"
        else {"w": global_model["w"]}
    )
    messages = [reply(i + 1, m, **{"num-examples": 3}) for i, m in enumerate(models)]
    messages.append(reply(2, models[1], **{"num-examples": 3}))  # a duplicate: not caught
    strategy = configured(flwr_flag.Bulyan(num_byzantine=3, device="cpu"), global_model, 15)
    arrays, metrics = strategy.aggregate_train(1, messages)
    assert metrics["robust.rejected-nodes"] == [1, 2] and metrics["robust.f"] == 2
    expected, _ = aggregate(updates_of(models[1:], global_model), "bulyan", 2)
    got = updates_of([{k: arrays[k].numpy() for k in SHAPES}], global_model)[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_krum_selects_the_node_flower_krum_selects():
    # Flower's own Message-API Krum came after the oldest flwr we support (test-min).
    FlowerKrum = pytest.importorskip("flwr.serverapp.strategy").__dict__.get("Krum")
    if FlowerKrum is None:
        pytest.skip("this flwr has no Message-API Krum")
    global_model = random_model(0)
    rng = np.random.default_rng(7)
    models = [
        {
            k: global_model[k] + rng.normal(scale=s, size=v.shape).astype(np.float32)
            for k, v in global_model.items()
        }
        for s in [1, 1, 1, 1, 1, 1, 5, 9]
    ]
    messages = [reply(i + 1, m, **{"num-examples": 1}) for i, m in enumerate(models)]
    flower_arrays, _ = FlowerKrum(num_malicious_nodes=2).aggregate_train(
        1, [reply(i + 1, m, **{"num-examples": 1}) for i, m in enumerate(models)]
    )
    flower_node = next(
        i + 1 for i, m in enumerate(models) if np.array_equal(m["w"], flower_arrays["w"].numpy())
    )
    krum = flwr_flag.Krum(num_byzantine=2, device="cpu", diagnostics="full")
    strategy = configured(krum, global_model, 8)
    arrays, metrics = strategy.aggregate_train(1, messages)
    assert metrics["robust.selected-nodes"] == [flower_node]
    np.testing.assert_allclose(arrays["w"].numpy(), models[flower_node - 1]["w"], atol=1e-6)


def test_flag_diagnostics_name_the_outliers():
    global_model = random_model(0)
    rng = np.random.default_rng(3)
    direction = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in global_model.items()}
    models = [
        {k: global_model[k] + (1 + 0.05 * i) * direction[k] for k in SHAPES} for i in range(8)
    ]
    models += [
        {
            k: global_model[k] + rng.normal(scale=3, size=v.shape).astype(np.float32)
            for k, v in global_model.items()
        }
        for _ in range(2)
    ]
    messages = [reply(i + 1, m, **{"num-examples": 1}) for i, m in enumerate(models)]
    strategy = configured(
        flwr_flag.FlagAggregator(num_byzantine=2, subspace_dim=1, device="cpu", diagnostics="full"),
        global_model,
        10,
    )
    _, metrics = strategy.aggregate_train(1, messages)
    assert sorted(metrics["robust.least-influence-nodes"]) == [9, 10]
    assert sorted(metrics["robust.limited-nodes"]) == [9, 10]
    assert metrics["robust.ratios-min"] < 0.5 < metrics["robust.ratios-median"]
    assert metrics["robust.outvoted-nodes"] == [9, 10]


def test_server_learning_rate_and_momentum():
    global_model = random_model(0)
    models = [random_model(i) for i in range(1, 4)]
    messages = [reply(i + 1, m, **{"num-examples": 1}) for i, m in enumerate(models)]
    mean_update = updates_of(models, global_model).mean(0)
    strategy = configured(
        flwr_flag.Mean(device="cpu", server_lr=0.5, server_momentum=0.9), global_model, 3
    )
    first, _ = strategy.aggregate_train(1, messages)
    torch.testing.assert_close(
        updates_of([{k: first[k].numpy() for k in SHAPES}], global_model)[0],
        0.5 * mean_update,
        rtol=1e-5,
        atol=1e-6,
    )
    configured(strategy, global_model, 3)
    second, _ = strategy.aggregate_train(2, messages)
    torch.testing.assert_close(
        updates_of([{k: second[k].numpy() for k in SHAPES}], global_model)[0],
        0.5 * 1.9 * mean_update,
        rtol=1e-5,
        atol=1e-6,
    )


def test_strategy_options_are_validated_early():
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['subspace_dim'\]"):
        flwr_flag.Krum(num_byzantine=1, subspace_dim=2)
    with pytest.raises(ValueError, match=r"server_lr=0\.0 is out of range"):
        flwr_flag.Mean(server_lr=0.0)
    with pytest.raises(ValueError, match="num_byzantine=-1 is out of range"):
        flwr_flag.Krum(num_byzantine=-1)
    with pytest.raises(ValueError, match="rule='nope' is not one of"):
        flwr_flag.RobustStrategy(rule="nope")


def test_strategy_from_config():
    strategy = flwr_flag.strategy_from_config(
        {
            "rule": "ctma",
            "num-byzantine": 2,
            "ctma.base": "flag",
            "flag.subspace-dim": 3,
            "krum.ignored": 1,
            "pre": "bucketing",
            "bucketing.s": 2,
            "server-lr": 0.5,
            "device": "cpu",
            "chunk-size": "auto",
            "fraction-train": 0.5,
        }
    )
    assert isinstance(strategy, flwr_flag.CTMA)
    settings = strategy.core.settings()
    assert settings["rule_params"] == {"base": "flag", "base_params": {"subspace_dim": 3}}
    assert settings["pre"] == [("bucketing", {"s": 2})]
    assert settings["server_lr"] == 0.5
    assert settings["chunk_size"] == "auto"
    assert strategy.fraction_train == 0.5
    with pytest.raises(ValueError, match="pre: 'nmm' is not one of"):
        flwr_flag.strategy_from_config({"rule": "mean", "pre": "nmm"})
    with pytest.raises(ValueError, match=r"chunk_size=0 is out of range; allowed 1 <= chunk_size"):
        flwr_flag.strategy_from_config({"rule": "mean", "chunk-size": 0})


def test_every_aggregation_option_but_three_is_a_run_config_key():
    """Before: the keys were a hand-written table beside the declarations (_CORE)."""
    from flwr_flag.config import _CORE, NOT_IN_CONFIG
    from flwr_flag.strategy.core import OPTIONS

    assert set(_CORE.values()) | set(NOT_IN_CONFIG) == {*OPTIONS, "node_wait"}
    strategy = flwr_flag.strategy_from_config(
        {"rule": "median", "num-byzantine": 1, "max-update-norm": 5.0, "diagnostics": "full"}
    )
    assert strategy.core.max_update_norm == 5.0 and strategy.core.diagnostics == "full"
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['nope'\]"):
        flwr_flag.strategy_from_config({"rule": "krum", "krum.nope": 1})


def test_integer_and_zero_dimensional_arrays_keep_their_dtype_and_shape():
    # BatchNorm's num_batches_tracked: a 0-d int64 array next to float arrays.
    global_model = {**random_model(0), "steps": np.array(10, dtype=np.int64)}
    models = [{**random_model(i), "steps": np.array(10 + i, dtype=np.int64)} for i in (1, 2, 3)]
    messages = [reply(i + 1, m, **{"num-examples": 1}) for i, m in enumerate(models)]
    strategy = flwr_flag.Mean(device="cpu")
    list(strategy.configure_train(1, arrays_of(global_model), ConfigRecord(), FixedGrid(3)))
    arrays, _ = strategy.aggregate_train(1, messages)
    steps = arrays["steps"].numpy()
    assert steps.shape == () and steps.dtype == np.int64 and int(steps) == 12


@pytest.mark.parametrize("keep", [True, False], ids=["kept", "not-kept"])
def test_the_server_step_writes_in_place_only_into_a_buffer_no_one_keeps(keep):
    from flwr_flag.strategy.step import ServerStep

    step = ServerStep(lr=1.0)
    reference = {"w": np.full(6, 100.0, dtype=np.float32)}
    update = torch.arange(6, dtype=torch.float32)
    arrays = step(reference, update, keep=keep)
    assert np.array_equal(arrays["w"], 100.0 + np.arange(6, dtype=np.float32))
    assert torch.equal(update, torch.arange(6, dtype=torch.float32)) == keep


def test_the_round_state_and_the_momentum_keep_what_they_were_given():
    clipping = flwr_flag.CenteredClipping(num_byzantine=1, device="cpu").core
    momentum = flwr_flag.Mean(device="cpu", server_momentum=0.5).core
    reference = {"w": np.full(6, 100.0, dtype=np.float32)}
    steps = {}
    for core in (clipping, momentum):
        replies = [Reply(i, {"w": np.full(6, 100.0 + i, dtype=np.float32)}, 1) for i in range(1, 4)]
        steps[id(core)] = torch.from_numpy(core.round(1, reference, replies, 0).arrays["w"] - 100)
    torch.testing.assert_close(clipping.state_dict()["previous"].cpu(), steps[id(clipping)])
    assert torch.equal(momentum.state_dict()["momentum"].cpu(), torch.full((6,), 2.0))


def test_a_non_finite_step_keeps_the_model_and_the_state():
    step = flwr_flag.Mean(device="cpu", server_momentum=0.5).core.step
    reference = {"w": np.zeros(3, dtype=np.float32), "steps": np.array(1, dtype=np.int64)}
    assert step(reference, torch.tensor([1.0, 2.0, 3.0, float("nan")])) is None
    assert step(reference, torch.tensor([1.0, float("inf"), 3.0, 0.0])) is None
    assert step.state_dict() == {}


def test_the_float32_server_step_equals_the_float64_one_within_float32_resolution():
    rng = np.random.default_rng(4)
    reference = {
        "w": rng.normal(scale=100, size=(50, 40)).astype(np.float32),
        "b": rng.normal(size=40).astype(np.float32),
        "steps": np.array(10, dtype=np.int64),
    }
    size = sum(a.size for a in reference.values())
    update = torch.from_numpy(rng.normal(scale=1e-3, size=size)).float()
    core = flwr_flag.Mean(device="cpu", server_lr=0.7).core
    got = core.step(reference, update.clone())  # the step writes into its input
    offset = 0
    for name, base in reference.items():
        piece = 0.7 * update[offset : offset + base.size].double().numpy().reshape(base.shape)
        exact = base.astype(np.float64) + piece
        offset += base.size
        assert got[name].dtype == base.dtype and got[name].shape == base.shape
        if base.dtype.kind == "i":
            assert got[name] == np.rint(exact)
            continue
        ulp = np.spacing(np.maximum(np.abs(exact), np.abs(piece)).astype(np.float32))
        assert np.all(np.abs(got[name].astype(np.float64) - exact) <= 2 * ulp)


def test_replies_are_read_without_copying_their_bytes():
    from flwr.app import Array

    from flwr_flag.strategy.npy import numpy_view

    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    for array in (values, np.asfortranarray(values), np.array(3.5), np.zeros(0)):
        record = Array(array)
        view = numpy_view(record)
        np.testing.assert_array_equal(view, record.numpy())
        assert view.dtype == record.numpy().dtype and view.shape == record.numpy().shape
        assert not view.flags.writeable  # a view of the message's bytes, never mutated
    record = Array(values)
    view = numpy_view(record)
    assert np.shares_memory(view, np.frombuffer(record.data, dtype=np.uint8))
    short = Array("float32", (3, 4), "numpy.ndarray", Array(values).data[:-4])
    with pytest.raises(ValueError, match="payload holds 44 bytes"):
        numpy_view(short)


def test_arrays_are_written_as_np_save_writes_them():
    from flwr.app import Array

    from flwr_flag.strategy.npy import array_record, npy_bytes, npy_view

    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    cases = {
        "c": values,
        "fortran": np.asfortranarray(values),
        "strided": values[:, ::2],
        "scalar": np.array(7, dtype=np.int64),
        "empty": np.zeros((0, 3)),
        "big-endian": values.astype(">f8"),
    }
    record = array_record(cases)
    for name, array in cases.items():
        assert npy_bytes(array) == Array(array).data, name
        assert record[name] == Array(array), name
        np.testing.assert_array_equal(npy_view(npy_bytes(array)), array)
    huge = np.zeros(2, dtype=[(f"field{i}", "f4") for i in range(5000)])
    with pytest.warns(UserWarning, match="format 2.0"):  # as np.save does
        assert npy_bytes(huge) == Array(huge).data
    with pytest.raises(ValueError, match="Header info length"):  # numpy's guard on reads
        npy_view(npy_bytes(huge))
    with pytest.raises(ValueError, match="object arrays"):
        npy_bytes(np.array([object()]))


def test_a_byzantine_fraction_sets_f_from_each_rounds_replies():
    """num_byzantine=0.2: f = ceil(0.2 n) of the nodes that replied. In this round 3 of
    10 sampled nodes are attackers, one more than the 2 expected: the median still
    holds (3 < n / 2), and the round reports the f it used."""
    global_model = random_model(0)
    rng = np.random.default_rng(3)
    honest = [
        {k: v + 1 + rng.normal(scale=0.05, size=v.shape).astype(np.float32)
         for k, v in global_model.items()}
        for _ in range(7)
    ]  # fmt: skip
    attackers = [{k: v + 1e6 for k, v in global_model.items()} for _ in range(3)]
    messages = [reply(i + 1, m, **{"num-examples": 1}) for i, m in enumerate(honest + attackers)]
    strategy = configured(flwr_flag.Median(num_byzantine=0.2, device="cpu"), global_model, 10)
    arrays, metrics = strategy.aggregate_train(1, messages)
    assert metrics["robust.f"] == 2
    moved = updates_of([{k: arrays[k].numpy() for k in SHAPES}], global_model)[0]
    steps = updates_of(honest, global_model)
    assert bool((moved >= steps.min(0).values - 1e-6).all())
    assert bool((moved <= steps.max(0).values + 1e-6).all())
    krum = configured(flwr_flag.Krum(num_byzantine=0.2, device="cpu"), global_model, 13)
    _, metrics = krum.aggregate_train(1, messages[:6])  # f = ceil(1.2) = 2: Krum needs 7
    assert metrics["robust.kept-model"] == 1 and metrics["robust.f"] == 2
    more = messages + [reply(11 + i, honest[i], **{"num-examples": 1}) for i in range(3)]
    _, metrics = krum.aggregate_train(1, more)  # 13 replies: f = ceil(2.6) = 3
    assert metrics["robust.f"] == 3


def test_ctma_runs_nnm_before_it_unless_told_otherwise():
    """The field study's choice (benchmarks/results/field.md): the strategy's own default,
    from the rule's registration, in the class, the legacy twin and the run config."""
    from flwr_flag import legacy
    from flwr_flag.rules.registry import split_step

    def pre(strategy) -> list[str]:
        return [split_step(step)[0] for step in strategy.core.settings()["pre"]]

    assert pre(flwr_flag.CTMA(num_byzantine=1)) == ["nnm"]
    assert pre(legacy.CTMA(num_byzantine=1)) == ["nnm"]
    assert pre(flwr_flag.CTMA(num_byzantine=1, pre=())) == []
    assert pre(flwr_flag.Median(num_byzantine=1)) == []
    for config, expected in (({}, ["nnm"]), ({"pre": "auto"}, ["nnm"]), ({"pre": ""}, [])):
        strategy = flwr_flag.strategy_from_config({"rule": "ctma", "num-byzantine": 1, **config})
        assert pre(strategy) == expected, config
    updates = torch.randn(7, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with_nnm = aggregate(updates, "ctma", 2, pre=["nnm"]).vector
    assert not torch.allclose(with_nnm, aggregate(updates, "ctma", 2).vector)  # aggregate adds none


@pytest.mark.parametrize(
    "rule", ["mean", "trimmed-mean", "geomed", "centered-clipping", "flag", "ctma"]
)
def test_the_aggregate_does_not_depend_on_the_order_replies_arrive_in(rule):
    # Flower samples nodes in a random order and float sums are not associative: the
    # same replies in another order must still give the same bits, or a seed does not
    # fix a run.
    global_model = random_model(0)
    messages = [reply(i + 1, random_model(i), **{"num-examples": 5}) for i in range(1, 16)]
    results = set()
    for order in (list(range(15)), list(range(15))[::-1], np.random.default_rng(1).permutation(15)):
        strategy = configured(STRATEGIES[rule](num_byzantine=3, device="cpu"), global_model, 15)
        arrays, _ = strategy.aggregate_train(1, [messages[i] for i in order])
        results.add(b"".join(arrays[k].numpy().tobytes() for k in SHAPES))
    assert len(results) == 1


def test_flowers_node_minima_rise_to_what_the_rule_needs():
    """Flower's FedAvg defaults to 2 nodes: with f = 2 Krum would keep the model in
    every round of a 2-node run, which then ended normally."""
    krum = flwr_flag.Krum(num_byzantine=2, device="cpu")
    assert krum.nodes_needed == 7
    assert krum.min_available_nodes == 7 and krum.min_train_nodes == 7
    legacy = flwr_flag.legacy.Krum(num_byzantine=2, device="cpu", min_available_clients=9)
    assert legacy.min_fit_clients == 7 and legacy.min_available_clients == 9


@pytest.mark.parametrize(
    ("strategy", "says"),
    [
        (
            lambda: flwr_flag.FlagAggregator(num_byzantine=0.4999, device="cpu", node_wait=0.3),
            r"num_byzantine=0.4999: flag needs n >= 2f \+ 1 \(f = ceil\(0.4999 n\) of n "
            r"replies\), so at least 5001 nodes, but 10 are connected after 0.3 s",
        ),
        (
            lambda: flwr_flag.Krum(num_byzantine=6, device="cpu", node_wait=0),
            r"num_byzantine=6: krum needs n >= 2f \+ 3, so at least 15 nodes, but 10 are",
        ),
    ],
    ids=["fraction", "count"],
)
def test_a_rule_the_nodes_cannot_satisfy_stops_before_round_1(strategy, says):
    """Before: 'Waiting for nodes to connect: 10 connected (minimum required: 5001)'
    every second, for ever."""
    with pytest.raises(RuntimeError, match=says):
        strategy().start(FixedGrid(10), arrays_of(random_model(0)), num_rounds=1)


def test_the_legacy_api_stops_before_round_1_too():
    from test_strategy_runs import manager_of

    manager = manager_of(3)
    strategy = flwr_flag.legacy.MultiKrum(num_byzantine=1, device="cpu", node_wait=0.2)
    with pytest.raises(RuntimeError, match=r"at least 5 nodes, but 3 are connected after 0.2 s"):
        strategy.initialize_parameters(manager)


def test_the_nodes_may_come_while_the_strategy_waits():
    counts = iter([1, 2, 3, 5])
    strategy = flwr_flag.MultiKrum(num_byzantine=1, device="cpu", node_wait=30)
    strategy.wait_for_nodes(lambda: next(counts))  # returns once 5 are there
    assert next(counts, None) is None


@pytest.mark.parametrize("api", ["message", "legacy"])
def test_every_strategy_signature_lists_every_option_it_takes(api):
    """IDEs and help() read inspect.signature; it was (num_byzantine: int = 0, **options)."""
    import inspect

    from flwr_flag.rules import get_rule
    from flwr_flag.strategy.options import CORE_OPTIONS

    classes = [*STRATEGIES.values(), flwr_flag.FLTrust]
    if api == "legacy":
        classes = [getattr(flwr_flag.legacy, c.__name__) for c in classes]
    for cls in classes:
        names = set(inspect.signature(cls).parameters)
        flower = next(c for c in cls.__mro__ if c.__module__.startswith("flwr."))
        flowers = set(inspect.signature(flower.__init__).parameters) - {"self"}
        wanted = {"num_byzantine", "node_wait", *CORE_OPTIONS, *flowers}
        assert wanted | set(get_rule(cls.rule).params) <= names, cls
        assert "options" not in names  # a named class takes nothing else
        assert inspect.signature(cls).parameters["num_byzantine"].annotation == "int | float"
    assert "options" in inspect.signature(flwr_flag.RobustStrategy).parameters
    assert inspect.signature(flwr_flag.Mean).parameters["weighting"].default == "num-examples"


def test_num_byzantine_left_at_zero_is_said_out_loud(caplog):
    with caplog.at_level(logging.WARNING, logger="flwr"):
        flwr_flag.FlagAggregator(device="cpu")
    assert "FlagAggregator: num_byzantine=0, so the rule tolerates no Byzantine node" in (
        caplog.text
    )
