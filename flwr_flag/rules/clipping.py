"""Clipping: centered clipping (a rule), static clipping and ARC (pre-aggregators).

Centered clipping runs on the Gram matrix; the pre-aggregators only need the exact
norms of the first pass and are diagonal rescalings ``diag(s) X`` served lazily.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from ..engine import UpdateSource
from ..validation import Integer, Real, state_tensor
from .coordinate import coordinate_median
from .diagnostics import AggregationResult, Rows
from .registry import Preaggregated, RoundState, preaggregator, round_state, rule


@round_state("previous")
class PreviousAggregate(RoundState):
    """The last round's aggregate :math:`v_0` (``None`` before the first), kept on the
    server and in checkpoints."""

    keeps_aggregate = True

    def __init__(self) -> None:
        self.aggregate: Tensor | None = None

    def value(self, node_ids: Sequence[int]) -> Tensor | None:
        return self.aggregate

    def after_step(self, aggregate: Tensor) -> None:
        self.aggregate = aggregate

    def state_keys(self) -> tuple[str, ...]:
        return ("previous",)

    def state_dict(self) -> dict[str, Tensor]:
        return {} if self.aggregate is None else {"previous": self.aggregate}

    def load_state_dict(self, state: Mapping[str, Tensor], size: int) -> None:
        self.aggregate = state_tensor(state, "previous", (size,))


@rule(
    "centered-clipping",
    needs=(2, 1),
    params={"tau": Real(0.0, low_open=True, optional=True), "iterations": Integer(1)},
    state=("previous",),
)
def centered_clipping(
    source: UpdateSource,
    f: int,
    weights: Tensor,
    previous: Tensor | None = None,
    tau: float | None = None,
    iterations: int = 1,
) -> AggregationResult:
    r"""Centered clipping (Karimireddy, He & Jaggi, 2021).

    .. math::
        v_{l+1} = v_l + \sum_i \alpha_i (g_i - v_l) \min\left(1, \frac{\tau}{\|g_i - v_l\|}\right),
        \quad v_0 = \text{previous}

    for ``l < L = iterations`` (the paper finds ``L = 1`` enough with worker momentum).
    ``previous`` is the last round's aggregate (zeros when ``None``), kept by the caller.
    ``tau > 0`` (0 would never move the model); ``None`` takes the median of
    ``||g_i - v_0||`` each call (a scale-free default, our choice, not the paper's).
    Each ``v_l`` is a combination of the rows of ``[X; v_0]``, so all ``L`` iterations
    run on the ``(n+1)``-Gram: one ``O(n^2 p)`` pass (none extra when ``previous`` is
    ``None``) and one output pass.
    """
    n = source.n
    if previous is None:
        with_origin = torch.cat([torch.eye(n, dtype=torch.float64), torch.zeros(1, n)])
        gram = source.gram().mix(with_origin)
    else:
        if previous.shape != (source.p,):
            raise ValueError(
                f"centered-clipping: previous has shape {tuple(previous.shape)}, "
                f"expected ({source.p},)"
            )
        gram = source.gram_with(previous)
    alpha = torch.cat([weights, weights.new_zeros(1)])
    b = torch.zeros(n + 1, dtype=torch.float64)
    b[n] = 1.0
    rows = torch.eye(n + 1, dtype=torch.float64)
    if tau is None:
        tau = float(coordinate_median(gram.sq_distances_to(b)[:n].sqrt()))
    clipped = 0
    for _ in range(iterations):
        dist = gram.sq_distances_to(b).sqrt()
        scale = torch.where(dist > tau, tau / dist.clamp_min(1e-300), 1.0)
        clipped = int((scale[:n] < 1).sum())
        b = b + ((rows - b) * (alpha * scale)[:, None]).sum(dim=0)
    vector = source.combine(b[:n])
    if previous is not None and b[n] != 0:
        vector += float(b[n]) * previous.to(vector.device, vector.dtype)
    return AggregationResult(vector, {"tau": tau, "clipped": clipped})


def _rescaled(source: UpdateSource, f: int, weights: Tensor, scale: Tensor) -> Preaggregated:
    n = source.n
    clipped = torch.nonzero(scale < 1).flatten().tolist()
    diagnostics = {"clipped": Rows(clipped)}
    return Preaggregated(source.mix(torch.diag(scale)), f, weights, diagnostics, list(range(n)))


@preaggregator("clip", needs=(0, 1), params={"tau": Real(0.0, low_open=True)})
def static_clipping(
    source: UpdateSource, f: int, weights: Tensor, tau: float = 1.0
) -> Preaggregated:
    r"""Static clipping: :math:`g_i \leftarrow g_i \min(1, \tau / \|g_i\|)`, ``tau > 0``."""
    norms = source.sq_norms().sqrt()
    return _rescaled(source, f, weights, (tau / norms.clamp_min(1e-300)).clamp(max=1.0))


@preaggregator("arc", needs=(1, 1))
def adaptive_robust_clipping(source: UpdateSource, f: int, weights: Tensor) -> Preaggregated:
    r"""Adaptive robust clipping, ARC (Allouah et al., 2024).

    With :math:`k = \lfloor 2 (f/n) (n - f) \rfloor`, clip the ``k`` largest-norm
    updates to the norm of the ``(k+1)``-th largest. Cost: the Gram diagonal.
    """
    n = source.n
    k = math.floor(2 * f * (n - f) / n)
    norms = source.sq_norms().sqrt()
    scale = torch.ones(n, dtype=torch.float64)
    if k > 0:
        order = torch.sort(norms, descending=True, stable=True).indices
        threshold = norms[order[k]]
        scale[order[:k]] = (threshold / norms[order[:k]].clamp_min(1e-300)).clamp(max=1.0)
    return _rescaled(source, f, weights, scale)
