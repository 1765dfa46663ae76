"""Clients' metrics under the same trust model as their updates (both Flower APIs).

A reply's metrics are its client's word, like its arrays: they may be missing, non-finite,
non-numeric, of another shape than everyone else's, claim any example count, or use this
library's ``robust.`` keys. Flower's ``aggregate_metricrecords`` divides by the claimed
counts (a count of ``-800`` among ``800`` raises ``ZeroDivisionError``, one of ``1e18``
with accuracy 0 reports 0 %) and raises on a reply whose keys differ. Here a reply's
metrics are accepted when

* its node has not replied before in this round (its first reply is the one that counts);
* they are numbers: ints or finite floats, or lists of them;
* the example count under ``count_key`` is a finite real ``> 0``;
* no key lies in the ``robust.`` namespace, which is the strategy's own;
* its keys (and list lengths) are those that most replies send;

and otherwise rejected with the reason, never raising. The accepted metrics are averaged
with the round's weights (:func:`~.weighting.reply_weights`: each reply once for the
robust rules, claimed counts capped when the user opts in), and each key's median is
reported beside the mean as ``robust.median.<key>``, which no minority can move outside
the honest replies' range. Cost: ``O(n k log n)`` for ``n`` replies of ``k`` values.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from logging import WARNING
from typing import Any

import numpy as np
from flwr.common.logger import log

from .replies import count_problem, screen
from .weighting import reply_weights

RESERVED = "robust."
"""The strategy's namespace: client metrics never write into it."""

Value = int | float | list[int] | list[float]


@dataclass(frozen=True)
class ClientMetrics:
    """One reply's metrics; ``node_id`` comes from the runtime, the rest from the client
    (``problem``: why they could not even be read)."""

    node_id: int
    values: Mapping[str, object] = field(default_factory=dict)
    problem: str | None = None


def read_metrics(node_id: int, read: Callable[[], Mapping[str, object]]) -> ClientMetrics:
    """The metrics ``read()`` returns; whatever it raises becomes the reply's problem."""
    try:
        return ClientMetrics(node_id, dict(read()))
    except Exception as error:  # whatever a client sent, the round goes on
        return ClientMetrics(node_id, problem=f"metrics cannot be read ({error})")


def _is_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def value_problem(key: object, value: object) -> str | None:
    """Why metric ``key = value`` cannot be aggregated, or ``None``."""
    if not isinstance(key, str):
        return f"metric key {key!r} is not a string"
    if key.startswith(RESERVED):
        return f"metric {key!r} is in the strategy's own namespace {RESERVED!r}"
    if isinstance(value, (list, tuple)):
        if not value or not all(_is_number(v) for v in value):
            return f"metric {key!r} is not a non-empty list of finite numbers"
        return None
    if not _is_number(value):
        return f"metric {key!r}={value!r} is not a finite number"
    return None


def _signature(values: Mapping[str, object], count_key: str) -> tuple:
    """The keys and list lengths of a reply's metrics (scalars: ``None``)."""
    return tuple(
        sorted(
            (k, len(v) if isinstance(v, (list, tuple)) else None)
            for k, v in values.items()
            if k != count_key
        )
    )


@dataclass(frozen=True)
class MetricsSummary:
    """The aggregated metrics, which replies they came from (indices into the input,
    in order) with the weight each had, and why the others were rejected."""

    metrics: dict[str, Value]
    accepted: list[int]
    weights: list[float]
    rejected: dict[int, str]


def aggregate_metrics(
    replies: Sequence[ClientMetrics],
    count_key: str,
    weighting: str = "uniform",
    max_weight_ratio: float | None = None,
) -> MetricsSummary:
    """Screen the replies' metrics (see the module docstring) and average the accepted
    ones, with their medians as ``robust.median.<key>``."""

    def problem_of(index: int) -> str | None:
        reply = replies[index]
        problem = reply.problem or count_problem(reply.values.get(count_key))
        others = (value_problem(k, v) for k, v in reply.values.items() if k != count_key)
        return problem or next((p for p in others if p is not None), None)

    candidates, rejected = screen([r.node_id for r in replies], problem_of)
    signatures = {i: _signature(replies[i].values, count_key) for i in candidates}
    if not signatures:
        return MetricsSummary({}, [], [], rejected)
    # The most common shape wins; among equally common ones, the first reply's.
    counts = Counter(signatures.values())
    common = max(counts.values())
    expected = next(s for s in signatures.values() if counts[s] == common)
    accepted = [i for i in candidates if signatures[i] == expected]
    for i in candidates:
        if signatures[i] != expected:
            rejected[i] = (
                f"metric keys {[k for k, _ in signatures[i]]} differ from those of "
                f"{common} other replies: {[k for k, _ in expected]}"
            )
    counts_claimed = [float(replies[i].values[count_key]) for i in accepted]
    weights = reply_weights(counts_claimed, weighting, max_weight_ratio)
    w = np.full(len(accepted), 1.0 / len(accepted)) if weights is None else weights.numpy()
    metrics: dict[str, Value] = {}
    for key, length in expected:
        stacked = np.array([replies[i].values[key] for i in accepted], dtype=np.float64)
        mean, median = w @ stacked, np.median(stacked, axis=0)
        if length is None:
            metrics[key], metrics[f"{RESERVED}median.{key}"] = float(mean), float(median)
        else:
            metrics[key], metrics[f"{RESERVED}median.{key}"] = mean.tolist(), median.tolist()
    return MetricsSummary(metrics, accepted, w.tolist(), rejected)


def screened_metrics(
    server_round: int,
    replies: Sequence[ClientMetrics],
    count_key: str,
    weighting: str,
    max_weight_ratio: float | None,
    own: Callable[[list[int]], Mapping[str, Any]] | None = None,
) -> MetricsSummary:
    """:func:`aggregate_metrics` of a round, every rejection logged. ``own`` is a user's
    aggregation function, called with the indices of the accepted replies: its result
    replaces the averages (less any ``robust.`` key), and if it raises, the round goes
    on without client metrics (both Flower APIs let a user pass one)."""
    summary = aggregate_metrics(replies, count_key, weighting, max_weight_ratio)
    for index, reason in summary.rejected.items():
        node = replies[index].node_id
        log(WARNING, "Round %d: metrics of node %d rejected: %s", server_round, node, reason)
    if own is None:
        return summary
    try:
        metrics = {k: v for k, v in own(summary.accepted).items() if not k.startswith(RESERVED)}
    except Exception as error:  # the user's function on clients' values
        log(WARNING, "Round %d: client metrics not aggregated: %s", server_round, error)
        metrics = {}
    return replace(summary, metrics=metrics)
