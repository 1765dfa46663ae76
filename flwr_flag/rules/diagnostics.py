"""What a rule tells its caller besides the aggregate: the diagnostics types.

They are the contract between rules and strategies: a rule returns an
:class:`AggregationResult` whose diagnostics may hold :class:`Rows` (indices of its input
rows, which a strategy maps to node ids), :class:`PerRow` values (summarised as min and
median) and :class:`Nested` diagnostics of a rule run on other rows (a base rule, a
second stage, rows after a pre-aggregator).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from torch import Tensor

Diagnostics = dict[str, Any]


class Rows(list):
    """Diagnostics: indices of rows of the rule's input, so a caller can name them (a
    strategy maps them to node ids). ``outvoted``: rows the rule set aside (trimmed,
    outvoted, lowest weight) rather than rows it kept."""

    def __init__(self, rows: Iterable[int] = (), *, outvoted: bool = False) -> None:
        super().__init__(int(r) for r in rows)
        self.outvoted = outvoted


class PerRow(list):
    """Diagnostics: one value per row of the rule's input (scores, weights, ratios)."""

    def __init__(self, values: Iterable[float] = ()) -> None:
        super().__init__(float(v) for v in values)


class Nested(dict):
    """Diagnostics of a rule run on other rows than the caller's: row ``i`` there stands
    for the caller's row ``rows[i]`` (``rows=None``: rows that mix several inputs, as
    after bucketing, which no caller can name)."""

    def __init__(self, diagnostics: Mapping[str, Any], rows: Iterable[int] | None) -> None:
        super().__init__(diagnostics)
        self.rows = None if rows is None else [int(r) for r in rows]


class AggregationResult(NamedTuple):
    """The aggregate ``(p,)`` and the rule's diagnostics (selected/trimmed rows, ...).

    ``vector`` is a fresh tensor that the caller owns (the strategies write the new
    model into it); no rule returns a view of its input or of its state."""

    vector: Tensor
    diagnostics: Diagnostics
