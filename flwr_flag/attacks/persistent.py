r"""Attacks on per-node history (:mod:`flwr_flag.rules.history`): a consistent drift,
and a sleeper that builds an honest history first.

History keeps every known node's last update and holds a returning node within a
consistency radius of it. Two ways around it:

* **consistent**: the same push every round, from inside the honest spread. The
  colluders send :math:`\hat\mu + z\, \hat\sigma \odot s` with a sign pattern
  :math:`s \in \{\pm 1\}^p` drawn once from the run's seed: each sampling moves the
  node only as far as the honest estimate moves, so the consistency bound never binds,
  and the push along :math:`s` adds up round after round instead of averaging out.
  ``direction="fresh"`` draws :math:`s` anew each round: the naive version, whose moves
  the bound clips and whose pushes cancel over rounds.
* **sleeper**: honest for ``rounds`` rounds, then consistent. It targets a defence that
  trusts a node for its past (a reputation, a ban list). History clips and never bans,
  so the sleeper's honest past only holds its first attacking update closer to honest:
  ``tests/test_history.py`` measures that it does no more damage than attacking from
  round 1.

What the attacker knows: that the server keeps history, and an estimate
:math:`(\hat\mu, \hat\sigma)` of the honest updates: from bootstrap resamples of its
own partition (``knowledge="own"``), or honest nodes' updates of the round where a
simulation can reach them (``"population"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from flwr_flag.validation import Choice, Integer, Param, Real

from .base import AttackContext, Behaviour


class Consistent(Behaviour):
    """Send ``mu + z sigma * s``, ``s`` a sign pattern fixed for the run (module
    docstring); ``direction="fresh"``: a new ``s`` each round."""

    name = "consistent"
    params: ClassVar[Mapping[str, Param]] = {
        "z": Real(0.0, low_open=True),
        "direction": Choice(choices=("fixed", "fresh")),
        "knowledge": Choice(choices=("own", "population")),
        "samples": Integer(2),
    }

    def __init__(
        self, z: float = 1.0, direction: str = "fixed", knowledge: str = "own", samples: int = 4
    ) -> None:
        super().__init__(z=z, direction=direction, knowledge=knowledge, samples=samples)

    def push(self, size: int, context: AttackContext) -> np.ndarray:
        """The sign pattern ``s`` of this round (the same for every colluder)."""
        seed = int(context.run_config.get("seed", 0))
        draw = [seed, 0xC0517] + ([context.server_round] if self.direction == "fresh" else [])
        return np.where(np.random.default_rng(draw).random(size) < 0.5, -1.0, 1.0)

    def update(self, honest: np.ndarray, context: AttackContext) -> np.ndarray:
        if self.knowledge == "population" and context.population_samples is not None:
            samples = context.population_samples(self.samples)
        else:
            samples = context.honest_samples(self.samples)
        mu, sigma = samples.mean(axis=0), samples.std(axis=0)
        return (mu + self.z * sigma * self.push(honest.size, context)).astype(honest.dtype)


class Sleeper(Consistent):
    """Honest for ``rounds`` rounds, then :class:`Consistent` (module docstring)."""

    name = "sleeper"
    params: ClassVar[Mapping[str, Param]] = {"rounds": Integer(0), **Consistent.params}

    def __init__(
        self,
        rounds: int = 10,
        z: float = 1.0,
        direction: str = "fixed",
        knowledge: str = "own",
        samples: int = 4,
    ) -> None:
        Behaviour.__init__(
            self, rounds=rounds, z=z, direction=direction, knowledge=knowledge, samples=samples
        )

    def update(self, honest: np.ndarray, context: AttackContext) -> np.ndarray:
        if context.server_round <= self.rounds:
            return honest
        return super().update(honest, context)
