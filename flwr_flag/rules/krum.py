"""Krum, Multi-Krum (Blanchard et al., 2017) and Bulyan (El Mhamdi et al., 2018).

All three score updates by squared distances read off the Gram matrix: one
``O(n^2 p)`` pass, then ``O(n^2 log n)`` work on the host, then one output pass.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..engine import UpdateSource
from ..validation import Integer
from .coordinate import mean_around_median
from .diagnostics import AggregationResult, Diagnostics, PerRow, Rows
from .inputs import within_n
from .registry import rule, span_rule


def krum_scores(dist: Tensor, f: int) -> Tensor:
    r"""Krum scores :math:`s(i) = \sum_{i \to j} \|g_i - g_j\|^2` over the ``n - f - 2``
    nearest other updates ``j`` (at least one, at most ``n - 1``, as in Flower)."""
    n = dist.shape[0]
    k = min(max(1, n - f - 2), n - 1)
    if k == 0:
        return torch.zeros(n, dtype=dist.dtype)
    others = dist + torch.diag(torch.full((n,), torch.inf, dtype=dist.dtype))
    return others.topk(k, dim=1, largest=False).values.sum(dim=1)


def _lowest(scores: Tensor, dist: Tensor, m: int) -> Tensor:
    """Indices of the ``m`` lowest scores.

    Exact ties (the two ends of the closest pair in a small set score the same) go to
    the update with the smaller total distance to all others, then to the lower index,
    so the choice does not depend on the order of the clients.
    """
    order = torch.sort(dist.sum(dim=1), stable=True).indices
    return order[torch.sort(scores[order], stable=True).indices][:m]


@span_rule("krum", needs=(2, 3))
def krum(source: UpdateSource, f: int, weights: Tensor) -> tuple[Tensor, Diagnostics]:
    r"""Krum: the single update with the lowest score :math:`s(i)`.

    Needs ``n >= 2f + 3``. Weights are ignored. Cost: ``O(n^2 p)``.
    """
    dist = source.gram().sq_distances()
    scores = krum_scores(dist, f)
    chosen = _lowest(scores, dist, 1)
    coefficients = torch.zeros(source.n, dtype=torch.float64)
    coefficients[chosen] = 1.0
    return coefficients, {"selected": Rows(chosen.tolist()), "scores": PerRow(scores.tolist())}


@span_rule("multi-krum", needs=(2, 3), params={"m": Integer(1, optional=True)})
def multi_krum(
    source: UpdateSource, f: int, weights: Tensor, m: int | None = None
) -> tuple[Tensor, Diagnostics]:
    r"""Multi-Krum: the weighted mean of the ``m`` updates with the lowest scores.

    Scores are computed once on all ``n`` updates; ``m`` defaults to ``n - f``
    (allowed ``1 <= m <= n``). Needs ``n >= 2f + 3``. Cost: ``O(n^2 p)``.
    """
    m = source.n - f if m is None else within_n("multi-krum", "m", m, source.n, source.n)
    dist = source.gram().sq_distances()
    scores = krum_scores(dist, f)
    chosen = _lowest(scores, dist, m)
    coefficients = torch.zeros(source.n, dtype=torch.float64)
    coefficients[chosen] = weights[chosen] / weights[chosen].sum()
    return coefficients, {
        "selected": Rows(sorted(chosen.tolist())),
        "scores": PerRow(scores.tolist()),
    }


@rule("bulyan", needs=(4, 3))
def bulyan(source: UpdateSource, f: int, weights: Tensor) -> AggregationResult:
    r"""Bulyan over Krum, as in El Mhamdi et al. (2018).

    1. Selection: apply Krum ``theta = n - 2f`` times, each time to the updates not yet
       selected (scores recomputed on the shrinking set, from the same Gram matrix).
       Flower's ``Bulyan`` instead takes the ``theta`` best Multi-Krum scores at once.
    2. For each coordinate, the mean of the ``beta = theta - 2f`` selected values
       closest to the coordinate median of the selection.

    Needs ``n >= 4f + 3``, so a strategy run at exactly ``n = 4f + 3`` keeps the model
    in every round where one reply is rejected (15 nodes with ``f = 3``). Weights are
    ignored. Cost: ``O(n^2 p)`` plus a sort of every coordinate's
    ``theta`` selected values.
    """
    dist = source.gram().sq_distances()
    remaining = list(range(source.n))
    selected: list[int] = []
    for _ in range(source.n - 2 * f):
        sub = dist[remaining][:, remaining]
        best = remaining[int(_lowest(krum_scores(sub, f), sub, 1))]
        selected.append(best)
        remaining.remove(best)
    beta = len(selected) - 2 * f
    chosen = source.subset(selected)
    vector = chosen.map_columns(lambda chunk: mean_around_median(chunk, beta))
    return AggregationResult(vector, {"selected": Rows(sorted(selected)), "beta": beta})
