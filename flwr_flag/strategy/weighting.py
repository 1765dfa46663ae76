"""How much each valid reply counts: once (the robust default), or by its claimed size.

A reply's ``num-examples`` is the client's own word. Robust rules are defined on
unweighted updates (every paper's rule counts each input once), and handing them
self-reported counts as weights lets ``f`` clients outvote the rest by claiming large
datasets: with ``n = 10`` and ``f = 2`` claiming ``1e9`` examples, a weighted geometric
median or CTMA lands on the attackers. So:

* ``"uniform"`` (default of every robust strategy): each valid reply has weight
  ``1 / n``; ``num-examples`` only has to be a well-formed positive number.
* ``"num-examples"``: weights proportional to the claimed counts, **trusting the
  clients**, each clipped to ``max_weight_ratio`` times the (lower) median claim. With the cap
  ``c`` and honest replies at the median, ``f`` liars hold at most
  ``f c / (f c + n - f)`` of the weight; the rule's breakdown point must exceed that
  (``c = 2``, ``f / n = 0.2``: one third). ``max_weight_ratio=None`` removes the cap
  (Flower's FedAvg; our ``Mean`` baseline uses it).

Weights are normalised first (by the median claim under a cap, by the largest claim
without one), so no claim between ``5e-324`` and ``1.8e308`` can overflow or zero the sum.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

WEIGHTINGS = ("uniform", "num-examples")
DEFAULT_MAX_WEIGHT_RATIO = 2.0


def reply_weights(
    counts: Sequence[float], weighting: str, max_weight_ratio: float | None
) -> Tensor | None:
    """Normalised float64 weights of the replies (``None``: uniform).

    ``counts`` are finite and positive (the reply checks guarantee it).
    """
    if weighting == "uniform":
        return None
    w = torch.tensor([float(c) for c in counts], dtype=torch.float64)
    if max_weight_ratio is None:
        w = w / w.max()
    else:
        # Relative to the median claim: a claim that overflows to inf is clipped like
        # any other, and the median's own weight 1 keeps the sum away from zero however
        # small the claims (normalising by the maximum first would underflow them all).
        w = (w / w.median()).clamp(max=max_weight_ratio)
    return w / w.sum()
