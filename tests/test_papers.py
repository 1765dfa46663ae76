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
