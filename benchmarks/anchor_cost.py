"""What the trust anchor costs a round (:mod:`flwr_flag.rules.anchor`, ``clients/anchor.py``).

The anchor adds one local training on the server's trusted set per round (one per class
with ``anchor-by-class``), reported by the strategy as ``robust.anchor-seconds``, and a
scoring pass (the Gram of the replies and the reference) to the aggregation. Real
in-process training (the field study's setup: digits, MLP, 2 local epochs) without an
attacker, ``--rounds`` rounds, seed 0: per configuration the wall seconds per round,
the anchor's median seconds per round and the mean seconds of ``aggregate_train``,
beside the plain mean's in the same run.

    python -m benchmarks.anchor_cost
"""

from __future__ import annotations

import argparse
import os
import statistics

from benchmarks import field, harness

CONFIGURATIONS = (
    "mean (FedAvg)",
    "FLTrust (2/class)",
    "FLTrust (10/class)",
    "per-class anchor (10/class)",
    "FA + anchor (10/class)",
    "CTMA + anchor (10/class)",
)


def measure(rule: str, regime: str, rounds: int) -> tuple[float, float, float]:
    """Seconds per round, the anchor's median seconds per round, aggregation seconds."""
    cell = field.Cell(rule, "none", regime, 0, rounds)
    config = field.run_config(cell)
    strategy = field.strategy_for(cell, config)
    out = harness.train(config, field.REGIMES[regime].nodes, strategy, rounds, 0)
    key = "robust.anchor-seconds"
    anchor = [m[key] for m in strategy.history.values() if key in m] or [0.0]
    return out["seconds"] / rounds, statistics.median(anchor), out["aggregation_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--regimes", nargs="*", default=["dir0.5", "many"])
    args = parser.parse_args()
    lines = [
        "# What the trust anchor costs a round",
        "",
        f"`python -m benchmarks.anchor_cost` at commit {harness.commit()}, "
        f"{os.cpu_count()} cores: real in-process training (digits, MLP, 2 local epochs), "
        f"{args.rounds} rounds without an attacker, seed 0.",
        "",
        "| regime | configuration | s per round | anchor s per round | share of the round "
        "| aggregation s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for regime in args.regimes:
        for rule in CONFIGURATIONS:
            round_s, anchor_s, aggregation_s = measure(rule, regime, args.rounds)
            lines.append(
                f"| {regime} | {rule} | {round_s:.3f} | {anchor_s:.4f} | "
                f"{anchor_s / round_s:.0%} | {aggregation_s:.4f} |"
            )
            print(lines[-1], flush=True)
    path = harness.RESULTS / "anchor_cost_cpu.md"
    path.write_text("\n".join(lines) + "\n")
    print(path.read_text())


if __name__ == "__main__":
    main()
