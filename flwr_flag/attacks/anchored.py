r"""An attack on the server's trust anchor (FLTrust's own adaptive threat).

The server scores each update by its clipped cosine with a reference update
:math:`g_0` and rescales it to :math:`\|g_0\|` (:mod:`flwr_flag.rules.anchor`). An
update pointing away from :math:`g_0` counts for nothing, so reversing the honest
direction (sign flip, IPM) is wasted. What the anchor cannot see is a direction it has
no data about: an update at angle :math:`\theta` from :math:`\hat g_0`,

.. math::
    m = \|\hat g_0\| \left(\cos\theta\, \frac{\hat g_0}{\|\hat g_0\|}
        + \sin\theta\, u\right), \qquad u \perp \hat g_0,\ \|u\| = 1,

keeps trust :math:`\cos\theta` and pulls the aggregate by
:math:`\cos\theta \sin\theta\, \|g_0\|` along :math:`u` (most at 45 degrees). All
colluders use the same :math:`u`, drawn once from the run's seed and re-orthogonalised
each round, so the drift adds up round after round where a per-round cosine never
falls below :math:`\cos\theta`.

What the attacker knows: that the server uses an anchor, and an estimate
:math:`\hat g_0` of the reference. ``knowledge="own"`` estimates it as the mean of its
own honest updates (bootstrap resamples of its partition: what a node can compute);
``"population"`` uses honest nodes' updates of the round where a simulation can reach
them (the reference is trained on the same distribution, so this is near full
knowledge of :math:`g_0`'s direction); ``"reference"`` is full knowledge: the server's
own reference of the round, computed as the server does (the mean over classes for the
per-class anchor), so the per-round cosine is exactly :math:`\cos\theta`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from flwr_flag.validation import Choice, Integer, Param, Real

from .base import AttackContext, Behaviour


class AnchorDrift(Behaviour):
    """Stay at ``angle`` degrees from the estimated reference, drifting along one
    fixed direction orthogonal to it (module docstring)."""

    name = "anchor-drift"
    params: ClassVar[Mapping[str, Param]] = {
        "angle": Real(0.0, 90.0, low_open=True, high_open=True),
        "knowledge": Choice(choices=("own", "population", "reference")),
        "samples": Integer(2),
    }

    def __init__(self, angle: float = 45.0, knowledge: str = "own", samples: int = 4) -> None:
        super().__init__(angle=angle, knowledge=knowledge, samples=samples)

    def reference(self, context: AttackContext) -> np.ndarray:
        """The colluders' estimate of the server's reference update."""
        if self.knowledge == "reference" and context.anchor_reference is not None:
            return context.anchor_reference()
        if self.knowledge == "population" and context.population_samples is not None:
            return context.population_samples(self.samples).mean(axis=0)
        return context.honest_samples(self.samples).mean(axis=0)

    def update(self, honest: np.ndarray, context: AttackContext) -> np.ndarray:
        g0 = self.reference(context).astype(np.float64)
        norm = float(np.linalg.norm(g0))
        if norm == 0:
            return honest
        seed = int(context.run_config.get("seed", 0))
        drift = np.random.default_rng([seed, 0x0A1C]).standard_normal(g0.shape)
        unit = g0 / norm
        drift -= (drift @ unit) * unit
        drift /= max(float(np.linalg.norm(drift)), 1e-300)
        theta = np.deg2rad(self.angle)
        return (norm * (np.cos(theta) * unit + np.sin(theta) * drift)).astype(honest.dtype)
