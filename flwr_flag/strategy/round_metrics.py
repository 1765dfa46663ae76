"""A round's ``robust.*`` metrics: the rule's diagnostics by node, the nodes the round
limited, and how many of them are shown (``diagnostics="short"`` or ``"full"``).

Node ids are Flower's (from the runtime). Where a reply's node says which partition
it trains on (its ``node`` config record's ``partition-id``: what this repository's
ClientApp and :func:`~flwr_flag.attacks.byzantine_mod` send), the limited nodes are
also named by it, ``robust.limited-partitions``, the ids a user configured attacks by.
That label is the client's word: it names, it never weighs (a lying node can only
mislabel its own line).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..engine import UpdateSource
from ..rules.diagnostics import Nested, PerRow, Rows

Metrics = dict[str, int | float | list[int] | list[float]]

VERBOSITY = ("short", "full")
SHORT = (
    "robust.received",
    "robust.rejected",
    "robust.rejected-nodes",
    "robust.failed",
    "robust.f",
    "robust.kept-model",
    "robust.aggregation-seconds",
    "robust.limited-nodes",
    "robust.limited-partitions",
    "robust.anchor-seconds",
    "robust.history.known",
)
"""The keys ``diagnostics="short"`` (the default) shows; ``"full"`` shows every key,
the rule's own diagnostics and the medians of the clients' metrics included."""


def shown(metrics: Mapping[str, Any], verbosity: str) -> dict[str, Any]:
    """The ``robust.*`` keys of ``metrics`` that ``verbosity`` shows, and every other
    key (the clients' own metrics, averaged)."""
    if verbosity == "full":
        return dict(metrics)
    return {k: v for k, v in metrics.items() if not k.startswith("robust.") or k in SHORT}


def least_aligned(source: UpdateSource, aggregate: torch.Tensor, f: int) -> list[int]:
    r"""The ``f`` rows the aggregate :math:`a` followed least: the lowest cosines
    :math:`\langle g_i, a\rangle / (\|g_i\| \|a\|)`, ascending, the rule's whatever
    its mechanism (an update the round went against, or ignored). Under an attack that
    points away from the honest updates they are the attackers; an attack inside the
    honest spread is by design indistinguishable, and the list is then a sample. Cost:
    nothing more when the aggregate came from the rows' Gram or from a coordinate-wise
    pass (:meth:`~flwr_flag.engine.UpdateSource.inner_with`), else one pass."""
    if f <= 0:
        return []
    inner = source.inner_with(aggregate).double().cpu()
    # :math:`\|a\|` is common to every cosine: the order needs only each row's norm.
    alignment = inner / source.sq_norms().double().sqrt().clamp_min(1e-300)
    return torch.argsort(alignment, stable=True)[:f].tolist()


def summarize(diagnostics: Mapping[str, Any], node_ids: Sequence[int]) -> Metrics:
    """A rule's diagnostics as MetricRecord entries: every :class:`Rows` list mapped to
    node ids (``<key>-nodes``, nested rules' too, through :class:`Nested` row maps; lists
    over mixed rows, as after bucketing, are left out), every :class:`PerRow` as its min
    and median, finite scalars as they are; ``outvoted-nodes`` gathers every node some
    list marks as set aside. Knows no rule's key names."""
    out: Metrics = {}
    outvoted: set[int] = set()

    def walk(prefix: str, diag: Mapping[str, Any], ids: list[int] | None) -> None:
        if isinstance(diag, Nested):
            ids = None if ids is None or diag.rows is None else [ids[i] for i in diag.rows]
        for key, value in diag.items():
            name = f"{prefix}{key.replace('_', '-')}"
            if isinstance(value, Rows):
                if ids is not None:
                    out[f"{name}-nodes"] = [int(ids[i]) for i in value]
                    if value.outvoted:
                        outvoted.update(ids[i] for i in value)
            elif isinstance(value, PerRow):
                values = torch.tensor(value, dtype=torch.float64)
                out[f"{name}-min"] = float(values.min())
                out[f"{name}-median"] = float(values.median())
            elif isinstance(value, Mapping):
                walk(f"{name}.", value, ids)
            elif isinstance(value, (bool, int, float)) and math.isfinite(value):
                out[name] = float(value) if isinstance(value, float) else int(value)

    walk("robust.", diagnostics, [int(i) for i in node_ids])
    out["robust.outvoted-nodes"] = sorted(outvoted)
    return out
