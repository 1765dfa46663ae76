"""Smoke test of the papers' protocols: each ``--quick`` runs its smallest cells and writes
its table, with a verdict line per claim."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import papers

ROWS = {
    "fa": ["| FA (default output) |"],
    "ctma": ["| mean |", "| mean + CTMA |"],
    "detox": ["| DETOX(multi-krum) |", "| flat multi-krum |"],
}
CLAIMS = {"fa": 3, "ctma": 3, "detox": 2}


@pytest.mark.parametrize("paper", sorted(ROWS))
def test_quick_protocol_writes_its_table(paper, tmp_path):
    path = papers.main(["--paper", paper, "--quick", "--out", str(tmp_path / "cells")])
    text = path.read_text()
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert [line.split("|")[1].strip() for line in table[1:]] == [
        row.strip("| ") for row in ROWS[paper]
    ]
    assert all("±" in line and "ms)" in line for line in table[1:])  # numbers, not blanks
    claims = [line for line in text.splitlines() if line.startswith("- ")]
    assert len(claims) == CLAIMS[paper]
    verdict_forms = (": holds here", ": does not hold here", ": cannot be tested here")
    assert all(any(form in c for form in verdict_forms) for c in claims)
    assert len((tmp_path / "cells" / "cells.jsonl").read_text().splitlines()) == len(table) - 1


def test_detox_scaling_times_each_rule_in_its_own_process_and_fits_the_slopes(tmp_path):
    import detox_scaling

    out = tmp_path / "scaling.jsonl"
    args = ["--n", "15", "30", "--p", "2000", "--repeats", "1", "--out", str(out)]
    text = detox_scaling.main(args).read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [line.split("|")[1].strip() for line in rows] == ["15", "30"]
    assert all("DETOX" in line.split("|")[-2] for line in rows)  # a verdict per n
    slopes = [line for line in text.splitlines() if line.startswith("- ")]
    assert [s.split(":")[0] for s in slopes] == ["- detox (r=3)", "- multi-krum", "- bulyan"]
    assert len(out.read_text().splitlines()) == 6  # one row per (rule, n); a rerun skips them
    detox_scaling.main(args)
    assert len(out.read_text().splitlines()) == 6
    assert detox_scaling.slope([(10, 1.0), (100, 100.0)]) == pytest.approx(2.0)
