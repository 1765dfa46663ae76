"""Rule and pre-aggregator registries, and the validated entry points built from them.

A rule is written as ``impl(source, f, weights, **hyper)`` where ``source`` is an
:class:`~flwr_flag.engine.UpdateSource` and ``weights`` are already normalised. The
decorators below register it under a name and wrap it so that every call goes through
the same checks (:mod:`.validation`) before the rule sees its inputs:

* :func:`rule` -- the implementation returns an :class:`AggregationResult`;
* :func:`span_rule` -- the implementation returns coefficients ``c`` such that the
  aggregate is ``X^T c``; the engine does the output pass. Meta-rules (CTMA) use the
  coefficients directly, so a Gram-space base costs no extra pass over the data;
* :func:`preaggregator` -- the implementation returns a :class:`Preaggregated`
  (new source, ``f`` and weights) that any rule can consume.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import wraps
from typing import Any, NamedTuple

from torch import Tensor

from ..engine import UpdateSource, as_source
from .validation import Requirement, check_updates, normalized_weights

Diagnostics = dict[str, Any]


class AggregationResult(NamedTuple):
    """The aggregate ``(p,)`` and the rule's diagnostics (selected/trimmed rows, ...)."""

    vector: Tensor
    diagnostics: Diagnostics


class Preaggregated(NamedTuple):
    """A pre-aggregator's output: the rows, ``f`` and weights the next rule sees."""

    source: UpdateSource
    f: int
    weights: Tensor
    diagnostics: Diagnostics


@dataclass(frozen=True)
class Rule:
    """A registered aggregation rule.

    ``function(updates, f=0, weights=None, **hyper)`` is the validated entry point;
    ``coefficients`` (same call, returns ``(c, diagnostics)``) exists for rules whose
    output lies in the span of the updates.
    """

    name: str
    function: Callable[..., AggregationResult]
    requirement: Requirement
    hyperparameters: frozenset[str]
    coefficients: Callable[..., tuple[Tensor, Diagnostics]] | None = None


@dataclass(frozen=True)
class Preaggregator:
    """A registered pre-aggregator: ``function(updates, f=0, weights=None, **hyper)``."""

    name: str
    function: Callable[..., Preaggregated]
    requirement: Requirement


RULES: dict[str, Rule] = {}
PREAGGREGATORS: dict[str, Preaggregator] = {}


def hyperparameters(impl: Callable) -> frozenset[str]:
    """The names an implementation ``impl(source, f, weights, **hyper)`` accepts."""
    return frozenset(list(inspect.signature(impl).parameters)[3:])


def check_hyperparameters(name: str, given: Iterable[str], accepted: frozenset[str]) -> None:
    """Reject names that ``name`` does not accept, listing the accepted ones."""
    unknown = set(given) - accepted
    if unknown:
        raise TypeError(
            f"{name}: unknown hyperparameter(s) {sorted(unknown)}; accepted: {sorted(accepted)}"
        )


def _validated(name: str, impl: Callable, requirement: Requirement) -> Callable:
    accepted = hyperparameters(impl)

    @wraps(impl)
    def call(updates, f: int = 0, weights=None, **hyper):
        check_hyperparameters(name, hyper, accepted)
        source = as_source(updates)
        check_updates(name, source, f, requirement)
        return impl(source, int(f), normalized_weights(name, weights, source.n), **hyper)

    return call


def rule(name: str, *, needs: tuple[int, int] = (2, 1)) -> Callable:
    """Register ``impl`` returning an :class:`AggregationResult`; needs ``n >= a f + b``."""

    def register(impl: Callable[..., AggregationResult]) -> Callable[..., AggregationResult]:
        requirement = Requirement(*needs)
        function = _validated(name, impl, requirement)
        RULES[name] = Rule(name, function, requirement, hyperparameters(impl))
        return function

    return register


def span_rule(name: str, *, needs: tuple[int, int] = (2, 1)) -> Callable:
    """Register ``impl`` returning ``(c, diagnostics)``; the aggregate is ``X^T c``."""

    def register(impl: Callable[..., tuple[Tensor, Diagnostics]]) -> Callable:
        requirement = Requirement(*needs)
        coefficients = _validated(name, impl, requirement)

        @wraps(impl)
        def function(updates, f: int = 0, weights=None, **hyper) -> AggregationResult:
            source = as_source(updates)
            coef, diagnostics = coefficients(source, f, weights, **hyper)
            return AggregationResult(source.combine(coef), diagnostics)

        RULES[name] = Rule(name, function, requirement, hyperparameters(impl), coefficients)
        return function

    return register


def preaggregator(name: str, *, needs: tuple[int, int] = (2, 1)) -> Callable:
    """Register a pre-aggregator ``impl`` returning a :class:`Preaggregated`."""

    def register(impl: Callable[..., Preaggregated]) -> Callable[..., Preaggregated]:
        requirement = Requirement(*needs)
        function = _validated(name, impl, requirement)
        PREAGGREGATORS[name] = Preaggregator(name, function, requirement)
        return function

    return register


def get_rule(name: str) -> Rule:
    """The registered rule ``name``; the error lists the valid names."""
    try:
        return RULES[name]
    except KeyError:
        raise ValueError(f"rule={name!r} is not one of {sorted(RULES)}") from None


def get_preaggregator(name: str) -> Preaggregator:
    """The registered pre-aggregator ``name``; the error lists the valid names."""
    try:
        return PREAGGREGATORS[name]
    except KeyError:
        raise ValueError(
            f"pre-aggregator {name!r} is not one of {sorted(PREAGGREGATORS)}"
        ) from None


PreStep = str | tuple[str, Mapping[str, Any]]


def aggregate(
    updates,
    rule: str,
    f: int = 0,
    weights=None,
    *,
    pre: Iterable[PreStep] = (),
    **hyper: Any,
) -> AggregationResult:
    """Run pre-aggregators (in order) and then ``rule`` on the updates.

    ``pre`` items are names (``"nnm"``) or ``(name, params)`` pairs
    (``("bucketing", {"s": 2})``). Pre-aggregator diagnostics are returned under
    ``diagnostics["pre"][name]``.
    """
    chosen = get_rule(rule)
    source = as_source(updates)
    pre_diagnostics: Diagnostics = {}
    for step in pre:
        step_name, params = (step, {}) if isinstance(step, str) else step
        out = get_preaggregator(step_name).function(source, f, weights, **dict(params))
        source, f, weights = out.source, out.f, out.weights
        pre_diagnostics[step_name] = out.diagnostics
    result = chosen.function(source, f, weights, **hyper)
    if pre_diagnostics:
        result.diagnostics["pre"] = pre_diagnostics
    return result
