"""Keyword options of a robust strategy, split between its three owners.

A strategy is written ``FlagAggregator(num_byzantine=3, subspace_dim=8, device="cuda",
fraction_train=0.5)``: each keyword belongs to exactly one of the aggregation core
(:class:`~.core.RobustCore`), the rule (its hyperparameters) or Flower's base strategy.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from ..rules import get_rule
from .core import RobustCore

CORE_OPTIONS = frozenset(list(inspect.signature(RobustCore.__init__).parameters)[1:]) - {
    "rule",
    "num_byzantine",
    "rule_params",
}


def build_core(
    rule: str, num_byzantine: int, options: Mapping[str, Any], base_init: Callable
) -> tuple[RobustCore, dict[str, Any]]:
    """The core for ``rule`` and the options left for Flower's ``base_init``."""
    base = frozenset(inspect.signature(base_init).parameters) - {"self"}
    hyper = get_rule(rule).hyperparameters
    unknown = set(options) - CORE_OPTIONS - base - hyper
    if unknown:
        raise TypeError(
            f"unknown option(s) {sorted(unknown)}; {rule} accepts its hyperparameters "
            f"{sorted(hyper)}, the aggregation options {sorted(CORE_OPTIONS)} and Flower's "
            f"strategy options {sorted(base)}"
        )
    core = RobustCore(
        rule,
        num_byzantine,
        rule_params={k: v for k, v in options.items() if k in hyper},
        **{k: v for k, v in options.items() if k in CORE_OPTIONS},
    )
    return core, {k: v for k, v in options.items() if k in base}


class RobustOptions:
    """The constructor both Flower APIs' robust strategies share: it splits the options
    (:func:`build_core`) and passes Flower's to the Flower base class after it in the
    MRO (``FedAvg`` of either API)."""

    rule: ClassVar[str] = "mean"
    defaults: ClassVar[Mapping[str, Any]] = {}
    """Options a named strategy sets differently from the core's defaults."""

    def __init__(
        self,
        num_byzantine: int = 0,
        *,
        rule: str | None = None,
        resume: bool = False,
        **options: Any,
    ) -> None:
        self.rule = rule or type(self).rule
        flower = next(c for c in type(self).__mro__ if c.__module__.startswith("flwr."))
        self.core, flower_options = build_core(
            self.rule, num_byzantine, {**self.defaults, **options}, flower.__init__
        )
        super().__init__(**flower_options)
        self.resume = resume
