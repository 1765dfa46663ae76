"""Weighted mean, the non-robust baseline (FedAvg's rule on updates)."""

from __future__ import annotations

from torch import Tensor

from ..engine import UpdateSource
from .diagnostics import Diagnostics
from .registry import span_rule


@span_rule("mean", needs=(0, 1))
def mean(source: UpdateSource, f: int, weights: Tensor) -> tuple[Tensor, Diagnostics]:
    r"""Weighted mean :math:`\sum_i \alpha_i g_i` with :math:`\alpha` the normalised weights.

    Tolerates no Byzantine update; ``f`` is accepted and ignored. Cost: one pass,
    ``O(n p)``.
    """
    return weights, {}
