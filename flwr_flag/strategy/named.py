"""One Message-API strategy per rule; each only names its rule.

Every class takes ``num_byzantine`` and keyword options as :class:`RobustStrategy`
does; the rule's own hyperparameters are documented on the rule function named below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, ClassVar

from .detox import Detox
from .robust import RobustStrategy


class Mean(RobustStrategy):
    """Mean of the updates weighted by the clients' ``num-examples``, uncapped: Flower's
    FedAvg on updates, the non-robust baseline (:func:`flwr_flag.rules.mean.mean`).

    Unlike every robust strategy it trusts the claimed counts by default
    (``weighting="num-examples"``, ``max_weight_ratio=None``), as FedAvg does; pass
    ``weighting="uniform"`` to count each reply once."""

    rule = "mean"
    defaults: ClassVar[Mapping[str, Any]] = {
        "weighting": "num-examples",
        "max_weight_ratio": None,
    }


class Median(RobustStrategy):
    """Coordinate-wise median (:func:`flwr_flag.rules.coordinate.median`)."""

    rule = "median"


class TrimmedMean(RobustStrategy):
    """Coordinate-wise trimmed mean (:func:`flwr_flag.rules.coordinate.trimmed_mean`)."""

    rule = "trimmed-mean"


class MeaMed(RobustStrategy):
    """Mean around the coordinate median (:func:`flwr_flag.rules.coordinate.meamed`)."""

    rule = "meamed"


class Krum(RobustStrategy):
    """Krum (:func:`flwr_flag.rules.krum.krum`)."""

    rule = "krum"


class MultiKrum(RobustStrategy):
    """Multi-Krum (:func:`flwr_flag.rules.krum.multi_krum`)."""

    rule = "multi-krum"


class Bulyan(RobustStrategy):
    """Bulyan over Krum (:func:`flwr_flag.rules.krum.bulyan`)."""

    rule = "bulyan"


class GeometricMedian(RobustStrategy):
    """Geometric median by smoothed Weiszfeld (:func:`flwr_flag.rules.geomed.geometric_median`)."""

    rule = "geomed"


class CenteredClipping(RobustStrategy):
    """Centered clipping around the previous aggregate, which the strategy keeps
    (:func:`flwr_flag.rules.clipping.centered_clipping`)."""

    rule = "centered-clipping"


class FlagAggregator(RobustStrategy):
    """Flag Aggregator, IRLS subspace aggregation (:func:`flwr_flag.rules.flag.flag_aggregator`)."""

    rule = "flag"


class CTMA(RobustStrategy):
    """Centered trimmed meta-aggregator over a base rule (:func:`flwr_flag.rules.ctma.ctma`).

    NNM runs before it unless ``pre`` says otherwise (``pre=()``: CTMA alone), as the
    CTMA paper pairs them. On heterogeneous data an attacker who knows CTMA places its
    updates just inside what CTMA keeps and pulls the mean of the kept by f/(n - f)
    times the honest spread; NNM's mixing shrinks that spread (field study, 3 seeds,
    worst case 70.7 -> 80.5 % at Dirichlet 0.5, 19.7 -> 33.3 % at 0.1, IID clean
    accuracy unchanged;
    ``benchmarks/results/field.md``). NNM's mixed rows reuse the Gram matrix: no extra
    pass.
    """

    rule = "ctma"


class FLTrust(RobustStrategy):
    """FLTrust (Cao et al., NDSS 2021): the trust-weighted mean of the updates rescaled
    to the server's reference update (:mod:`flwr_flag.rules.anchor`). It needs
    ``anchor``, the server's local training on its trusted data; each valid reply
    counts once before its trust. Every other strategy takes ``anchor`` too, and then
    runs its rule on the scored rows. FLTrust scales every row to the reference's norm,
    as the paper does; the ``anchor`` step's default scales rows longer than the
    round's median norm down to it."""

    rule = "mean"
    requires = ("anchor",)
    defaults: ClassVar[Mapping[str, Any]] = {"pre": [("anchor", {"rescale": "reference"})]}


class MDA(RobustStrategy):
    """Minimum diameter averaging (:func:`flwr_flag.rules.subsets.minimum_diameter_averaging`)."""

    rule = "mda"


class SMEA(RobustStrategy):
    """Smallest maximum eigenvalue averaging
    (:func:`flwr_flag.rules.subsets.smallest_maximum_eigenvalue_averaging`)."""

    rule = "smea"


class CAF(RobustStrategy):
    """Covariance-bound agnostic filter
    (:func:`flwr_flag.rules.filtering.covariance_agnostic_filter`)."""

    rule = "caf"


class MoNNA(RobustStrategy):
    """Mean of the nearest neighbours of a trusted reply (:func:`flwr_flag.rules.mixing.monna`)."""

    rule = "monna"


STRATEGIES: dict[str, type[RobustStrategy]] = {
    cls.rule: cls
    for cls in (
        Mean,
        Median,
        TrimmedMean,
        MeaMed,
        Krum,
        MultiKrum,
        Bulyan,
        GeometricMedian,
        CenteredClipping,
        FlagAggregator,
        CTMA,
        MDA,
        SMEA,
        CAF,
        MoNNA,
        Detox,
    )
}
"""Rule name -> Message-API strategy class, for the rules that have a named class
(:class:`FLTrust`, a configuration of ``mean``, is not one of them)."""


def strategy_for(rule: str) -> Callable[..., RobustStrategy]:
    """The named class of ``rule``, or :class:`RobustStrategy` running it (a rule
    registered without a class of its own works everywhere a name is taken)."""
    return STRATEGIES.get(rule) or partial(RobustStrategy, rule=rule)
