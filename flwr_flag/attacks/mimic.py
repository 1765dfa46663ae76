"""Mimic (Karimireddy, He & Jaggi, 2022): all attackers send one honest node's update."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from flwr_flag.validation import Integer, Param

from .base import AttackContext, Behaviour


class Mimic(Behaviour):
    """Send the honest update of partition ``target``, over-representing it (harmful
    under non-IID data). The attacker trains on ``target``'s data from the same start
    (``AttackContext.honest_update_for``): in a simulation every partition is on one
    machine; on a real host this needs the target's data or a copy of its update."""

    name = "mimic"
    needs = "another partition's training data"

    params: ClassVar[Mapping[str, Param]] = {"target": Integer(0)}

    def __init__(self, target: int = 0) -> None:
        super().__init__(target=target)

    def update(self, honest: np.ndarray, context: AttackContext) -> np.ndarray:
        if self.target >= context.num_nodes:
            raise ValueError(
                f"attack mimic: target={self.target} is out of range; allowed "
                f"0 <= target < {context.num_nodes}"
            )
        return context.honest_update_for(self.target)
