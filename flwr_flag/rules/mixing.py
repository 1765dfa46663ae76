"""Averaging over neighbours: NNM and bucketing (pre-aggregators), MoNNA (a rule).

Each is a mixing matrix ``P`` computed from the Gram matrix; the mixed rows ``P X``
are served lazily by the engine, and their Gram ``P K P^T`` costs no pass.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..engine import UpdateSource
from ..validation import Integer
from .diagnostics import Diagnostics, Rows
from .inputs import within_n
from .registry import Preaggregated, preaggregator, span_rule


def nearest(dist: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` smallest entries of each row, each row's own index first.

    Rows are ordered by distance with ties broken by index (a stable sort), and the
    diagonal is forced first so a point is always its own nearest neighbour.
    """
    ranked = dist.clone().fill_diagonal_(-1.0)
    return torch.sort(ranked, dim=-1, stable=True).indices[..., :k]


@preaggregator("nnm", needs=(1, 1))
def nearest_neighbor_mixing(source: UpdateSource, f: int, weights: Tensor) -> Preaggregated:
    r"""Nearest neighbour mixing, NNM (Allouah et al., 2023).

    Replace each :math:`g_i` by the mean of its ``n - f`` nearest updates (itself
    included). Keeps ``n``, ``f`` and the weights. Cost: ``O(n^2 log n)`` on the Gram,
    and ``O(n^2)`` per column wherever the mixed rows are read.
    """
    n = source.n
    neighbours = nearest(source.gram().sq_distances(), n - f)
    mixing = torch.zeros(n, n, dtype=torch.float64)
    mixing.scatter_(1, neighbours, 1.0 / (n - f))
    # Row i is node i's neighbourhood mean: it still stands for node i.
    diagnostics = {"neighbours": neighbours.tolist()}
    return Preaggregated(source.mix(mixing), f, weights, diagnostics, list(range(n)))


@preaggregator(
    "bucketing",
    needs=(1, 1),
    params={"s": Integer(1), "seed": Integer(0, optional=True)},
    rows=lambda n, params: -(-n // params["s"]),
)
def bucketing(
    source: UpdateSource, f: int, weights: Tensor, s: int = 2, seed: int | None = None
) -> Preaggregated:
    r"""Bucketing (Karimireddy, He & Jaggi, 2022).

    Shuffle the updates with a random permutation :math:`\pi` (seeded by ``seed``;
    ``None`` draws from torch's global generator) and replace them by the weighted
    means of consecutive buckets of ``s`` (the last one may be smaller), giving
    ``ceil(n / s)`` rows whose weights are the bucket totals. Each Byzantine update
    spoils at most one bucket, so ``f`` is kept; the next rule must accept
    ``ceil(n / s)`` rows with that ``f``.
    """
    n = source.n
    s = within_n("bucketing", "s", s, n, n)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    order = torch.randperm(n, generator=generator)
    buckets = [order[i : i + s] for i in range(0, n, s)]
    mixing = torch.zeros(len(buckets), n, dtype=torch.float64)
    for row, members in enumerate(buckets):
        mixing[row, members] = weights[members] / weights[members].sum()
    totals = torch.stack([weights[members].sum() for members in buckets])
    diagnostics = {"buckets": [b.tolist() for b in buckets]}
    return Preaggregated(source.mix(mixing), f, totals, diagnostics, None)


@span_rule("monna", needs=(2, 1), params={"reference": Integer(0)})
def monna(
    source: UpdateSource, f: int, weights: Tensor, reference: int = 0
) -> tuple[Tensor, Diagnostics]:
    r"""MoNNA (Farhadkhani et al., 2023): the mean of the ``n - f`` nearest neighbours
    of the update ``g_reference`` (itself included).

    The paper runs it on each honest peer with its own vector as reference; on a
    server, ``reference`` must be an update the server trusts. Cost: ``O(n^2 p)``.
    """
    reference = within_n("monna", "reference", reference, source.n - 1, source.n)
    dist = source.gram().sq_distances()
    chosen = nearest(dist, source.n - f)[reference]
    coefficients = torch.zeros(source.n, dtype=torch.float64)
    coefficients[chosen] = 1.0 / len(chosen)
    return coefficients, {"selected": Rows(sorted(chosen.tolist()))}
