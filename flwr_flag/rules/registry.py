"""Rule and pre-aggregator registries, and the validated entry points built from them.

A rule is written as ``impl(source, f, weights, **hyper)`` where ``source`` is an
:class:`~flwr_flag.engine.UpdateSource` and ``weights`` are already normalised. The
decorators below register it under a name with its declared hyperparameters
(``params``: name -> kind, the one place their types and ranges live; the defaults are
the signature's) and its round ``state`` (inputs the strategy supplies each round, never
configured), and wrap it so that every call goes through the same checks
(:mod:`.inputs`, :func:`check_params`) before the rule sees its inputs:

* :func:`rule` -- the implementation returns an :class:`AggregationResult`;
* :func:`span_rule` -- the implementation returns coefficients ``c`` such that the
  aggregate is ``X^T c``; the engine does the output pass. Meta-rules (CTMA) use the
  coefficients directly, so a Gram-space base costs no extra pass over the data;
* :func:`preaggregator` -- the implementation returns a :class:`Preaggregated`
  (new source, ``f`` and weights) that any rule can consume.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, ClassVar, NamedTuple

from torch import Tensor

from ..engine import UpdateSource, as_source
from ..engine.threads import one_thread
from ..validation import InvalidParameterError, Param, byzantine_count
from .diagnostics import AggregationResult, Diagnostics, Nested
from .inputs import Requirement, check_updates, normalized_weights


class Preaggregated(NamedTuple):
    """A pre-aggregator's output: the rows, ``f`` and weights the next rule sees, and
    which input row each output row stands for (``None``: rows mixing several inputs)."""

    source: UpdateSource
    f: int
    weights: Tensor
    diagnostics: Diagnostics
    rows: list[int] | None


PreStep = str | tuple[str, Mapping[str, Any]]
Shortfall = Callable[[int, int, Mapping[str, Any]], str | None]
"""``(rows, f, params) ->`` why a rule cannot run on ``rows`` rows with ``f``, or ``None``."""


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
    params: Mapping[str, Param]
    defaults: Mapping[str, Any]
    state: frozenset[str] = frozenset()
    coefficients: Callable[..., tuple[Tensor, Diagnostics]] | None = None
    shortfall: Shortfall | None = None
    """The rule's own answer to "why can it not run with these rows" (DETOX: its groups
    and second stage), where ``n >= a f + b`` does not say it all."""
    default_pre: tuple[PreStep, ...] = ()
    """The pre-aggregators a strategy runs before the rule unless told otherwise
    (``pre=None``, ``pre = "auto"`` in a run config); :func:`aggregate` never adds them."""
    anchored: Mapping[str, Any] = field(default_factory=dict)
    """Settings a strategy gives the rule behind the trust anchor (:mod:`.anchor`)
    where the user left them unset or ``None`` (``"auto"``): the rule's hyperparameters
    by name, the anchor step's as ``"anchor.<param>"`` (the run config's keys)."""

    def behind_anchor(
        self, params: Mapping[str, Any], pre: Iterable[PreStep]
    ) -> tuple[dict[str, Any], list[PreStep]]:
        """``params`` and ``pre`` with :attr:`anchored` filled in where they leave a
        setting unset or ``None``: the rule's own, and the ``anchor`` step's."""
        prefix = "anchor."
        step = {k.removeprefix(prefix): v for k, v in self.anchored.items() if k.startswith(prefix)}
        own = {k: v for k, v in self.anchored.items() if not k.startswith(prefix)}
        params = {**params, **{k: v for k, v in own.items() if params.get(k) is None}}
        settled: list[PreStep] = []
        for name, given in map(split_step, pre):
            if name == "anchor":
                given = {**given, **{k: v for k, v in step.items() if given.get(k) is None}}
            settled.append((name, dict(given)) if given else name)
        return params, settled

    @property
    def hyperparameters(self) -> frozenset[str]:
        """Every keyword the rule takes: its hyperparameters and its round state."""
        return frozenset(self.params) | self.state

    def why_not(
        self, n: int, f: int, params: Mapping[str, Any] | None = None, pre: Iterable[PreStep] = ()
    ) -> str | None:
        """Why the rule cannot run on ``n`` replies with ``f`` after the pre-aggregators
        ``pre``, or ``None`` if it can (the check a strategy makes before a round, and
        the benchmarks before a cell)."""
        pre = list(pre)
        rows = rows_after(pre, n)
        after = f" ({rows} rows after {[split_step(s)[0] for s in pre]})" if rows != n else ""
        if self.shortfall is not None:
            why = self.shortfall(rows, f, {**self.defaults, **(params or {})})
            return None if why is None else f"{n} replies{after}: {why}"
        if rows < self.requirement.minimum(f):
            return f"{n} valid replies{after}, but {self.name} with f={f} needs {self.requirement}"
        return None


@dataclass(frozen=True)
class Preaggregator:
    """A registered pre-aggregator: ``function(updates, f=0, weights=None, **hyper)``;
    ``rows(n, params)`` is how many rows it hands on for ``n``."""

    name: str
    function: Callable[..., Preaggregated]
    requirement: Requirement
    params: Mapping[str, Param]
    defaults: Mapping[str, Any]
    rows: Callable[[int, Mapping[str, Any]], int] = lambda n, params: n
    state: frozenset[str] = frozenset()


RULES: dict[str, Rule] = {}
PREAGGREGATORS: dict[str, Preaggregator] = {}


def split_step(step: PreStep) -> tuple[str, Mapping[str, Any]]:
    """A pre-aggregator step's name and params (a bare name has none)."""
    return (step, {}) if isinstance(step, str) else (step[0], step[1])


class RoundState(ABC):
    """A rule input that the strategy supplies each round, never configured (the last
    round's aggregate, each row's group). The rule's module registers one provider class
    per state key (:func:`round_state`); a strategy makes one instance per key of its
    rule, asks it for the round's value and tells it the aggregate after each step."""

    needs_strategy: ClassVar[bool] = False
    """Only a strategy can supply it (each row's DETOX group): a benchmark on stacked
    updates cannot run such a rule alone."""
    keeps_aggregate: ClassVar[bool] = False
    """:meth:`after_step` keeps the aggregate tensor, so the step must not write into it."""

    @abstractmethod
    def value(self, node_ids: Sequence[int]) -> Any:
        """The rule's input for this round's rows (the nodes of the rows, in order)."""

    def after_step(self, aggregate: Tensor) -> None:
        """The round's aggregate, after the server step used it."""
        return None

    def state_keys(self) -> tuple[str, ...]:
        """The keys :meth:`state_dict` may hold."""
        return ()

    def state_dict(self) -> dict[str, Tensor]:
        """What a checkpoint keeps of it."""
        return {}

    def load_state_dict(self, state: Mapping[str, Tensor], size: int) -> None:
        """Restore what :meth:`state_dict` gave for a model of ``size`` parameters,
        checking its own keys (:func:`~flwr_flag.validation.state_tensor`)."""
        return None


ROUND_STATE: dict[str, type[RoundState]] = {}


def round_state(key: str) -> Callable[[type[RoundState]], type[RoundState]]:
    """Register the provider class of the state ``key`` (one provider per key)."""

    def register(cls: type[RoundState]) -> type[RoundState]:
        if key in ROUND_STATE and ROUND_STATE[key] is not cls:
            raise ValueError(f"round state {key!r} already has a provider: {ROUND_STATE[key]}")
        ROUND_STATE[key] = cls
        return cls

    return register


def _declared(
    name: str,
    impl: Callable,
    params: Mapping[str, Param] | None,
    state: Iterable[str],
    needs: tuple[int, int],
) -> tuple[dict[str, Param], dict[str, Any], Requirement, Callable]:
    """A registration's parts: the declared params, their defaults (from the signature
    of ``impl(source, f, weights, **hyper)``, where every keyword must be declared as a
    hyperparameter or as round state), the requirement and the validated entry point."""
    declared = dict(params or {})
    signature = list(inspect.signature(impl).parameters.values())[3:]
    names = {p.name for p in signature}
    if names != set(declared) | set(state):
        raise TypeError(
            f"{name}: declare every keyword as a param or state: signature {sorted(names)}, "
            f"declared {sorted(set(declared) | set(state))}"
        )
    defaults = {p.name: p.default for p in signature if p.name in declared}
    requirement = Requirement(*needs)
    return declared, defaults, requirement, _validated(name, impl, requirement)


def _validated(name: str, impl: Callable, requirement: Requirement) -> Callable:
    @wraps(impl)
    def call(updates, f: int = 0, weights=None, **hyper):
        hyper = check_params(name, hyper, allow_state=True)
        source = as_source(updates)
        check_updates(name, source, f, requirement)
        with one_thread():  # the n x n algebra; each pass sets its own (engine/threads.py)
            return impl(source, int(f), normalized_weights(name, weights, source.n), **hyper)

    return call


def rule(
    name: str,
    *,
    needs: tuple[int, int] = (2, 1),
    params: Mapping[str, Param] | None = None,
    state: Iterable[str] = (),
    shortfall: Shortfall | None = None,
) -> Callable:
    """Register ``impl`` returning an :class:`AggregationResult`; needs ``n >= a f + b``
    (or what ``shortfall`` says)."""

    def register(impl: Callable[..., AggregationResult]) -> Callable[..., AggregationResult]:
        declared, defaults, requirement, function = _declared(name, impl, params, state, needs)
        RULES[name] = Rule(
            name, function, requirement, declared, defaults, frozenset(state), shortfall=shortfall
        )
        return function

    return register


def span_rule(
    name: str,
    *,
    needs: tuple[int, int] = (2, 1),
    params: Mapping[str, Param] | None = None,
    state: Iterable[str] = (),
    default_pre: tuple[PreStep, ...] = (),
    anchored: Mapping[str, Any] | None = None,
) -> Callable:
    """Register ``impl`` returning ``(c, diagnostics)``; the aggregate is ``X^T c``.
    ``default_pre``, ``anchored``: :attr:`Rule.default_pre`, :attr:`Rule.anchored`."""

    def register(impl: Callable[..., tuple[Tensor, Diagnostics]]) -> Callable:
        declared, defaults, requirement, coefficients = _declared(name, impl, params, state, needs)

        @wraps(impl)
        def function(updates, f: int = 0, weights=None, **hyper) -> AggregationResult:
            source = as_source(updates)
            coef, diagnostics = coefficients(source, f, weights, **hyper)
            return AggregationResult(source.combine(coef), diagnostics)

        RULES[name] = Rule(
            name,
            function,
            requirement,
            declared,
            defaults,
            frozenset(state),
            coefficients,
            default_pre=default_pre,
            anchored=dict(anchored or {}),
        )
        return function

    return register


def preaggregator(
    name: str,
    *,
    needs: tuple[int, int] = (2, 1),
    params: Mapping[str, Param] | None = None,
    rows: Callable[[int, Mapping[str, Any]], int] | None = None,
) -> Callable:
    """Register a pre-aggregator ``impl`` returning a :class:`Preaggregated`; ``rows``
    gives the rows it hands on for ``n`` and its params (default: ``n``)."""

    def register(impl: Callable[..., Preaggregated]) -> Callable[..., Preaggregated]:
        declared, defaults, requirement, function = _declared(name, impl, params, (), needs)
        PREAGGREGATORS[name] = Preaggregator(
            name, function, requirement, declared, defaults, rows or (lambda n, params: n)
        )
        return function

    return register


@dataclass(frozen=True)
class RuleName(Param):
    """The name of a registered rule, other than ``exclude``."""

    exclude: frozenset[str] = frozenset()

    def _check(self, rule: str, name: str, value: object) -> str:
        choices = sorted(set(RULES) - self.exclude)
        if value not in choices:
            raise InvalidParameterError(f"{rule}: {name}={value!r} is not one of {choices}")
        return str(value)

    def _describe(self) -> str:
        return "a rule name" + (f" other than {sorted(self.exclude)}" if self.exclude else "")


@dataclass(frozen=True)
class RuleParams(Param):
    """The hyperparameters of the rule that the sibling parameter ``rule_key`` names
    (checked against that rule's declarations)."""

    rule_key: str = ""

    def _check(self, rule: str, name: str, value: object) -> dict[str, Any]:
        raise AssertionError("checked by check_params, which knows the sibling rule")

    def _describe(self) -> str:
        return f"a mapping of the hyperparameters of the rule named by {self.rule_key}"


@dataclass(frozen=True)
class PreSteps(Param):
    """Pre-aggregators: names or ``(name, params)`` pairs, each checked."""

    def _check(self, rule: str, name: str, value: object) -> list[PreStep]:
        return check_pre(f"{rule}: {name}", value)

    def _describe(self) -> str:
        return "pre-aggregators: names or (name, params) pairs"


def _registered(name: str) -> Rule | Preaggregator:
    return RULES[name] if name in RULES else PREAGGREGATORS[name]


def check_params(
    name: str, given: Mapping[str, Any], *, allow_state: bool = False, label: str = ""
) -> dict[str, Any]:
    """``given`` hyperparameters of rule or pre-aggregator ``name``, each checked against
    its declaration, nested ones (a base rule's params, pre-aggregators) recursively.

    Unknown names and round state raise ``TypeError`` (state is supplied by the strategy,
    never configured, unless ``allow_state``); bad values ``TypeError`` / ``ValueError``,
    naming the rule, the parameter and what is allowed.
    """
    entry = _registered(name)
    label = label or name
    out: dict[str, Any] = {}
    for key, value in given.items():
        if key in entry.state and allow_state:
            out[key] = value
            continue
        if key not in entry.params:
            what = "round state, supplied by the strategy" if key in entry.state else "unknown"
            raise InvalidParameterError(
                f"{label}: hyperparameter {key!r} is {what}; accepted: {sorted(entry.params)}"
            )
        kind = entry.params[key]
        if isinstance(kind, RuleParams):
            sibling = given.get(kind.rule_key, entry.defaults[kind.rule_key])
            target = entry.params[kind.rule_key].check(label, kind.rule_key, sibling)
            if value is not None and not isinstance(value, Mapping):
                raise InvalidParameterError(
                    f"{label}: {key}={value!r} must be a mapping of {target}'s params"
                )
            out[key] = check_params(target, value or {}, label=f"{label} {key} ({target})")
        else:
            out[key] = kind.check(label, key, value)
    return out


def check_pre(what: str, steps: object) -> list[PreStep]:
    """A list of pre-aggregator steps, each name registered and its params checked."""
    if isinstance(steps, (str, bytes)) or not isinstance(steps, Iterable):
        raise InvalidParameterError(
            f"{what}={steps!r} must be a list of names or (name, params) pairs"
        )
    out: list[PreStep] = []
    for step in steps:
        step_name, params = split_step(step if isinstance(step, str) else tuple(step))
        try:
            get_preaggregator(step_name)
        except ValueError as error:
            raise InvalidParameterError(f"{what}: {error}") from None
        if not isinstance(params, Mapping):
            raise InvalidParameterError(
                f"{what}: params of {step_name!r} must be a mapping, got {params!r}"
            )
        checked = check_params(step_name, params, label=f"{what} {step_name}")
        out.append((step_name, checked) if checked else step_name)
    return out


def rows_after(steps: Iterable[PreStep], n: int) -> int:
    """How many rows the rule sees after the pre-aggregators ``steps`` on ``n`` rows."""
    for step in steps:
        step_name, params = split_step(step)
        entry = PREAGGREGATORS[step_name]
        n = entry.rows(n, {**entry.defaults, **params})
    return n


NODES_SEARCHED = 100_000


def nodes_needed(
    rule: str,
    f: int | float,
    steps: Iterable[PreStep] = (),
    params: Mapping[str, Any] | None = None,
) -> int:
    """The fewest replies with which ``rule`` (its ``params``) after the pre-aggregators
    ``steps`` can run with ``f`` (a count, or a fraction of the replies:
    :func:`~flwr_flag.validation.byzantine_count`), by :meth:`Rule.why_not`."""
    entry, steps = get_rule(rule), list(steps)
    for n in range(1, NODES_SEARCHED + 1):
        if entry.why_not(n, byzantine_count(f, n), params, steps) is None:
            return n
    raise ValueError(f"{rule} with f={f} cannot run with up to {NODES_SEARCHED} replies")


def get_rule(name: str) -> Rule:
    """The registered rule ``name``; the error lists the valid names."""
    try:
        return RULES[name]
    except KeyError:
        raise InvalidParameterError(f"rule={name!r} is not one of {sorted(RULES)}") from None


def get_preaggregator(name: str) -> Preaggregator:
    """The registered pre-aggregator ``name``; the error lists the valid names."""
    try:
        return PREAGGREGATORS[name]
    except KeyError:
        raise InvalidParameterError(
            f"pre-aggregator {name!r} is not one of {sorted(PREAGGREGATORS)}"
        ) from None


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
    rows: list[int] | None = list(range(source.n))
    for step in pre:
        step_name, params = split_step(step)
        out = get_preaggregator(step_name).function(source, f, weights, **dict(params))
        source, f, weights = out.source, out.f, out.weights
        pre_diagnostics[step_name] = out.diagnostics
        rows = None if rows is None or out.rows is None else [rows[i] for i in out.rows]
    result = chosen.function(source, f, weights, **hyper)
    if not pre_diagnostics:
        return result
    diagnostics = {**result.diagnostics, "pre": pre_diagnostics}
    if rows != list(range(source.n if rows is None else len(rows))):
        diagnostics = Nested(diagnostics, rows)
    return AggregationResult(result.vector, diagnostics)
