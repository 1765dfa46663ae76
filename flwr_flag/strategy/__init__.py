"""Flower strategies on the robust aggregation engine (Message API and legacy)."""

from .checkpoint import Checkpoint, CheckpointStore
from .core import RobustCore
from .detox import Detox
from .named import (
    CAF,
    CTMA,
    MDA,
    SMEA,
    STRATEGIES,
    Bulyan,
    CenteredClipping,
    FlagAggregator,
    FLTrust,
    GeometricMedian,
    Krum,
    MeaMed,
    Mean,
    Median,
    MoNNA,
    MultiKrum,
    TrimmedMean,
)
from .robust import RobustStrategy

__all__ = [
    "CAF",
    "CTMA",
    "MDA",
    "SMEA",
    "STRATEGIES",
    "Bulyan",
    "CenteredClipping",
    "Checkpoint",
    "CheckpointStore",
    "Detox",
    "FLTrust",
    "FlagAggregator",
    "GeometricMedian",
    "Krum",
    "MeaMed",
    "Mean",
    "Median",
    "MoNNA",
    "MultiKrum",
    "RobustCore",
    "RobustStrategy",
    "TrimmedMean",
]
