"""The one place where aggregation inputs and hyperparameters are checked.

Errors name the rule, the parameter, the value and the allowed range, in the manner of
scikit-learn's parameter validation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..engine import UpdateSource


@dataclass(frozen=True)
class Requirement:
    """How many updates a rule needs for a given ``f``: ``n >= factor * f + offset``."""

    factor: int
    offset: int

    def minimum(self, f: int) -> int:
        return self.factor * f + self.offset

    def __str__(self) -> str:
        if self.factor == 0:
            return f"n >= {self.offset}"
        lead = "f" if self.factor == 1 else f"{self.factor}f"
        return f"n >= {lead} + {self.offset}"


def check_updates(rule: str, source: UpdateSource, f: int, requirement: Requirement) -> None:
    """Check ``n >= 1`` and that ``f`` is within the rule's range for this ``n``."""
    n = source.n
    if n < 1:
        raise ValueError(f"{rule}: got n=0 updates; at least one update is required")
    if isinstance(f, bool) or not isinstance(f, (int, np.integer)):
        raise TypeError(f"{rule}: f={f!r} must be an int")
    if f < 0 or n < requirement.minimum(f):
        if requirement.factor == 0:
            allowed = "f >= 0"
        else:
            top = (n - requirement.offset) // requirement.factor
            allowed = f"0 <= f <= {top}" if top >= 0 else "none (too few updates)"
        raise ValueError(
            f"{rule}: f={f} is out of range for n={n} updates; {rule} needs "
            f"{requirement}, so allowed: {allowed}"
        )


def normalized_weights(rule: str, weights: Sequence[float] | Tensor | None, n: int) -> Tensor:
    """Client weights as a float64 host tensor summing to one (uniform when ``None``)."""
    if weights is None:
        return torch.full((n,), 1.0 / n, dtype=torch.float64)
    w = torch.as_tensor(weights, dtype=torch.float64).detach().cpu().flatten()
    if w.numel() != n:
        raise ValueError(f"{rule}: weights has {w.numel()} entries, expected n={n}")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.max()) <= 0:
        raise ValueError(
            f"{rule}: weights must be finite and >= 0 with a positive sum, got {w.tolist()}"
        )
    w = w / w.max()  # the sum of weights near float64's maximum would overflow
    return w / w.sum()


def check_int(rule: str, name: str, value: object, low: int, high: float = math.inf) -> int:
    """Check that ``value`` is an int with ``low <= value <= high``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{rule}: {name}={value!r} must be an int")
    if not low <= value <= high:
        bound = "" if high == math.inf else f" <= {int(high)}"
        raise ValueError(f"{rule}: {name}={value} is out of range; allowed {low} <= {name}{bound}")
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
        raise TypeError(f"{rule}: {name}={value!r} must be a number")
    value = float(value)
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if math.isnan(value) or below or above:
        left = f"{low} < " if low_open else f"{low} <= "
        right = "" if high == math.inf else (f" < {high}" if high_open else f" <= {high}")
        raise ValueError(f"{rule}: {name}={value} is out of range; allowed {left}{name}{right}")
    return value


def check_choice(rule: str, name: str, value: object, choices: Sequence[str]) -> str:
    """Check that ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{rule}: {name}={value!r} is not one of {list(choices)}")
    return str(value)
