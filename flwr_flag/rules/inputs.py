"""Checks of a round's inputs against a rule: what depends on the updates themselves.

``n`` too small for ``f``, a hyperparameter bounded by ``n`` (``subspace_dim > n``),
weights of the wrong length: these raise :class:`InputRangeError`, and a strategy keeps
the model for that round and logs the reason. Any other exception in a round is a bug
and propagates. (A hyperparameter's type and range, which do not depend on the updates,
are declared with the rule in :mod:`flwr_flag.validation` kinds and checked when a
strategy is built.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..engine import UpdateSource


class InputRangeError(ValueError):
    """This round's updates do not fit the rule (too few for ``f``, a hyperparameter
    bounded by ``n``): the strategy keeps the model for the round and logs the reason."""


def within_n(rule: str, name: str, value: int, high: int, n: int) -> int:
    """``value <= high`` for this round's ``n``, else :class:`InputRangeError`."""
    if value > high:
        raise InputRangeError(
            f"{rule}: {name}={value} is out of range for n={n} updates; allowed <= {high}"
        )
    return value


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
        raise InputRangeError(f"{rule}: got n=0 updates; at least one update is required")
    if isinstance(f, bool) or not isinstance(f, (int, np.integer)):
        raise TypeError(f"{rule}: f={f!r} must be an int")
    if f < 0 or n < requirement.minimum(f):
        if requirement.factor == 0:
            allowed = "f >= 0"
        else:
            top = (n - requirement.offset) // requirement.factor
            allowed = f"0 <= f <= {top}" if top >= 0 else "none (too few updates)"
        raise InputRangeError(
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
