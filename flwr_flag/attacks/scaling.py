"""Updates rescaled or replaced by a constant: sign flip, scaling, zero, constant."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from flwr_flag.validation import Param, Real

from .base import AttackContext, Behaviour


class SignFlip(Behaviour):
    """Send ``-k g``: the honest update reversed and scaled by ``k > 0``."""

    name = "sign-flip"
    params: ClassVar[Mapping[str, Param]] = {"k": Real(0.0, low_open=True)}

    def __init__(self, k: float = 1.0) -> None:
        super().__init__(k=k)

    def update(self, honest: np.ndarray, context: AttackContext) -> np.ndarray:
        return -self.k * honest


class Scale(Behaviour):
    """Send ``k g`` for a factor ``k`` (any finite value; large ``k`` is the classic attack)."""

    name = "scale"
    params: ClassVar[Mapping[str, Param]] = {"k": Real()}

    def __init__(self, k: float = 10.0) -> None:
        super().__init__(k=k)

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
    params: ClassVar[Mapping[str, Param]] = {"c": Real()}

    def __init__(self, c: float = 1.0) -> None:
        super().__init__(c=c)

    def update(self, honest: np.ndarray, context: AttackContext) -> np.ndarray:
        return np.full_like(honest, self.c)
