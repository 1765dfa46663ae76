"""Attacks built from an estimate of the honest updates: ALIE, IPM, min-max, min-sum.

The estimate comes from the attacker's own data: it trains ``samples`` honest updates
on bootstrap resamples of its partition (``AttackContext.honest_samples``) and uses
their coordinate-wise mean ``mu`` and standard deviation ``sigma``. That is what a
colluding attacker on one SuperNode can compute without seeing anyone's replies; all
colluding nodes that share data characteristics end up with similar estimates.
"""

from __future__ import annotations

from collections.abc import Mapping
from statistics import NormalDist
from typing import ClassVar

import numpy as np

from flwr_flag.validation import Choice, Integer, Param, Real

from .base import AttackContext, Behaviour


def alie_z(num_nodes: int, num_byzantine: int) -> float:
    r"""Baruch et al. (2019): :math:`s = \lfloor n/2 + 1 \rfloor - f`,
    :math:`z = \Phi^{-1}((n - s) / n)`."""
    s = num_nodes // 2 + 1 - num_byzantine
    return NormalDist().inv_cdf(min(max((num_nodes - s) / num_nodes, 1e-6), 1 - 1e-6))


class _Estimating(Behaviour):
    params: ClassVar[Mapping[str, Param]] = {"samples": Integer(2)}

    def estimate(self, context: AttackContext) -> tuple[np.ndarray, np.ndarray]:
        updates = context.honest_samples(self.samples)
        return updates.mean(axis=0), updates.std(axis=0)


class ALIE(_Estimating):
    """A little is enough (Baruch et al., 2019): send ``mu - z sigma``.

    ``z`` defaults to the paper's value from the number of nodes ``n`` and Byzantine
    nodes ``f`` of the run (:func:`alie_z`).
    """

    name = "alie"

    params: ClassVar[Mapping[str, Param]] = {"z": Real(optional=True), **_Estimating.params}

    def __init__(self, z: float | None = None, samples: int = 4) -> None:
        super().__init__(z=z, samples=samples)

    def update(self, honest: np.ndarray, context: AttackContext) -> np.ndarray:
        mu, sigma = self.estimate(context)
        z = self.z if self.z is not None else alie_z(context.num_nodes, context.num_byzantine)
        return mu - z * sigma


class IPM(_Estimating):
    """Inner-product manipulation (Xie, Koyejo & Gupta, 2020): send ``-epsilon mu``."""

    name = "ipm"

    params: ClassVar[Mapping[str, Param]] = {
        "epsilon": Real(0.0, low_open=True),
        **_Estimating.params,
    }

    def __init__(self, epsilon: float = 0.1, samples: int = 4) -> None:
        super().__init__(epsilon=epsilon, samples=samples)

    def update(self, honest: np.ndarray, context: AttackContext) -> np.ndarray:
        return -self.epsilon * self.estimate(context)[0]


class MinMax(_Estimating):
    r"""Min-max (Shejwalkar & Houmansadr, 2021): ``mu + gamma p`` with the largest
    ``gamma`` such that the malicious update is no farther from any benign sample than
    the benign samples are from each other:
    :math:`\max_i \|m - g_i\| \le \max_{i,j} \|g_i - g_j\|`.

    ``perturbation``: ``"std"`` (:math:`p = -\sigma`), ``"unit"``
    (:math:`-\mu / \|\mu\|`) or ``"sign"`` (:math:`-\mathrm{sign}(\mu)`). ``gamma`` is
    found by bisection on ``[0, gamma_max]``.
    """

    name = "min-max"

    params: ClassVar[Mapping[str, Param]] = {
        "perturbation": Choice(choices=("std", "unit", "sign")),
        "gamma_max": Real(0.0, low_open=True),
        **_Estimating.params,
    }

    def __init__(
        self, perturbation: str = "std", gamma_max: float = 50.0, samples: int = 4
    ) -> None:
        super().__init__(perturbation=perturbation, gamma_max=gamma_max, samples=samples)

    @staticmethod
    def accepts(malicious: np.ndarray, benign: np.ndarray) -> bool:
        to_benign = np.linalg.norm(benign - malicious, axis=1)
        spread = np.linalg.norm(benign[:, None] - benign[None], axis=2)
        return bool(to_benign.max() <= spread.max())

    def update(self, honest: np.ndarray, context: AttackContext) -> np.ndarray:
        benign = context.honest_samples(self.samples)
        mu, sigma = benign.mean(axis=0), benign.std(axis=0)
        direction = {
            "std": -sigma,
            "unit": -mu / max(float(np.linalg.norm(mu)), 1e-12),
            "sign": -np.sign(mu),
        }[self.perturbation]
        lo, hi = 0.0, self.gamma_max
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if self.accepts(mu + mid * direction, benign) else (lo, mid)
        return (mu + lo * direction).astype(honest.dtype)


class MinSum(MinMax):
    r"""Min-sum (Shejwalkar & Houmansadr, 2021): as :class:`MinMax` with the condition
    :math:`\sum_i \|m - g_i\|^2 \le \max_i \sum_j \|g_i - g_j\|^2`."""

    name = "min-sum"

    @staticmethod
    def accepts(malicious: np.ndarray, benign: np.ndarray) -> bool:
        to_benign = np.square(benign - malicious).sum()
        spread = np.square(benign[:, None] - benign[None]).sum(axis=(1, 2))
        return bool(to_benign <= spread.max())
