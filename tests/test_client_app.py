"""The real ClientApp through the in-process grid: honest nodes are unaffected by others'
behaviour, replies are deterministic, faults reach the server as failures."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

import flwr_flag
from clients.app import app
from clients.models import build_model
from flwr_flag.inprocess import InProcessGrid

BASE = {"local-steps": 2, "batch-size": 16, "model": "mlp"}


def one_round(config: dict, nodes: int = 4) -> dict[int, Message]:
    grid = InProcessGrid(app, nodes, run_config=config)
    arrays = ArrayRecord(build_model("mlp", (1, 8, 8), 10).state_dict())
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})})
    messages = [grid.create_message(content, "train", node, "1") for node in grid.get_node_ids()]
    return {m.metadata.src_node_id: m for m in grid.send_and_receive(messages)}


def weights(message: Message) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in message.content["arrays"].items()}


def test_honest_replies_do_not_depend_on_other_nodes_behaviour():
    clean = one_round({**BASE, "byzantine-nodes": 0})
    attacked = one_round({**BASE, "byzantine-nodes": "1", "attack": "sign-flip", "sign-flip.k": 5})
    again = one_round({**BASE, "byzantine-nodes": 0})
    for node in (1, 3, 4):
        for k, v in weights(clean[node]).items():
            np.testing.assert_array_equal(v, weights(attacked[node])[k])
            np.testing.assert_array_equal(v, weights(again[node])[k])
    assert attacked[2].content["metrics"]["byzantine"] == 1
    assert attacked[2].content["node"]["behaviour"] == "sign-flip"
    assert attacked[2].content["node"]["behaviour.k"] == 5
    assert attacked[2].content["node"]["partition-id"] == 1
    assert clean[2].content["metrics"]["byzantine"] == 0


@pytest.mark.parametrize(("attack", "failed"), [("crash", 1), ("drop", 1), ("nan", 0)])
def test_faults_reach_the_strategy(attack, failed):
    grid = InProcessGrid(app, 5, run_config={**BASE, "byzantine-nodes": "2", "attack": attack})
    strategy = flwr_flag.Median(num_byzantine=1, device="cpu", fraction_evaluate=0.0)
    initial = ArrayRecord(build_model("mlp", (1, 8, 8), 10).state_dict())
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=1)
    metrics = result.train_metrics_clientapp[1]
    assert metrics["robust.failed"] == failed
    assert metrics["robust.rejected-nodes"] == ([] if failed else [3])
    assert all(np.isfinite(v.numpy()).all() for v in result.arrays.values())
