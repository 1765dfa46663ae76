"""Smoke test of the papers' protocols: each ``--quick`` runs its smallest cells and writes
its table, with a verdict line per claim."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from benchmarks import papers

ROWS = {
    "fa": ["| FA (default output) |", "| median |", "| mean |"],
    "ctma": ["| mean |", "| mean + CTMA |"],
    "tuning": ["| lr 0.03 |", "| lr 0.1 |"],
    "detox": ["| DETOX(multi-krum) |", "| flat multi-krum |"],
}
CLAIMS = {"fa": 4, "ctma": 3, "tuning": 1, "detox": 4}
"""Verdict lines: FA's accuracy per form (3) and its rounds to target; CTMA's three;
the tuning claim; DETOX's accuracy and speed at the protocol's n and at scale."""


@pytest.mark.parametrize("paper", sorted(ROWS))
def test_quick_protocol_writes_its_table(paper, tmp_path):
    path = papers.main(["--paper", paper, "--quick", "--out", str(tmp_path / "cells")])
    text = path.read_text()
    lines = text.splitlines()
    first = lines.index(f"## {paper}") + 2
    table = lines[first : lines.index("", first)]  # the accuracy table
    assert [line.split("|")[1].strip() for line in table[2:]] == [
        row.strip("| ") for row in ROWS[paper]
    ]
    entries = [e for line in table[2:] for e in line.split("|")[2:-1] if e.strip()]
    assert entries and all(re.fullmatch(r" \d+\.\d \(\d+ ms\) ", e) for e in entries)
    assert lines[lines.index("", first) + 1] == f"Seeds per cell: 1 in {len(entries)} cells."
    claims = [line for line in lines if line.startswith("- ") and ": " in line]
    verdict_forms = (": holds here", ": does not hold here", ": cannot be tested here")
    claims = [c for c in claims if any(form in c for form in verdict_forms)]
    assert len(claims) == CLAIMS[paper]
    assert len((tmp_path / "cells" / "cells.jsonl").read_text().splitlines()) == len(entries)


def curve_row(paper: str, rule: str, setting: str, accuracy: list[float], seed=0) -> dict:
    return {"paper": paper, "rule": rule, "setting": setting, "nodes": 15, "seed": seed,
            "accuracy": accuracy, "aggregation_seconds": 0.01}  # fmt: skip


def test_table_gives_the_spread_only_over_several_seeds_and_counts_them():
    rows = [
        curve_row("ctma", "mean", "a", [0.1, 0.9], seed=0),
        curve_row("ctma", "mean", "a", [0.1, 0.8], seed=1),
        curve_row("ctma", "mean", "b", [0.1, 0.7]),
        curve_row("ctma", "median", "b", [0.1, 0.6]),
    ]
    lines = papers.table(rows, "ctma")
    assert lines[2] == "| mean | 85.0 ± 7.1, worst 80.0 (10 ms) | 70.0 (10 ms) |"
    assert lines[3] == "| median |  | 60.0 (10 ms) |"
    assert lines[-1] == "Seeds per cell: 2 in 1, 1 in 2 cells."


def test_rounds_to_target_count_from_the_first_round_and_decide_the_fa_claim():
    assert papers.rounds_to([0.96, 0.5, 0.9, 0.97], 0.95) == 3  # round 0 is the initial model
    assert papers.rounds_to([0.1, 0.5], 0.95) == float("inf")
    clean = curve_row("fa", "mean", "no attack", [0.1, 0.5, 0.9, 1.0])
    fast, slow = [0.1, 0.96, 0.97, 0.98, 0.99, 0.99], [0.1, 0.2, 0.3, 0.4, 0.96, 0.99]
    wins = [clean, curve_row("fa", "FA (x)", "s", fast), curve_row("fa", "krum", "s", slow)]
    text = "\n".join(papers.communication(wins, "digits", "cnn"))
    assert "- FA (x) reaches each target in no more rounds" in text
    assert "holds here (2 comparisons)" in text
    (krum,) = [line for line in text.splitlines() if line.startswith("| krum |")]
    assert krum.split("|")[3].strip().startswith("4.0 ± 0.0 / 4.0 ± 0.0 (")  # column "s"
    loses = [clean, curve_row("fa", "FA (x)", "s", slow), curve_row("fa", "krum", "s", fast)]
    text = "\n".join(papers.communication(loses, "digits", "cnn"))
    assert "does not hold here in 2/2: s, 90%, vs krum; s, 95%, vs krum" in text
    never = [clean, curve_row("fa", "FA (x)", "s", [0.1, 0.2])]
    assert "not reached (0/1)" in "\n".join(papers.communication(never, "digits", "cnn"))


@pytest.mark.parametrize("mu2_spread, holds", [(0.05, True), (0.30, False)])
def test_tuning_claim_compares_the_spread_over_the_learning_rates(mu2_spread, holds):
    rows = []
    for lr, bump in zip(papers.TUNING_LRS, (0, 1, 1, 1, 0), strict=True):
        rows.append(
            curve_row("tuning", f"lr {lr}", "no attack, mu2-sgd", [0.9 - mu2_spread * (1 - bump)])
        )
        rows.append(
            curve_row("tuning", f"lr {lr}", "no attack, sgd-momentum", [0.9 - 0.2 * (1 - bump)])
        )
    assert papers.sweep_range(rows, "no attack, mu2-sgd") == pytest.approx(mu2_spread)
    (line,) = papers.verdicts(rows, "tuning")
    assert (": holds here" in line) is holds, line
    partial = rows[:-1]  # momentum's last rate not run yet: no range, no verdict
    assert papers.sweep_range(partial, "no attack, sgd-momentum") is None
    assert ": cannot be tested here" in papers.verdicts(partial, "tuning")[0]


def test_detox_scaling_times_each_rule_in_its_own_process_and_fits_the_slopes(tmp_path):
    from benchmarks import detox_scaling

    out = tmp_path / "scaling.jsonl"
    args = ["--n", "15", "30", "--p", "2000", "--repeats", "1", "--out", str(out)]
    text = detox_scaling.main(args).read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [line.split("|")[1].strip() for line in rows] == ["15", "30"]
    assert all("DETOX" in line.split("|")[-2] for line in rows)  # a verdict per n
    bullets = [line for line in text.splitlines() if line.startswith("- ")]
    slopes, claims, budget = bullets[:3], bullets[3:5], bullets[5:]
    assert [s.split(":")[0] for s in slopes] == ["- detox (r=3)", "- multi-krum", "- bulyan"]
    assert all(math.isfinite(float(s.split(":")[1])) for s in slopes)  # timings: no sign
    assert [c.split(":")[0] for c in claims] == [
        "- DETOX's per-iteration cost nearly linear in n (log-log slope <= 1.25)",
        "- DETOX aggregates faster than flat Multi-Krum and Bulyan at scale",
    ]
    assert all(": holds here" in c or ": does not hold here" in c for c in claims)
    # DETOX against 3 mean passes + its second stage alone on the n / 3 winners, per n
    assert [b.split(":")[0] for b in budget] == ["- n = 15", "- n = 30"]
    assert all(re.search(r"\d s vs \d\.\d+ s \(\d+\.\d+x\)$", b) for b in budget)
    # one row per (rule or budget part, n); a rerun skips them
    assert len(out.read_text().splitlines()) == 10
    detox_scaling.main(args)
    assert len(out.read_text().splitlines()) == 10
    assert detox_scaling.slope([(10, 1.0), (100, 100.0)]) == pytest.approx(2.0)


def test_reference_curves_read_the_clean_rows_at_even_rounds():
    rows = [
        curve_row("ctma", "mean", "no attack, a", [i / 10 for i in range(7)], seed=0),
        curve_row("ctma", "mean", "no attack, a", [i / 20 for i in range(7)], seed=1),
        curve_row("ctma", "mean", "ipm, a", [0.0] * 7),
    ]
    lines = papers.reference_curves(rows, "ctma", points=3)
    assert lines[2] == "| rule, setting | 2 | 4 | 6 |"
    assert lines[4:] == ["| mean, no attack, a | 15.0 | 30.0 | 45.0 |"]  # no attacked row
    assert papers.reference_curves(rows[2:], "ctma") == []


def test_geometry_places_the_plain_mean_at_f_over_n_and_the_honest_mean_at_zero():
    from benchmarks import cell_geometry

    rng = np.random.default_rng(0)
    replies = rng.normal(size=(17, 50))
    byzantine = np.arange(17) < 8
    sent = rng.normal(size=50)
    mean = cell_geometry.geometry(replies, byzantine, replies.mean(0), sent)
    assert mean["t"] == pytest.approx(8 / 17)
    honest = replies[~byzantine].mean(0)
    at_honest = cell_geometry.geometry(replies, byzantine, honest, sent)
    assert at_honest["t"] == pytest.approx(0.0, abs=1e-12)
    assert at_honest["cos"] == pytest.approx(1.0)
    byzantine_mean = replies[byzantine].mean(0)
    assert at_honest["byzantine_step"] == pytest.approx(np.linalg.norm(byzantine_mean - sent))
    assert at_honest["honest_step"] == pytest.approx(np.linalg.norm(honest - sent))
    assert mean["gap"] == pytest.approx(np.linalg.norm(byzantine_mean - honest))
    clean = cell_geometry.geometry(replies, np.zeros(17, bool), replies.mean(0), sent)
    assert math.isnan(clean["t"]) and math.isnan(clean["gap"])
    assert clean["spread"] == pytest.approx(np.sqrt(replies.var(0).sum()))


def test_geometry_of_a_trained_cell(tmp_path):
    from benchmarks import cell_geometry

    out = tmp_path / "geometry"
    args = ["--quick", "--setting", "label-flip, mu2-sgd", "--out", str(out), "--block", "2"]
    args += ["--rounds", "4"]
    lines = cell_geometry.main([*args, "--rule", "mean"])
    (path,) = out.iterdir()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert path.name == "mean-label-flip-mu2-sgd-seed-0-4-rounds.jsonl"
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    # FedAvg's mean weighs each reply by its examples: t is the colluders' share
    from clients.config import ClientSettings
    from clients.data import load_partition

    (cell,) = [c for c in papers.protocol("ctma", [0], True) if c.rule == "mean"]
    config = papers.cell_config(cell, "digits", "cnn")
    s = ClientSettings.from_config(config, {"partition-id": 0, "num-partitions": 17})
    sizes = [len(load_partition(s.dataset, p, 17, s.partitioning, s.alpha, 0)) for p in range(17)]
    share = sum(sizes[p] for p in s.byzantine_nodes) / sum(sizes)
    assert len(s.byzantine_nodes) == 8 and share != pytest.approx(8 / 17, abs=1e-3)
    assert [r["t"] for r in rows] == pytest.approx([share] * 4, abs=1e-3)  # float32 models
    assert all(r["spread"] > 0 and r["gap"] > 0 and -1 <= r["cos"] <= 1 for r in rows)
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["1-2", "3-4"]
    assert all(len(line.split("|")) == len(lines[0].split("|")) for line in lines)
    with pytest.raises(SystemExit):
        cell_geometry.main([*args, "--rule", "no such rule"])
    with pytest.raises(SystemExit):
        cell_geometry.main([*args, "--rule", "mean", "--run-config", "lr="])
    # --run-config changes the cell: without colluders t is NaN, and the file says why
    cell_geometry.main([*args, "--rule", "mean", "--run-config", "byzantine-nodes=0"])
    path = out / "mean-label-flip-mu2-sgd-seed-0-4-rounds-byzantine-nodes-0.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 4 and all(math.isnan(r["t"]) for r in rows)
    # every reply above the norm bound: each round keeps the model it sent
    cell_geometry.main([*args, "--rule", "mean", "--run-config", "max-update-norm=1e-9"])
    path = out / "mean-label-flip-mu2-sgd-seed-0-4-rounds-max-update-norm-1e-9.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 4 and all(math.isnan(r["cos"]) for r in rows)  # no step at all


def test_a_collapsed_seed_is_not_as_robust_even_where_the_mean_is_within_the_spread():
    def summarized(finals: list[float]) -> papers.Summary:
        rows = [
            {"paper": "ctma", "rule": "r", "setting": "s", "seed": seed,
             "accuracy": [0.1, final], "aggregation_seconds": 0.01}
            for seed, final in enumerate(finals)
        ]  # fmt: skip
        return papers.summary(rows, "ctma")[("r", "s")]

    collapsed, steady = summarized([0.95, 0.96, 0.05]), summarized([0.95, 0.96, 0.95])
    assert collapsed.worst == 0.05
    assert collapsed.mean >= steady.mean - (collapsed.std + steady.std)  # the mean passes
    assert not papers.at_least(collapsed, steady)
    assert papers.at_least(steady, collapsed)
