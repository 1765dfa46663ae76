"""Build a strategy from Flower run-config keys (``--run-config``, pyproject).

Keys, all optional::

    rule = "flag"                 # a registered rule name
    num-byzantine = 2             # f, or a fraction of each round's replies (0.2)
    pre = "nnm"                   # comma-separated pre-aggregators, applied in order;
                                  # "auto": the rule's default (NNM before CTMA), "": none
    detox.replication = 3         # rule = "detox": groups, vote, second stage
    detox.stage2 = "median"       # its params from the [median] section
    detox.stage2-pre = "bucketing"
    server-lr = 1.0
    server-momentum = 0.0
    device = "auto"               # "cpu", "cuda", "cuda:1"
    chunk-size = "auto"           # "auto" (or ""): the option's default
    max-update-norm = "none"      # "none": None, no bound
    checkpoint-dir = ""           # "": no checkpoints
    resume = false
    resume-with-changes = false   # resume although settings differ (else refused)
    weighting = "auto"            # "uniform" (robust rules' default), "num-examples"
    max-weight-ratio = "auto"     # cap of "num-examples" weights; "none": no cap
    fraction-train = 1.0          # and fraction-evaluate, min-train-nodes,
                                  # min-evaluate-nodes
    min-available-nodes = "auto"  # the fewest nodes the rule can run with for f (>= 2)
    node-wait = 300.0             # seconds to wait for them before round 1; "none": ever
    max-kept-rounds = 10          # this many rounds in a row keeping the model stop the
                                  # run with an error; "none": go on
    diagnostics = "short"         # robust.* metrics per round; "full": every diagnostic
    history.max-age = 0           # per-node history (rules/history.py): every node seen
                                  # in the last k rounds counts; 0: off. history.decay,
                                  # history.consistency, history.max-nodes: its options

A rule's or pre-aggregator's hyperparameters sit under its name, dashes for
underscores: ``flag.subspace-dim = 8``, ``ctma.base = "geomed"``, ``bucketing.s = 2``
(in pyproject, a ``[tool.flwr.app.config.flag]`` table; ``"auto"`` for a parameter
whose default is computed, e.g. ``flag.subspace-dim = "auto"``). CTMA's base rule takes its
hyperparameters from the base's own table. Keys of other rules are ignored, so one
config can hold settings for several rules and switch with ``rule`` alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from .rules import PREAGGREGATORS, RULES, get_rule
from .rules.registry import PreStep, PreSteps, RuleName, RuleParams, split_step
from .runconfig import section
from .strategy.core import OPTIONS
from .validation import ByzantineCount, InvalidParameterError

if TYPE_CHECKING:
    from .strategy.robust import RobustStrategy

NOT_IN_CONFIG = {
    "anchor": "a function: strategy_from_config's argument",
    "history": "the history.* section",
    "anytime_gamma_min": "mu2.gamma-min, with optimizer = 'mu2-sgd'",
}
"""Aggregation options that are not run-config keys of their own, and where they come from."""
_CORE = {
    name.replace("_", "-"): name for name in (*OPTIONS, "node_wait") if name not in NOT_IN_CONFIG
}
"""The run-config key of every aggregation option, derived from the declarations."""
_FLOWER = {
    "fraction-train": "fraction_train",
    "fraction-evaluate": "fraction_evaluate",
    "min-train-nodes": "min_train_nodes",
    "min-evaluate-nodes": "min_evaluate_nodes",
    "min-available-nodes": "min_available_nodes",
}
DEFAULT_GAMMA_MIN = 0.1
"""mu^2-SGD's AnyTime floor when the run config does not set ``mu2.gamma-min``."""
UNSET = ("auto", "")
"""Run-config values that leave an option at its default (TOML has no ``None``);
``"none"`` sets it to ``None``."""


def pre_steps(config: Mapping[str, Any], key: str, spec: Any) -> list[tuple[str, dict]]:
    """A comma-separated list of pre-aggregators, each with its own section's params."""
    steps = []
    for name in filter(None, (s.strip() for s in str(spec or "").split(","))):
        if name not in PREAGGREGATORS:
            raise InvalidParameterError(f"{key}: {name!r} is not one of {sorted(PREAGGREGATORS)}")
        steps.append((name, section(config, name)))
    return steps


def nested(config: Mapping[str, Any], name: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` of rule ``name`` with its nested declarations filled from the config:
    a ``PreSteps`` value is parsed as a comma-separated list (each step's params from
    its own section), and a ``RuleParams`` not given is the section of the rule its
    sibling names (CTMA's base, DETOX's second stage), so one config holds the settings
    of every rule and a rule's own keys serve wherever it is nested."""
    entry = get_rule(name)
    for key, kind in entry.params.items():
        if isinstance(kind, PreSteps) and key in params:
            params[key] = pre_steps(config, f"{name}.{key.replace('_', '-')}", params[key])
        elif isinstance(kind, RuleParams) and key not in params:
            target = params.get(kind.rule_key, entry.defaults[kind.rule_key])
            if isinstance(target, str) and target in RULES:
                params[key] = section(config, target)
    return params


class RuleConfig(NamedTuple):
    """The aggregation a run config describes: the rule, its hyperparameters, the
    pre-aggregators and ``num-byzantine`` (a count or a fraction)."""

    rule: str
    params: dict[str, Any]
    pre: list[PreStep]
    num_byzantine: int | float


def rule_from_config(config: Mapping[str, Any], rule: str | None = None) -> RuleConfig:
    """The aggregation of ``config`` (``rule`` overrides its ``rule`` key), checked."""
    rule = RuleName().check("config", "rule", rule or config.get("rule", "flag"))
    pre = config.get("pre", "auto")
    if pre == "auto":  # the rule's own default, each step's params from its section
        pre = ",".join(split_step(step)[0] for step in get_rule(rule).default_pre)
    return RuleConfig(
        rule,
        nested(config, rule, section(config, rule)),
        pre_steps(config, "pre", pre),
        ByzantineCount().check("config", "num-byzantine", config.get("num-byzantine", 0)),
    )


def strategy_from_config(
    config: Mapping[str, Any], anchor: Callable[..., Any] | None = None
) -> RobustStrategy:
    """The Message-API strategy that ``config`` describes (see the module docstring),
    with the server's trust ``anchor`` when given (a function, so not a config value:
    this project's ServerApp builds one from ``anchor-per-class``)."""
    from .strategy.named import strategy_for

    rule, params, pre, f = rule_from_config(config)
    options: dict[str, Any] = {}
    for key, option in {**_CORE, **_FLOWER}.items():
        if key in config and not (isinstance(config[key], str) and config[key] in UNSET):
            options[option] = None if config[key] == "none" else config[key]
    if config.get("optimizer") == "mu2-sgd" and "anytime_gamma_min" not in options:
        # The clients run mu^2-SGD: the model to evaluate and return is its AnyTime average.
        options["anytime_gamma_min"] = config.get("mu2.gamma-min", DEFAULT_GAMMA_MIN)
    if anchor is not None:
        options["anchor"] = anchor
        if all(name != "anchor" for name, _ in pre):  # first, as the strategy would put it
            pre = [("anchor", section(config, "anchor")), *pre]
    history = section(config, "history")
    if history.get("max_age", 0) != 0:
        options["history"] = {k: None if v == "none" else v for k, v in history.items()}
    return strategy_for(rule)(f, pre=pre, **params, **options)
