"""Coordinate-wise rules: median, trimmed mean, MeaMed.

These treat every coordinate ``j`` on its own, so they cannot use the Gram matrix: they
run chunk by chunk over coordinates (``O(n p)`` selection work, memory-bound on a CPU).
Each chunk is transposed once to ``(coordinates, n)`` so the per-coordinate selections
run along contiguous memory. Client weights are ignored, as in Flower's FedMedian and
FedTrimmedAvg.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..engine import UpdateSource
from ._registry import AggregationResult, rule
from .validation import Integer, within_n


def _by_coordinate(chunk: Tensor) -> Tensor:
    return chunk.T.contiguous()


def sorted_rows(chunk: Tensor) -> Tensor:
    """Each column of an ``(n, c)`` chunk sorted along the rows.

    On the host numpy's sort along the short axis is ~3x faster than torch's sort or
    top-k after a transpose (21 ms against 66-80 ms for ``n = 10`` and 419k columns,
    measured here); on a GPU, torch's sort."""
    if chunk.device.type == "cpu":
        return torch.from_numpy(np.sort(chunk.numpy(), axis=0))
    return chunk.sort(dim=0).values


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
    ``n >= 2f + 1``. Cost: ``O(n p)``.
    """

    def middle(chunk: Tensor) -> Tensor:
        ordered, n = sorted_rows(chunk), chunk.shape[0]
        return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2

    return AggregationResult(source.map_columns(middle), {})


@rule("trimmed-mean", needs=(2, 1), params={"trim": Integer(0, optional=True)})
def trimmed_mean(
    source: UpdateSource, f: int, weights: Tensor, trim: int | None = None
) -> AggregationResult:
    r"""Coordinate-wise trimmed mean (Yin et al., 2018).

    For each coordinate, drop the ``b`` largest and ``b`` smallest values and average
    the remaining ``n - 2b``; ``b = trim`` (default ``f``, allowed ``0 <= b < n / 2``).
    Cost: a sort per coordinate, ``O(n log n p)``.
    """
    n = source.n
    b = f if trim is None else within_n("trimmed-mean", "trim", trim, (n - 1) // 2, n)

    def trim_chunk(chunk: Tensor) -> Tensor:
        return sorted_rows(chunk)[b : n - b].mean(dim=0)

    return AggregationResult(source.map_columns(trim_chunk), {"trimmed_per_side": b})


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
