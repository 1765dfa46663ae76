"""The server's trust anchor (FLTrust's scoring, :mod:`flwr_flag.rules.anchor`)."""

from __future__ import annotations

import logging
from collections import OrderedDict

import numpy as np
import pytest
import torch
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from test_strategy_runs import Proxy, manager_of

import flwr_flag
import flwr_flag.legacy
from flwr_flag.rules import RULES, aggregate
from flwr_flag.rules.inputs import InputRangeError
from flwr_flag.strategy.replies import Reply


def fltrust_by_hand(x: torch.Tensor, g0: torch.Tensor, rescale: str = "reference"):
    """Cao et al.'s formula, written out: ReLU cosine trust, rows rescaled to ||g0||
    (``"clip"``: only rows longer than ||g0|| scaled down to it; ``"median"``: rows
    longer than the rows' lower median norm scaled down to that; ``"equal"``: every
    row scaled to that median; ``"longer"``: every row scaled to the longer of the two)."""
    trust = [max(float(row @ g0 / (row.norm() * g0.norm())), 0.0) for row in x]
    bound = bound_by_hand(x, g0, rescale)
    scales = [bound / float(row.norm()) for row in x]
    if rescale in ("clip", "median"):
        scales = [min(s, 1.0) for s in scales]
    rescaled = [row * s for row, s in zip(x, scales, strict=True)]
    return sum(t * r for t, r in zip(trust, rescaled, strict=True)) / sum(trust)


def bound_by_hand(x: torch.Tensor, g0: torch.Tensor, rescale: str) -> float:
    """The length the anchor's ``rescale`` bounds rows by: ||g0||, the rows' lower median
    norm, or the longer of the two."""
    norms = sorted(float(row.norm()) for row in x)
    median = norms[(len(norms) - 1) // 2]
    longer = max(median, float(g0.norm()))
    return {"median": median, "equal": median, "longer": longer}.get(rescale, float(g0.norm()))


def problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    g0 = torch.randn(30, dtype=torch.float64, generator=g)
    x = g0 + 0.8 * torch.randn(9, 30, dtype=torch.float64, generator=g)
    x[0] = -7.0 * g0  # anti-aligned
    x[1] = 100.0 * (g0 + 0.5 * torch.randn(30, dtype=torch.float64, generator=g))  # huge
    return x, g0


@pytest.mark.parametrize("rescale", ["reference", "clip", "median", "equal", "longer"])
@pytest.mark.parametrize("reference_length", [1.0, 3.0])  # shorter, longer than the median
def test_the_mean_after_the_anchor_is_fltrust(rescale, reference_length):
    x, g0 = problem()
    g0 = reference_length * g0
    x[2] *= 0.05  # shorter than the reference: clipping keeps its length
    out = aggregate(x, "mean", 0, pre=[("anchor", {"reference": g0, "rescale": rescale})])
    torch.testing.assert_close(out.vector, fltrust_by_hand(x, g0, rescale))
    anchor = out.diagnostics["pre"]["anchor"]
    assert anchor["distrusted"] == [0] and anchor["trust"][0] == 0.0
    assert float(out.vector.norm()) <= bound_by_hand(x, g0, rescale) + 1e-9  # no blow-up


@pytest.mark.parametrize("rule", sorted(set(RULES) - {"detox"}))
def test_every_rule_runs_after_the_anchor_and_an_anti_aligned_row_counts_for_nothing(rule):
    x, g0 = problem(1)
    flipped = x.clone()
    flipped[0] = -1e6 * g0  # even further away: its row is the zero update, weight 0
    a = aggregate(x, rule, 1, pre=[("anchor", {"reference": g0})]).vector
    b = aggregate(flipped, rule, 1, pre=[("anchor", {"reference": g0})]).vector
    assert bool(torch.isfinite(a).all())
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("reference", "says"),
    [
        (None, "no reference update this round"),
        (torch.ones(7, dtype=torch.float64), "has shape \\(7,\\), the updates 30"),
        (torch.full((30,), float("nan"), dtype=torch.float64), "not finite, or zero"),
        (torch.zeros(30, dtype=torch.float64), "not finite, or zero"),
    ],
)
def test_a_bad_reference_refuses_the_round_with_its_reason(reference, says):
    x, _ = problem()
    with pytest.raises(InputRangeError, match=says):
        aggregate(x, "mean", 0, pre=[("anchor", {"reference": reference})])


def test_no_update_agreeing_with_the_reference_refuses_the_round():
    x, g0 = problem()
    with pytest.raises(InputRangeError, match="no update has a positive cosine"):
        aggregate(-x.abs() @ torch.eye(30, dtype=torch.float64), "mean", 0,
                  pre=[("anchor", {"reference": g0.abs()})])  # fmt: skip


MODEL = OrderedDict(w=np.zeros(6, np.float32), steps=np.array(3, np.int64))


def replies() -> list[Reply]:
    honest = [
        Reply(i, {"w": np.full(6, 1.0 + 0.1 * i, np.float32), "steps": np.array(4)}, 1)
        for i in range(1, 6)
    ]
    return [*honest, Reply(9, {"w": np.full(6, -50.0, np.float32), "steps": np.array(4)}, 1)]


def toward_ones(arrays):
    return {"w": arrays["w"] + 1, "steps": arrays["steps"] + 1}


def test_the_strategy_scores_each_round_against_its_anchor():
    core = flwr_flag.FLTrust(anchor=toward_ones, device="cpu").core
    outcome = core.round(1, MODEL, replies(), 0)
    assert outcome.metrics["robust.pre.anchor.distrusted-nodes"] == [9]
    updates = torch.tensor(
        [[*r.arrays["w"].tolist(), float(r.arrays["steps"]) - 3.0] for r in replies()],
        dtype=torch.float64,
    )
    expected = fltrust_by_hand(updates, torch.ones(7, dtype=torch.float64))
    np.testing.assert_allclose(outcome.arrays["w"], expected[:6].numpy(), rtol=1e-6)
    assert int(outcome.arrays["steps"]) == 3 + round(float(expected[6]))
    assert outcome.metrics["robust.anchor-seconds"] >= 0


def test_a_non_finite_reference_keeps_the_model_with_the_reason(caplog):
    core = flwr_flag.FlagAggregator(
        num_byzantine=1, device="cpu", anchor=lambda a: {**a, "w": a["w"] * np.nan}
    ).core
    with caplog.at_level(logging.WARNING, logger="flwr"):
        outcome = core.round(1, MODEL, replies(), 0)
    assert outcome.arrays is None
    assert "keeping the current model: anchor: the reference update is not finite" in caplog.text


def test_an_anchor_of_another_model_or_missing_is_an_error_before_any_round():
    core = flwr_flag.Mean(device="cpu", anchor=lambda a: {"w": np.zeros(5, np.float32)}).core
    with pytest.raises(ValueError, match="anchor: its arrays do not fit the model"):
        core.round(1, MODEL, replies(), 0)
    with pytest.raises(TypeError, match="FLTrust needs anchor="):
        flwr_flag.FLTrust(device="cpu")
    with pytest.raises(ValueError, match=r"pre-aggregator 'anchor' .* anchor=<function>"):
        flwr_flag.Median(device="cpu", pre=["anchor"])


def test_the_legacy_api_scores_against_the_anchor_too():
    strategy = flwr_flag.legacy.FLTrust(
        anchor=lambda a: {"0": a["0"] + 1},
        device="cpu",
        min_available_clients=3,
        diagnostics="full",
    )
    strategy.configure_fit(1, ndarrays_to_parameters([np.zeros(4, np.float32)]), manager_of(3))
    results = [
        (Proxy(i + 1), FitRes(Status(Code.OK, ""), ndarrays_to_parameters([value]), 1, {}))
        for i, value in enumerate(
            [np.ones(4, np.float32), 2 * np.ones(4, np.float32), -30 * np.ones(4, np.float32)]
        )
    ]
    parameters, metrics = strategy.aggregate_fit(1, results, [])
    assert metrics["robust.pre.anchor.distrusted-nodes"] == "3"
    np.testing.assert_allclose(parameters_to_ndarrays(parameters)[0], np.ones(4), rtol=1e-6)


def attacked(behaviour: str, seed: int, **params) -> float:
    """How far FLTrust moves from its honest-only output when 3 of 15 nodes run
    ``behaviour`` (stacked updates; the colluders estimate from honest draws)."""
    from flwr_flag.attacks import AttackContext, make_behaviour

    rng = np.random.default_rng(seed)
    mean = rng.normal(size=80)
    honest = mean + 0.7 * rng.normal(size=(12, 80))
    g0 = torch.from_numpy(mean + 0.3 * rng.normal(size=80))
    draws = mean + 0.7 * rng.normal(size=(4, 80))
    context = AttackContext(
        rng, 1, 15, 3, lambda k: draws[:k], lambda pid: honest[pid], None, {"seed": seed}
    )
    bad = make_behaviour(behaviour, params).update(honest[0], context)
    pre = [("anchor", {"reference": g0})]
    clean = aggregate(torch.from_numpy(honest), "mean", 0, pre=pre).vector
    rows = torch.from_numpy(np.vstack([honest, np.repeat(bad[None], 3, axis=0)]))
    return float((aggregate(rows, "mean", 0, pre=pre).vector - clean).norm())


@pytest.mark.parametrize("naive", [("sign-flip", {"k": 10.0}), ("ipm", {"epsilon": 0.5})])
def test_anchor_drift_moves_fltrust_farther_than_the_naive_attacks(naive):
    for seed in range(5):
        assert attacked("anchor-drift", seed) > 2 * attacked(naive[0], seed, **naive[1])


def test_anchor_drift_keeps_one_direction_across_rounds():
    from flwr_flag.attacks import AttackContext, make_behaviour

    attack = make_behaviour("anchor-drift", {"angle": 60.0})
    mean = np.ones(50)
    sent = []
    for server_round, shift in enumerate([0.0, 0.3]):
        draws = np.vstack([mean + shift, mean - shift])
        context = AttackContext(
            np.random.default_rng(server_round), server_round + 1, 15, 3,
            lambda k, d=draws: d[:k], lambda pid: mean, None, {"seed": 7},
        )  # fmt: skip
        update = attack.update(mean, context)
        unit = mean / np.linalg.norm(mean)
        assert np.isclose(update @ unit / np.linalg.norm(update), 0.5)  # cos 60
        sent.append(update - (update @ unit) * unit)
    cosine = sent[0] @ sent[1] / (np.linalg.norm(sent[0]) * np.linalg.norm(sent[1]))
    assert cosine > 0.999


def label_skew(seed: int = 0, classes: int = 6, p: int = 120):
    """Class directions ``R`` and 12 honest nodes that each hold two classes."""
    g = torch.Generator().manual_seed(seed)
    references = torch.randn(classes, p, dtype=torch.float64, generator=g) + 0.3
    nodes = []
    for i in range(12):
        held = [i % classes, (i + 1 + i // classes) % classes]
        noise = 0.2 * torch.randn(p, dtype=torch.float64, generator=g)
        nodes.append(references[held].mean(dim=0) + noise)
    return references, torch.stack(nodes)


def test_per_class_references_keep_honest_two_class_nodes_that_fltrust_distrusts():
    references, honest = label_skew()
    against = -references.sum(dim=0, keepdim=True)  # against every class
    x = torch.cat([honest, against])
    per_class = aggregate(x, "mean", 1, pre=[("anchor", {"reference": references})])
    fltrust = aggregate(x, "mean", 1, pre=[("anchor", {"reference": references.mean(dim=0)})])
    trust = torch.tensor(per_class.diagnostics["pre"]["anchor"]["trust"])
    single = torch.tensor(fltrust.diagnostics["pre"]["anchor"]["trust"])
    assert trust[12] == 0.0 and per_class.diagnostics["pre"]["anchor"]["distrusted"] == [12]
    assert trust[:12].min() > 0.9 > 0.75 > single[:12].max()


def test_the_nonnegative_fit_is_the_least_squares_fit_on_its_support():
    from flwr_flag.rules.anchor import nonnegative_fit

    references, honest = label_skew(1)
    a = nonnegative_fit(references @ references.T, honest @ references.T)
    assert bool((a >= 0).all())
    for row, coefficients in zip(honest, a, strict=True):
        support = coefficients > 1e-9
        exact = torch.linalg.lstsq(references[support].T, row.unsqueeze(1)).solution.flatten()
        torch.testing.assert_close(coefficients[support], exact, atol=1e-6, rtol=1e-6)
        gradient = references @ (references.T @ coefficients - row)
        assert bool((gradient[~support] >= -1e-6).all())  # KKT: no improving direction


def test_an_anchor_returning_one_model_per_class_gives_the_per_class_scoring():
    core = flwr_flag.Mean(
        device="cpu",
        anchor=lambda a: [{**a, "w": a["w"] + np.eye(6, dtype=np.float32)[c]} for c in range(6)],
    ).core
    two_class = [Reply(i, {"w": np.eye(6, dtype=np.float32)[[i % 6, (i + 1) % 6]].sum(0),
                           "steps": np.array(3)}, 1) for i in range(1, 6)]  # fmt: skip
    flipped = Reply(9, {"w": -np.ones(6, np.float32), "steps": np.array(3)}, 1)
    outcome = core.round(1, MODEL, [*two_class, flipped], 0)
    assert outcome.arrays is not None
    core.diagnostics = "full"
    outcome = core.round(2, MODEL, [*two_class, flipped], 0)
    assert outcome.metrics["robust.pre.anchor.distrusted-nodes"] == [9]
    assert outcome.metrics["robust.pre.anchor.trust-min"] == 0.0
    assert outcome.metrics["robust.pre.anchor.trust-median"] > 0.99
    with pytest.raises(ValueError, match="anchor: returned no arrays"):
        flwr_flag.Mean(device="cpu", anchor=lambda a: []).core.round(1, MODEL, two_class, 0)


@pytest.mark.app
def test_the_apps_anchor_trains_once_per_class_when_asked():
    from clients.anchor import anchor_from_config
    from clients.config import ClientSettings
    from clients.models import build_model, get_arrays

    config = {"dataset": "digits", "model": "mlp", "local-epochs": 1, "seed": 0}
    settings = ClientSettings.from_config(config, {"partition-id": 0, "num-partitions": 1})
    model = get_arrays(build_model("mlp", (1, 8, 8), 10, 0))
    per_class = anchor_from_config({"anchor-per-class": 2, "anchor-by-class": True}, settings)
    one = anchor_from_config({"anchor-per-class": 2}, settings)
    trained = per_class(model)
    assert isinstance(trained, list) and len(trained) == 10
    assert isinstance(one(model), OrderedDict)
    moves = [np.concatenate([(t[k] - model[k]).ravel() for k in model]) for t in trained]
    assert len({round(float(np.linalg.norm(m)), 6) for m in moves}) == 10  # ten trainings


def test_anchor_drift_with_full_knowledge_keeps_the_exact_cosine_with_the_reference():
    from flwr_flag.attacks import AttackContext, make_behaviour

    rng = np.random.default_rng(3)
    g0 = rng.normal(size=80)
    context = AttackContext(
        rng, 1, 15, 3, lambda k: rng.normal(size=(k, 80)), lambda pid: g0, None, {"seed": 1},
        anchor_reference=lambda: g0,
    )  # fmt: skip
    sent = make_behaviour("anchor-drift", {"angle": 30.0, "knowledge": "reference"}).update(
        g0, context
    )
    cosine = sent @ g0 / (np.linalg.norm(sent) * np.linalg.norm(g0))
    assert cosine == pytest.approx(np.cos(np.deg2rad(30.0)), abs=1e-9)
    own = make_behaviour("anchor-drift", {"angle": 30.0}).update(g0, context)
    assert own @ g0 / (np.linalg.norm(own) * np.linalg.norm(g0)) < cosine - 0.05


@pytest.mark.app
def test_an_attacker_replicates_the_servers_anchor_of_a_round():
    """Full knowledge is exact: the server's t-th anchor call equals at_round(t)."""
    from clients.anchor import anchor_from_config
    from clients.config import ClientSettings
    from clients.models import build_model, get_arrays

    config = {"dataset": "digits", "model": "mlp", "local-epochs": 1, "seed": 0}
    settings = ClientSettings.from_config(config, {"partition-id": 0, "num-partitions": 1})
    model = get_arrays(build_model("mlp", (1, 8, 8), 10, 0))
    server = anchor_from_config({"anchor-per-class": 2}, settings)
    attacker = anchor_from_config({"anchor-per-class": 2}, settings)
    rounds = [server(model) for _ in range(3)]
    for t, trained in enumerate(rounds, start=1):
        replica = attacker.at_round(model, t)
        assert all(np.array_equal(trained[k], replica[k]) for k in model)
    assert not np.array_equal(rounds[0]["1.weight"], rounds[1]["1.weight"])  # seeds differ


@pytest.mark.app
def test_a_trusted_set_can_be_made_skewed_or_noisy_for_the_study():
    from clients.anchor import trusted_samples
    from clients.data import load_train

    train = load_train("digits", 0, None)
    clean = trusted_samples(train, 10, 0)
    skewed = trusted_samples(train, 10, 0, classes=4)
    noisy = trusted_samples(train, 10, 0, label_noise=0.3)
    assert sorted(set(clean.y.tolist())) == list(range(10)) and len(clean.y) == 100
    assert sorted(set(skewed.y.tolist())) == [0, 1, 2, 3] and len(skewed.y) == 40
    changed = noisy.y != clean.y
    assert torch.equal(noisy.x, clean.x) and 0.2 < float(changed.float().mean()) < 0.4


def test_the_run_configs_anchor_section_sets_the_step_and_a_bad_value_stops_the_build():
    from flwr_flag.config import strategy_from_config
    from flwr_flag.validation import InvalidParameterError

    built = strategy_from_config({"rule": "flag", "anchor.rescale": "reference"}, toward_ones)
    assert built.core.pre[0] == ("anchor", {"rescale": "reference"})
    assert flwr_flag.FLTrust(anchor=toward_ones).core.pre == [("anchor", {"rescale": "reference"})]
    refused = (
        r"anchor: rescale='shrink' is not one of "
        r"\['reference', 'clip', 'median', 'equal', 'longer'\]"
    )
    with pytest.raises(InvalidParameterError, match=refused):
        strategy_from_config({"rule": "mean", "anchor.rescale": "shrink"}, toward_ones)


def test_fa_behind_the_anchor_projects_the_mean_unless_told_otherwise():
    from flwr_flag.config import strategy_from_config

    assert flwr_flag.FlagAggregator(anchor=toward_ones).core.rule_params["output"] == (
        "projected-mean"
    )
    told = flwr_flag.FlagAggregator(anchor=toward_ones, output="paper").core.rule_params
    assert told["output"] == "paper"
    assert "output" not in flwr_flag.FlagAggregator().core.rule_params
    auto = {"rule": "flag", "flag.output": "auto"}
    assert strategy_from_config(auto, toward_ones).core.rule_params["output"] == "projected-mean"
    assert strategy_from_config(auto).core.rule_params["output"] is None


def test_behind_the_anchor_the_projected_mean_resists_colluders_the_geomed_follows():
    """Three identical colluders at 45 degrees from the reference (anchor-drift) and
    twelve honest updates spread around it: the geometric median of the trusted rows
    goes to the colluders' point, the mean moves a trust-weighted share towards it."""
    generator = torch.Generator().manual_seed(0)
    p = 400
    reference = torch.zeros(p, dtype=torch.float64)
    reference[0] = 1.0
    drift = torch.zeros(p, dtype=torch.float64)
    drift[1] = 1.0
    spread = torch.randn(12, p, generator=generator, dtype=torch.float64) * 3 / p**0.5
    honest = 0.5 * reference + spread
    colluders = ((reference + drift) / 2**0.5).expand(3, p)
    updates = torch.cat([honest, colluders])
    pulled = {
        output: float(
            aggregate(
                updates, "flag", 3, pre=[("anchor", {"reference": reference})], output=output
            ).vector
            @ drift
        )
        for output in ("projected-geomed", "projected-mean", None)
    }
    assert pulled["projected-geomed"] > 0.7  # the colluders' own drift, 1 / sqrt(2)
    assert pulled["projected-mean"] < 0.45
    assert pulled[None] == pulled["projected-geomed"]  # the rule alone: no anchor to see


def test_ctma_behind_the_anchor_scales_rows_to_one_length_unless_told_otherwise():
    from flwr_flag.config import strategy_from_config

    def rescale(strategy):
        steps = dict(step if isinstance(step, tuple) else (step, {}) for step in strategy.core.pre)
        return steps["anchor"].get("rescale")

    assert rescale(flwr_flag.CTMA(num_byzantine=1, anchor=toward_ones)) == "longer"
    told = flwr_flag.CTMA(
        num_byzantine=1, anchor=toward_ones, pre=[("anchor", {"rescale": "clip"})]
    )
    assert rescale(told) == "clip"
    auto = {"rule": "ctma", "num-byzantine": 1, "anchor.rescale": "auto"}
    assert rescale(strategy_from_config(auto, toward_ones)) == "longer"
    assert rescale(flwr_flag.Mean(anchor=toward_ones)) is None  # the step's own default
    mean = strategy_from_config({"rule": "mean", "anchor.rescale": "auto"}, toward_ones)
    assert rescale(mean) is None
    core = mean.core
    outcome = core.round(1, MODEL, replies(), 0)  # None: the median bound, as "median"
    median = flwr_flag.Mean(anchor=toward_ones, pre=[("anchor", {"rescale": "median"})]).core
    np.testing.assert_array_equal(
        outcome.arrays["w"], median.round(1, MODEL, replies(), 0).arrays["w"]
    )


def drift_pull(rule: str, angle: float | None, seed: int) -> float:
    """How far ``rule`` behind the anchor (the run config's settings) moves along the
    colluders' drift direction when 3 of 15 nodes run ``anchor-drift`` at ``angle``
    (``None``: tuned) with full knowledge of a reference shorter than the honest
    updates (few trusted samples)."""
    from flwr_flag.attacks import AttackContext, make_behaviour
    from flwr_flag.attacks.aware import server_rule

    rng = np.random.default_rng(seed)
    mean = rng.normal(size=80)
    honest = mean + 0.7 * rng.normal(size=(12, 80))
    g0 = 0.3 * (mean + 0.3 * rng.normal(size=80))
    draws = mean + 0.7 * rng.normal(size=(12, 80))
    config = {"rule": rule, "num-byzantine": 3, "seed": seed}
    context = AttackContext(
        rng, 1, 15, 3, lambda k: draws[:k], lambda pid: honest[pid], lambda k: draws[:k],
        config, anchor_reference=lambda: g0,
    )  # fmt: skip
    bad = make_behaviour("anchor-drift", {"knowledge": "reference", "angle": angle})
    sent = bad.update(honest[0], context)
    drift = sent - (sent @ g0) / (g0 @ g0) * g0
    rows = np.vstack([honest, np.repeat(sent[None], 3, axis=0)])
    server = server_rule(context, None, g0)
    return float((server(rows) - server(honest)) @ drift / np.linalg.norm(drift))


@pytest.mark.parametrize("rule", ["mean", "flag"])
def test_the_tuned_anchor_drift_pulls_farther_than_its_fixed_angle(rule):
    """Behind the anchor's median bound a row at the reference's short length gives
    away most of its pull; the tuned attack takes the length the bound allows."""
    for seed in range(3):
        assert drift_pull(rule, None, seed) > 2 * drift_pull(rule, 45.0, seed)


def test_the_simulated_server_settles_the_rule_behind_the_anchor_as_a_strategy_does():
    from flwr_flag.attacks import AttackContext
    from flwr_flag.attacks.aware import server_rule

    rng = np.random.default_rng(0)
    rows = rng.normal(size=(9, 30)) + 1.0
    g0 = np.ones(30)
    context = AttackContext(rng, 1, 9, 1, None, None, None, {"rule": "ctma", "num-byzantine": 1})
    simulated = server_rule(context, None, g0)(rows)
    strategy = flwr_flag.CTMA(num_byzantine=1, anchor=toward_ones)
    (name, settled), *rest = strategy.core.pre
    assert name == "anchor" and settled == {"rescale": "longer"}
    pre = [("anchor", {**settled, "reference": torch.from_numpy(g0)}), *rest]
    expected = aggregate(torch.from_numpy(rows), "ctma", 1, pre=pre).vector
    np.testing.assert_allclose(simulated, expected.numpy())


@pytest.mark.app
def test_the_apps_anchor_takes_the_steps_it_is_given():
    """``anchor-steps = k``: k SGD steps on the trusted set, whatever its size (FLTrust's
    protocol); 0 keeps the clients' epochs over it."""
    from clients.anchor import anchor_from_config
    from clients.config import ClientSettings
    from clients.models import build_model, get_arrays

    config = {"dataset": "digits", "model": "mlp", "local-epochs": 1, "seed": 0}
    settings = ClientSettings.from_config(config, {"partition-id": 0, "num-partitions": 1})
    model = get_arrays(build_model("mlp", (1, 8, 8), 10, 0))

    def move(steps: int) -> float:
        anchor = anchor_from_config({"anchor-per-class": 2, "anchor-steps": steps}, settings)
        trained = anchor(model)
        return float(np.sqrt(sum(((trained[k] - model[k]) ** 2).sum() for k in model)))

    # 20 samples, batch 32: one epoch is one step on all of them
    assert move(1) == move(0)
    assert move(6) > 2 * move(0)
    with pytest.raises(ValueError, match="anchor-steps"):
        anchor_from_config({"anchor-per-class": 2, "anchor-steps": -1}, settings)
