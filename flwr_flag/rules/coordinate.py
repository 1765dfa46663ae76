"""Coordinate-wise rules: median, trimmed mean, MeaMed.

These treat every coordinate ``j`` on its own, so they cannot use the Gram matrix: they
run chunk by chunk over coordinates (``O(n p)`` selection work, memory-bound on a CPU).
The median and the trimmed mean read order statistics of each chunk's columns
(:mod:`.order_statistics` picks the kernel by ``n``), MeaMed a window of each column's
sorted values. Client weights are ignored, as in Flower's FedMedian and FedTrimmedAvg.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..engine import UpdateSource
from ..validation import Integer
from .diagnostics import AggregationResult
from .inputs import within_n
from .order_statistics import order_statistics
from .registry import rule


def mean_of_middle(source: UpdateSource, b: int) -> Tensor:
    """Per coordinate, the mean of the order statistics ``b .. n - b - 1``: the trimmed
    mean, and with ``b = (n - 1) // 2`` the median (one or two middle values)."""
    kept = range(b, source.n - b)
    return source.map_columns(lambda chunk: order_statistics(chunk, kept).mean(dim=0))


def coordinate_median(values: Tensor) -> Tensor:
    """Median along the last dim; the mean of the two middle values when it is even."""
    n = values.shape[-1]
    if n % 2:
        return values.median(dim=-1).values
    # The n/2 + 1 largest, in descending order, end with the two middle values.
    top = values.topk(n // 2 + 1, dim=-1).values
    return (top[..., -1] + top[..., -2]) / 2


def mean_around_median(chunk: Tensor, keep: int) -> Tensor:
    """Per column of an ``(n, c)`` chunk, the mean of the ``keep`` values closest to the
    column's median: the shared second phase of MeaMed and Bulyan.

    In sorted order those values are a window ``x_(s) .. x_(s + keep - 1)``. Moving the
    window one step changes its total distance to the median by
    ``d_(s + keep) - d_(s)``; along sorted order the distances fall, then rise, so these
    steps are negative, then never again (a zero step away from the median swaps equal
    values). The window after the last negative step has the least total distance: it
    holds ``keep`` values nearest the median (on exact ties, any such set is as near).
    Cost: a sort of every column (:mod:`.order_statistics`) and ``O(n c)``.
    """
    n = chunk.shape[0]
    ordered = order_statistics(chunk, range(n))
    median = ordered[(n - 1) // 2 : n // 2 + 1].mean(dim=0)
    # Row s: moving on from window s brings x_(s + keep) in, nearer than x_(s) it drops.
    nearer = (ordered[keep:] - median).abs() < (ordered[: n - keep] - median).abs()
    start = torch.zeros(ordered.shape[1], dtype=torch.long, device=chunk.device)
    for s in range(n - keep):
        start.masked_fill_(nearer[s], s + 1)
    total = ordered.gather(0, start[None])[0]
    for k in range(1, keep):
        total += ordered.gather(0, (start + k)[None])[0]
    return total / keep


@rule("median", needs=(2, 1))
def median(source: UpdateSource, f: int, weights: Tensor) -> AggregationResult:
    r"""Coordinate-wise median (Yin et al., 2018): :math:`[\mathrm{med}_i\, g_{i,j}]_j`.

    Even ``n`` takes the mean of the two middle values (as ``numpy.median``). Needs
    ``n >= 2f + 1``. Cost: one or two order statistics per coordinate (see
    :mod:`.order_statistics`).
    """
    return AggregationResult(mean_of_middle(source, (source.n - 1) // 2), {})


@rule("trimmed-mean", needs=(2, 1), params={"trim": Integer(0, optional=True)})
def trimmed_mean(
    source: UpdateSource, f: int, weights: Tensor, trim: int | None = None
) -> AggregationResult:
    r"""Coordinate-wise trimmed mean (Yin et al., 2018).

    For each coordinate, drop the ``b`` largest and ``b`` smallest values and average
    the remaining ``n - 2b``; ``b = trim`` (default ``f``, allowed ``0 <= b < n / 2``).
    Cost: the order statistics of every coordinate, ``O(n log^2 n p)`` (see
    :mod:`.order_statistics`).
    """
    n = source.n
    b = f if trim is None else within_n("trimmed-mean", "trim", trim, (n - 1) // 2, n)
    return AggregationResult(mean_of_middle(source, b), {"trimmed_per_side": b})


@rule("meamed", needs=(2, 1))
def meamed(source: UpdateSource, f: int, weights: Tensor) -> AggregationResult:
    r"""Mean-around-median, MeaMed (Xie, Koyejo & Gupta, 2018).

    For each coordinate, the mean of the ``n - f`` values closest to the coordinate
    median. Needs ``n >= 2f + 1``. Cost: a sort of every coordinate's ``n`` values.
    """
    keep = source.n - f
    return AggregationResult(source.map_columns(lambda chunk: mean_around_median(chunk, keep)), {})
