"""Keyword options of a robust strategy, split between its three owners.

A strategy is written ``FlagAggregator(num_byzantine=3, subspace_dim=8, device="cuda",
fraction_train=0.5)``: each keyword belongs to exactly one of the aggregation core
(:class:`~.core.RobustCore`), the rule (its hyperparameters) or Flower's base strategy.
"""

from __future__ import annotations

import inspect
import textwrap
import time
from collections.abc import Callable, Mapping
from logging import INFO, WARNING
from typing import Any, ClassVar

from flwr.common.logger import log

from ..rules import RULES, get_rule
from ..rules.registry import nodes_needed
from ..validation import Boolean, Function, Integer, InvalidParameterError, Real, Text, describe
from .core import OPTIONS, RobustCore

NODE_WAIT = 300.0
"""Seconds a run waits before round 1 for the nodes its rule needs (``node_wait``)."""
NODE_MINIMA = ("min_train_nodes", "min_available_nodes", "min_fit_clients", "min_available_clients")
"""Flower's minimum node counts (both APIs) that the rule's need raises."""

CORE_OPTIONS = frozenset(list(inspect.signature(RobustCore.__init__).parameters)[1:]) - {
    "rule",
    "num_byzantine",
    "rule_params",
}


FLOWER_PARAMS = {
    "arrayrecord_key": Text(),
    "configrecord_key": Text(),
    "weighted_by_key": Text(),
    "train_metrics_aggr_fn": Function(optional=True),
    "evaluate_metrics_aggr_fn": Function(optional=True),
    "fit_metrics_aggregation_fn": Function(optional=True),
    "evaluate_metrics_aggregation_fn": Function(optional=True),
    "on_fit_config_fn": Function(optional=True),
    "on_evaluate_config_fn": Function(optional=True),
    "evaluate_fn": Function(optional=True),
    "accept_failures": Boolean(),
    "inplace": Boolean(),
    "fraction_train": Real(0.0, 1.0, low_open=True),
    "fraction_fit": Real(0.0, 1.0, low_open=True),
    "fraction_evaluate": Real(0.0, 1.0),
    **{
        k: Integer(0)
        for k in (
            "min_train_nodes",
            "min_evaluate_nodes",
            "min_available_nodes",
            "min_fit_clients",
            "min_evaluate_clients",
            "min_available_clients",
        )
    },
}
"""Flower's options (both APIs), checked here because Flower checks none of them: its
sampler waits forever for a fraction above 1 of the nodes, a key that is not a string
rejects every reply of every round, a callable that is not one fails after round 1."""


def build_core(
    rule: str, num_byzantine: int, options: Mapping[str, Any], base_init: Callable
) -> tuple[RobustCore, dict[str, Any]]:
    """The core for ``rule`` and the options left for Flower's ``base_init``."""
    base = frozenset(inspect.signature(base_init).parameters) - {"self"}
    hyper = get_rule(rule).hyperparameters
    unknown = set(options) - CORE_OPTIONS - base - hyper
    if unknown:
        raise InvalidParameterError(
            f"unknown option(s) {sorted(unknown)}; {rule} accepts its hyperparameters "
            f"{sorted(hyper)}, the aggregation options {sorted(CORE_OPTIONS)} and Flower's "
            f"strategy options {sorted(base)}"
        )
    for key, kind in FLOWER_PARAMS.items():
        if key in options:
            kind.check("strategy", key, options[key])
    core = RobustCore(
        rule,
        num_byzantine,
        rule_params={k: v for k, v in options.items() if k in hyper},
        **{k: v for k, v in options.items() if k in CORE_OPTIONS},
    )
    return core, {k: v for k, v in options.items() if k in base}


HEADING = "Hyperparameters of rule"
OPTIONS_HEADING = "Aggregation options (keyword options):"


def describe_rule(rule: str) -> str:
    """``HEADING`` and one line per declared hyperparameter: kind and default."""
    entry = get_rule(rule)
    return describe(f"{HEADING} {rule!r} (keyword options):", entry.params, entry.defaults)


def describe_options() -> str:
    """The aggregation options every robust strategy takes, from their declarations."""
    defaults = {k: p.default for k, p in inspect.signature(RobustCore.__init__).parameters.items()}
    return describe(OPTIONS_HEADING, OPTIONS, defaults)


def describe_others(cls: type) -> str:
    """The options a named strategy takes besides its rule's, by name: the aggregation
    options (their kinds in ``help(RobustStrategy)``) and Flower's ``FedAvg``'s."""
    flower = next((c for c in cls.__mro__ if c.__module__.startswith("flwr.")), None)
    base = [] if flower is None else list(inspect.signature(flower.__init__).parameters)[1:]
    return textwrap.fill(
        f"Also the aggregation options {', '.join([*OPTIONS, 'node_wait'])} (kinds and "
        f"defaults in help(RobustStrategy)), and Flower's FedAvg options "
        f"{', '.join(base)}.",
        width=88,
    )


def signature_of(cls: type) -> inspect.Signature:
    """What ``inspect.signature`` and IDEs show for a strategy class: ``num_byzantine``,
    then as keywords the rule's hyperparameters with their declared defaults (``rule``
    and ``**options`` for :class:`RobustStrategy`, which runs any rule), the aggregation
    options of :class:`~.core.RobustCore` with the class's defaults, ``resume``,
    ``node_wait`` and the options of Flower's ``FedAvg`` of the class's API."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    own = inspect.signature(RobustOptions.__init__).parameters
    params = [own["num_byzantine"].replace(annotation="int | float")]
    if cls.rule is None:
        params.append(own["rule"])
    else:
        params += [
            inspect.Parameter(k, keyword, default=v) for k, v in get_rule(cls.rule).defaults.items()
        ]
    core = inspect.signature(RobustCore.__init__).parameters
    params += [
        core[k].replace(kind=keyword, default=cls.defaults.get(k, core[k].default))
        for k in core
        if k in CORE_OPTIONS and k != "resume"
    ]
    params += [own["resume"], own["node_wait"]]
    flower = next((c for c in cls.__mro__ if c.__module__.startswith("flwr.")), None)
    if flower is not None:
        taken = {p.name for p in params}
        params += [
            p.replace(kind=keyword)
            for name, p in inspect.signature(flower.__init__).parameters.items()
            if name != "self" and name not in taken and p.kind is not p.VAR_KEYWORD
        ]
    if cls.rule is None:
        params.append(own["options"])
    return inspect.Signature(params)


class RobustOptions:
    """The constructor both Flower APIs' robust strategies share: it splits the options
    (:func:`build_core`) and passes Flower's to the Flower base class after it in the
    MRO (``FedAvg`` of either API)."""

    rule: ClassVar[str | None] = None
    defaults: ClassVar[Mapping[str, Any]] = {}
    """Options a named strategy sets differently from the core's defaults."""
    requires: ClassVar[tuple[str, ...]] = ()
    """Options a named strategy cannot run without (FLTrust's ``anchor``)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A named strategy's docstring lists its rule's hyperparameters: their kinds and
        defaults, from the rule's declarations (``help(FlagAggregator)`` shows them); and
        every strategy's signature lists every keyword it takes (:func:`signature_of`)."""
        super().__init_subclass__(**kwargs)
        if "rule" in cls.__dict__ and cls.__doc__:  # a legacy twin's copy is redone for its API
            own = cls.__doc__.split(HEADING)[0].rstrip()
            cls.__doc__ = "\n\n".join([own, describe_rule(cls.rule), describe_others(cls)])
        elif "rule" not in cls.__dict__ and cls.__doc__ and OPTIONS_HEADING not in cls.__doc__:
            cls.__doc__ = cls.__doc__.rstrip() + "\n\n" + describe_options()
        cls.__signature__ = signature_of(cls)

    def __init__(
        self,
        num_byzantine: int = 0,
        *,
        rule: str | None = None,
        resume: bool = False,
        node_wait: float | None = NODE_WAIT,
        **options: Any,
    ) -> None:
        if rule is not None and "rule" in type(self).__dict__:
            raise InvalidParameterError(
                f"{type(self).__name__} always runs {type(self).rule!r}; rule={rule!r} is "
                "for RobustStrategy"
            )
        if rule is None and type(self).rule is None:
            raise InvalidParameterError(
                f"{type(self).__name__} needs rule=..., one of {sorted(RULES)} (or use a "
                "named strategy, e.g. FlagAggregator); it has no default rule"
            )
        for key in type(self).requires:
            if options.get(key) is None:
                raise InvalidParameterError(
                    f"{type(self).__name__} needs {key}=...; see help({type(self).__name__})"
                )
        self.rule = rule or type(self).rule
        flower = next(c for c in type(self).__mro__ if c.__module__.startswith("flwr."))
        self.core, flower_options = build_core(
            self.rule,
            num_byzantine,
            {**self.defaults, **options, "resume": resume},
            flower.__init__,
        )
        super().__init__(**flower_options)
        if resume and self.core.checkpoints is None:
            raise InvalidParameterError("strategy: resume=True needs checkpoint_dir")
        self.resume = resume
        if self.core.num_byzantine == 0 and self.rule != "mean":
            log(
                WARNING,
                "%s: num_byzantine=0, so the rule tolerates no Byzantine node; pass the "
                "count f or a fraction of each round's replies (num_byzantine=0.2)",
                type(self).__name__,
            )
        self.node_wait = Real(0.0, optional=True).check("strategy", "node_wait", node_wait)
        self.nodes_needed = self._nodes_needed()
        for key in NODE_MINIMA:  # Flower samples no round with fewer than the rule needs
            if hasattr(self, key):
                setattr(self, key, max(getattr(self, key), self.nodes_needed))

    def _nodes_needed(self) -> int:
        """The fewest replies with which the rule can run with ``num_byzantine``."""
        core = self.core
        try:
            return nodes_needed(self.rule, core.num_byzantine, core.pre, core.rule_params)
        except ValueError as error:
            raise InvalidParameterError(
                f"strategy: num_byzantine={core.num_byzantine}: {error}"
            ) from None

    def wait_for_nodes(self, connected: Callable[[], int]) -> None:
        """Before round 1: wait up to ``node_wait`` seconds (``None``: for ever, as
        Flower does) until ``connected()`` reaches :attr:`nodes_needed`; then stop the
        run with an error naming ``num_byzantine``, the rule's need and the nodes
        there are, instead of waiting for nodes that may never come."""
        deadline = None if self.node_wait is None else time.monotonic() + self.node_wait
        logged = False
        while (count := connected()) < self.nodes_needed:
            if deadline is not None and time.monotonic() >= deadline:
                f = self.core.num_byzantine
                per_round = "" if isinstance(f, int) else f" (f = ceil({f} n) of n replies)"
                raise RuntimeError(
                    f"strategy: num_byzantine={f}: {self.rule} needs "
                    f"{get_rule(self.rule).requirement}{per_round}, so at least "
                    f"{self.nodes_needed} nodes, but {count} are connected after "
                    f"{self.node_wait:g} s (node_wait); lower num_byzantine or connect "
                    "more nodes"
                )
            if not logged:
                log(
                    INFO,
                    "Waiting for the %d nodes %s needs: %d connected",
                    self.nodes_needed,
                    self.rule,
                    count,
                )
                logged = True
            time.sleep(0.2)
