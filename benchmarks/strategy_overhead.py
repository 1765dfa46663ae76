"""Per-round cost of our strategies against Flower's FedAvg on identical replies.

Two measurements, median of ``--repeats``:

1. ``aggregate_train`` alone, on the same replies (n clients of a model's arrays:
   the digits CNN and torchvision's ResNet-18), for Flower's ``FedAvg`` and our
   ``Mean``, ``Krum``, ``Median`` and ``FlagAggregator``: the aggregation overhead;
2. whole in-process rounds of the real ServerApp strategy + ClientApp (digits CNN,
   10 nodes) with ``FedAvg`` and with ``FlagAggregator``: what a user feels per round.

    python benchmarks/strategy_overhead.py
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the app's clients/
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

import flwr_flag
from clients.app import app as client_app
from clients.models import build_model
from flwr_flag.inprocess import InProcessGrid

RESULTS = Path(__file__).parent / "results"


def replies_for(model_name: str, shape: tuple[int, int, int], n: int, grid: InProcessGrid):
    """Real train replies of ``n`` clients for one round (the CNN: from the ClientApp;
    ResNet-18: its initial arrays plus small noise)."""
    model = build_model(model_name, shape, 10)
    arrays = ArrayRecord(model.state_dict())
    if model_name == "cnn":
        strategy = FedAvg(fraction_evaluate=0.0)
        messages = strategy.configure_train(1, arrays, ConfigRecord(), grid)
        return arrays, list(grid.send_and_receive(messages))
    rng = np.random.default_rng(0)
    replies = []
    for node in range(1, n + 1):
        request = Message(RecordDict(), dst_node_id=node, message_type="train")
        noisy = OrderedDict(
            (k, Array(v.numpy() + rng.normal(0, 1e-3, v.shape).astype(v.numpy().dtype)))
            if v.numpy().dtype.kind == "f"
            else (k, v)
            for k, v in arrays.items()
        )
        content = RecordDict(
            {"arrays": ArrayRecord(noisy), "metrics": MetricRecord({"num-examples": 10})}
        )
        replies.append(Message(content, reply_to=request))
    return arrays, replies


def time_aggregation(strategy, arrays, replies, grid, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        list(strategy.configure_train(1, arrays, ConfigRecord(), grid))
        start = time.perf_counter()
        strategy.aggregate_train(1, replies)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_rounds(strategy, grid, rounds: int) -> float:
    model = build_model("cnn", (1, 8, 8), 10)
    start = time.perf_counter()
    strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=rounds)
    return (time.perf_counter() - start) / rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    config = {"local-epochs": 1, "model": "cnn", "byzantine-nodes": 0}
    grid = InProcessGrid(client_app, args.nodes, run_config=config)
    lines = [
        "# Strategy overhead vs Flower's FedAvg (CPU, in-process)",
        "",
        f"{args.nodes} clients; median of {args.repeats} calls of `aggregate_train` "
        "on identical replies.",
        "",
        "| model | parameters | strategy | seconds | overhead vs FedAvg |",
        "|---|---:|---|---:|---:|",
    ]
    for model_name, shape in (("cnn", (1, 8, 8)), ("resnet18", (3, 32, 32))):
        arrays, replies = replies_for(model_name, shape, args.nodes, grid)
        size = sum(a.numpy().size for a in arrays.values())
        strategies = {
            "flower FedAvg": FedAvg(fraction_evaluate=0.0),
            "Mean": flwr_flag.Mean(device="cpu", fraction_evaluate=0.0),
            "Krum": flwr_flag.Krum(num_byzantine=2, device="cpu", fraction_evaluate=0.0),
            "Median": flwr_flag.Median(num_byzantine=2, device="cpu", fraction_evaluate=0.0),
            "FlagAggregator": flwr_flag.FlagAggregator(
                num_byzantine=2, device="cpu", fraction_evaluate=0.0
            ),
        }
        base = None
        for name, strategy in strategies.items():
            seconds = time_aggregation(strategy, arrays, replies, grid, args.repeats)
            base = base or seconds
            lines.append(
                f"| {model_name} | {size:,} | {name} | {seconds:.4f} | "
                f"{seconds - base:+.4f} s ({seconds / base:.2f}x) |"
            )
            print(lines[-1], flush=True)
    fedavg = time_rounds(FedAvg(fraction_evaluate=0.0), grid, args.rounds)
    flag = time_rounds(
        flwr_flag.FlagAggregator(num_byzantine=2, device="cpu", fraction_evaluate=0.0),
        grid,
        args.rounds,
    )
    lines += [
        "",
        f"Whole in-process rounds (digits CNN, {args.nodes} nodes, real ClientApp "
        f"training, {args.rounds} rounds): FedAvg {fedavg:.3f} s/round, FlagAggregator "
        f"{flag:.3f} s/round ({flag - fedavg:+.3f} s, {flag / fedavg:.2f}x).",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "strategy_overhead_cpu.md").write_text(report)


if __name__ == "__main__":
    main()
