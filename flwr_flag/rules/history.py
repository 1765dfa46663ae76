r"""Per-node history for sampled rounds: every known node's last update, bounded.

When a server samples :math:`m` of :math:`N` nodes per round, a round's Byzantine count
swings: with 20 of 100 nodes Byzantine and 20 sampled, a 30-round run has a round with
at least 7 attackers (35 %) 86 % of the time, past what a rule told ``f = 0.2 m`` can
hold. A rule that sees every known node instead of this round's sample sees the
population's fraction (DeMoA, Otsuka et al. 2025). :class:`NodeHistory` keeps, per
Flower node id :math:`j`, the last update :math:`h_j` it accepted and the round
:math:`t_j` it came in; a round's rows are this round's nodes and every other known
node, each weighted by its staleness:

.. math::
    \omega_j = \delta^{\,t - t_j}, \qquad j \text{ known, } t - t_j \le A,

with decay :math:`\delta` (``decay``) and a maximal age :math:`A` (``max_age``): an
entry older than :math:`A` rounds is dropped, so a node that vanished stops counting
and one that comes back after more than :math:`A` rounds starts afresh.

**Consistency bound.** A returning node's new update :math:`g_j` may move from its own
history by at most :math:`\tau = \kappa \cdot \mathrm{median}_k \|g_k - h_k\|`, the
median over this round's returning nodes (the lower median, for an even count) times ``consistency``
:math:`\kappa`:

.. math::
    h_j \leftarrow h_j + \min\!\left(1, \frac{\tau}{\|g_j - h_j\|}\right)(g_j - h_j).

It clips and never bans (honest nodes drift as the model trains, and the radius drifts
with them); a node that turns on the federation (a sleeper) moves its row at most
:math:`\tau` per time it is sampled. A node seen for the first time has no history to
be held to.

**Memory.** The cache is one ``(k, p)`` tensor in the updates' dtype on their device,
``k`` known nodes; with ``max_nodes`` it holds at most ``max(max_nodes, m)`` rows
(``O((max_nodes + m) p)``): at the cap, the stalest entries (largest age, then the
largest node id) are dropped first, and this round's nodes are always kept.

**Cost per round**: one pass over the :math:`m` new rows (copied into the cache), one
``O(m p)`` pass for the consistency bound, nothing over the cached rows: the rule reads
them where they lie.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ..engine import StackedSource, UpdateSource
from ..engine.threads import one_thread
from ..validation import Integer, Param, Real, validate

PARAMS: dict[str, Param] = {
    "max_age": Integer(1),
    "decay": Real(0.0, 1.0, low_open=True),
    "consistency": Real(0.0, low_open=True, optional=True),
    "max_nodes": Integer(1, optional=True),
}
""":class:`NodeHistory`'s options (the ``history`` option of a strategy takes them)."""

STATE_KEYS = ("history.updates", "history.nodes", "history.rounds")


class HistoryRows(NamedTuple):
    """A round's rows: the cache as a source, each row's node id and staleness weight,
    and the nodes whose new update the consistency bound clipped."""

    source: UpdateSource
    node_ids: list[int]
    weights: Tensor
    clipped: list[int]


class NodeHistory:
    """Each known node's last accepted update (module docstring).

    Parameters
    ----------
    max_age : int
        :math:`A`: an entry older than this many rounds is dropped (default 20).
    decay : float in (0, 1]
        :math:`\\delta`: a row's weight is ``decay ** age`` (default 0.9).
    consistency : float or None
        :math:`\\kappa`: the consistency radius in medians of this round's moves
        (default 2); ``None``: no bound.
    max_nodes : int or None
        Entries kept at most (besides this round's); ``None``: every known node.
    """

    def __init__(
        self,
        max_age: int = 20,
        decay: float = 0.9,
        consistency: float | None = 2.0,
        max_nodes: int | None = None,
    ) -> None:
        validate("history", PARAMS, locals())
        self.max_age, self.decay = max_age, decay
        self.consistency, self.max_nodes = consistency, max_nodes
        self.updates: Tensor | None = None
        """The cache, ``(capacity, p)``; rows ``[0, len(self.nodes))`` are in use."""
        self.nodes: list[int] = []
        self.rounds: list[int] = []

    def options(self) -> dict[str, float | int | None]:
        return {name: getattr(self, name) for name in PARAMS}

    def rows_for(self, node_ids: Sequence[int], server_round: int) -> int:
        """How many rows :meth:`rows` will hand on for these nodes in this round."""
        fresh = set(node_ids)
        kept = self._kept(fresh, server_round)
        return len(fresh) + sum(self.nodes[i] not in fresh for i in kept)

    def forget(self, node_ids: Sequence[int]) -> None:
        """Drop these nodes' entries (nodes caught sending what no honest node sends)."""
        self._keep([i for i, j in enumerate(self.nodes) if j not in set(node_ids)])

    def rows(
        self,
        source: UpdateSource,
        node_ids: Sequence[int],
        server_round: int,
        chunk_size: int | None = None,
    ) -> HistoryRows:
        """Take this round's updates (rows of ``source``, from ``node_ids``) into the
        cache and return every known node's row (a source of ``chunk_size`` columns per
        chunk). Reads ``source`` in full first, so a
        :class:`~flwr_flag.engine.NonFiniteUpdateError` leaves the cache as it was."""
        with one_thread():  # element-wise copies: one thread each (engine/threads.py)
            fresh = torch.empty(source.n, source.p, dtype=source.dtype, device=source.device)
            for columns, chunk in source.chunks():
                fresh[:, columns] = chunk
            if self.updates is not None:  # resumed on another device, or with another dtype
                self.updates = self.updates.to(source.device, source.dtype)
            self._keep(self._kept(set(node_ids), server_round))
            clipped = self._bound(fresh, node_ids)
            self._store(fresh, node_ids, server_round)
        ages = torch.tensor([server_round - t for t in self.rounds], dtype=torch.float64)
        return HistoryRows(
            StackedSource(self.updates[: len(self.nodes)], chunk_size=chunk_size),
            list(self.nodes),
            self.decay**ages,
            sorted(node_ids[row] for row in clipped),
        )

    def _bound(self, fresh: Tensor, node_ids: Sequence[int]) -> list[int]:
        """Clip each returning node's row of ``fresh`` (in place) to the consistency
        radius around its entry; the rows clipped."""
        slot = {j: i for i, j in enumerate(self.nodes)}
        returning = [row for row, node in enumerate(node_ids) if node in slot]
        if self.consistency is None or not returning:
            return []
        rows = torch.tensor(returning, device=fresh.device)
        old = self.updates.index_select(
            0, torch.tensor([slot[node_ids[r]] for r in returning], device=fresh.device)
        )
        moves = fresh.index_select(0, rows) - old
        lengths = torch.linalg.vector_norm(moves, dim=1, dtype=torch.float64)
        radius = self.consistency * lengths.median()
        far = lengths > radius
        if bool(far.any()):
            scale = (radius / lengths[far]).to(fresh.dtype).unsqueeze(1)
            fresh[rows[far]] = old[far] + moves[far] * scale
        return [r for r, f in zip(returning, far.tolist(), strict=True) if f]

    def _store(self, fresh: Tensor, node_ids: Sequence[int], server_round: int) -> None:
        """Write ``fresh`` into the nodes' entries, appending the new nodes."""
        slot = {j: i for i, j in enumerate(self.nodes)}
        new = [node for node in node_ids if node not in slot]
        k = len(self.nodes)
        if self.updates is None or k + len(new) > self.updates.shape[0]:
            capacity = max(2 * k, k + len(new), 16)
            if self.max_nodes is not None:
                capacity = max(min(capacity, max(self.max_nodes, len(node_ids))), k + len(new))
            grown = fresh.new_empty(capacity, fresh.shape[1])
            if self.updates is not None:
                grown[:k] = self.updates[:k]
            self.updates = grown
        slot.update({node: k + i for i, node in enumerate(new)})
        self.nodes += new
        self.rounds += [server_round] * len(new)
        targets = [slot[node] for node in node_ids]
        self.updates.index_copy_(0, torch.tensor(targets, device=fresh.device), fresh)
        for target in targets:
            self.rounds[target] = server_round

    def _kept(self, fresh: set[int], server_round: int) -> list[int]:
        """The entries a round with the ``fresh`` nodes keeps (ascending): those at most
        ``max_age`` rounds old and then, with ``max_nodes``, the newest entries of other
        nodes that fit beside ``fresh`` in ``max(max_nodes, len(fresh))`` rows."""
        live = [i for i, t in enumerate(self.rounds) if server_round - t <= self.max_age]
        others = [i for i in live if self.nodes[i] not in fresh]
        room = len(others) if self.max_nodes is None else max(self.max_nodes - len(fresh), 0)
        if len(others) <= room:
            return live
        newest = sorted(others, key=lambda i: (self.rounds[i], -self.nodes[i]), reverse=True)
        return sorted([i for i in live if self.nodes[i] in fresh] + newest[:room])

    def _keep(self, slots: list[int]) -> None:
        """Keep the entries in ``slots`` (ascending), compacted to the front in order."""
        if len(slots) == len(self.nodes):
            return
        if slots and self.updates is not None:
            index = torch.tensor(slots, device=self.updates.device)
            self.updates[: len(slots)] = self.updates.index_select(0, index)
        self.nodes = [self.nodes[i] for i in slots]
        self.rounds = [self.rounds[i] for i in slots]

    def state_keys(self) -> tuple[str, ...]:
        return STATE_KEYS

    def state_dict(self) -> dict[str, Tensor]:
        """The entries in use, their node ids and rounds (``STATE_KEYS``)."""
        k = len(self.nodes)
        if self.updates is None:
            return {}
        return {
            "history.updates": self.updates[:k].clone(),
            "history.nodes": torch.tensor(self.nodes, dtype=torch.int64),
            "history.rounds": torch.tensor(self.rounds, dtype=torch.int64),
        }

    def load_state_dict(self, state: Mapping[str, Tensor], size: int) -> None:
        """Restore :meth:`state_dict`'s entries for a model of ``size`` parameters,
        checked: all three keys or none, one row per node, finite, model-sized."""
        given = [key for key in STATE_KEYS if key in state]
        if not given:
            return
        if len(given) != len(STATE_KEYS):
            raise ValueError(f"resume: history state has {given}, expected all of {STATE_KEYS}")
        updates, nodes, rounds = (state[key] for key in STATE_KEYS)
        k = nodes.numel()
        if updates.ndim != 2 or tuple(updates.shape) != (k, size) or rounds.numel() != k:
            raise ValueError(
                f"resume: history state of shapes {tuple(updates.shape)}, {tuple(nodes.shape)}, "
                f"{tuple(rounds.shape)} does not fit {k} nodes of a {size}-parameter model"
            )
        if not bool(torch.isfinite(updates).all()):
            raise ValueError("resume: history state 'history.updates' is not finite")
        if len(set(nodes.tolist())) != k:
            raise ValueError("resume: history state names a node twice")
        self.updates = updates.clone()
        self.nodes = [int(j) for j in nodes.tolist()]
        self.rounds = [int(t) for t in rounds.tolist()]
