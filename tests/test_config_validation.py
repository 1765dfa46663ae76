"""A configuration mistake stops the run before round 1, naming the key, the value and
what is allowed: every declared hyperparameter (nested ones too), the strategy's own
options, run-config keys, and checkpoints."""

from __future__ import annotations

import logging
import math
import re

import numpy as np
import pytest
import torch
from flower_helpers import SHAPES, arrays_of, random_model, reply
from test_strategy import configured
from test_strategy_runs import run

import flwr_flag
import flwr_flag.legacy
from flwr_flag.rules import PREAGGREGATORS, RULES
from flwr_flag.rules.registry import PreSteps, RuleName, RuleParams
from flwr_flag.strategy import STRATEGIES
from flwr_flag.validation import Choice, Integer, InvalidParameterError, Real, Typed


def invalid_values(kind) -> list:
    """Values the declaration ``kind`` must refuse."""
    if isinstance(kind, Integer):
        return [2.5, "8", True, *([kind.low - 1] if kind.low > -math.inf else [])]
    if isinstance(kind, Real):
        bad = ["x", True, math.nan, math.inf]
        if kind.low > -math.inf:
            bad.append(kind.low if kind.low_open else kind.low - 1)
        if kind.high < math.inf:
            bad.append(kind.high if kind.high_open else kind.high + 1)
        return bad
    if isinstance(kind, Choice):
        return ["bogus", 3]
    if isinstance(kind, Typed) and kind.kind is bool:
        return ["yes", 1]
    if isinstance(kind, Typed) and kind.kind is torch.Tensor:  # the anchor's reference
        return [[1.0, 2.0], "x"]
    if isinstance(kind, RuleName):
        return ["nope", *sorted(kind.exclude)]
    if isinstance(kind, RuleParams):
        return [{"bogus": 1}, "x"]
    if isinstance(kind, PreSteps):
        return [["nope"], "nnm", [("bucketing", {"s": 0})]]
    raise AssertionError(f"no invalid values for {kind!r}")


CASES = [
    (rule, key, value)
    for rule, entry in sorted(RULES.items())
    for key, kind in sorted(entry.params.items())
    for value in invalid_values(kind)
]
PRE_CASES = [
    (pre, key, value)
    for pre, entry in sorted(PREAGGREGATORS.items())
    for key, kind in sorted(entry.params.items())
    for value in invalid_values(kind)
]
NESTED = [(rule, key) for rule, entry in sorted(RULES.items()) for key in entry.params]


@pytest.mark.parametrize(("rule", "key", "value"), CASES)
def test_every_hyperparameter_is_refused_at_construction(rule, key, value):
    with pytest.raises(InvalidParameterError, match=key):
        STRATEGIES[rule](num_byzantine=1, **{key: value})


@pytest.mark.parametrize(("pre", "key", "value"), PRE_CASES)
def test_every_preaggregator_parameter_is_refused_at_construction(pre, key, value):
    with pytest.raises(InvalidParameterError, match=key):
        flwr_flag.Median(num_byzantine=1, pre=[(pre, {key: value})])


@pytest.mark.parametrize(("rule", "key"), NESTED)
def test_nested_parameters_are_refused_at_construction(rule, key):
    value = invalid_values(RULES[rule].params[key])[0]
    if rule not in ("ctma", "detox"):
        with pytest.raises(InvalidParameterError, match=f"base_params \\({rule}\\).*{key}"):
            flwr_flag.CTMA(num_byzantine=1, base=rule, base_params={key: value})
    if rule != "detox":
        with pytest.raises(InvalidParameterError, match=f"stage2_params \\({rule}\\).*{key}"):
            flwr_flag.Detox(num_byzantine=1, stage2=rule, stage2_params={key: value})


@pytest.mark.parametrize(("rule", "key", "value"), CASES)
def test_every_hyperparameter_is_refused_through_run_config(rule, key, value):
    if isinstance(RULES[rule].params[key], (RuleParams, PreSteps)):
        pytest.skip("taken from other tables, not a key of its own")
    config = {"rule": rule, "num-byzantine": 1, f"{rule}.{key.replace('_', '-')}": value}
    with pytest.raises(InvalidParameterError, match=key):
        flwr_flag.strategy_from_config(config)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"server_lr": math.inf}, "server_lr=inf"),
        ({"server_lr": 0.0}, "server_lr=0.0"),
        ({"server_momentum": 1.0}, "server_momentum=1.0"),
        ({"chunk_size": 0}, "chunk_size=0"),
        ({"max_update_norm": -1.0}, "max_update_norm=-1.0"),
        ({"fraction_train": 2.0}, "fraction_train=2.0"),
        ({"fraction_train": 0.0}, "fraction_train=0.0"),
        ({"fraction_evaluate": -0.1}, "fraction_evaluate=-0.1"),
        ({"min_train_nodes": -3}, "min_train_nodes=-3"),
        ({"weighting": "by-size"}, "weighting='by-size'"),
        ({"max_weight_ratio": 0.5}, "max_weight_ratio=0.5"),
        ({"resume": True}, "resume=True needs checkpoint_dir"),
        ({"resume": "false"}, "resume='false' must be a bool"),
        ({"rule": "median"}, "Krum always runs 'krum'"),
        ({"pre": ["nope"]}, "pre-aggregator 'nope'"),
        ({"pre": [("nnm", {"bogus": 1})]}, "pre nnm: hyperparameter 'bogus' is unknown"),
        ({"previous": torch.zeros(3)}, "unknown option(s) ['previous']"),
        ({"device": "meta"}, "device='meta' is not one of"),
        ({"device": "banana"}, "device='banana' is not one of"),
        ({"device": "cuda:x"}, "device='cuda:x' is not one of"),
        ({"arrayrecord_key": 5}, "arrayrecord_key=5 must be a str"),
        ({"configrecord_key": []}, "configrecord_key=[] must be a str"),
        ({"weighted_by_key": None}, "weighted_by_key=None must be a str"),
        ({"train_metrics_aggr_fn": "mean"}, "train_metrics_aggr_fn='mean' must be a callable"),
        ({"evaluate_metrics_aggr_fn": 3}, "evaluate_metrics_aggr_fn=3 must be a callable"),
    ],
)
def test_strategy_options_are_refused_at_construction(options, message):
    with pytest.raises(InvalidParameterError, match=re.escape(message)):
        flwr_flag.Krum(num_byzantine=1, **options)


def test_round_state_is_not_a_hyperparameter():
    with pytest.raises(TypeError, match="'previous' is round state, supplied by the strategy"):
        flwr_flag.CenteredClipping(num_byzantine=1, previous=torch.zeros(3))
    with pytest.raises(TypeError, match="'groups' is round state"):
        flwr_flag.RobustStrategy(rule="detox", groups=[0, 0, 0])


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"num-byzantine": "2"}, "num-byzantine='2' is a str; allowed int >= 0"),
        (
            {"num-byzantine": 2.7},
            "num-byzantine=2.7 is out of range; allowed 0.0 < num-byzantine < 0.5",
        ),
        ({"num-byzantine": 0.5}, "num-byzantine=0.5 is out of range"),
        ({"num-byzantine": True}, "num-byzantine=True is a bool; allowed int >= 0"),
        ({"resume": "false", "checkpoint-dir": "x"}, "resume='false' must be a bool"),
        ({"flag.subspace-dim": "8"}, "subspace_dim='8' must be an int"),
        ({"fraction-train": "0.5"}, "fraction_train='0.5' must be a number"),
        ({"fraction-train": 5}, "fraction_train=5.0 is out of range"),
        ({"min-train-nodes": -3}, "min_train_nodes=-3 is out of range"),
        ({"checkpoint-dir": 0}, "checkpoint_dir=0 must be a str or PathLike"),
        ({"rule": 3}, "rule=3 is not one of"),
        ({"rule": "ctma", "ctma.base": "nope"}, "base='nope' is not one of"),
        ({"rule": "detox", "detox.stage2": "nope"}, "stage2='nope' is not one of"),
        ({"rule": "detox", "detox.equal-compute": "yes"}, "equal_compute='yes' must be a bool"),
        ({"pre": "bucketing", "bucketing.s": -2}, "s=-2 is out of range"),
        ({"rule": "detox", "detox.seed": "x"}, "detox: seed='x' must be an int"),
        ({"rule": "detox", "detox.seed": -5}, "detox: seed=-5 is out of range"),
        ({"device": "meta"}, "device='meta' is not one of"),
    ],
)
def test_run_config_types_are_strict(config, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidParameterError, match=re.escape(message)):
        flwr_flag.strategy_from_config({"rule": "flag", **config})


def test_preaggregators_that_shrink_n_are_counted_before_the_rule(caplog):
    global_model = random_model(0)
    messages = [reply(i + 1, random_model(i + 1), **{"num-examples": 1}) for i in range(9)]
    strategy = flwr_flag.Krum(num_byzantine=2, device="cpu", pre=[("bucketing", {"s": 2})])
    assert strategy.nodes_needed == 13  # buckets of 2: ceil(13 / 2) = 7 = 2f + 3
    with caplog.at_level(logging.WARNING, logger="flwr"):  # 4 of 13 sampled did not answer
        arrays, _ = configured(strategy, global_model, 13).aggregate_train(1, messages)
    assert arrays is None
    assert "9 valid replies (5 rows after ['bucketing'])" in caplog.text
    strategy = flwr_flag.Krum(num_byzantine=1, device="cpu", pre=[("bucketing", {"s": 2})])
    arrays, _ = configured(strategy, global_model, 9).aggregate_train(1, messages)
    assert arrays is not None


def test_rules_without_round_state_store_none():
    global_model = random_model(0)
    messages = [reply(i + 1, random_model(i + 1), **{"num-examples": 1}) for i in range(5)]
    for cls, state in [(flwr_flag.Krum, set()), (flwr_flag.CenteredClipping, {"previous"})]:
        strategy = configured(cls(num_byzantine=1, device="cpu"), global_model, 5)
        strategy.aggregate_train(1, messages)
        assert set(strategy.core.state_dict()) == state


def test_named_strategies_document_their_rules_options():
    doc = flwr_flag.FlagAggregator.__doc__
    for name in ("subspace_dim", "lam", "eps", "tol", "max_iter", "output"):
        assert name in doc
    assert "int >= 1 or None" in doc


# Checkpoints


def test_checkpoint_dir_that_is_a_file_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for directory in (blocker, blocker / "below"):
        with pytest.raises(ValueError, match="is a file"):
            flwr_flag.Mean(checkpoint_dir=str(directory))


def strategy(tmp_path, **options):
    return flwr_flag.RobustStrategy(
        rule="mean",
        num_byzantine=1,
        device="cpu",
        server_momentum=0.5,
        checkpoint_dir=str(tmp_path),
        **options,
    )


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    run(strategy(tmp_path), 2)
    initial = arrays_of({"w": np.zeros((4, 4), np.float32), "b": np.zeros(4, np.float32)})
    with pytest.raises(
        ValueError,
        match=r"does not fit the model: array 'w' is float32\[3, 4\], expected float32\[4, 4\]",
    ):
        strategy(tmp_path, resume=True).start(grid=None, initial_arrays=initial, num_rounds=3)


def test_resume_refuses_non_finite_arrays_and_state_of_the_wrong_size(tmp_path):
    store = flwr_flag.strategy.CheckpointStore(tmp_path)
    arrays = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    initial = arrays_of(arrays)
    store.save(1, {**arrays, "w": np.full((3, 4), np.nan, np.float32)}, {})
    with pytest.raises(ValueError, match="array 'w' is not finite"):
        strategy(tmp_path, resume=True).start(grid=None, initial_arrays=initial, num_rounds=3)
    store.save(2, arrays, {"momentum": torch.zeros(7)})
    with pytest.raises(
        ValueError, match=r"state 'momentum' has shape \(7,\), but the model has 16"
    ):
        strategy(tmp_path, resume=True).start(grid=None, initial_arrays=initial, num_rounds=3)


def test_all_checkpoints_corrupt_is_an_error_not_a_fresh_start(tmp_path):
    run(strategy(tmp_path), 2)
    for path in tmp_path.glob("round-*.pt"):
        path.write_bytes(b"corrupt")
    initial = arrays_of({k: np.zeros(s, np.float32) for k, s in SHAPES.items()})
    with pytest.raises(ValueError, match=r"none of the 2 checkpoints .* is readable"):
        strategy(tmp_path, resume=True).start(grid=None, initial_arrays=initial, num_rounds=3)


def test_legacy_resume_continues_the_round_numbering(tmp_path):
    from flwr.common import ndarrays_to_parameters
    from test_strategy_runs import Proxy, manager_of

    store = flwr_flag.strategy.CheckpointStore(tmp_path)
    arrays = {str(i): np.ones(s, np.float32) for i, s in enumerate(SHAPES.values())}
    store.save(5, arrays, {})
    legacy = flwr_flag.legacy.Mean(
        device="cpu",
        checkpoint_dir=str(tmp_path),
        resume=True,
        initial_parameters=ndarrays_to_parameters(
            [np.zeros(s, np.float32) for s in SHAPES.values()]
        ),
    )
    legacy.initialize_parameters(manager_of(1))
    assert legacy._offset == 5
    legacy._sent = ndarrays_to_parameters(list(arrays.values()))
    from flwr.common import Code, FitRes, Status

    results = [
        (
            Proxy(i),
            FitRes(Status(Code.OK, ""), ndarrays_to_parameters(list(arrays.values())), 1, {}),
        )
        for i in (1, 2)
    ]
    legacy.aggregate_fit(1, results, [])
    assert sorted(p.name for p in tmp_path.glob("round-*.pt")) == [
        "round-000005.pt",
        "round-000006.pt",
    ]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"accept_failures": "no"}, "accept_failures='no' must be a bool"),
        ({"fit_metrics_aggregation_fn": 1}, "fit_metrics_aggregation_fn=1 must be a callable"),
        ({"evaluate_fn": "f"}, "evaluate_fn='f' must be a callable"),
        ({"device": "meta"}, "device='meta' is not one of"),
    ],
)
def test_legacy_flower_options_are_refused_at_construction(options, message):
    with pytest.raises(InvalidParameterError, match=re.escape(message)):
        flwr_flag.legacy.Median(num_byzantine=1, **options)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("client-device", "banana", "client-device='banana' is not one of"),
        ("client-device", "meta", "client-device='meta' is not one of"),
        ("seed", 2**70, f"seed={2**70} is out of range"),
    ],
)
@pytest.mark.app
def test_client_options_are_refused_before_round_1(key, value, message):
    """Before: client-device='banana' failed every client every round; seed=2**70 was an
    overflow that did not name the key."""
    from server_app.app import validated

    with pytest.raises(InvalidParameterError, match=re.escape(message)):
        validated({"rule": "flag", key: value}, 4)


def test_detox_seed_is_checked_in_both_apis():
    for cls in (flwr_flag.Detox, flwr_flag.legacy.Detox):
        with pytest.raises(ValueError, match="seed=-5 is out of range"):
            cls(num_byzantine=1, seed=-5)
        with pytest.raises(TypeError, match="seed='x' must be an int"):
            cls(num_byzantine=1, seed="x")


def test_robust_strategy_needs_a_rule():
    """Before: RobustStrategy(num_byzantine=2) silently ran the non-robust mean."""
    for cls in (flwr_flag.RobustStrategy, flwr_flag.legacy.RobustStrategy):
        with pytest.raises(TypeError, match="needs rule="):
            cls(num_byzantine=2)


def test_config_and_constructor_build_the_same_detox():
    """Before: strategy_from_config({"rule": "detox"}) had stage2_pre=[] where Detox(0)
    had the rule's default (buckets of two)."""
    from flwr_flag.rules.detox import DEFAULT_SECOND_STAGE_PRE

    built = flwr_flag.strategy_from_config({"rule": "detox"})
    assert built.core.rule_params.get("stage2_pre", DEFAULT_SECOND_STAGE_PRE) == (
        flwr_flag.Detox(0).core.rule_params.get("stage2_pre", DEFAULT_SECOND_STAGE_PRE)
    )


def test_a_nested_rule_name_is_checked_before_its_parameters():
    """Before: a raw KeyError from the nested check reading base before validating it."""
    from flwr_flag.rules import aggregate

    with pytest.raises(ValueError, match="ctma: base='nope' is not one of"):
        aggregate(torch.zeros(5, 3), "ctma", 1, base_params={}, base="nope")


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"rule": "krum", "num-byzantine": 2}, 7),
        ({"rule": "flag", "num-byzantine": 2}, 5),
        ({"rule": "bulyan", "num-byzantine": 1}, 7),
        ({"rule": "median", "num-byzantine": 1, "pre": "bucketing"}, 5),
        ({"rule": "mean", "num-byzantine": 0}, 2),
    ],
)
def test_min_available_nodes_auto_is_what_the_rule_needs(config, expected):
    """A deployment goes on with the nodes that are up: not N, but what the rule needs."""
    strategy = flwr_flag.strategy_from_config({**config, "min-available-nodes": "auto"})
    assert strategy.min_available_nodes == expected


@pytest.mark.app
def test_round_timeout_is_checked_before_round_1():
    from server_app.app import validated

    with pytest.raises(ValueError, match=r"round-timeout=0.0 is out of range"):
        validated({"rule": "flag", "round-timeout": 0.0}, 4)
    assert validated({"rule": "flag", "round-timeout": 30}, 4)[2].round_timeout == 30.0


def test_the_anytime_average_is_on_when_the_clients_run_mu2_sgd():
    mu2 = flwr_flag.strategy_from_config({"optimizer": "mu2-sgd", "mu2.gamma-min": 0.2})
    assert mu2.core.anytime is not None and mu2.core.anytime.gamma_min == 0.2
    assert flwr_flag.strategy_from_config({"optimizer": "sgd"}).core.anytime is None
    with pytest.raises(ValueError, match=re.escape("anytime_gamma_min=0.0 is out of range")):
        flwr_flag.Krum(num_byzantine=1, anytime_gamma_min=0.0)


def test_run_config_overrides_refuse_what_flowers_parser_would_skip():
    from flwr_flag.runconfig import parse_overrides

    assert parse_overrides("") == {}
    assert parse_overrides("lr=0.1 rule='krum' x=\"a b\"") == {
        "lr": 0.1,
        "rule": "krum",
        "x": "a b",
    }
    # Flower's parse_config_args returns {"rule": "krum"} here: the mistyped lr is lost
    with pytest.raises(ValueError, match=r"not key=value pairs: lr= \(in"):
        parse_overrides("lr= rule='krum'")
    with pytest.raises(ValueError, match="not key=value pairs: local-steps"):
        parse_overrides("local-steps 3")
    with pytest.raises(ValueError, match="a value is not TOML"):  # whatever flwr raises
        parse_overrides("lr=[1")
