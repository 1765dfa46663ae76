r"""The Gram matrix of the updates, stored relative to a reference point.

For updates :math:`x_i` and a reference point :math:`r` (the origin, or one of the
updates), :class:`Gram` keeps in float64

* ``centered``  :math:`C_{ij} = \langle x_i - r, x_j - r \rangle`,
* ``cross``     :math:`u_i = \langle x_i - r, r \rangle`,
* ``ref_sq``    :math:`\|r\|^2`,
* ``sq_norms``  :math:`\|x_i\|^2`, summed directly (exact zeros stay zero),

so raw inner products are :math:`C + u 1^T + 1 u^T + \|r\|^2` and distances come from
:math:`C` alone (they are translation invariant). Why a reference: the float32 GEMM
that builds :math:`C` loses the digits that distances need when the updates share a
large common part; subtracting a central update first keeps them. Unlike a mean, a
single reference row does not smear one huge Byzantine row over every other entry.

:func:`choose_reference` decides: the origin when distances are well conditioned there
(then each entry :math:`C_{ij}` only involves rows ``i`` and ``j``), else the medoid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

RELATIVE_ACCURACY = 1e-5
"""Target relative accuracy of typical distances; sets the conditioning threshold."""


def pairwise_sq_distances(inner: Tensor) -> Tensor:
    """``D_ij = M_ii + M_jj - 2 M_ij`` for an inner-product matrix ``M``, clamped at zero,
    symmetric with an exact zero diagonal."""
    diag = inner.diagonal()
    dist = (diag[:, None] + diag[None, :] - 2 * inner).clamp_min_(0)
    return dist.fill_diagonal_(0)


@dataclass(frozen=True)
class Gram:
    """Inner products of ``n`` updates relative to a reference point (see module)."""

    centered: Tensor
    cross: Tensor
    ref_sq: float
    sq_norms: Tensor

    @property
    def n(self) -> int:
        return self.centered.shape[0]

    def raw(self) -> Tensor:
        """``K = X X^T`` (origin-based inner products)."""
        return self.centered + self.cross[:, None] + self.cross[None, :] + self.ref_sq

    def sq_distances(self) -> Tensor:
        """``D_ij = ||x_i - x_j||^2``, symmetric with an exact zero diagonal."""
        return pairwise_sq_distances(self.centered)

    def sq_distances_to(self, coefficients: Tensor) -> Tensor:
        """``||X^T b - x_i||^2`` for every row ``i``; ``b`` is ``(n,)`` or ``(m, n)``.

        With ``X = C + 1 r^T``: ``X^T b - x_i = (C^T b - c_i) + (sum(b) - 1) r``, so the
        reference terms vanish for affine combinations (``sum(b) = 1``).
        """
        b = coefficients
        cb = b @ self.centered
        quad = (cb * b).sum(dim=-1, keepdim=True)
        dist = quad - 2 * cb + self.centered.diagonal()
        excess = (b.sum(dim=-1, keepdim=True) - 1).to(b.dtype)
        cross_b = (b * self.cross).sum(dim=-1, keepdim=True)
        dist = dist + 2 * excess * (cross_b - self.cross) + excess**2 * self.ref_sq
        return dist.clamp_min(0)

    def subset(self, rows: Tensor) -> Gram:
        """The Gram of the rows ``rows``."""
        return Gram(
            self.centered[rows][:, rows], self.cross[rows], self.ref_sq, self.sq_norms[rows]
        )

    def mix(self, matrix: Tensor) -> Gram:
        """The Gram of the rows of ``P X`` (exact algebra, no pass over the data).

        ``P X = P C + s r^T`` with ``s = P 1``, i.e. rows ``c'_i + r`` with
        ``c' = P C + (s - 1) r^T``.
        """
        s1 = matrix.sum(dim=1) - 1
        pu = matrix @ self.cross
        centered = (
            matrix @ self.centered @ matrix.T
            + s1[:, None] * pu[None, :]
            + pu[:, None] * s1[None, :]
            + self.ref_sq * s1[:, None] * s1[None, :]
        )
        cross = pu + s1 * self.ref_sq
        sq_norms = (centered.diagonal() + 2 * cross + self.ref_sq).clamp_min(0)
        return Gram(centered, cross, self.ref_sq, sq_norms)


def conditioning(scales: Tensor, dist: Tensor) -> float:
    """Typical squared size relative to the reference over typical squared distance."""
    n = dist.shape[0]
    spread = float(dist[torch.triu_indices(n, n, 1).unbind()].median())
    return float(scales.median()) / spread if spread > 0 else float("inf")


def threshold(dtype: torch.dtype) -> float:
    """Largest conditioning at which ``dtype`` still gives :data:`RELATIVE_ACCURACY`."""
    return RELATIVE_ACCURACY / torch.finfo(dtype).eps


def medoid(dist: Tensor) -> int:
    """The row with the smallest median distance to the others (robust centre)."""
    return int(dist.median(dim=1).values.argmin())


def choose_reference(gram: Gram, dtype: torch.dtype, current: int | None) -> int | None:
    """The reference to use for data with this Gram: ``None`` (the origin) or a row.

    Keeps ``current`` unless it is ill-conditioned and the medoid is ten times better
    (or most updates coincide, where centring on one of them makes them exact zeros).
    """
    if gram.n < 2:
        return current
    dist = gram.sq_distances()
    here = conditioning(gram.centered.diagonal(), dist)
    if here <= threshold(dtype):
        return current
    best = medoid(dist)
    better = conditioning(dist[best], dist) * 10 < here or here == float("inf")
    return best if better else current
