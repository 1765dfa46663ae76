"""Rule-aware attacks (flwr_flag.attacks.aware) on stacked updates: each does more damage
to the rule it is built against than its fixed-scale counterpart, with the same
knowledge of the honest updates; what colluders know is configured and checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict

from flwr_flag.attacks import AttackContext, ByzantinePlan, make_behaviour
from flwr_flag.attacks.aware import round_shape
from flwr_flag.rules import aggregate

N, F, P = 15, 3, 120


def honest_updates(seed: int) -> np.ndarray:
    """Twelve heterogeneous honest updates: a shared mean and a per-client spread about
    twice its norm (non-IID clients, stochastic gradients)."""
    rng = np.random.default_rng(seed)
    mean = 0.5 * rng.normal(size=P)
    return mean + rng.normal(size=(N - F, P)) * rng.uniform(0.5, 1.5, size=(N - F, 1))


def context(honest: np.ndarray, config: dict, seed: int = 0) -> AttackContext:
    """Colluders who know the honest updates (both kinds of knowledge give them)."""
    return AttackContext(
        np.random.default_rng(seed),
        1,
        N,
        F,
        lambda k: honest[:k],
        lambda pid: honest[pid],
        lambda k: honest[:k],
        {"num-byzantine": F, **config},
    )


def damage(attack: str, params: dict, rule: str, seed: int) -> float:
    r""":math:`\|\mathrm{rule}(\text{honest} + f \text{ attackers}) - \bar g\|`, each colluder
    calling the attack with its own randomness."""
    honest = honest_updates(seed)
    behaviour = make_behaviour(attack, params)
    rows = [behaviour.update(honest[0], context(honest, {"rule": rule}, seed=s)) for s in range(F)]
    stacked = torch.from_numpy(np.concatenate([honest, np.stack(rows)]))
    out = aggregate(stacked, rule, F).vector.numpy()
    return float(np.linalg.norm(out - honest.mean(axis=0)))


SAME_KNOWLEDGE = {"samples": N - F}  # the fixed-scale attacks estimate from as many
PAIRS = [  # (rule-aware attack, its target, the fixed-scale attack it must beat)
    ("alie-tuned", "trimmed-mean", "alie"),
    ("alie-tuned", "centered-clipping", "alie"),
    ("ipm-tuned", "krum", "ipm"),
    ("ipm-tuned", "ctma", "ipm"),
    ("fang-krum", "krum", "ipm"),
    ("fang-trim", "trimmed-mean", "alie"),
    ("fang-trim", "median", "alie"),
    ("flag-flip", "flag", "sign-flip"),
    ("ctma-inside", "ctma", "alie"),
]


@pytest.mark.parametrize(("aware", "rule", "fixed"), PAIRS)
def test_a_rule_aware_attack_moves_its_target_farther_than_the_fixed_scale_one(aware, rule, fixed):
    fixed_params = SAME_KNOWLEDGE if fixed in ("alie", "ipm") else {}
    for seed in range(3):
        ours = damage(aware, {}, rule, seed)
        theirs = damage(fixed, fixed_params, rule, seed)
        assert ours > 1.05 * theirs, (seed, ours, theirs)


def test_fang_trim_sends_values_beyond_the_honest_extremes_against_their_direction():
    honest = honest_updates(0)
    sent = make_behaviour("fang-trim", {}).update(honest[0], context(honest, {"rule": "median"}))
    up = honest.mean(axis=0) > 0
    assert np.all(sent[up] <= honest.min(axis=0)[up] + 1e-12)
    assert np.all(sent[~up] >= honest.max(axis=0)[~up] - 1e-12)


def test_the_target_is_the_run_configs_rule_unless_the_attack_names_one():
    honest = honest_updates(1)
    by_config = make_behaviour("ipm-tuned", {}).update(honest[0], context(honest, {"rule": "krum"}))
    named = make_behaviour("ipm-tuned", {"rule": "krum"}).update(
        honest[0], context(honest, {"rule": "mean"})
    )
    against_mean = make_behaviour("ipm-tuned", {}).update(
        honest[0], context(honest, {"rule": "mean"})
    )
    np.testing.assert_array_equal(by_config, named)
    assert not np.allclose(named, against_mean)  # the mean is hurt most by a large scale


def test_a_round_of_sampled_nodes_holds_the_colluders_share():
    ctx = context(honest_updates(0), {"fraction-train": 0.2, "min-train-nodes": 2})
    ctx.num_nodes, ctx.num_byzantine = 100, 20
    assert round_shape(ctx) == (20, 4)
    ctx.run_config = {"fraction-train": 0.05, "min-train-nodes": 10}
    assert round_shape(ctx) == (10, 2)


def test_an_unknown_target_rule_is_refused_naming_the_parameter():
    with pytest.raises(ValueError, match="rule"):
        make_behaviour("alie-tuned", {"rule": "krumm"})
    with pytest.raises(ValueError, match="knowledge"):
        make_behaviour("alie-tuned", {"knowledge": "everything"})


def test_a_rule_that_needs_the_strategys_state_cannot_be_simulated():
    honest = honest_updates(0)
    with pytest.raises(ValueError, match="detox"):
        make_behaviour("alie-tuned", {}).update(honest[0], context(honest, {"rule": "detox"}))


def test_the_mod_refuses_population_knowledge_and_runs_with_its_own():
    def plan(extra: dict) -> ByzantinePlan:
        run = {"byzantine.nodes": "0", "byzantine.attack": "ipm-tuned", **extra}
        node = {"partition-id": 0, "num-partitions": 4}
        return ByzantinePlan.from_context(Context(1, 1, node, RecordDict(), run))

    with pytest.raises(ValueError, match="knowledge='population'"):
        plan({})
    assert plan({"byzantine.ipm-tuned.knowledge": "own"}).behaviour.knowledge == "own"


def test_colluders_in_one_process_search_once_and_send_the_same(monkeypatch):
    from collections import OrderedDict

    from flwr_flag.attacks import base
    from flwr_flag.attacks.aware import SimulatedRound

    monkeypatch.setattr(base, "_SHARED", OrderedDict())  # nothing known from other tests
    searches = []
    search = SimulatedRound.worst
    monkeypatch.setattr(
        SimulatedRound, "worst", lambda self, c: searches.append(1) or search(self, c)
    )
    honest = honest_updates(2)
    attack = make_behaviour("ctma-inside", {})
    sent = [attack.update(honest[0], context(honest, {"rule": "ctma"}, seed=s)) for s in range(F)]
    assert len(searches) == 1
    assert all(np.array_equal(sent[0], other) for other in sent[1:])
    honest[0, 0] += 1.0  # what they know changed: a new search
    attack.update(honest[0], context(honest, {"rule": "ctma"}))
    assert len(searches) == 2
