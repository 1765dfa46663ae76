"""Random updates: Gaussian noise and the FA paper's uniform [0, 1) values."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from flwr_flag.validation import Choice, Param, Real

from .base import AttackContext, Behaviour


class Gaussian(Behaviour):
    """``mode="add"``: ``g + N(0, sigma^2 I)``; ``mode="replace"``: ``N(0, sigma^2 I)``."""

    name = "gaussian"

    params: ClassVar[Mapping[str, Param]] = {
        "sigma": Real(0.0),
        "mode": Choice(choices=("add", "replace")),
    }

    def __init__(self, sigma: float = 1.0, mode: str = "add") -> None:
        super().__init__(sigma=sigma, mode=mode)

    def update(self, honest: np.ndarray, context: AttackContext) -> np.ndarray:
        noise = context.rng.normal(0.0, self.sigma, size=honest.shape).astype(honest.dtype)
        return honest + noise if self.mode == "add" else noise


class Random(Behaviour):
    """Replace the update with i.i.d. uniform [0, 1) values, as in the FA paper."""

    name = "random"

    def update(self, honest: np.ndarray, context: AttackContext) -> np.ndarray:
        return context.rng.random(size=honest.shape).astype(honest.dtype)
