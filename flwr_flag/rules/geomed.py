"""Geometric median by smoothed Weiszfeld iterations, in Gram space."""

from __future__ import annotations

import torch
from torch import Tensor

from ..engine import Gram, UpdateSource
from ._registry import Diagnostics, PerRow, span_rule
from .validation import Integer, Real


def weiszfeld(
    gram: Gram, weights: Tensor, nu: float, max_iter: int, tol: float
) -> tuple[Tensor, Diagnostics]:
    r"""Smoothed Weiszfeld on the Gram matrix; returns ``b`` with ``z = X^T b``.

    Minimises :math:`\sum_i \alpha_i \|z - g_i\|` by
    :math:`b \leftarrow \beta / \sum_j \beta_j,\ \beta_i = \alpha_i / \max(\nu, \|z - g_i\|)`
    from the weighted mean, stopping when the objective improves by less than
    ``tol`` times its value. Each iteration costs ``O(n^2)``.
    """
    b = weights.clone()
    objective = torch.inf
    iterations = 0
    for iterations in range(1, max_iter + 1):
        dist = gram.sq_distances_to(b).sqrt()
        current = float(weights @ dist)
        if objective - current <= tol * current:
            objective = min(objective, current)
            break
        objective = current
        beta = weights / dist.clamp_min(nu)
        b = beta / beta.sum()
    return b, {"iterations": iterations, "objective": objective}


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
    et al., 2022), by smoothed Weiszfeld with smoothing ``nu > 0``.

    Every iteration is ``O(n^2)`` on the Gram matrix, so iterating to convergence
    costs nothing extra over the data: one ``O(n^2 p)`` pass and one output pass.
    ``f`` does not enter the rule; it needs ``n >= 2f + 1`` (breakdown point 1/2).
    """
    b, diagnostics = weiszfeld(source.gram(), weights, nu, max_iter, tol)
    diagnostics["weights"] = PerRow(b.tolist())
    return b, diagnostics
