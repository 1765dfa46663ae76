"""Which nodes a setting names: a count ``N`` (partitions ``0..N-1``) or a list."""

from __future__ import annotations

from typing import Any

from ..validation import InvalidParameterError


def node_list(key: str, value: Any, num_partitions: int) -> tuple[int, ...]:
    """``N`` -> ``(0, ..., N-1)``; ``"0,4,7"`` -> ``(0, 4, 7)``; all in range, or a
    ``ValueError`` naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidParameterError(
            f"{key}={value!r} must be a count or a comma-separated list of ids"
        )
    if isinstance(value, int):
        if value < 0:
            raise InvalidParameterError(f"{key}={value} is out of range; allowed >= 0")
        nodes = tuple(range(value))
    else:
        try:
            nodes = tuple(int(v) for v in value.split(",") if v.strip())
        except ValueError:
            raise InvalidParameterError(
                f"{key}={value!r} must be a count or a comma-separated list of ids"
            ) from None
    repeated = sorted({v for v in nodes if nodes.count(v) > 1})
    if repeated:
        raise InvalidParameterError(f"{key}={value!r} names node(s) {repeated} more than once")
    if any(not 0 <= v < num_partitions for v in nodes) or len(nodes) > num_partitions:
        raise InvalidParameterError(
            f"{key}={value!r} names more nodes than the {num_partitions} partitions "
            f"(allowed ids 0..{num_partitions - 1})"
        )
    return nodes
