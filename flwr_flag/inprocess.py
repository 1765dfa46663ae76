"""A Flower ``Grid`` that runs a ``ClientApp`` in this process: real apps, no Ray.

For tests and studies: a strategy's ``start(grid=InProcessGrid(...))`` drives the real
ClientApp through its registered ``@app.train()`` / ``@app.evaluate()`` functions,
each node with its own ``Context`` (``node_config`` with ``partition-id`` and
``num-partitions``, the full ``run_config``, a persistent ``state``). Each node gets
its own deep copy of the message content, as the real runtimes give each node its own
deserialised copy. An exception in the ClientApp becomes an error reply, as in
Flower's runtimes; a ClientApp that returns ``None`` sends no reply.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Mapping
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

try:  # flwr >= 1.42: Run moved, and a Message built outside a runtime needs a task identity
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity
except ImportError:  # the flwr 1.21 line
    from flwr.common.typing import Run

    TaskIdentity = None

CLIENT_APP_EXCEPTION = 300  # the code Flower's runtimes give a failing ClientApp


class InProcessGrid(Grid):
    """Run ``client_app`` on ``num_nodes`` in-process nodes (ids ``1..num_nodes``).

    ``node_configs`` (one mapping per node) default to ``partition-id`` ``i`` and
    ``num-partitions`` ``num_nodes``.
    """

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        run_config: Mapping[str, Any] | None = None,
        node_configs: list[Mapping[str, Any]] | None = None,
        run_id: int = 1,
    ) -> None:
        # Messages built outside a Flower runtime need a task identity.
        if TaskIdentity is not None:
            TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, 0, 1
        configs = node_configs or [
            {"partition-id": i, "num-partitions": num_nodes} for i in range(num_nodes)
        ]
        if len(configs) != num_nodes:
            raise ValueError(f"node_configs has {len(configs)} entries, expected {num_nodes}")
        self.client_app = client_app
        self.contexts = {
            i + 1: Context(run_id, i + 1, dict(cfg), RecordDict(), dict(run_config or {}))
            for i, cfg in enumerate(configs)
        }
        self._run = Run.create_empty(run_id)
        self._replies: dict[str, Message] = {}
        self._ids = itertools.count(1)

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(
            content=content,
            message_type=message_type,
            dst_node_id=dst_node_id,
            group_id=group_id,
            ttl=ttl,
        )

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message_id = str(next(self._ids))
            node = message.metadata.dst_node_id
            delivered = Message(
                content=copy.deepcopy(message.content),
                message_type=message.metadata.message_type,
                dst_node_id=node,
                group_id=message.metadata.group_id,
            )
            # As Flower's grids do: the pushed id, so replies name it as reply_to.
            delivered.metadata.__dict__["_message_id"] = message_id
            try:
                reply = self.client_app(delivered, self.contexts[node])
            except Exception as error:
                reply = Message(Error(CLIENT_APP_EXCEPTION, repr(error)), reply_to=delivered)
            if reply is not None:
                self._replies[message_id] = reply
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))
