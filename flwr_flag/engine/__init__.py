"""Streaming access to client updates on CPU or GPU (see :mod:`.source`)."""

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
    "NonFiniteUpdateError",
    "StackedSource",
    "UpdateSource",
    "as_source",
    "resolve_device",
]
