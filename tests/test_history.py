"""Per-node history for sampled rounds (:mod:`flwr_flag.rules.history`) and the attacks
built against it (:mod:`flwr_flag.attacks.persistent`)."""

from __future__ import annotations

import logging
import statistics
from collections import OrderedDict

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_strategy_runs import run

import flwr_flag
from flwr_flag import strategy_from_config
from flwr_flag.attacks import AttackContext, make_behaviour
from flwr_flag.engine import StackedSource
from flwr_flag.rules import aggregate
from flwr_flag.rules.history import NodeHistory
from flwr_flag.strategy.replies import Reply

P = 12


def by_hand(rounds, max_age, decay, consistency):
    """The history's rows after each round, written out from the module docstring:
    ``{node: (row, weight)}`` per round (an independent reference implementation)."""
    cache: dict[int, tuple[torch.Tensor, int]] = {}
    out = []
    for t, (nodes, updates) in enumerate(rounds, start=1):
        cache = {j: e for j, e in cache.items() if t - e[1] <= max_age}
        pairs = zip(nodes, updates, strict=True)
        moves = {j: float((g - cache[j][0]).norm()) for j, g in pairs if j in cache}
        radius = consistency * statistics.median_low(moves.values()) if moves else None
        for j, g in zip(nodes, updates, strict=True):
            if j in moves and moves[j] > radius:
                g = cache[j][0] + (g - cache[j][0]) * (radius / moves[j])
            cache[j] = (g, t)
        out.append({j: (g, decay ** (t - s)) for j, (g, s) in cache.items()})
    return out


def schedule(seed: int = 0):
    """Five rounds of sampled nodes with absences: node 3 leaves after round 1 and is
    older than max_age=2 by round 4; node 7 comes back in round 5; node 5 jumps."""
    g = torch.Generator().manual_seed(seed)
    nodes = [[1, 3, 7], [1, 2, 7], [2, 5], [1, 5, 9], [3, 5, 7]]
    rounds = []
    for t, sampled in enumerate(nodes):
        updates = [torch.randn(P, dtype=torch.float64, generator=g) for _ in sampled]
        if t == 3:
            updates[1] = updates[1] * 40  # node 5 returns far from its last update
        rounds.append((sampled, updates))
    return rounds


def test_the_rows_equal_a_hand_computed_history_over_five_rounds_with_absences():
    history = NodeHistory(max_age=2, decay=0.5, consistency=1.5)
    rounds = schedule()
    expected = by_hand(rounds, max_age=2, decay=0.5, consistency=1.5)
    clipped = []
    for t, (nodes, updates) in enumerate(rounds, start=1):
        rows = history.rows(StackedSource(torch.stack(updates)), nodes, t)
        got = {
            j: (rows.source.updates[i], float(rows.weights[i])) for i, j in enumerate(rows.node_ids)
        }
        assert sorted(got) == sorted(expected[t - 1])
        for j, (row, weight) in expected[t - 1].items():
            torch.testing.assert_close(got[j][0], row)
            assert got[j][1] == pytest.approx(weight)
        clipped.append(rows.clipped)
    assert clipped[3] == [5]  # the jump is held to the radius
    assert 3 in expected[4] and expected[4][3][1] == 1.0  # back after >max_age: afresh


def test_the_cap_keeps_this_rounds_nodes_and_drops_the_stalest():
    history = NodeHistory(max_age=50, max_nodes=4, consistency=None)
    for t in range(1, 7):
        nodes = [t, 10 + t]
        rows = history.rows(StackedSource(torch.ones(2, P) * t), nodes, t)
        assert len(rows.node_ids) <= 4 and set(nodes) <= set(rows.node_ids)
        assert history.updates.shape[0] <= 4
    assert sorted(history.nodes) == [5, 6, 15, 16]
    assert history.rows_for([1, 2, 3], 7) == 4


@settings(max_examples=60, deadline=None)
@given(
    schedule=st.lists(st.sets(st.integers(1, 12), min_size=1, max_size=6), max_size=12),
    max_age=st.integers(1, 5),
    max_nodes=st.one_of(st.none(), st.integers(1, 8)),
)
def test_the_row_count_announced_before_a_round_is_the_count_it_hands_on(
    schedule, max_age, max_nodes
):
    history = NodeHistory(max_age=max_age, max_nodes=max_nodes)
    for t, sampled in enumerate(schedule, start=1):
        nodes = sorted(sampled)
        announced = history.rows_for(nodes, t)
        rows = history.rows(StackedSource(torch.randn(len(nodes), P)), nodes, t)
        assert len(rows.node_ids) == announced
        assert set(nodes) <= set(rows.node_ids)
        ages = [t - r for r in history.rounds]
        assert max(ages) <= max_age
        if max_nodes is not None:
            assert announced <= max(max_nodes, len(nodes))


def test_a_non_finite_update_leaves_the_history_as_it_was():
    from flwr_flag.engine import NonFiniteUpdateError

    history = NodeHistory()
    history.rows(StackedSource(torch.ones(2, P)), [1, 2], 1)
    before = {k: v.clone() for k, v in history.state_dict().items()}
    bad = torch.ones(2, P)
    bad[1, 3] = float("nan")
    with pytest.raises(NonFiniteUpdateError):
        history.rows(StackedSource(bad), [1, 3], 2)
    after = history.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_state_round_trips_and_a_bad_state_is_refused():
    history = NodeHistory(max_age=3)
    for t, (nodes, updates) in enumerate(schedule(1), start=1):
        history.rows(StackedSource(torch.stack(updates)), nodes, t)
    state = history.state_dict()
    copy = NodeHistory(max_age=3)
    copy.load_state_dict(state, P)
    assert all(torch.equal(copy.state_dict()[k], v) for k, v in state.items())
    with pytest.raises(ValueError, match="does not fit"):
        NodeHistory().load_state_dict(state, P + 1)
    with pytest.raises(ValueError, match="names a node twice"):
        NodeHistory().load_state_dict(
            {**state, "history.nodes": torch.zeros_like(state["history.nodes"])}, P
        )


MODEL = OrderedDict(w=np.zeros(4, np.float32))


def test_the_rule_sees_every_known_node_and_f_counts_them():
    core = flwr_flag.TrimmedMean(num_byzantine=0.2, device="cpu", history=True).core
    first = [Reply(i, {"w": np.full(4, float(i), np.float32)}, 1) for i in range(1, 9)]
    core.round(1, MODEL, first, 0)
    # Round 2: two replies alone cannot run trimmed mean with f >= 1; with the eight
    # known nodes they can, and f is the fraction of the ten rows.
    outcome = core.round(2, MODEL, [Reply(i, {"w": np.ones(4, np.float32)}, 1) for i in (9, 10)], 0)
    assert outcome.arrays is not None
    assert outcome.metrics["robust.history.known"] == 10
    assert outcome.metrics["robust.f"] == 2
    without = flwr_flag.TrimmedMean(num_byzantine=0.2, device="cpu", max_kept_rounds=None).core
    assert without.round(2, MODEL, [Reply(9, {"w": np.ones(4, np.float32)}, 1)], 0).arrays is None


def test_a_node_caught_sending_nan_leaves_the_history(caplog):
    core = flwr_flag.Median(num_byzantine=1, device="cpu", history=True).core
    core.round(1, MODEL, [Reply(i, {"w": np.full(4, i, np.float32)}, 1) for i in range(1, 6)], 0)
    nan = Reply(3, {"w": np.full(4, np.nan, np.float32)}, 1)
    with caplog.at_level(logging.WARNING, logger="flwr"):
        outcome = core.round(2, MODEL, [nan, Reply(1, {"w": np.ones(4, np.float32)}, 1)], 0)
    assert 3 not in core.history.nodes and outcome.metrics["robust.history.known"] == 4
    assert "rejected reply from node 3" in caplog.text


def test_kill_and_resume_with_history_gives_the_uninterrupted_result(tmp_path):
    def strategy(directory, resume=False):
        return flwr_flag.RobustStrategy(
            rule="trimmed-mean",
            num_byzantine=0.2,
            device="cpu",
            fraction_train=0.5,
            min_available_nodes=8,
            history={"max_age": 3, "decay": 0.8},
            checkpoint_dir=str(directory),
            resume=resume,
        )

    import random

    random.seed(0)
    straight = run(strategy(tmp_path / "a"), 6, nodes=8)
    random.seed(0)
    run(strategy(tmp_path / "b"), 3, nodes=8)
    killed = flwr_flag.strategy.CheckpointStore(tmp_path / "b", resume=True).latest()
    assert killed.state["history.updates"].shape[0] >= 4
    resumed = run(strategy(tmp_path / "b", resume=True), 6, nodes=8)
    straight_state = flwr_flag.strategy.CheckpointStore(tmp_path / "a", resume=True).latest()
    resumed_state = flwr_flag.strategy.CheckpointStore(tmp_path / "b", resume=True).latest()
    for key in ("history.nodes", "history.rounds"):
        assert torch.equal(straight_state.state[key], resumed_state.state[key])
    for k in ("w", "b"):
        np.testing.assert_allclose(
            resumed.arrays[k].numpy(), straight.arrays[k].numpy(), rtol=1e-6, atol=1e-7
        )


def test_the_run_config_builds_the_history_and_a_bad_value_is_named():
    config = {"rule": "ctma", "num-byzantine": 0.2, "device": "cpu"}
    assert strategy_from_config(config).core.history is None
    on = strategy_from_config({**config, "history.max-age": 5, "history.max-nodes": "none"})
    assert on.core.history.options() == {
        "max_age": 5,
        "decay": 0.9,
        "consistency": 2.0,
        "max_nodes": None,
    }
    with pytest.raises(ValueError, match=r"history: decay=2\.0 .*allowed 0\.0 < decay <= 1\.0"):
        strategy_from_config({**config, "history.max-age": 5, "history.decay": 2.0})
    with pytest.raises(ValueError, match="weighting='uniform'"):
        flwr_flag.Mean(device="cpu", history=True, weighting="num-examples")


def drift(behaviour: str, seed: int, params: dict | None = None, after: int = 0) -> float:
    """How far the attacked model moves from the model the same rounds give without the
    attack, summed over rounds ``after + 1 .. 12``: 30 nodes, 6 Byzantine, 10 sampled
    per round, trimmed mean with history (stacked updates; the colluders estimate the
    honest updates from honest draws)."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=60)
    attack = make_behaviour(behaviour, params or {})
    attacked, clean = NodeHistory(max_age=10), NodeHistory(max_age=10)
    moved = torch.zeros(60, dtype=torch.float64)
    for t in range(1, 13):
        nodes = sorted(rng.choice(30, size=10, replace=False).tolist())
        honest = mean + 0.8 * rng.normal(size=(10, 60))
        draws = mean + 0.8 * rng.normal(size=(4, 60))
        context = AttackContext(
            rng, t, 30, 6, lambda k, d=draws: d[:k], lambda pid: mean, None, {"seed": seed}
        )
        sent = np.array(
            [attack.update(h, context) if j < 6 else h for j, h in zip(nodes, honest, strict=True)]
        )
        outputs = []
        for history, updates in ((attacked, sent), (clean, honest)):
            rows = history.rows(StackedSource(torch.from_numpy(updates)), nodes, t)
            f = int(np.ceil(0.2 * len(rows.node_ids)))
            outputs.append(aggregate(rows.source, "trimmed-mean", f, rows.weights).vector)
        if t > after:
            moved += outputs[0] - outputs[1]
    return float(moved.norm())


def test_the_consistent_attack_drifts_farther_than_its_fresh_version():
    for seed in range(4):
        fresh = drift("consistent", seed, {"direction": "fresh"})
        assert drift("consistent", seed) > 1.5 * fresh


def test_a_sleepers_honest_past_buys_it_nothing_against_history():
    """History clips and never bans: over the rounds it attacks, a sleeper moves the
    model no farther than the same attack run from round 1."""
    for seed in range(4):
        naive = drift("consistent", seed, after=6)
        sleeper = drift("sleeper", seed, {"rounds": 6}, after=6)
        assert 0 < sleeper <= naive * 1.05


def test_the_legacy_api_keeps_the_history_by_node_id_too():
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from test_strategy_runs import Proxy, manager_of

    import flwr_flag.legacy

    strategy = flwr_flag.legacy.TrimmedMean(
        num_byzantine=0.2, device="cpu", history=True, min_available_clients=3
    )
    strategy.configure_fit(1, ndarrays_to_parameters([np.zeros(4, np.float32)]), manager_of(3))

    def results(ids):
        return [
            (
                Proxy(i),
                FitRes(Status(Code.OK, ""), ndarrays_to_parameters([np.full(4, i, "f")]), 1, {}),
            )
            for i in ids
        ]

    strategy.aggregate_fit(1, results(range(1, 9)), [])
    _, metrics = strategy.aggregate_fit(2, results([9, 10]), [])
    assert metrics["robust.history.known"] == 10 and metrics["robust.f"] == 2
