"""Exact subset-search rules: MDA and SMEA.

Both pick, among all ``C(n, f)`` subsets ``S`` of ``n - f`` updates, the one that
minimises a spread measure, and return its mean. The search is exhaustive (exact) and
runs on the Gram matrix in batches of subsets; above ``max_subsets`` candidates it
refuses with an error instead of approximating.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from ..engine import Gram, UpdateSource
from ..validation import Integer
from .diagnostics import Diagnostics, Rows
from .inputs import InputRangeError
from .registry import span_rule

DEFAULT_MAX_SUBSETS = 1_000_000
_BATCH = 4096


def _kept_masks(n: int, f: int) -> Iterator[Tensor]:
    """Batches of ``(B, n)`` 0/1 float64 masks, one per subset of ``n - f`` rows."""
    removed = itertools.combinations(range(n), f)
    while batch := list(itertools.islice(removed, _BATCH)):
        masks = torch.ones(len(batch), n, dtype=torch.float64)
        if f:
            masks.scatter_(1, torch.tensor(batch), 0.0)
        yield masks


def _best_subset(
    rule: str,
    source: UpdateSource,
    f: int,
    max_subsets: int,
    spread: Callable[[Gram, Tensor], Tensor],
) -> tuple[Tensor, Diagnostics]:
    n = source.n
    count = math.comb(n, f)
    if count > max_subsets:
        raise InputRangeError(
            f"{rule}: exact search over C(n={n}, f={f}) = {count} subsets exceeds "
            f"max_subsets={max_subsets}; raise max_subsets or use another rule"
        )
    gram = source.gram()
    best_value, best_mask = torch.inf, None
    for masks in _kept_masks(n, f):
        values = spread(gram, masks)
        i = int(torch.argmin(values))
        if float(values[i]) < best_value:
            best_value, best_mask = float(values[i]), masks[i]
    coefficients = best_mask / best_mask.sum()
    selected = torch.nonzero(best_mask).flatten().tolist()
    return coefficients, {"selected": Rows(selected), "spread": best_value, "subsets": count}


def _diameters(gram: Gram, masks: Tensor) -> Tensor:
    dist = gram.sq_distances()
    return (dist * masks[:, :, None] * masks[:, None, :]).amax(dim=(1, 2))


def _max_covariance_eigenvalues(gram: Gram, masks: Tensor) -> Tensor:
    # The nonzero spectrum of the subset covariance (1/k) sum_S (g_i - mu)(g_i - mu)^T
    # is that of the centred subset Gram (1/k) H K_S H, written here on all n rows with
    # the rows outside S zeroed.
    k = masks.sum(dim=1, keepdim=True)
    inner = gram.centered  # any reference: the subset mean is subtracted below
    centering = torch.eye(gram.n, dtype=inner.dtype) - (masks / k)[:, None, :]
    centered = centering @ inner @ centering.transpose(1, 2)
    restricted = centered * masks[:, :, None] * masks[:, None, :] / k[:, :, None]
    return torch.linalg.eigvalsh(restricted)[:, -1]


@span_rule("mda", needs=(2, 1), params={"max_subsets": Integer(1)})
def minimum_diameter_averaging(
    source: UpdateSource, f: int, weights: Tensor, max_subsets: int = DEFAULT_MAX_SUBSETS
) -> tuple[Tensor, Diagnostics]:
    r"""Minimum diameter averaging, MDA (El Mhamdi, Guerraoui & Rouault, 2021).

    .. math::
        S^\star = \arg\min_{|S| = n - f} \max_{i, j \in S} \|g_i - g_j\|,\qquad
        \mathrm{MDA} = \frac{1}{n - f} \sum_{i \in S^\star} g_i

    Exact over all ``C(n, f) <= max_subsets`` subsets (ties: first in lexicographic
    order of the removed sets). Cost: ``O(n^2 p)`` plus ``O(C(n, f) n^2)``.
    """
    return _best_subset("mda", source, f, max_subsets, _diameters)


@span_rule("smea", needs=(2, 1), params={"max_subsets": Integer(1)})
def smallest_maximum_eigenvalue_averaging(
    source: UpdateSource, f: int, weights: Tensor, max_subsets: int = DEFAULT_MAX_SUBSETS
) -> tuple[Tensor, Diagnostics]:
    r"""Smallest maximum eigenvalue averaging, SMEA (Allouah et al., 2023).

    .. math::
        S^\star = \arg\min_{|S| = n - f} \lambda_{\max}\Big(\frac{1}{|S|}\sum_{i \in S}
        (g_i - \bar g_S)(g_i - \bar g_S)^T\Big),\qquad \mathrm{SMEA} = \bar g_{S^\star}

    The eigenvalue is exact (from the subset's centred Gram), not a power-method
    estimate. Exact over all ``C(n, f) <= max_subsets`` subsets. Cost: ``O(n^2 p)``
    plus ``O(C(n, f) n^3)``.
    """
    return _best_subset("smea", source, f, max_subsets, _max_covariance_eigenvalues)
