"""Smoke test of the robustness study: its smallest cell produces the table and the
heatmap and reaches the converged reference; a rule that cannot run is ``n/a``."""

from __future__ import annotations

import json

from benchmarks import robustness


def test_smallest_quick_cell(tmp_path):
    quick = robustness.QUICK
    smallest = [
        "--rules", quick["rules"][0], "--attacks", quick["attacks"][0],
        "--fractions", str(quick["fractions"][0]), "--partitionings", quick["partitionings"][0],
        "--seeds", "0", "--rounds", "10", "--workers", "1", "--out", str(tmp_path),
    ]  # fmt: skip
    path = robustness.main(smallest)
    (row,) = [json.loads(line) for line in (tmp_path / "cells.jsonl").read_text().splitlines()]
    assert len(row["accuracy"]) == 11  # round 0 and ten rounds
    assert row["accuracy"][-1] > 0.9  # converged (the unstandardised task gave 69 %)
    table = path.read_text()
    assert "| mean (FedAvg) |" in table and "Reference: clean FedAvg" in table
    assert (tmp_path / "robustness-heatmap.png").read_bytes()[:4] == b"\x89PNG"
    assert robustness.main(smallest).read_text() == table  # resumed, not run again
    assert len((tmp_path / "cells.jsonl").read_text().splitlines()) == 1


def test_a_rule_that_cannot_run_is_na_not_an_accuracy(tmp_path):
    args = [
        "--rules", "bulyan", "FA", "--attacks", "sign-flip", "--fractions", "0.3",
        "--partitionings", "iid", "--seeds", "0", "--rounds", "1", "--workers", "1",
        "--out", str(tmp_path),
    ]  # fmt: skip
    table = robustness.main(args).read_text()
    assert "| bulyan | n/a (15 valid replies, but bulyan with f=4 needs n >= 4f + 3) |" in table
    fa_row = next(line for line in table.splitlines() if line.startswith("| FA |"))
    assert fa_row.startswith("| FA | **")  # the only number is the column's best


def test_the_field_studys_quick_grid_trains_a_many_client_cell_under_a_rule_aware_attack(
    tmp_path,
):
    from benchmarks import field

    assert field.QUICK["regimes"] == ["many"] and "ipm-tuned" in field.QUICK["attacks"]
    assert set(field.QUICK["rules"]) & set(field.ANCHORED)  # one anchor cell at least
    args = [
        "--rules", "FA", "FA + anchor (10/class)", "--attacks", "none", "ipm-tuned",
        "--regimes", "many", "--seeds", "0", "--rounds", "3", "--workers", "1",
        "--out", str(tmp_path),
    ]  # fmt: skip
    table = field.main(args).read_text()
    rows = [json.loads(line) for line in (tmp_path / "cells.jsonl").read_text().splitlines()]
    assert {(r["rule"], r["attack"]) for r in rows} == {
        (rule, attack)
        for rule in ("FA", "FA + anchor (10/class)")
        for attack in ("none", "ipm-tuned")
    }
    assert all(len(r["accuracy"]) == 4 and not r["diverged"] for r in rows)
    anchored = [r for r in rows if r["rule"] == "FA + anchor (10/class)"]
    assert all(r["accuracy"][-1] > r["accuracy"][0] for r in anchored)  # it trains
    headline = next(line for line in table.splitlines() if line.startswith("| FA |"))
    assert "| ipm-tuned |" in headline  # the worst case names its attack
