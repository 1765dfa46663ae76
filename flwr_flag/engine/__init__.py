"""Streaming access to client updates on CPU or GPU (see :mod:`.source`)."""

from .gram import Gram, pairwise_sq_distances
from .source import (
    ArraysSource,
    NonFiniteUpdateError,
    StackedSource,
    UpdateSource,
    as_source,
    resolve_device,
)

__all__ = [
    "ArraysSource",
    "Gram",
    "NonFiniteUpdateError",
    "StackedSource",
    "UpdateSource",
    "as_source",
    "pairwise_sq_distances",
    "resolve_device",
]
