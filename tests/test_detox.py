"""DETOX: majority vote in groups, the robust second stage, group formation, and the
real ClientApp's equal updates inside a group."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

import flwr_flag
from clients.app import app as client_app
from clients.models import build_model
from flwr_flag.inprocess import InProcessGrid
from flwr_flag.rules import aggregate
from flwr_flag.strategy.detox import form_groups

G = torch.Generator().manual_seed(0)


def grouped(values: torch.Tensor, r: int = 3) -> tuple[torch.Tensor, list[int]]:
    """Each row of ``values`` repeated ``r`` times (one group per row)."""
    return values.repeat_interleave(r, dim=0), [g for g in range(len(values)) for _ in range(r)]


@pytest.mark.parametrize("stage2", ["median", "multi-krum", "bulyan", "mean"])
def test_byzantine_minorities_change_nothing(stage2):
    honest, groups = grouped(torch.randn(7, 40, generator=G, dtype=torch.float64))
    attacked = honest.clone()
    attacked[[0, 4, 8, 10, 14, 19]] = torch.randn(6, 40, generator=G, dtype=torch.float64) * 50
    params = {"stage2": stage2, "stage2_pre": ()}
    clean = aggregate(honest, "detox", 3, groups=groups, **params)
    result = aggregate(attacked, "detox", 3, groups=groups, **params)
    torch.testing.assert_close(result.vector, clean.vector, rtol=0, atol=0)
    assert sorted(result.diagnostics["dissenting"]) == [0, 4, 8, 10, 14, 19]
    assert result.diagnostics["groups_without_majority"] == 0
    assert result.diagnostics["f_prime"] == 1


def test_a_byzantine_majority_is_removed_by_the_second_stage():
    honest, groups = grouped(torch.randn(7, 40, generator=G, dtype=torch.float64) * 0.1 + 1)
    attacked = honest.clone()
    attacked[[3, 4]] = 1e4  # two colluders out-vote their group's honest member
    result = aggregate(attacked, "detox", 2, groups=groups, stage2="median", stage2_pre=())
    assert result.diagnostics["dissenting"] == [5]
    low, high = honest.min(0).values, honest.max(0).values
    assert bool(((result.vector >= low) & (result.vector <= high)).all())


def test_groups_without_majority_are_dropped_and_failed_members_still_count():
    values, groups = grouped(torch.randn(5, 20, generator=G, dtype=torch.float64))
    values[[0, 1]] = torch.randn(2, 20, generator=G, dtype=torch.float64)  # group 0: all differ
    keep = [i for i in range(15) if i != 5]  # group 1 lost a member: 2 of 3 still agree
    result = aggregate(
        values[keep], "detox", 0, groups=[groups[i] for i in keep], stage2="mean", stage2_pre=()
    )
    assert result.diagnostics["groups_without_majority"] == 1
    assert result.diagnostics["no_majority"] == [0, 1, 2]
    expected = values[[3, 6, 9, 12]].mean(0)  # group 1's winner: its remaining member 3
    torch.testing.assert_close(result.vector, expected)


@pytest.mark.parametrize("chunk_size", [1, 7, 64])
def test_streaming_equals_in_memory(chunk_size):
    from flwr_flag.engine import StackedSource

    values, groups = grouped(torch.randn(5, 30, generator=G, dtype=torch.float64))
    values[4] += 1.0
    params = {"groups": groups, "stage2": "median", "stage2_pre": ()}
    expected = aggregate(values, "detox", 1, **params).vector
    got = aggregate(StackedSource(values, chunk_size=chunk_size), "detox", 1, **params).vector
    torch.testing.assert_close(got, expected)


def test_group_formation():
    groups, left = form_groups(range(10, 20), 3, seed=1)
    assert len(groups) == 9 and len(left) == 1 and sorted(set(groups.values())) == [0, 1, 2]
    assert form_groups(range(10, 20), 3, seed=1) == (groups, left)
    assert form_groups(range(2), 3, seed=1)[0] == {}
    with pytest.raises(ValueError, match="replication=0 is out of range"):
        flwr_flag.Detox(replication=0)


def test_honest_group_members_send_identical_updates_through_the_client_app():
    grid = InProcessGrid(client_app, 7, run_config={"model": "cnn", "local-steps": 3})
    strategy = flwr_flag.Detox(num_byzantine=0, device="cpu")
    arrays = ArrayRecord(build_model("cnn", (1, 8, 8), 10).state_dict())
    messages = list(strategy.configure_train(1, arrays, ConfigRecord(), grid))
    assert len(messages) == 6  # 7 nodes: one sits out
    replies = {m.metadata.src_node_id: m for m in grid.send_and_receive(messages)}
    by_group: dict[int, list] = {}
    for node, group in strategy.groups.items():
        by_group.setdefault(group, []).append(replies[node].content["arrays"])
    for members in by_group.values():
        first = members[0]
        for other in members[1:]:
            for k in first.keys():
                np.testing.assert_array_equal(first[k].numpy(), other[k].numpy())
    distinct = [by_group[g][0]["0.weight"].numpy() for g in sorted(by_group)]
    assert not np.array_equal(distinct[0], distinct[1])
    # Each reply names its own partition (node ids 1..7 are partitions 0..6), its group
    # apart: the group is not an identity.
    for node, group in strategy.groups.items():
        record = replies[node].content["node"]
        assert (record["partition-id"], record["detox-group"]) == (node - 1, group)


def test_detox_members_attack_with_the_runs_node_count():
    from clients.app import Node, Shard
    from clients.config import ClientSettings

    settings = ClientSettings.from_config(
        {"model": "mlp", "byzantine-nodes": 2, "attack": "alie", "num-partitions": 15},
        {"partition-id": 1},
    )
    arrays = build_model("mlp", (1, 8, 8), 10).state_dict()
    sent = {k: v.numpy() for k, v in arrays.items()}
    node = Node(settings, sent, 1, Shard(index=3, count=5, seed=11))
    context = node.attack_context(RecordDict(), {})
    assert (context.num_nodes, context.num_byzantine) == (15, 2)
    assert len(node.data) == len(node.partition(3, 5, 11))


@pytest.mark.parametrize("attack", ["sign-flip", "alie"])
def test_in_process_run_under_attack_learns(attack):
    from clients.data import load_test
    from clients.models import set_arrays
    from clients.train import evaluate

    config = {
        "model": "cnn",
        "local-epochs": 1,
        "lr": 0.05,
        "momentum": 0.9,
        "byzantine-nodes": 2,
        "attack": attack,
        "fraction-evaluate": 0.0,
    }
    grid = InProcessGrid(client_app, 15, run_config=config)  # 5 groups, as in the paper
    strategy = flwr_flag.Detox(num_byzantine=2, device="cpu", fraction_evaluate=0.0)
    model = build_model("cnn", (1, 8, 8), 10)
    test = load_test("digits")
    before = evaluate(model, test)[1]
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=8)
    set_arrays(model, {k: v.numpy() for k, v in result.arrays.items()})
    after = evaluate(model, test)[1]
    assert all(np.isfinite(v.numpy()).all() for v in result.arrays.values())
    assert after > before + 0.3


def test_legacy_detox_sends_group_configs():
    from flwr.common import ndarrays_to_parameters
    from test_strategy_runs import manager_of

    import flwr_flag.legacy

    manager = manager_of(7)
    strategy = flwr_flag.legacy.Detox(
        num_byzantine=1, device="cpu", min_fit_clients=7, min_available_clients=7
    )
    parameters = ndarrays_to_parameters([np.zeros(3, np.float32)])
    instructions = strategy.configure_fit(1, parameters, manager)
    assert len(instructions) == 6  # 7 nodes, groups of 3: one sits out
    groups = {proxy.node_id: ins.config["detox-group"] for proxy, ins in instructions}
    assert sorted(groups.values()) == [0, 0, 0, 1, 1, 1] and groups == strategy.groups
    assert len({ins.config["detox-seed"] for _, ins in instructions}) == 1


def test_dissenting_members_are_reported_by_node_id():
    from flwr_flag.strategy.core import summarize

    values, groups = grouped(torch.randn(5, 20, generator=G, dtype=torch.float64))
    values[4] *= -3.0
    result = aggregate(values, "detox", 1, groups=groups)
    node_ids = [100 + i for i in range(15)]
    metrics = summarize(result.diagnostics, node_ids)
    assert metrics["robust.dissenting-nodes"] == [104]
    assert metrics["robust.outvoted-nodes"] == [104]
    assert metrics["robust.groups"] == 5
    # The default second stage runs on buckets of winners: rows no node id can name.
    assert not any(k.startswith("robust.stage2.") and k.endswith("-nodes") for k in metrics)
    # Without bucketing, the second stage's rows are winners: named by their node ids.
    result = aggregate(values, "detox", 1, groups=groups, stage2="multi-krum", stage2_pre=())
    metrics = summarize(result.diagnostics, node_ids)
    winners = metrics["robust.stage2.selected-nodes"]
    assert len(winners) == 5 and all(groups[n - 100] >= 0 for n in winners)
    assert len({groups[n - 100] for n in winners}) == 5  # one member of each group
