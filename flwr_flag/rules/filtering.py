"""CAF: spectral filtering with exact top eigenpairs, in Gram space."""

from __future__ import annotations

import torch
from torch import Tensor

from ..engine import UpdateSource
from .diagnostics import Diagnostics, PerRow
from .registry import span_rule


def _weighted_top_direction(gram: Tensor, c: Tensor) -> tuple[float, Tensor, Tensor]:
    """Top eigenvalue of the ``c``-weighted covariance, the mean's coefficients, and the
    squared projections of every centred row onto the top eigenvector.

    With ``a = c / sum(c)``, ``Y = (I - 1 a^T) X`` and ``M = diag(sqrt(a)) Y``, the
    covariance is ``M^T M`` and shares its nonzero spectrum with ``M M^T``; for its top
    eigenpair ``(lam, u)`` the eigenvector is ``v = M^T u / sqrt(lam)`` and
    ``<y_i, v> = (K_y sqrt(a) * u)_i / sqrt(lam)`` with ``K_y`` the Gram of ``Y``.
    """
    a = c / c.sum()
    centering = torch.eye(len(c), dtype=gram.dtype) - a[None, :]
    centered = centering @ gram @ centering.T
    root = a.sqrt()
    eigenvalues, eigenvectors = torch.linalg.eigh(root[:, None] * centered * root[None, :])
    lam = float(eigenvalues[-1])
    if lam <= 0:
        return 0.0, a, torch.zeros_like(c)
    projections = centered @ (root * eigenvectors[:, -1]) / lam**0.5
    return lam, a, projections.square()


@span_rule("caf", needs=(2, 1))
def covariance_agnostic_filter(
    source: UpdateSource, f: int, weights: Tensor
) -> tuple[Tensor, Diagnostics]:
    r"""Covariance-bound agnostic filter, CAF (Allouah, Guerraoui & Stephan, 2025).

    Start from :math:`c_i = n \alpha_i`. While :math:`\sum_i c_i > n - 2f`: take the
    weighted mean :math:`\mu_c` and the top eigenpair :math:`(\lambda, v)` of the
    weighted covariance, set :math:`\tau_i = \langle g_i - \mu_c, v\rangle^2` and
    :math:`c_i \leftarrow c_i (1 - \tau_i / \max_j \tau_j)`. Return the :math:`\mu_c`
    with the smallest :math:`\lambda` seen. Unlike ByzFL's implementation (one power
    step from a random vector) the eigenpair here is exact, so the result is
    deterministic; with ``f = 0`` it is the weighted mean. Every step zeroes at least
    one weight, so there are at most ``n`` steps of ``O(n^3)``, after one
    ``O(n^2 p)`` pass.
    """
    n = source.n
    gram = source.gram().centered  # the rule is translation invariant
    c = n * weights
    best_value, best = torch.inf, weights
    steps = 0
    while float(c.sum()) > n - 2 * f:
        steps += 1
        lam, mean_coefficients, tau = _weighted_top_direction(gram, c)
        if lam < best_value:
            best_value, best = lam, mean_coefficients
        if lam == 0.0:
            break
        tau = tau * (c > 0)  # the maximum is taken over rows still in play
        c = c * (1 - tau / tau.max())
    return best, {"steps": steps, "max_eigenvalue": best_value, "weights": PerRow(c.tolist())}
