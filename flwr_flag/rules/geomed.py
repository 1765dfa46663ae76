"""Geometric median by smoothed Weiszfeld iterations, in Gram space."""

from __future__ import annotations

import torch
from torch import Tensor

from ..engine import Gram, UpdateSource
from ..validation import Integer, Real
from .diagnostics import Diagnostics, PerRow
from .registry import span_rule


def weighted_median(values: Tensor, weights: Tensor) -> float:
    """The smallest value whose weight from below reaches half the total."""
    order = torch.argsort(values)
    cumulative = torch.cumsum(weights[order], 0)
    index = int(torch.searchsorted(cumulative, 0.5 * float(cumulative[-1])))
    return float(values[order[min(index, len(order) - 1)]])


def robust_start(gram: Gram, weights: Tensor) -> Tensor:
    r"""A starting point that no minority can move far: the weighted mean of the rows
    nearest the weighted medoid :math:`m = \arg\min_i \sum_j \alpha_j \|g_i - g_j\|`,
    up to half the weight.

    With the Byzantine rows holding less than half the weight, :math:`m` lies within
    a constant times the honest rows' diameter of them (a far row's sum grows with its
    distance faster than an honest row's), and every row kept is nearer to :math:`m`
    than some honest row. ``O(n^2)``.
    """
    dist = gram.sq_distances().sqrt()
    medoid = int(torch.argmin(dist @ weights))
    radius = weighted_median(dist[medoid], weights)
    near = torch.where(dist[medoid] <= radius, weights, 0.0)
    return near / near.sum()


def weiszfeld(
    gram: Gram, weights: Tensor, nu: float, max_iter: int, tol: float
) -> tuple[Tensor, Diagnostics]:
    r"""Smoothed Weiszfeld on the Gram matrix; returns ``b`` with ``z = X^T b``.

    Minimises :math:`\sum_i \alpha_i \|z - g_i\|` by
    :math:`b \leftarrow \beta / \sum_j \beta_j,\ \beta_i = \alpha_i / \max(\nu, \|z - g_i\|)`
    from :func:`robust_start`, stopping when a step moves :math:`z` by at most ``tol``
    times the weighted median of the distances :math:`\|z - g_i\|`. Both the start and
    the scale of the stopping rule are set by the majority, so a far minority can
    neither start the iterations near itself nor stop them early (an objective-based
    rule is dominated by the far rows' distances and stops at once). Each iteration
    costs ``O(n^2)``; the objective never increases.
    """
    b = robust_start(gram, weights)
    dist = gram.sq_distances_to(b).sqrt()
    iterations, converged = 0, False
    for iterations in range(1, max_iter + 1):
        beta = weights / dist.clamp_min(nu)
        new = beta / beta.sum()
        step = new - b
        # sum(step) = 0: no reference terms. Rounding can make the quadratic form of
        # (nearly) collinear rows slightly negative: clamp it as the distances are.
        moved = max(float(step @ gram.centered @ step), 0.0) ** 0.5
        b = new
        dist = gram.sq_distances_to(b).sqrt()
        if moved <= tol * weighted_median(dist, weights):
            converged = True
            break
    objective = float(weights @ dist)
    return b, {"iterations": iterations, "objective": objective, "converged": converged}


@span_rule(
    "geomed",
    needs=(2, 1),
    params={"nu": Real(0.0, low_open=True), "max_iter": Integer(1), "tol": Real(0.0)},
)
def geometric_median(
    source: UpdateSource,
    f: int,
    weights: Tensor,
    nu: float = 1e-6,
    max_iter: int = 100,
    tol: float = 1e-7,
) -> tuple[Tensor, Diagnostics]:
    r"""Geometric median :math:`\arg\min_z \sum_i \alpha_i \|z - g_i\|` (RFA, Pillutla
    et al., 2022), by smoothed Weiszfeld with smoothing ``nu > 0`` from a robust start
    (:func:`weiszfeld`).

    Every iteration is ``O(n^2)`` on the Gram matrix, so iterating to convergence
    costs nothing extra over the data: one ``O(n^2 p)`` pass and one output pass.
    ``f`` does not enter the rule; it needs ``n >= 2f + 1`` (breakdown point 1/2: with
    fewer than half the rows Byzantine, wherever they are, the result stays within a
    constant times the honest rows' spread of them).
    """
    b, diagnostics = weiszfeld(source.gram(), weights, nu, max_iter, tol)
    diagnostics["weights"] = PerRow(b.tolist())
    return b, diagnostics
