r"""Rule-aware attacks: colluders who know the server's rule choose their updates against it.

**What the colluders know** (every attack of this module):

* the server's aggregation -- rule, hyperparameters, pre-aggregators and
  ``num-byzantine`` -- from the run config that Flower gives every node, or from the
  attack's own ``rule`` parameter when the server sets its rule in code (the rule's
  other settings still come from the run config's sections, defaults otherwise);
* a round's size: ``fraction-train`` of the ``num-partitions`` nodes, at least
  ``min-train-nodes`` (Flower's sampling), of which their share of the population are
  colluders (at least one);
* estimates of the honest updates, ``samples`` of them (default: the honest replies a
  round has), by ``knowledge``:

  - ``"population"``: the updates of honest nodes drawn at random each round, trained
    with the attacker's own optimizer and state. That is knowledge of the data
    distribution (Fang et al. 2020's *full knowledge* without this round's replies);
    a simulation reaches it because every partition lives on one machine;
  - ``"own"``: bootstrap resamples of the attacker's own data (*partial knowledge*;
    the only kind :func:`~flwr_flag.attacks.byzantine_mod` can reach).

They never see this round's replies. Each attack simulates the round: the estimates
stand for the honest replies, each candidate for the colluders' replies, the server's
rule aggregates them, and the colluders send the candidate whose aggregate lands
farthest from the estimates' mean :math:`\hat\mu` (the objective of ByzFL's "optimal"
attacks). A rule with round state runs without it (centered clipping from zero).

Cost per round and attacker: ``samples`` honest trainings, plus one call of the rule on
an ``(n, p)`` stack per candidate (about ten).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..validation import Choice, Integer, Param, Real, Text
from .base import AttackContext, Behaviour, digest, shared
from .colluding import alie_z


@dataclass(frozen=True)
class SimulatedRound:
    """A round as the colluders picture it: ``honest`` estimates ``(k, p)``, ``colluders``
    replies of theirs, and the server's rule ``aggregate`` on a stacked ``(n, p)``."""

    honest: np.ndarray
    colluders: int
    aggregate: Callable[[np.ndarray], np.ndarray]

    @property
    def mean(self) -> np.ndarray:
        return self.honest.mean(axis=0)

    def stack(self, malicious: np.ndarray) -> np.ndarray:
        """The round's replies: the estimates and the colluders' rows (one vector is sent
        by all of them)."""
        rows = np.broadcast_to(malicious, (self.colluders, self.honest.shape[1]))
        return np.concatenate([self.honest, rows])

    def damage(self, malicious: np.ndarray) -> float:
        r""":math:`\|\mathrm{rule}(\text{replies}) - \hat\mu\|`."""
        return float(np.linalg.norm(self.aggregate(self.stack(malicious)) - self.mean))

    def worst(self, candidates: Iterable[np.ndarray]) -> np.ndarray:
        """The candidate that does the most damage (the first, among equals)."""
        return max(candidates, key=self.damage)


def round_shape(context: AttackContext) -> tuple[int, int]:
    """``(replies, colluders)`` the colluders expect in a round (see the module docstring)."""
    config, nodes = context.run_config, context.num_nodes
    replies = max(
        int(nodes * float(config.get("fraction-train", 1.0))),
        int(config.get("min-train-nodes", 2)),
    )
    replies = min(replies, nodes)
    colluders = max(1, round(replies * context.num_byzantine / nodes))
    return replies, min(colluders, replies - 1)


def server_rule(
    context: AttackContext, rule: str | None, reference: np.ndarray | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    """The server's aggregation on a stacked ``(n, p)`` array, from the run config
    (``rule`` overrides its ``rule`` key); ``f`` as the server takes it for ``n``. With
    the server's trust-anchor ``reference`` (``(p,)``, or ``(K, p)`` per class), the
    anchor step comes first with the run config's ``anchor.*`` settings, and the rule
    behind it takes its own settings there (``Rule.anchored``)."""
    import torch

    from ..config import rule_from_config
    from ..rules import aggregate, get_rule
    from ..rules.registry import ROUND_STATE, split_step
    from ..runconfig import section
    from ..validation import byzantine_count

    name, params, pre, num_byzantine = rule_from_config(context.run_config, rule)
    if any(ROUND_STATE[key].needs_strategy for key in get_rule(name).state):
        raise ValueError(
            f"rule-aware attacks cannot simulate rule={name!r}: its rounds need the "
            "strategy's state; set the attack's rule parameter to its stage rule"
        )
    if reference is not None:
        anchor = {**section(context.run_config, "anchor"), "reference": torch.from_numpy(reference)}
        others = [step for step in pre if split_step(step)[0] != "anchor"]
        params, pre = get_rule(name).behind_anchor(params, [("anchor", anchor), *others])

    def run(updates: np.ndarray) -> np.ndarray:
        f = byzantine_count(num_byzantine, len(updates))
        stacked = torch.from_numpy(np.ascontiguousarray(updates, dtype=np.float64))
        return aggregate(stacked, name, f, pre=pre, **params).vector.numpy()

    return run


class _RuleAware(Behaviour):
    """Simulates the round against the server's rule (module docstring); subclasses
    give the candidates."""

    params: ClassVar[Mapping[str, Param]] = {
        "rule": Text(optional=True),
        "knowledge": Choice(choices=("population", "own")),
        "samples": Integer(2, optional=True),
    }

    def __init__(
        self,
        rule: str | None = None,
        knowledge: str = "population",
        samples: int | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(rule=rule, knowledge=knowledge, samples=samples, **extra)
        if rule is not None:
            from ..rules.registry import RuleName

            RuleName().check(f"attack {self.name}", "rule", rule)

    @property
    def needs(self) -> str | None:  # type: ignore[override]
        if self.knowledge == "population":
            return "other nodes' training data (knowledge='population'; 'own' does not)"
        return None

    def estimates(self, context: AttackContext) -> np.ndarray:
        """The honest updates as the colluders know them, ``(k, p)`` float64."""
        replies, colluders = round_shape(context)
        k = self.samples or replies - colluders
        if self.knowledge == "population":
            if context.population_samples is None:
                raise ValueError(f"attack {self.name}: knowledge='population' is not reachable")
            return context.population_samples(k).astype(np.float64)
        return context.honest_samples(k).astype(np.float64)

    def simulated(self, context: AttackContext) -> SimulatedRound:
        colluders = round_shape(context)[1]
        return SimulatedRound(self.estimates(context), colluders, server_rule(context, self.rule))

    def candidates(self, simulated: SimulatedRound) -> Iterable[np.ndarray]:
        raise NotImplementedError

    def update(self, honest: np.ndarray, context: AttackContext) -> np.ndarray:
        simulated = self.simulated(context)
        known = (
            self.name,
            tuple(sorted(self.describe().items())),
            simulated.colluders,
            digest(simulated.honest),
            tuple(sorted(context.run_config.items())),
        )
        chosen = shared(known, lambda: simulated.worst(self.candidates(simulated)))
        return chosen.astype(honest.dtype)


SCALES = (0.1, 0.2, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0)
"""The scales the tuned ALIE and IPM try (the papers' values among them)."""


class TunedALIE(_RuleAware):
    r"""ALIE with its scale chosen against the rule: :math:`\hat\mu - z \hat\sigma` for
    the :math:`z` of :data:`SCALES` and the paper's :func:`~.colluding.alie_z` that moves
    the rule's aggregate farthest from :math:`\hat\mu`."""

    name = "alie-tuned"

    def candidates(self, simulated: SimulatedRound) -> Iterable[np.ndarray]:
        mu, sigma = simulated.mean, simulated.honest.std(axis=0)
        n = len(simulated.honest) + simulated.colluders
        return (mu - z * sigma for z in (alie_z(n, simulated.colluders), *SCALES))


class TunedIPM(_RuleAware):
    r"""IPM with its scale chosen against the rule: :math:`-\epsilon \hat\mu` for the
    :math:`\epsilon` of :data:`SCALES` that moves the aggregate farthest from
    :math:`\hat\mu`."""

    name = "ipm-tuned"

    def candidates(self, simulated: SimulatedRound) -> Iterable[np.ndarray]:
        return (-epsilon * simulated.mean for epsilon in SCALES)


class FangKrum(_RuleAware):
    r"""Fang et al. (2020), the full-knowledge attack on Krum, in update space:
    :math:`-\lambda\,\mathrm{sign}(\hat\mu)`, with :math:`\lambda` halved from the
    paper's upper bound

    .. math::
        \lambda_0 = \frac{1}{(n - 2c - 1)\sqrt{p}} \min_i \sum_{l \in \Gamma_i} \|g_l - g_i\|
                  + \frac{1}{\sqrt{p}} \max_i \|g_i\|

    (:math:`\Gamma_i` the :math:`n - c - 2` nearest estimates, :math:`c` colluders) until
    the rule's aggregate moves farthest (for Krum: the largest :math:`\lambda` it selects),
    at most ``halvings`` times."""

    name = "fang-krum"

    params: ClassVar[Mapping[str, Param]] = {
        **_RuleAware.params,
        "halvings": Integer(1),
    }

    def __init__(
        self,
        rule: str | None = None,
        knowledge: str = "population",
        samples: int | None = None,
        halvings: int = 16,
    ) -> None:
        super().__init__(rule, knowledge, samples, halvings=halvings)

    def candidates(self, simulated: SimulatedRound) -> Iterable[np.ndarray]:
        g, c = simulated.honest, simulated.colluders
        n, p = len(g) + c, g.shape[1]
        distances = np.linalg.norm(g[:, None] - g[None], axis=2)
        nearest = np.sort(distances, axis=1)[:, 1 : max(n - c - 1, 2)]
        lam = nearest.sum(axis=1).min() / (max(n - 2 * c - 1, 1) * math.sqrt(p))
        lam += np.linalg.norm(g, axis=1).max() / math.sqrt(p)
        direction = -np.sign(simulated.mean)
        return (lam * 0.5**j * direction for j in range(self.halvings + 1))


class FangTrim(_RuleAware):
    r"""Fang et al. (2020), the full-knowledge attack on trimmed mean and median: per
    coordinate :math:`j`, against the direction :math:`s_j = \mathrm{sign}(\hat\mu_j)`
    the honest updates move it, a value drawn uniformly beyond the honest extreme on the
    other side, by at most a factor ``b``: in :math:`[w_{\min,j}/b, w_{\min,j}]` (or
    :math:`[b\,w_{\min,j}, w_{\min,j}]` when :math:`w_{\min,j} < 0`) where
    :math:`s_j > 0`, mirrored with :math:`w_{\max,j}` where :math:`s_j \le 0`. Each
    colluder draws its own values. No search: the attack is built for coordinate-wise
    rules, and the rule does not enter."""

    name = "fang-trim"

    params: ClassVar[Mapping[str, Param]] = {
        **_RuleAware.params,
        "b": Real(1.0, low_open=True),
    }

    def __init__(
        self,
        rule: str | None = None,
        knowledge: str = "population",
        samples: int | None = None,
        b: float = 2.0,
    ) -> None:
        super().__init__(rule, knowledge, samples, b=b)

    def update(self, honest: np.ndarray, context: AttackContext) -> np.ndarray:
        g = self.estimates(context)
        up = g.mean(axis=0) > 0
        # below the lowest where the honest push up, above the highest elsewhere
        edge = np.where(up, g.min(axis=0), g.max(axis=0))
        outward = np.where(up, edge < 0, edge > 0)
        far = np.where(outward, edge * self.b, edge / self.b)
        return context.rng.uniform(np.minimum(edge, far), np.maximum(edge, far)).astype(
            honest.dtype
        )


class FlagFlip(_RuleAware):
    r"""Against FA (:mod:`flwr_flag.rules.flag`): its subspace cannot tell :math:`g`
    from :math:`-g`, and its IRLS weight :math:`(1 - v_i + \epsilon)^{-1/2}` is largest
    for what the subspace reconstructs. The colluders send

    .. math:: m = \kappa\,\nu\,(-\cos\theta\,\hat u + \sin\theta\,e)

    with :math:`\hat u = \hat\mu / \|\hat\mu\|`, :math:`\nu` the median norm of the
    estimates (FA clips every update to the median norm, so length beyond it is lost),
    and :math:`e` a unit direction orthogonal to the estimates' span (from a fixed seed:
    every colluder picks the same). At
    :math:`\theta = 0` the flipped mean lies in the honest span: it is reconstructed
    exactly, so FA's reweighting favours it instead of outvoting it, and only the
    geometric median after the projection stands against it; :math:`\theta > 0` adds a
    direction of its own that claims a dimension of the subspace from the honest
    updates. :math:`(\theta, \kappa)` over :data:`ANGLES` x ``(0.5, 1, 2)`` is chosen
    against the rule."""

    name = "flag-flip"

    ANGLES: ClassVar[tuple[float, ...]] = (0.0, math.pi / 8, math.pi / 4, 3 * math.pi / 8)

    def candidates(self, simulated: SimulatedRound) -> Iterable[np.ndarray]:
        g = simulated.honest
        nu = float(np.median(np.linalg.norm(g, axis=1)))
        mu = simulated.mean
        u = mu / max(float(np.linalg.norm(mu)), 1e-30)
        basis, _ = np.linalg.qr(g.T)  # the estimates' span, (p, k)
        e = np.random.default_rng(0).standard_normal(g.shape[1])
        e -= basis @ (basis.T @ e)
        e /= max(float(np.linalg.norm(e)), 1e-30)
        return (
            kappa * nu * (-math.cos(theta) * u + math.sin(theta) * e)
            for theta in self.ANGLES
            for kappa in (0.5, 1.0, 2.0)
        )


class CTMAInside(_RuleAware):
    r"""Against CTMA's trimming (:mod:`flwr_flag.rules.ctma`): CTMA keeps the updates
    closest to its anchor :math:`a` (the base rule's output). The colluders estimate
    :math:`\hat a`, and place their updates at
    :math:`\hat a - r\,\hat u` (:math:`\hat u = \hat\mu / \|\hat\mu\|`) with :math:`r`
    just inside what CTMA keeps: :math:`r` runs over the estimates' distances to
    :math:`\hat a` (times 0.95), and the simulated CTMA -- whose anchor moves with them
    -- picks the farthest aggregate. :math:`\hat a` is the rule's own output on the
    estimates (for CTMA, the mean of those closest to its anchor). Kept, they pull the
    mean against :math:`\hat\mu` and push the farthest honest updates out of it."""

    name = "ctma-inside"

    def candidates(self, simulated: SimulatedRound) -> Iterable[np.ndarray]:
        g = simulated.honest
        anchor = simulated.aggregate(g)
        mu = simulated.mean
        u = mu / max(float(np.linalg.norm(mu)), 1e-30)
        radii = 0.95 * np.sort(np.linalg.norm(g - anchor, axis=1))
        return (anchor - r * u for r in radii)
