"""Per-round cost of our strategies against Flower's on identical replies.

Two measurements:

1. ``aggregate_train`` alone on the replies of ``--nodes`` clients (the model's arrays
   plus noise; the digits CNN and ResNet-18, integer buffers included), Flower's
   ``FedAvg`` and ``FedMedian`` against our ``Mean``, ``Krum``, ``FlagAggregator``,
   ``CTMA`` and ``Median``: seconds (median of ``--repeats`` calls after a first one)
   and peak extra memory (the first call's resident-set high-water mark over the
   resident set before it, after a call on a tiny model has paid the libraries' one-time
   set-up), each strategy in a fresh process (``scaling.measure``);
   ratios against FedAvg's seconds and the model's size. A server shares its cores, so
   the same cells run idle and beside ``--load`` busy processes (each a Python busy
   loop pinned to a core of its own: one beside us, then one on every core), every
   ratio against FedAvg measured under the same load, and the idle machine once more
   with torch's threads set to 1 (our passes on one worker): beside one busy process a
   pass has one core, so that column tells a lost core from contention;
2. whole in-process rounds of the real ServerApp strategy + ClientApp (digits CNN,
   10 nodes) with ``FedAvg`` and with ``FlagAggregator``: what a user feels per round.

The report names the commit it ran on; where an idle ratio is worse than the one in the
committed report, both are printed.

    python -m benchmarks.strategy_overhead
    python -m benchmarks.strategy_overhead --load 0 1 2
    python -m benchmarks.strategy_overhead --device cuda   # ours aggregate on the GPU
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

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


@contextmanager
def busy(count: int):
    """``count`` busy-loop processes, the i-th pinned to core ``cores - 1 - i`` (one
    busy process shares a core with us, ``cores`` of them share them all)."""
    cores = sorted(os.sched_getaffinity(0))
    processes = []
    try:
        for i in range(count):
            process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            os.sched_setaffinity(process.pid, {cores[-1 - i % len(cores)]})
            processes.append(process)
        time.sleep(0.5)
        yield
    finally:
        for process in processes:
            process.kill()
            process.wait()


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], capture_output=True, text=True, cwd=RESULTS.parent.parent
    ).stdout


def commit() -> str:
    """The commit the benchmark runs on (``+`` when the tree has changes)."""
    return git("rev-parse", "--short", "HEAD").strip() + (
        "+" if git("status", "--porcelain") else ""
    )


def committed_idle_ratios(path: Path) -> dict[tuple[str, str], float]:
    """(model, strategy) -> idle ratio to FedAvg in the last committed report at
    ``path`` (the fifth column: "vs FedAvg" before the load columns, "idle vs FedAvg"
    since)."""
    ratios = {}
    for line in git("show", f"HEAD:{path.relative_to(RESULTS.parent.parent)}").splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 4 and (m := re.fullmatch(r"([\d.]+)x", cells[4])):
            ratios[(cells[0], cells[2])] = float(m.group(1))
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--load", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument(
        "--one-worker",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure the idle machine with torch's threads set to 1 (one worker)",
    )
    parser.add_argument("--models", nargs="*", default=["cnn", "resnet18"])
    parser.add_argument("--rounds-too", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    path = RESULTS / f"strategy_overhead_{args.device}.md"
    before = committed_idle_ratios(path)
    conditions = [(f"{k} busy" if k else "idle", k, None) for k in args.load]
    if args.one_worker and 0 in args.load:
        conditions.insert(args.load.index(0) + 1, ("idle 1 worker", 0, 1))
    loads = [label for label, _, _ in conditions]
    lines = [
        f"# Strategy overhead vs Flower's FedAvg ({args.device.upper()}, in-process)",
        "",
        f"Commit {commit()}, {os.cpu_count()} cores. {args.nodes} clients, f = "
        f"{max(1, (args.nodes - 3) // 4)}; `aggregate_train` on identical replies, median "
        f"of {args.repeats} calls after a first one; peak extra memory of the first call "
        "(after one on a tiny model: the libraries' one-time set-up), each strategy in its "
        "own process. `k busy`: beside k busy-loop processes, each pinned to a core "
        "(one: a core shared with us; two: every core), ratios to FedAvg under the same "
        "load; `idle 1 worker`: the idle machine with torch's threads set to 1, so our "
        "passes run on one worker (FedAvg runs on one thread anyway).",
        "",
        "| model | parameters | strategy | "
        + " | ".join(f"{load} s | {load} vs FedAvg" for load in loads)
        + " | peak extra memory (first load measured) | vs model size |",
        "|---|---:|---|" + "---:|---:|" * len(loads) + "---:|---:|",
    ]
    regressions, lost_core = [], []
    for model in args.models:
        table: dict[str, list] = {name: [] for name in STRATEGIES}
        for _, count, threads in conditions:
            with busy(count):
                for name in STRATEGIES:
                    table[name].append(
                        run(name, args.nodes, args.repeats, 900.0, model, args.device, threads)
                    )
        for name in STRATEGIES:
            cells, first = [], None
            for i, result in enumerate(table[name]):
                base = table[STRATEGIES[0]][i]
                if "error" in result or "error" in base:
                    cells += [f"n/a ({result.get('error') or 'FedAvg: ' + base['error']})", ""]
                    continue
                first = first or result
                ratio = result["seconds"] / base["seconds"]
                cells += [f"{result['seconds']:.4f}", f"{ratio:.2f}x"]
                old = before.get((model, name))
                if loads[i] == "idle" and old is not None and ratio > old * 1.1:
                    regressions.append(f"{model} {name}: idle {ratio:.2f}x, committed {old:.2f}x")
            if first is None:
                continue
            line = core_line(model, name, dict(zip(loads, table[name], strict=True)))
            if line and not name.startswith("flower "):
                lost_core.append(line)
            lines.append(
                f"| {model} | {first['model_mib'] * 2**20 / 4:,.0f} | {name} | "
                + " | ".join(cells)
                + f" | {memory_text(first)} | {first['extra_mib'] / first['model_mib']:.2f}x |"
            )
            print(lines[-1], flush=True)
    if regressions:
        lines += ["", "Idle ratios worse than the committed report's (by over 10 %):", ""]
        lines += [f"- {r}" for r in regressions]
    if lost_core:
        lines += [
            "",
            "Ours beside one busy process, against the idle machine (its two workers) and "
            "against the idle machine on one worker: the first is the second core's worth "
            "when the second is near 1 (a lost core, no contention):",
            "",
        ]
        lines += lost_core
    if not args.rounds_too:
        finish(lines, path)
        return
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
    finish(lines, path)


def core_line(model: str, name: str, cells: dict[str, dict]) -> str | None:
    """``1 busy / idle`` and ``1 busy / idle 1 worker`` seconds, where all three ran."""
    seconds = {label: cell.get("seconds") for label, cell in cells.items()}
    busy_s, idle, one = (seconds.get(k) for k in ("1 busy", "idle", "idle 1 worker"))
    if not (busy_s and idle and one):
        return None
    return f"- {model} {name}: {busy_s / idle:.2f}x idle, {busy_s / one:.2f}x idle on one worker"


def finish(lines: list[str], path: Path) -> None:
    report = "\n".join(lines) + "\n"
    print(report)
    RESULTS.mkdir(exist_ok=True)
    path.write_text(report)


if __name__ == "__main__":
    main()
