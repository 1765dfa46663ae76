r"""DETOX (Rajput, Wang, Charles & Papailiopoulos, NeurIPS 2019): majority vote inside
redundant groups, then a robust rule over the group winners.

Nodes are split into groups of ``r`` that compute on the same data with the same seed,
so the honest members of a group send equal updates. Stage 1 keeps, per group, the
value that more than ``r / 2`` of its ``r`` members agree on (equal within ``tolerance``
relative to their norm); a group without such a majority is dropped. Stage 2 runs a
robust rule over the winners with :math:`f' = \lfloor f / \lceil r/2 \rceil \rfloor`:
a Byzantine winner needs a Byzantine majority in its group, so ``f`` Byzantine nodes
spoil at most ``f'`` winners. The default second stage is the median of means over
buckets of winners (bucketing, then coordinate median).

Cost: stage 1 compares the members of each group directly, ``r - 1`` distances per
member, in one ``O(n r p)`` pass that also checks every row; each winner is the
lowest-index member of its majority, and stage 2 reads only the ``n / r`` winners
(:meth:`~flwr_flag.engine.UpdateSource.subset`), so it costs what its rule costs on
``n / r`` rows: for the default median of bucket means, two gathers a bucket and a
coordinate median over ``n / (2 r)`` rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..engine import UpdateSource
from ..validation import Integer, Real
from .diagnostics import AggregationResult, Nested, Rows
from .inputs import InputRangeError
from .registry import (
    PreSteps,
    RoundState,
    RuleName,
    RuleParams,
    aggregate,
    get_rule,
    round_state,
    rule,
)

DEFAULT_SECOND_STAGE_PRE = (("bucketing", {"s": 2}),)


def majority(agree: Tensor, members: list[int], replication: int) -> list[int] | None:
    """The largest set of members agreeing with one of them (``agree`` is a boolean
    ``n x n`` matrix), if it has more than ``replication / 2`` members; else ``None``.
    Ties go to the lower row."""
    best: list[int] = []
    for i in members:
        agreeing = [j for j in members if bool(agree[i, j])]
        if len(agreeing) > len(best):
            best = agreeing
    return best if len(best) > replication / 2 else None


def agreement(source: UpdateSource, groups: Sequence[int], tolerance: float) -> Tensor:
    """``agree[i, j]``: rows ``i``, ``j`` of one group are equal within ``tolerance``
    relative to the larger norm. Distances are summed directly over the coordinates for
    the within-group pairs only (one pass), since nearly equal rows are exactly where
    Gram-derived distances lose their digits."""
    n = source.n
    pairs = torch.tensor(
        [
            (i, j)
            for i in range(n)
            for j in range(i + 1, n)
            if groups[i] >= 0 and groups[i] == groups[j]
        ],
        dtype=torch.long,
    ).reshape(-1, 2)
    dist = source.sq_distances_between(pairs).sqrt()
    norms = source.sq_norms().sqrt()
    scale = torch.maximum(norms[pairs[:, 0]], norms[pairs[:, 1]]).clamp_min(1e-30)
    agree = torch.eye(n, dtype=torch.bool)
    close = dist <= tolerance * scale
    agree[pairs[:, 0], pairs[:, 1]] = close
    agree[pairs[:, 1], pairs[:, 0]] = close
    return agree


def second_stage_f(f: int, replication: int) -> int:
    r"""Stage 2's :math:`f' = \lfloor f / \lceil r/2 \rceil \rfloor`: a Byzantine winner
    needs a Byzantine majority in its group."""
    return f // math.ceil(replication / 2)


def shortfall(rows: int, f: int, params: Mapping[str, Any]) -> str | None:
    """Why DETOX cannot run on ``rows`` replies with ``f``: too few groups of ``r`` for
    its second stage with ``f'`` (or ``None``)."""
    r = params["replication"]
    groups = rows // r
    why = get_rule(params["stage2"]).why_not(
        groups, second_stage_f(f, r), params["stage2_params"], params["stage2_pre"]
    )
    return None if why is None else f"{groups} groups of {r}; stage 2 on their winners: {why}"


@round_state("groups")
class GroupLabels(RoundState):
    """Each row's group (``-1``: none), from the strategy's assignment of the round."""

    needs_strategy = True

    def __init__(self) -> None:
        self.groups: Mapping[int, int] = {}

    def assign(self, groups: Mapping[int, int]) -> None:
        """This round's groups: node id -> group."""
        self.groups = dict(groups)

    def value(self, node_ids: Sequence[int]) -> list[int]:
        return [self.groups.get(node, -1) for node in node_ids]


@rule(
    "detox",
    needs=(0, 1),
    shortfall=shortfall,
    params={
        "replication": Integer(1),
        "tolerance": Real(0.0),
        "stage2": RuleName(exclude=frozenset({"detox"})),
        "stage2_params": RuleParams(optional=True, rule_key="stage2"),
        "stage2_pre": PreSteps(),
    },
    state=("groups",),
)
def detox(
    source: UpdateSource,
    f: int,
    weights: Tensor,
    groups: Sequence[int] | None = None,
    replication: int = 3,
    tolerance: float = 1e-5,
    stage2: str = "median",
    stage2_params: Mapping[str, Any] | None = None,
    stage2_pre: Sequence[Any] = DEFAULT_SECOND_STAGE_PRE,
) -> AggregationResult:
    r"""DETOX's hierarchical aggregation (see the module docstring).

    Parameters
    ----------
    groups : sequence of int
        The group label of every row (``-1``: in no group, ignored). Required.
    replication : int
        ``r >= 1``, the size groups were formed with (a group that lost members to
        failures still needs more than ``r / 2`` agreeing members).
    tolerance : float
        Relative tolerance of equality, ``||g_i - g_j|| <= tolerance * max(||g_i||, ||g_j||)``.
    stage2, stage2_params, stage2_pre
        The second-stage rule, its hyperparameters and pre-aggregators, run on the
        winners with :math:`f' = \lfloor f / \lceil r/2 \rceil \rfloor`, each winner with
        its own weight (members of a group share a shard).

    Diagnostics: ``groups``, ``dissenting`` (rows outvoted in their group),
    ``no_majority`` (rows of dropped groups), ``groups_without_majority``, ``f_prime``,
    and the second stage's under ``stage2``.
    """
    if groups is None or len(groups) != source.n:
        raise ValueError(f"detox: groups must give a label for each of the n={source.n} rows")
    groups = [int(g) for g in groups]
    agree = agreement(source, groups, tolerance)
    labels = sorted({g for g in groups if g >= 0})
    totals, winner_rows = [], []
    dissenting: list[int] = []
    no_majority: list[int] = []
    for label in labels:
        members = [i for i, g in enumerate(groups) if g == label]
        winners = majority(agree, members, replication)
        if winners is None:
            no_majority += members
            continue
        dissenting += [i for i in members if i not in winners]
        winner_rows.append(winners[0])  # one member of the majority: the honest value exactly
        totals.append(float(weights[winners[0]]))
    f_prime = second_stage_f(f, replication)
    diagnostics: dict[str, Any] = {
        "groups": len(labels),
        "dissenting": Rows(dissenting, outvoted=True),
        "no_majority": Rows(no_majority, outvoted=True),
        "groups_without_majority": len(labels) - len(winner_rows),
        "f_prime": f_prime,
    }
    if not winner_rows:
        raise InputRangeError("detox: no group has a majority; nothing to aggregate")
    result = aggregate(
        source.subset(winner_rows),
        stage2,
        f_prime,
        totals,
        pre=stage2_pre,
        **dict(stage2_params or {}),
    )
    diagnostics["stage2"] = Nested(result.diagnostics, winner_rows)
    return AggregationResult(result.vector, diagnostics)
