"""Replies collected on a short poll in a deployment.

Flower's deployment grid (``HttpGrid`` in flwr 1.42, ``GrpcGrid`` before) pushes a
round's messages and then pulls the replies in a loop that sleeps a fixed 3 s between
pulls, so a round whose replies are all in after 0.2 s still waits 3 s. The
strategies' ``start()`` hands Flower's loop :class:`ShortPollGrid`, the same grid with
``send_and_receive`` pulling every :data:`POLL_INTERVAL` seconds (the same push, pull
and timeout, only the sleep differs). A pull that sees a reply before its arrays are
uploaded is slowed by Flower's own object-pull back-off (1 s), never more than before.
Other grids (the simulation's in-memory grid polls every 0.1 s already, tests' grids)
are used as they are.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

POLL_INTERVAL = 0.1
"""Seconds between two pulls of a round's replies."""


FIXED_POLL = frozenset(
    {
        ("flwr.superlink.grid.http_grid", "HttpGrid.send_and_receive"),  # flwr 1.42
        ("flwr.server.grid.grpc_grid", "GrpcGrid.send_and_receive"),  # before
    }
)
"""The ``send_and_receive`` implementations that sleep 3 s between pulls, by module
and name (looked up without importing them: Flower's server modules take a second)."""


class ShortPollGrid:
    """``grid`` with ``send_and_receive`` pulling every ``interval`` seconds; every other
    attribute is the grid's own."""

    def __init__(self, grid: Grid, interval: float = POLL_INTERVAL) -> None:
        self._grid = grid
        self.interval = interval

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push ``messages``, then pull their replies until all came or ``timeout``."""
        pending = set(self._grid.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while True:
            pulled = list(self._grid.pull_messages(pending))
            replies.extend(pulled)
            pending.difference_update(m.metadata.reply_to_message_id for m in pulled)
            left = None if deadline is None else deadline - time.monotonic()
            if not pending or (left is not None and left <= 0):
                return replies
            time.sleep(self.interval if left is None else min(self.interval, left))


def short_polled(grid: Grid) -> Grid:
    """``grid`` wrapped in :class:`ShortPollGrid` when its replies wait for Flower's
    fixed 3 s poll, else ``grid`` itself."""
    method = getattr(type(grid), "send_and_receive", None)
    if (getattr(method, "__module__", None), getattr(method, "__qualname__", None)) in FIXED_POLL:
        return ShortPollGrid(grid)  # type: ignore[return-value]
    return grid
