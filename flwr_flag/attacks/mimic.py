"""Mimic (Karimireddy, He & Jaggi, 2022): all attackers send one honest node's update."""

from __future__ import annotations

import numpy as np

from flwr_flag.validation import check_int

from .base import AttackContext, Behaviour


class Mimic(Behaviour):
    """Send the honest update of partition ``target``, over-representing it (harmful
    under non-IID data). The attacker trains on ``target``'s data from the same start
    (``AttackContext.honest_update_for``): in a simulation every partition is on one
    machine; on a real host this needs the target's data or a copy of its update."""

    name = "mimic"
    needs = "another partition's training data"

    def __init__(self, target: int = 0) -> None:
        self.target = check_int("attack mimic", "target", target, 0)

    def update(self, honest: np.ndarray, context: AttackContext) -> np.ndarray:
        if self.target >= context.num_nodes:
            raise ValueError(
                f"attack mimic: target={self.target} is out of range; allowed "
                f"0 <= target < {context.num_nodes}"
            )
        return context.honest_update_for(self.target)
