"""flwr-flag: Byzantine-robust aggregation for Flower, on CPU or GPU.

``from flwr_flag import FlagAggregator`` gives a Flower Message-API strategy;
``flwr_flag.legacy`` has the same classes for the legacy API; ``flwr_flag.rules`` holds
the aggregation rules as plain torch functions.
"""

from importlib.metadata import PackageNotFoundError, version

from .config import strategy_from_config
from .rules import aggregate, get_rule
from .strategy import (
    CAF,
    CTMA,
    MDA,
    SMEA,
    Bulyan,
    CenteredClipping,
    Detox,
    FlagAggregator,
    GeometricMedian,
    Krum,
    MeaMed,
    Mean,
    Median,
    MoNNA,
    MultiKrum,
    RobustStrategy,
    TrimmedMean,
)

__version__ = "0.1.0"

__all__ = [
    "CAF",
    "CTMA",
    "MDA",
    "SMEA",
    "Bulyan",
    "CenteredClipping",
    "Detox",
    "FlagAggregator",
    "GeometricMedian",
    "Krum",
    "MeaMed",
    "Mean",
    "Median",
    "MoNNA",
    "MultiKrum",
    "RobustStrategy",
    "TrimmedMean",
    "aggregate",
    "get_rule",
    "strategy_from_config",
]

try:
    __version__ = version("flwr-flag")  # one place: pyproject.toml's [project] version
except PackageNotFoundError:  # the source tree, not installed
    __version__ = "0+unknown"
