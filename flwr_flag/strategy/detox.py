"""DETOX as a Flower strategy: redundant groups, majority vote, robust second stage.

Each round the sampled nodes are split into groups of ``r`` (a seeded permutation,
re-drawn every round or fixed) and every member of group ``g`` is told, in its train
config, ``detox-group = g``, ``detox-groups = G``, ``detox-shards = S`` and
``detox-seed``. This project's ClientApp then trains on shard ``g`` of an ``S``-way split
of the training data with that seed (``S = G`` as in the paper, or the number of sampled
nodes with ``equal_compute``) and deterministic torch settings, so the honest members
of a group send equal updates; :func:`flwr_flag.rules.detox.detox` votes and aggregates.

What this assumes about data placement: every member of a group can read its group's
shard. In a simulation all shards are on one machine. In a deployment it means the
data is placed redundantly, each shard on ``r`` nodes (as in the DETOX paper, where the
parameter server assigns the same batch to a group); when every node only holds its
own private data, DETOX does not apply.

Node counts not divisible by ``r``: the ``n mod r`` nodes left over by the permutation
sit out that round (with ``redraw`` a different set each round). Fewer than ``r``
sampled nodes: no group can form, the round trains nobody and keeps the model (logged).
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from ..validation import SEED_MAX, Boolean, Integer, validate
from .core import RobustCore
from .robust import RobustStrategy


def form_groups(
    node_ids: Iterable[int], replication: int, seed: int
) -> tuple[dict[int, int], list[int]]:
    """Node id -> group (groups of ``replication`` from a seeded permutation of the sorted
    ids) and the ids left over."""
    nodes = sorted(node_ids)
    order = [nodes[i] for i in np.random.default_rng(seed).permutation(len(nodes))]
    usable = len(nodes) // replication * replication
    groups = {node: i // replication for i, node in enumerate(order[:usable])}
    return groups, order[usable:]


OPTIONS = {
    "replication": Integer(1),
    "redraw": Boolean(),
    "seed": Integer(0, SEED_MAX),
    "equal_compute": Boolean(),
}
"""DETOX's strategy options (the rule's own ``replication`` is checked again by the rule)."""


class DetoxGroups:
    """Group assignment shared by the Message-API and legacy DETOX strategies."""

    core: RobustCore
    groups: dict[int, int]

    def __init__(
        self,
        num_byzantine: int = 0,
        *,
        replication: int = 3,
        redraw: bool = True,
        seed: int = 0,
        equal_compute: bool = False,
        **options: Any,
    ) -> None:
        validate("detox", OPTIONS, locals())
        super().__init__(num_byzantine, replication=replication, **options)
        self.replication, self.redraw, self.seed = replication, redraw, seed
        self.equal_compute = equal_compute
        self.groups = {}

    def _assign(self, node_ids: list[int], server_round: int) -> dict[int, dict[str, int]]:
        """The extra train config of each node that takes part in this round."""
        draw_seed = self.seed * 100_003 + (server_round if self.redraw else 1)
        self.groups, left_over = form_groups(node_ids, self.replication, draw_seed)
        self.core.round_state["groups"].assign(self.groups)
        if not self.groups:
            log(
                WARNING,
                "DETOX: %d sampled nodes cannot form a group of %d; no training this round",
                len(node_ids),
                self.replication,
            )
        elif left_over:
            log(
                INFO,
                "DETOX: nodes %s sit out this round (%d nodes, groups of %d)",
                left_over,
                len(node_ids),
                self.replication,
            )
        count = len(set(self.groups.values()))
        shards = len(node_ids) if self.equal_compute else count
        return {
            node: {
                "detox-group": group,
                "detox-groups": count,
                "detox-shards": shards,
                "detox-seed": draw_seed,
            }
            for node, group in self.groups.items()
        }


class Detox(DetoxGroups, RobustStrategy):
    """DETOX (Rajput et al., 2019) over the shared robust core (see the module docstring).

    Parameters
    ----------
    num_byzantine : int
        ``f``; the second stage tolerates ``f' = floor(f / ceil(r / 2))`` winners.
    replication : int
        ``r >= 1``, the group size (default 3).
    redraw : bool
        Draw new groups every round (default) or keep round 1's.
    seed : int
        Seed of the group assignment and of the groups' training seeds.
    equal_compute : bool
        ``False`` (the paper): the data is split among the groups, so each member
        trains on ``1 / groups`` of it, ``r`` times a flat node's share. ``True``: group
        ``g`` trains on shard ``g`` of a split into as many shards as sampled nodes, the
        compute of a flat node (a different split each round with ``redraw``): the
        like-for-like comparison with flat rules.
    **options
        As for :class:`RobustStrategy`, plus the rule's ``tolerance``, ``stage2``,
        ``stage2_params`` and ``stage2_pre`` (default: median of means over buckets of
        two winners).
    """

    rule = "detox"

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's sampling, then groups of ``r`` with their shard and seed."""
        messages = list(super().configure_train(server_round, arrays, config, grid))
        extra = self._assign(
            [m.metadata.dst_node_id for m in messages], server_round + self._offset
        )
        out = []
        for message in messages:
            node = message.metadata.dst_node_id
            if node in extra:
                own = ConfigRecord({**message.content[self.configrecord_key], **extra[node]})
                content = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: own})
                out.append(
                    Message(
                        content=content,
                        dst_node_id=node,
                        message_type=message.metadata.message_type,
                    )
                )
        self._sampled = len(out)
        return out
