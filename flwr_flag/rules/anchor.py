r"""A trust anchor: the server's own update on a small trusted data set (FLTrust).

FLTrust (Cao, Fang, Liu & Gong, NDSS 2021) gives the server a few clean samples. Each
round it trains on them from the global model, as a client would, and gets a reference
update :math:`g_0`. Every update is scored by its cosine with the reference, clipped
at zero, and rescaled to the reference's norm:

.. math::
    TS_i = \mathrm{ReLU}\!\left(\frac{\langle g_i, g_0\rangle}{\|g_i\|\,\|g_0\|}\right),
    \qquad \bar g_i = \frac{\|g_0\|}{\|g_i\|}\, g_i,
    \qquad \mathrm{FLTrust} = \frac{\sum_i TS_i\, \bar g_i}{\sum_j TS_j}.

Within one round, an attacker inside the honest spread is indistinguishable from an
honest node with unusual data; the reference breaks that symmetry, since it comes from
data the server trusts. A rescaled update can pull the aggregate by at most
:math:`\|g_0\|`, and one pointing away from the reference not at all.

**How long a row may be** (``rescale``):

* ``"reference"``: every row scaled to :math:`\|g_0\|`, as FLTrust does;
* ``"clip"``: only rows longer than :math:`\|g_0\|` scaled down to it;
* ``"median"`` (default): rows longer than the round's lower-median norm
  :math:`\operatorname{med}_j \|g_j\|` scaled down to it;
* ``"equal"``: every row scaled to :math:`\operatorname{med}_j \|g_j\|`: FLTrust's
  equal lengths, at an honest length instead of the reference's;
* ``"longer"``: every row scaled to :math:`\max(\|g_0\|, \operatorname{med}_j \|g_j\|)`:
  the reference's length, unless it is shorter than an honest update.

The reference's length is that of the server's few local steps on its few samples:
with 2 samples per class, its 2 epochs are 2 SGD steps where a client takes 6, so it is
shorter than every honest update and the first two shrink every step of the run. The
median takes the bound from the round's updates instead; while fewer than half the rows
are Byzantine it lies between two honest norms, so an attacker still pulls the
aggregate by at most an honest length (FLTrust's own bound needs no such majority),
and an attacker who knows the bound sends rows of that length (``anchor-drift`` tuned,
:mod:`flwr_flag.attacks.anchored`). In the field study
(``benchmarks/results/field.md``, "The anchor's rescaling"), over every attack, that
one included, the median raised the worst case of the anchored mean with 2 samples per
class at Dirichlet 0.1 from 81.2 to 86.9 and at Dirichlet 1 from 90.3 to 91.9; with 10
per class the three bounds end within a point of each other on average. CTMA after
the anchor is the exception: equal lengths suit its trimming around a centre, and a
strategy running CTMA behind the anchor takes ``"longer"`` unless told otherwise
(``Rule.anchored``). With 10 samples per class it ends within a seed's spread of
``"reference"``; with 2, where the reference is 0.15-0.5 times the median norm,
``"reference"`` left CTMA at 70.7 % worst at Dirichlet 0.1 and ``"longer"`` holds 87.2.

:func:`anchor` is that scoring as a pre-aggregator, so that it composes with every
rule: row :math:`i` becomes :math:`\bar g_i` (the zero update when :math:`TS_i = 0`)
and its weight is multiplied by :math:`TS_i`. FLTrust itself is the weighted mean
after it; FA, CTMA or the median after it aggregate the rescaled, trust-weighted rows
(FA then projects their weighted mean, not its geometric median: ``Rule.anchored``).

**Per class.** Under label skew an honest node that holds two classes points toward
those two, away from a reference trained on all of them, and FLTrust distrusts it. With
one reference per class, :math:`R = [r_1, \dots, r_K]` (the server's training on each
class's samples alone; ``reference`` of shape ``(K, p)``), a node is scored by how well
non-negative combinations of the class directions explain it, as BOBA does for label
skew (Bao, Xu & Zou, AISTATS 2024):

.. math::
    a_i = \arg\min_{a \ge 0} \|g_i - R a\|, \qquad
    TS_i = \frac{\langle g_i, R a_i\rangle}{\|g_i\|\,\|R a_i\|},
    \qquad \bar g_i = \frac{\bar\rho}{\|g_i\|}\, g_i,

the cosine with its explained part (its residual is what no class accounts for), and
rows rescaled to the mean class-reference norm :math:`\bar\rho`. An update against
every class (a sign flip) has :math:`a_i = 0` and no trust; one along directions no
class explains keeps only the explained share.

What it assumes: the server's samples come from the task's distribution. A reference
trained on a few classes only points toward those classes, and honest nodes holding the
others get little trust (``benchmarks/results/field.md`` measures 2, 5 and 10 samples
per class). Cost: one pass for the ``(n + K)``-row Gram of the updates and the
references (``O((n + K)^2 p)``), ``O(n K^2)`` per NNLS sweep on it, and rows served as a
diagonal mix.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..engine import UpdateSource
from ..validation import Choice, Typed
from .diagnostics import PerRow, Rows
from .inputs import InputRangeError
from .registry import Preaggregated, preaggregator

TINY = torch.finfo(torch.float64).tiny
NNLS_SWEEPS = 200
NNLS_TOLERANCE = 1e-12
"""A sweep that moves no coefficient by more than this fraction of the largest ends the
fit: the sweeps are Python loops of ``K`` small operations, 40 ms for 200 of them at
``K = 10``, and the field study's fits (Dirichlet 0.1, 10 classes) settled in 27-77."""


def nonnegative_fit(products: Tensor, inner: Tensor, sweeps: int = NNLS_SWEEPS) -> Tensor:
    r"""``a_i = argmin_{a >= 0} ||g_i - R a||`` for every row at once, by cyclic
    coordinate descent on :math:`\tfrac12 a^\top Q a - b_i^\top a` (exact per
    coordinate, the objective never increases), from the Gram blocks
    ``products = R^T R`` ``(K, K)`` and ``inner = X R`` ``(n, K)``, until a sweep
    changes nothing (:data:`NNLS_TOLERANCE`). Cost ``O(sweeps n K^2)``."""
    a = torch.zeros_like(inner)
    diagonal = products.diagonal().clamp_min(TINY)
    for _ in range(sweeps):
        before = a.clone()
        for k in range(products.shape[0]):
            a[:, k] = (a[:, k] + (inner[:, k] - a @ products[k]) / diagonal[k]).clamp_min(0.0)
        if float((a - before).abs().max()) <= NNLS_TOLERANCE * float(a.abs().max()):
            break
    return a


def trust_scores(source: UpdateSource, reference: Tensor) -> tuple[Tensor, Tensor, float]:
    """``(TS, ||g_i||, target norm)`` from the Gram of the rows and the reference, one
    row ``(p,)`` (FLTrust) or one per class ``(K, p)`` (module docstring), in one pass."""
    gram = source.gram_with(reference)
    raw = gram.raw()
    norms = raw.diagonal().clamp_min(0).sqrt()
    n = source.n
    if reference.ndim == 1:
        reference_norm = float(norms[n])
        denominator = (norms[:n] * reference_norm).clamp_min(TINY)
        return (raw[:n, n] / denominator).clamp(0.0, 1.0), norms[:n], reference_norm
    inner, products = raw[:n, n:], raw[n:, n:]
    a = nonnegative_fit(products, inner)
    explained = ((a @ products) * a).sum(dim=1).clamp_min(0).sqrt()
    trust = (a * inner).sum(dim=1) / (norms[:n] * explained).clamp_min(TINY)
    return trust.clamp(0.0, 1.0), norms[:n], float(norms[n:].mean())


RESCALES = ("reference", "clip", "median", "equal", "longer")
DEFAULT_RESCALE = "median"


@preaggregator(
    "anchor",
    needs=(1, 0),
    params={
        "reference": Typed(kind=Tensor, optional=True),
        "rescale": Choice(choices=RESCALES, optional=True),
    },
)
def anchor(
    source: UpdateSource,
    f: int,
    weights: Tensor,
    reference: Tensor | None = None,
    rescale: str | None = None,
) -> Preaggregated:
    r"""FLTrust's scoring (module docstring): rows longer than the round's median norm
    scaled down to it (``rescale``: the module docstring's four bounds; ``None``:
    ``"median"``, or the rule's own choice behind a strategy, ``Rule.anchored``), weights
    times :math:`TS_i`; ``f`` and the number of rows are kept (a distrusted row is the
    zero update with weight zero). ``reference`` is :math:`g_0` ``(p,)``, or one
    reference per class ``(K, p)`` for the per-class scoring; the strategy computes it
    each round (its ``anchor`` option). It refuses a round where it is missing, not
    finite or of another size, or where no update agrees with it."""
    if reference is None:
        raise InputRangeError(
            "anchor: no reference update this round; give the strategy anchor=<function>"
        )
    if reference.ndim not in (1, 2) or reference.shape[-1] != source.p or not reference.numel():
        raise InputRangeError(
            f"anchor: the reference update has shape {tuple(reference.shape)}, the updates "
            f"{source.p} parameters"
        )
    if not bool(torch.isfinite(reference).all()) or not bool(reference.any(dim=-1).all()):
        raise InputRangeError("anchor: the reference update is not finite, or zero")
    trust, norms, reference_norm = trust_scores(source, reference)
    trusted = trust * weights
    if float(trusted.sum()) <= 0:
        raise InputRangeError("anchor: no update has a positive cosine with the reference")
    rescale = rescale or DEFAULT_RESCALE
    median = float(norms.median())
    bound = {"median": median, "equal": median, "longer": max(median, reference_norm)}.get(
        rescale, reference_norm
    )
    scale = bound / norms.clamp_min(1e-300)
    if rescale in ("clip", "median"):  # only longer rows are scaled down to the bound
        scale = scale.clamp_max(1.0)
    scale = torch.where(trust > 0, scale, 0.0)
    diagnostics = {
        "trust": PerRow(trust.tolist()),
        "distrusted": Rows(torch.nonzero(trust == 0).flatten().tolist(), outvoted=True),
        "reference_norm": reference_norm,
    }
    mixed = source.mix(torch.diag(scale))
    return Preaggregated(mixed, f, trusted / trusted.sum(), diagnostics, list(range(source.n)))
