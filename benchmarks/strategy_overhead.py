"""Per-round cost of our strategies against Flower's on identical replies.

Two measurements:

1. ``aggregate_train`` alone on the replies of ``--nodes`` clients (the model's arrays
   plus noise; the digits CNN and ResNet-18, integer buffers included), Flower's
   ``FedAvg`` and ``FedMedian`` against our ``Mean``, ``Krum``, ``FlagAggregator``,
   ``CTMA`` and ``Median``: seconds (median of ``--repeats`` calls after a first one)
   and peak extra memory (the first call's resident-set high-water mark over the
   resident set before it, after a call on a tiny model has paid the libraries' one-time
   set-up), each strategy in a fresh process (``scaling.measure``);
   ratios against FedAvg's seconds and the model's size;
2. whole in-process rounds of the real ServerApp strategy + ClientApp (digits CNN,
   10 nodes) with ``FedAvg`` and with ``FlagAggregator``: what a user feels per round.

    python benchmarks/strategy_overhead.py
    python benchmarks/strategy_overhead.py --device cuda   # ours aggregate on the GPU
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the app's clients/
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import FedAvg

import flwr_flag
from benchmarks.scaling import memory_text, run
from clients.app import app as client_app
from clients.models import build_model
from flwr_flag.inprocess import InProcessGrid

RESULTS = Path(__file__).parent / "results"
STRATEGIES = (
    "flower FedAvg",
    "flower FedMedian",
    "Mean",
    "Krum",
    "FlagAggregator",
    "CTMA",
    "Median",
)


def time_rounds(strategy, grid, rounds: int) -> float:
    model = build_model("cnn", (1, 8, 8), 10)
    start = time.perf_counter()
    strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=rounds)
    return (time.perf_counter() - start) / rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    lines = [
        f"# Strategy overhead vs Flower's FedAvg ({args.device.upper()}, in-process)",
        "",
        f"{args.nodes} clients, f = {max(1, (args.nodes - 3) // 4)}; `aggregate_train` on "
        f"identical replies, median of {args.repeats} calls after a first one; peak extra "
        "memory of the first call (after one on a tiny model: the libraries' one-time "
        "set-up), each strategy in its own process.",
        "",
        "| model | parameters | strategy | seconds | vs FedAvg | peak extra memory | "
        "vs model size |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for model in ("cnn", "resnet18"):
        base = None
        for name in STRATEGIES:
            r = run(name, args.nodes, args.repeats, 900.0, model, args.device)
            if "error" in r:
                lines.append(f"| {model} | | {name} | n/a ({r['error']}) | | | |")
                continue
            base = base or r["seconds"]
            lines.append(
                f"| {model} | {r['model_mib'] * 2**20 / 4:,.0f} | {name} | {r['seconds']:.4f} | "
                f"{r['seconds'] / base:.2f}x | {memory_text(r)} | "
                f"{r['extra_mib'] / r['model_mib']:.2f}x |"
            )
            print(lines[-1], flush=True)
    grid = InProcessGrid(
        client_app, 10, run_config={"local-epochs": 1, "model": "cnn", "byzantine-nodes": 0}
    )
    time_rounds(FedAvg(fraction_evaluate=0.0), grid, 1)  # the nodes load their data once
    fedavg = time_rounds(FedAvg(fraction_evaluate=0.0), grid, args.rounds)
    flag = time_rounds(
        flwr_flag.FlagAggregator(num_byzantine=2, device=args.device, fraction_evaluate=0.0),
        grid,
        args.rounds,
    )
    lines += [
        "",
        f"Whole in-process rounds (digits CNN, 10 nodes, real ClientApp training, "
        f"{args.rounds} rounds): FedAvg {fedavg:.3f} s/round, FlagAggregator "
        f"{flag:.3f} s/round ({flag - fedavg:+.3f} s, {flag / fedavg:.2f}x).",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"strategy_overhead_{args.device}.md").write_text(report)


if __name__ == "__main__":
    main()
