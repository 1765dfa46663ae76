"""Coordinate-wise rules: median, trimmed mean, MeaMed.

These treat every coordinate ``j`` on its own, so they cannot use the Gram matrix: they
run chunk by chunk over coordinates (``O(n p)`` selection work, memory-bound on a CPU).
The median and the trimmed mean read order statistics of each chunk's columns
(:mod:`.order_statistics` picks the kernel by ``n``); MeaMed transposes each chunk once
to ``(coordinates, n)`` so its selections run along contiguous memory. Client weights
are ignored, as in Flower's FedMedian and FedTrimmedAvg.
"""

from __future__ import annotations

from torch import Tensor

from ..engine import UpdateSource
from ._registry import AggregationResult, rule
from .order_statistics import order_statistics
from .validation import Integer, within_n


def _by_coordinate(chunk: Tensor) -> Tensor:
    return chunk.T.contiguous()


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


def mean_around_median(values: Tensor, keep: int) -> Tensor:
    """Mean of the ``keep`` values closest to the median, along the last dim.

    The shared second phase of MeaMed and Bulyan. Among values at the same distance
    from the median the choice is arbitrary (it only matters on exact ties).
    """
    median = coordinate_median(values)
    closest = (
        (values - median.unsqueeze(-1))
        .abs()
        .topk(keep, dim=-1, largest=False, sorted=False)
        .indices
    )
    return values.gather(-1, closest).mean(dim=-1)


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
    median. Needs ``n >= 2f + 1``. Cost: ``O(n p)``.
    """
    keep = source.n - f
    return AggregationResult(
        source.map_columns(lambda c: mean_around_median(_by_coordinate(c), keep)), {}
    )
