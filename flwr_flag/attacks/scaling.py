"""Updates rescaled or replaced by a constant: sign flip, scaling, zero, constant."""

from __future__ import annotations

import numpy as np

from flwr_flag.validation import check_float

from .base import AttackContext, Behaviour


class SignFlip(Behaviour):
    """Send ``-k g``: the honest update reversed and scaled by ``k > 0``."""

    name = "sign-flip"

    def __init__(self, k: float = 1.0) -> None:
        self.k = check_float("attack sign-flip", "k", k, 0.0, low_open=True)

    def update(self, honest: np.ndarray, context: AttackContext) -> np.ndarray:
        return -self.k * honest


class Scale(Behaviour):
    """Send ``k g`` for a factor ``k`` (any finite value; large ``k`` is the classic attack)."""

    name = "scale"

    def __init__(self, k: float = 10.0) -> None:
        self.k = check_float("attack scale", "k", k)

    def update(self, honest: np.ndarray, context: AttackContext) -> np.ndarray:
        return self.k * honest


class Zero(Behaviour):
    """Send a zero update (a free rider)."""

    name = "zero"

    def update(self, honest: np.ndarray, context: AttackContext) -> np.ndarray:
        return np.zeros_like(honest)


class Constant(Behaviour):
    """Send an update whose every coordinate is ``c``."""

    name = "constant"

    def __init__(self, c: float = 1.0) -> None:
        self.c = check_float("attack constant", "c", c)

    def update(self, honest: np.ndarray, context: AttackContext) -> np.ndarray:
        return np.full_like(honest, self.c)
