"""Helpers to build Flower replies and a small deterministic ClientApp for tests."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flwr_flag.inprocess import TaskIdentity

SHAPES = OrderedDict(w=(3, 4), b=(4,))

if TaskIdentity is not None:  # flwr >= 1.42: Messages built outside a runtime need it
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


def arrays_of(values: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord(OrderedDict((k, Array(np.asarray(v))) for k, v in values.items()))


def reply(node_id: int, arrays: dict[str, np.ndarray] | None, **metrics) -> Message:
    """A train reply from ``node_id`` (``arrays=None`` gives an error reply)."""
    request = Message(content=RecordDict(), dst_node_id=node_id, message_type="train")
    if arrays is None:
        return Message(Error(300, "client crashed"), reply_to=request)
    content = RecordDict({"arrays": arrays_of(arrays), "metrics": MetricRecord(metrics)})
    return Message(content, reply_to=request)


def random_model(seed: int, dtype=np.float32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s).astype(dtype) for k, s in SHAPES.items()}


def linear_app() -> ClientApp:
    """Full-batch least squares on per-node synthetic data: deterministic updates.

    Node config ``partition-id`` picks the data; ``run_config["nan-node"]`` names a
    partition that replies with NaN weights.
    """
    app = ClientApp()

    def data(pid: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(100 + pid)
        x = rng.normal(size=(32, 4)).astype(np.float32)
        y = x @ np.array([1.0, -2.0, 0.5, 3.0], dtype=np.float32)
        return x, y[:, None].repeat(3, axis=1)

    @app.train()
    def train(message: Message, context) -> Message:
        w = message.content["arrays"]["w"].numpy()
        b = message.content["arrays"]["b"].numpy()
        pid = int(context.node_config["partition-id"])
        x, y = data(pid)
        for _ in range(5):
            grad = x.T @ (x @ w.T - y) / len(x)  # (4, 3)
            w = w - 0.1 * grad.T
        if pid == context.run_config.get("nan-node", -1):
            w = w * np.nan
        loss = float(np.mean((x @ w.T - y) ** 2))
        content = RecordDict(
            {
                "arrays": arrays_of({"w": w, "b": b}),
                "metrics": MetricRecord({"num-examples": len(x), "loss": loss}),
            }
        )
        return Message(content, reply_to=message)

    @app.evaluate()
    def evaluate(message: Message, context) -> Message:
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 1})}), reply_to=message)

    return app
