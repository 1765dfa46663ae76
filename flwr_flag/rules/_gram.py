"""Distances read off a Gram matrix ``K = X X^T`` (float64, ``O(n^2)`` each).

For ``z = X^T b`` and rows ``g_i``: ``||z - g_i||^2 = b^T K b - 2 (K b)_i + K_ii`` and
``||g_i - g_j||^2 = K_ii + K_jj - 2 K_ij``. Rounding can make these slightly negative,
so they are clamped at zero.
"""

from __future__ import annotations

import torch
from torch import Tensor


def pairwise_sq_distances(gram: Tensor) -> Tensor:
    """``D_ij = ||g_i - g_j||^2`` with an exact zero diagonal."""
    diag = gram.diagonal()
    dist = (diag[:, None] + diag[None, :] - 2 * gram).clamp_min_(0)
    return dist.fill_diagonal_(0)


def sq_distances_to(gram: Tensor, coefficients: Tensor) -> Tensor:
    """``||X^T b - g_i||^2`` for every row ``i``; ``b`` is ``(n,)`` or ``(m, n)``."""
    kb = coefficients @ gram
    quad = (kb * coefficients).sum(dim=-1, keepdim=True)
    return (quad - 2 * kb + gram.diagonal()).clamp_min(0)


def nearest(dist: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` smallest entries of each row, each row's own index first.

    Rows are ordered by distance with ties broken by index (a stable sort), and the
    diagonal is forced first so a point is always its own nearest neighbour.
    """
    ranked = dist.clone().fill_diagonal_(-1.0)
    return torch.sort(ranked, dim=-1, stable=True).indices[..., :k]
