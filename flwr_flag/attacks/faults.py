"""Faults rather than attacks: NaN, Inf, bit flips, crash, straggle, drop."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from flwr_flag.validation import Integer, Param, Real

from .base import AttackContext, Behaviour


class NaN(Behaviour):
    """Send an update full of NaN."""

    name = "nan"

    def update(self, honest: np.ndarray, context: AttackContext) -> np.ndarray:
        return np.full_like(honest, np.nan)


class Inf(Behaviour):
    """Send an update full of +Inf."""

    name = "inf"

    def update(self, honest: np.ndarray, context: AttackContext) -> np.ndarray:
        return np.full_like(honest, np.inf)


class BitFlip(Behaviour):
    """Flip ``bits`` distinct random bits of the float32 payload (memory or link faults;
    a flipped exponent bit can make a value huge, Inf or NaN)."""

    name = "bit-flip"

    params: ClassVar[Mapping[str, Param]] = {"bits": Integer(1)}

    def __init__(self, bits: int = 10) -> None:
        super().__init__(bits=bits)

    def update(self, honest: np.ndarray, context: AttackContext) -> np.ndarray:
        payload = honest.astype(np.float32).copy()
        words = payload.view(np.uint32)
        positions = context.rng.choice(
            words.size * 32, size=min(self.bits, words.size * 32), replace=False
        )
        np.bitwise_xor.at(words, positions // 32, (1 << (positions % 32)).astype(np.uint32))
        return payload


class Crash(Behaviour):
    """Raise in the ClientApp: the server receives an error reply."""

    name = "crash"

    def before_reply(self, context: AttackContext) -> None:
        raise RuntimeError(f"simulated crash (round {context.server_round})")


class Straggle(Behaviour):
    """Sleep ``seconds`` before replying honestly (past the round timeout, the reply
    is too late to count)."""

    name = "straggle"

    params: ClassVar[Mapping[str, Param]] = {"seconds": Real(0.0)}

    def __init__(self, seconds: float = 30.0) -> None:
        super().__init__(seconds=seconds)

    def before_reply(self, context: AttackContext) -> None:
        time.sleep(self.seconds)


class Drop(Behaviour):
    """Send no reply. The in-process runner delivers nothing; Flower's runtimes report
    the handler's missing reply as a failure of that node."""

    name = "drop"

    def update(self, honest: np.ndarray, context: AttackContext) -> None:
        return None
