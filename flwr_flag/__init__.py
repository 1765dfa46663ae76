"""flwr-flag: Byzantine-robust aggregation for Flower, on CPU or GPU.

``from flwr_flag import FlagAggregator`` gives a Flower Message-API strategy;
``flwr_flag.legacy`` has the same classes for the legacy API; ``flwr_flag.rules`` holds
the aggregation rules as plain torch functions.

The names below are imported on first use: a ClientApp that only needs
``flwr_flag.attacks`` (a process Flower starts for every message) does not pay for
the strategies and Flower's server modules they import.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
        FLTrust,
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

_HOMES = {"strategy_from_config": ".config", "aggregate": ".rules", "get_rule": ".rules"}

__all__ = [
    "CAF",
    "CTMA",
    "MDA",
    "SMEA",
    "Bulyan",
    "CenteredClipping",
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
    "RobustStrategy",
    "TrimmedMean",
    "aggregate",
    "get_rule",
    "strategy_from_config",
]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'flwr_flag' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES.get(name, ".strategy"), __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


try:
    __version__ = version("flwr-flag")  # one place: pyproject.toml's [project] version
except PackageNotFoundError:  # the source tree, not installed
    __version__ = "0+unknown"
