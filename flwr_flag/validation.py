"""Declared kinds of options, and the checks behind them: one style for every option.

Rules' and pre-aggregators' hyperparameters, the strategies' own options, Flower's
options, run-config keys, client settings and attack parameters are declared as kinds
(:class:`Integer`, :class:`Real`, :class:`Choice`, :class:`Device`, :class:`Function`,
:func:`Boolean`, :func:`Text`) and checked when a strategy, a client or an attack is
built, before any round. Errors name the owner, the option, the value and the allowed
range, in the manner of scikit-learn's parameter validation.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np


class InvalidParameterError(ValueError, TypeError):
    """An option, hyperparameter, run-config key or attack parameter with a value that
    is not allowed (the wrong type, or out of range). One type for every such error,
    as scikit-learn's; it is a ``ValueError`` and a ``TypeError``, so code that caught
    either still does. The message names the owner, the option, the value given and
    what is allowed."""


SEED_MAX = 2**32 - 1
"""The largest seed an option takes: seeds derived from it (per round, per node) must
stay 64-bit ints in Flower's config records and torch's generators."""


@dataclass(frozen=True)
class Param:
    """A declared hyperparameter kind; ``optional`` admits ``None`` (a computed default,
    ``"auto"`` in run configs)."""

    optional: bool = field(default=False, kw_only=True)

    def check(self, rule: str, name: str, value: object) -> object:
        """The value, checked; an :class:`InvalidParameterError` naming rule and name."""
        if value is None and self.optional:
            return None
        return self._check(rule, name, value)

    def _check(self, rule: str, name: str, value: object) -> object:
        raise NotImplementedError

    def describe(self) -> str:
        return self._describe() + (" or None (automatic)" if self.optional else "")

    def _describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Integer(Param):
    """An int in ``[low, high]``."""

    low: int = 0
    high: float = math.inf

    def _check(self, rule: str, name: str, value: object) -> int:
        return check_int(rule, name, value, self.low, self.high)

    def _describe(self) -> str:
        return f"int >= {self.low}" + ("" if self.high == math.inf else f", <= {self.high}")


@dataclass(frozen=True)
class Real(Param):
    """A finite real in ``[low, high]``, ends excluded when ``*_open``."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def _check(self, rule: str, name: str, value: object) -> float:
        value = check_float(
            rule, name, value, self.low, self.high, low_open=self.low_open, high_open=self.high_open
        )
        if math.isinf(value):
            raise InvalidParameterError(
                f"{rule}: {name}={value} is out of range; allowed finite values"
            )
        return value

    def _describe(self) -> str:
        left = "" if self.low == -math.inf else f"{self.low} {'<' if self.low_open else '<='} "
        right = "" if self.high == math.inf else f" {'<' if self.high_open else '<='} {self.high}"
        return f"{left}real{right}"


@dataclass(frozen=True)
class Choice(Param):
    """One of ``choices``."""

    choices: tuple[str, ...] = ()

    def _check(self, rule: str, name: str, value: object) -> str:
        return check_choice(rule, name, value, self.choices)

    def _describe(self) -> str:
        return " | ".join(repr(c) for c in self.choices)


@dataclass(frozen=True)
class Typed(Param):
    """A value of the Python type ``kind``, taken as it is (no coercion: ``"8"`` is not
    an int, ``"false"`` not a bool)."""

    kind: type | tuple[type, ...] = object

    def _check(self, rule: str, name: str, value: object) -> object:
        if not isinstance(value, self.kind):
            raise InvalidParameterError(f"{rule}: {name}={value!r} must be a {self._describe()}")
        return value

    def _describe(self) -> str:
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        return " or ".join(k.__name__ for k in kinds)


@dataclass(frozen=True)
class ByzantineCount(Param):
    """How many Byzantine replies to tolerate: an int ``f >= 0``, or a float in
    ``(0, 0.5)``, the fraction of each round's replies (``f = ceil(fraction * n)``)."""

    def _check(self, rule: str, name: str, value: object) -> int | float:
        if isinstance(value, (float, np.floating)):
            if math.isfinite(value) and float(value).is_integer():
                raise InvalidParameterError(
                    f"{rule}: {name}={value} is a float, so a fraction of each round's "
                    f"replies (allowed 0 < {name} < 0.5); for a count of {int(value)} "
                    f"nodes write the int {int(value)}"
                )
            return check_float(rule, name, value, 0.0, 0.5, low_open=True, high_open=True)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise InvalidParameterError(
                f"{rule}: {name}={value!r} is a {type(value).__name__}; allowed {self._describe()}"
            )
        return check_int(rule, name, value, 0)

    def _describe(self) -> str:
        return "int >= 0, or a fraction 0 < f < 0.5 of each round's replies"


def state_tensor(state: Mapping[str, object], key: str, shape: tuple[int, ...]):
    """``state[key]`` checked for a resume (``None`` when absent): a finite tensor of
    ``shape``; a ``ValueError`` naming the key otherwise. Each stateful component
    checks its own keys with it, as ``torch.optim``'s ``load_state_dict`` does."""
    import torch

    value = state.get(key)
    if value is None:
        return None
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        size = f"the model has {shape[0]} parameters" if len(shape) == 1 else f"expected {shape}"
        raise ValueError(f"resume: state {key!r} has shape {got}, but {size}")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"resume: state {key!r} is not finite")
    return value


def byzantine_count(num_byzantine: int | float, replies: int) -> int:
    """``f`` for a round with ``replies`` replies: the count itself, or the fraction of
    the replies rounded up (with 20 % of 13 replies, 3 are tolerated)."""
    if isinstance(num_byzantine, int):
        return num_byzantine
    return math.ceil(num_byzantine * replies - 1e-9)


@dataclass(frozen=True)
class Device(Param):
    """A torch device name: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or
    ``"cuda:<index>"``. The name is checked here; whether the machine has that device
    is checked where the device is used (a server and its clients differ)."""

    _PATTERN: ClassVar[re.Pattern] = re.compile(r"auto|cpu|cuda(:\d+)?")

    def _check(self, rule: str, name: str, value: object) -> str:
        text = str(value) if type(value).__name__ == "device" else value
        if not isinstance(text, str) or not self._PATTERN.fullmatch(text):
            raise InvalidParameterError(
                f"{rule}: {name}={value!r} is not one of {self._describe()}"
            )
        return text

    def _describe(self) -> str:
        return "'auto' | 'cpu' | 'cuda' | 'cuda:<index>'"


@dataclass(frozen=True)
class Function(Param):
    """A callable."""

    def _check(self, rule: str, name: str, value: object) -> Callable:
        if not callable(value):
            raise InvalidParameterError(f"{rule}: {name}={value!r} must be a callable")
        return value

    def _describe(self) -> str:
        return "a callable"


def Boolean(**options: bool) -> Typed:  # noqa: N802  (reads as the kind it makes)
    """``True`` or ``False``."""
    return Typed(kind=bool, **options)


def Text(**options: bool) -> Typed:  # noqa: N802
    """A string."""
    return Typed(kind=str, **options)


def validate(owner: str, kinds: Mapping[str, Param], given: Mapping[str, object]) -> None:
    """Check the value of every option that ``kinds`` declares (``given`` may hold more:
    a constructor passes its ``locals()``); :class:`InvalidParameterError` otherwise."""
    for key, kind in kinds.items():
        kind.check(owner, key, given[key])


def describe(heading: str, kinds: Mapping[str, Param], defaults: Mapping[str, object]) -> str:
    """A docstring section: ``heading``, then one line per option with its kind and
    default, from the same declarations that check it."""
    lines = [heading]
    lines += [f"    {k}: {kind.describe()}; default {defaults[k]!r}" for k, kind in kinds.items()]
    return "\n".join(lines if kinds else [heading, "    none"])


def check_int(rule: str, name: str, value: object, low: int, high: float = math.inf) -> int:
    """Check that ``value`` is an int with ``low <= value <= high``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidParameterError(f"{rule}: {name}={value!r} must be an int")
    if not low <= value <= high:
        bound = "" if high == math.inf else f" <= {int(high)}"
        raise InvalidParameterError(
            f"{rule}: {name}={value} is out of range; allowed {low} <= {name}{bound}"
        )
    return int(value)


def check_float(
    rule: str,
    name: str,
    value: object,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Check that ``value`` is a real in ``[low, high]``, ends excluded when ``*_open``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise InvalidParameterError(f"{rule}: {name}={value!r} must be a number")
    value = float(value)
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if math.isnan(value) or below or above:
        left = f"{low} < " if low_open else f"{low} <= "
        right = "" if high == math.inf else (f" < {high}" if high_open else f" <= {high}")
        raise InvalidParameterError(
            f"{rule}: {name}={value} is out of range; allowed {left}{name}{right}"
        )
    return value


def check_choice(rule: str, name: str, value: object, choices: Sequence[str]) -> str:
    """Check that ``value`` is one of ``choices``."""
    if value not in choices:
        raise InvalidParameterError(f"{rule}: {name}={value!r} is not one of {list(choices)}")
    return str(value)
