"""What per-node history costs a round (:mod:`flwr_flag.rules.history`).

The goal (issue 31): with history, a rule's round costs at most 1.3x the same rule's
round on as many fresh replies, at n = 100 known nodes and p = 1M. Both run the real
path, :meth:`RobustCore.round` on replies of one float32 array:

* **fresh**: 100 replies, no history;
* **history**: 20 sampled replies per round, after 5 rounds that made all 100 nodes
  known: the rule sees the 20 new rows and 80 cached ones.

Seconds are the median of ``--repeats`` rounds, in one process, on the same machine
and load; the ratio is history / fresh. The cache's memory is ``k p`` values of the
updates' dtype (printed), besides this round's ``m p`` staging rows.

    python -m benchmarks.history_cost
    python -m benchmarks.history_cost --p 100000 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from benchmarks import harness
from flwr_flag.strategy.core import RobustCore
from flwr_flag.strategy.replies import Reply

RESULTS = harness.RESULTS
RULES = ("flag", "ctma", "trimmed-mean", "geomed", "centered-clipping", "krum")


def replies(nodes: list[int], p: int, round_: int) -> list[Reply]:
    rng = np.random.default_rng(round_)
    base = rng.standard_normal(p, dtype=np.float32)
    return [
        Reply(j, {"w": base + 0.5 * rng.standard_normal(p, dtype=np.float32)}, 1) for j in nodes
    ]


def seconds(core: RobustCore, model, rounds) -> float:
    times = []
    for server_round, batch in rounds:
        start = time.perf_counter()
        outcome = core.round(server_round, model, batch, 0)
        times.append(time.perf_counter() - start)
        assert outcome.arrays is not None, outcome.metrics
    return statistics.median(times)


def measure(rule: str, p: int, nodes: int, sampled: int, repeats: int) -> dict[str, float]:
    model = OrderedDict(w=np.zeros(p, np.float32))
    options = {"num_byzantine": 0.2, "device": "cpu", "max_kept_rounds": None}
    fresh = RobustCore(rule, **options)
    every = replies(list(range(1, nodes + 1)), p, 0)
    fresh_s = seconds(fresh, model, [(r, every) for r in range(1, repeats + 1)])
    del every
    history = RobustCore(rule, history={"max_age": 50}, **options)
    warm = nodes // sampled
    for r in range(1, warm + 1):
        ids = list(range((r - 1) * sampled + 1, r * sampled + 1))
        history.round(r, model, replies(ids, p, r), 0)
    rng = np.random.default_rng(1)
    rounds = [
        (r, replies(sorted(rng.choice(nodes, sampled, replace=False) + 1), p, r))
        for r in range(warm + 1, warm + 1 + repeats)
    ]
    history_s = seconds(history, model, rounds)
    known = len(history.history.nodes)
    return {
        "fresh": fresh_s,
        "history": history_s,
        "known": known,
        "cache_mb": known * p * 4 / 2**20,
    }


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--p", type=int, default=1_000_000)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--sampled", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rules", nargs="*", default=list(RULES))
    parser.add_argument("--out", type=Path, default=RESULTS / "history_cost_cpu.md")
    args = parser.parse_args(argv)
    commit = harness.commit()
    lines = [
        "# What per-node history costs a round",
        "",
        f"`python -m benchmarks.history_cost` at commit {commit}: p = {args.p:,}, "
        f"{args.nodes} nodes known, {args.sampled} sampled per round with history; "
        f"seconds per `RobustCore.round`, median of {args.repeats}, CPU, one process, "
        f"load average {os.getloadavg()[0]:.1f} at the start on {os.cpu_count()} cores "
        "(both columns run under the same load; the ratio is the measure). "
        "Goal: history / fresh <= 1.3.",
        "",
        f"| rule | {args.nodes} fresh replies s | {args.sampled} replies + history s "
        "| ratio | rows | cache MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for rule in args.rules:
        m = measure(rule, args.p, args.nodes, args.sampled, args.repeats)
        lines.append(
            f"| {rule} | {m['fresh']:.3f} | {m['history']:.3f} "
            f"| {m['history'] / m['fresh']:.2f} | {m['known']} | {m['cache_mb']:.0f} |"
        )
        print(lines[-1], flush=True)
    args.out.write_text("\n".join(lines) + "\n")
    return args.out


if __name__ == "__main__":
    main()
