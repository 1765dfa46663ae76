"""flwr-flag: Byzantine-robust aggregation for Flower, on CPU or GPU."""

from .rules import aggregate, get_rule

__version__ = "0.1.0"

__all__ = ["aggregate", "get_rule"]
