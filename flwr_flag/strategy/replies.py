"""Structural checks of one client reply against the arrays the server sent.

These need no pass over the values: names, shapes, dtypes and the example count. The
value checks (NaN/Inf, norm bound) happen in the engine's first pass over the updates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Reply:
    """One client's answer, as both Flower APIs can express it."""

    node_id: int
    arrays: Mapping[str, np.ndarray]
    num_examples: object


def structural_problem(
    reply: Reply, names: Sequence[str], reference: Mapping[str, np.ndarray]
) -> str | None:
    """Why ``reply`` cannot be aggregated against ``reference``, or ``None`` if it can."""
    missing = [k for k in names if k not in reply.arrays]
    extra = [k for k in reply.arrays if k not in reference]
    if missing or extra:
        return f"array keys differ: missing {missing}, unexpected {extra}"
    for name in names:
        got, want = reply.arrays[name], reference[name]
        if got.shape != want.shape or got.dtype != want.dtype:
            return (
                f"array '{name}' is {got.dtype}{list(got.shape)}, "
                f"expected {want.dtype}{list(want.shape)}"
            )
    count = reply.num_examples
    if count is None:
        return "num-examples is missing"
    if isinstance(count, bool) or not isinstance(count, (int, float, np.number)):
        return f"num-examples={count!r} is not a number"
    if not math.isfinite(count) or count <= 0:
        return f"num-examples={count} must be finite and > 0"
    return None
