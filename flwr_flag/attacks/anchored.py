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

**Tuned** (``angle=None``): the colluders also know the server's rule and the anchor's
settings from the run config, as the rule-aware attacks do
(:mod:`flwr_flag.attacks.aware`), and choose the angle and the length each round
against them. They simulate the round -- their estimates of the honest updates, their
own rows, the server's anchor with :math:`\hat g_0` and the rule behind it -- for
:math:`\theta` over :data:`AnchorDrift.ANGLES` and :math:`\|m\|` over
:math:`\|\hat g_0\|` and the estimates' median and largest norms, and send the
candidate that moves the aggregate farthest along :math:`u`: the drift is what adds up
over the rounds (a candidate that only shortens the aggregate, as a row at the
reference's short length does, slows training without steering it). A fixed 45 degrees at
:math:`\|\hat g_0\|` is optimal against FLTrust's own rule only: where the anchor
bounds rows by the round's median norm, a row at the median is longer than the
reference trained on a few samples, and a robust rule behind the anchor changes which
angle pulls most.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from flwr_flag.validation import Choice, Integer, Param, Real

from .aware import SimulatedRound, round_shape, server_rule
from .base import AttackContext, Behaviour, digest, shared


class AnchorDrift(Behaviour):
    """Stay at ``angle`` degrees from the estimated reference, drifting along one
    fixed direction orthogonal to it; ``angle=None``: angle and length tuned against
    the server's anchored rule each round (module docstring)."""

    name = "anchor-drift"
    params: ClassVar[Mapping[str, Param]] = {
        "angle": Real(0.0, 90.0, low_open=True, high_open=True, optional=True),
        "knowledge": Choice(choices=("own", "population", "reference")),
        "samples": Integer(2),
    }
    ANGLES: ClassVar[tuple[float, ...]] = (30.0, 45.0, 60.0, 70.0, 80.0, 85.0)
    """The angles (degrees) the tuned attack tries."""

    def __init__(
        self, angle: float | None = 45.0, knowledge: str = "own", samples: int = 4
    ) -> None:
        super().__init__(angle=angle, knowledge=knowledge, samples=samples)

    def reference(self, context: AttackContext) -> np.ndarray:
        """The colluders' estimate of the server's reference update: ``(p,)``, or the
        server's own ``(K, p)`` per-class references where they know them."""
        if self.knowledge == "reference" and context.anchor_reference is not None:
            return context.anchor_reference()
        if self.knowledge == "population" and context.population_samples is not None:
            return context.population_samples(self.samples).mean(axis=0)
        return context.honest_samples(self.samples).mean(axis=0)

    def estimates(self, context: AttackContext, count: int) -> np.ndarray:
        """The honest updates as the tuned attack pictures them, ``(count, p)``: the
        population's where it knows more than its own data and can reach them."""
        if self.knowledge != "own" and context.population_samples is not None:
            return context.population_samples(count).astype(np.float64)
        return context.honest_samples(count).astype(np.float64)

    def update(self, honest: np.ndarray, context: AttackContext) -> np.ndarray:
        server = self.reference(context).astype(np.float64)
        g0 = server.mean(axis=0) if server.ndim == 2 else server
        norm = float(np.linalg.norm(g0))
        if norm == 0:
            return honest
        seed = int(context.run_config.get("seed", 0))
        drift = np.random.default_rng([seed, 0x0A1C]).standard_normal(g0.shape)
        unit = g0 / norm
        drift -= (drift @ unit) * unit
        drift /= max(float(np.linalg.norm(drift)), 1e-300)

        def row(degrees: float, length: float) -> np.ndarray:
            theta = math.radians(degrees)
            return length * (math.cos(theta) * unit + math.sin(theta) * drift)

        if self.angle is not None:
            return row(self.angle, norm).astype(honest.dtype)
        replies, colluders = round_shape(context)
        simulated = SimulatedRound(
            self.estimates(context, replies - colluders),
            colluders,
            server_rule(context, None, server),
        )

        def pull(candidate: np.ndarray) -> float:
            return float(simulated.aggregate(simulated.stack(candidate)) @ drift)

        def choose() -> np.ndarray:
            lengths = np.linalg.norm(simulated.honest, axis=1)
            sizes = (norm, float(np.median(lengths)), float(lengths.max()))
            return max((row(a, size) for a in self.ANGLES for size in sizes), key=pull)

        known = (
            self.name,
            digest(simulated.honest, server),
            tuple(sorted(context.run_config.items())),
        )
        return shared(known, choose).astype(honest.dtype)
