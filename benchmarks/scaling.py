"""How ``aggregate_train`` scales with the number of clients: seconds and peak memory.

``n`` clients reply with a 1M-parameter model (four float32 arrays); each strategy's
``aggregate_train`` runs on identical replies: Flower's ``FedAvg``, ``FedMedian`` and
``Krum`` against our ``Mean``, ``Krum``, ``FlagAggregator``, ``CTMA`` and ``Median``.
Every (strategy, n) runs in a fresh process, so its peak memory is its own: the
resident set's high-water mark during the first call minus the resident set before it
(replies built, and the libraries' one-time set-up paid by a call on a tiny model of the
same layout), sampled every millisecond, reported beside the model's size. Time: median
of the ``--repeats`` calls after it.

Each (strategy, n) is appended to ``benchmarks/results/scaling_<device>.jsonl`` (a rerun
skips those done); the report covers every n there: ``scaling_<device>.md`` and
``scaling_<device>.png`` (log-log, with the fitted slope of time vs n per strategy). With
``--device cuda`` our strategies aggregate on the GPU (Flower's stay on the host) and each
cell also reports the CUDA allocator's peak.

    python -m benchmarks.scaling                      # n = 10 50 100 200 500
    python -m benchmarks.scaling --clients 10 50 --strategies Mean "flower FedAvg"
    python -m benchmarks.scaling --device cuda
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.harness import RESULTS, ROOT, PeakMemory

SHAPES = {"conv": (256, 256, 3, 3), "fc1": (256, 1024), "fc2": (1024, 151), "bias": (1104,)}
STRATEGIES = (
    "flower FedAvg",
    "flower FedMedian",
    "flower Krum",
    "Mean",
    "Krum",
    "FlagAggregator",
    "CTMA",
    "Median",
)


def build(name: str, f: int, device: str = "cpu"):
    from flwr.serverapp import strategy as flower

    import flwr_flag

    if name.startswith("flower "):
        cls = getattr(flower, name.split()[1])
        return cls(num_malicious_nodes=f) if name.endswith("Krum") else cls()
    return getattr(flwr_flag, name)(num_byzantine=f, device=device)


def model_arrays(model: str) -> dict:
    """The global model's float32 (and integer buffer) arrays: ``"1m"`` is four arrays of
    1,007,696 parameters; ``"cnn"`` and ``"resnet18"`` are the ClientApp's models."""
    import numpy as np

    if model == "1m":
        rng = np.random.default_rng(0)
        return {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    from clients.models import build_model, get_arrays

    shape = (1, 8, 8) if model == "cnn" else (3, 32, 32)
    return dict(get_arrays(build_model(model, shape, 10)))


def measure(name: str, n: int, repeats: int, model: str = "1m", device: str = "cpu") -> dict:
    """In this process: replies of ``n`` clients (the model's arrays plus noise), then
    ``repeats`` calls of ``name`` aggregating on ``device``."""
    import numpy as np
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    rng = np.random.default_rng(0)

    def client_updates(weights: dict) -> list[dict]:
        return [
            {
                k: v + rng.normal(0, 1e-2, v.shape).astype(v.dtype) if v.dtype.kind == "f" else v
                for k, v in weights.items()
            }
            for _ in range(n)
        ]

    def replies(updates: list[dict]) -> list[Message]:
        """Fresh replies for every call: Flower's FedMedian empties those it gets."""
        out = []
        for node, update in enumerate(updates, start=1):
            request = Message(RecordDict(), dst_node_id=node, message_type="train")
            content = RecordDict(
                {
                    "arrays": ArrayRecord({k: Array(v) for k, v in update.items()}),
                    "metrics": MetricRecord({"num-examples": 10}),
                }
            )
            out.append(Message(content, reply_to=request))
        return out

    class Grid:
        def get_node_ids(self):
            return list(range(1, n + 1))

    strategy = build(name, max(1, (n - 3) // 4), device)

    def call(sent: ArrayRecord, messages: list[Message]) -> float:
        list(strategy.configure_train(1, sent, ConfigRecord(), Grid()))
        start = time.perf_counter()
        strategy.aggregate_train(1, messages)
        return time.perf_counter() - start

    import torch

    weights = model_arrays(model)
    updates = client_updates(weights)
    batches = [replies(updates) for _ in range(repeats + 1)]
    # The libraries' one-time set-up (thread pools, linear-algebra workspaces: ~5-10 MiB)
    # is no round's cost: a first call on a two-value-per-array copy of the model pays it.
    tiny = {k: v.reshape(-1)[:2].copy() for k, v in weights.items()}
    call(ArrayRecord({k: Array(v) for k, v in tiny.items()}), replies(client_updates(tiny)))
    sent = ArrayRecord({k: Array(v) for k, v in weights.items()})
    cuda = device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with PeakMemory() as memory:  # the first real call: memory freed by none before it
        call(sent, batches[0])
    times = [call(sent, batch) for batch in batches[1:]]
    result = {"strategy": name, "n": n, "seconds": statistics.median(times),
              "extra_mib": max(memory.peak, 0) / 2**20,
              "model_mib": sum(v.nbytes for v in weights.values()) / 2**20}  # fmt: skip
    if cuda:
        result["gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def run(
    name: str,
    n: int,
    repeats: int,
    timeout: float,
    model: str = "1m",
    device: str = "cpu",
    threads: int | None = None,
) -> dict:
    """``measure`` in a fresh process (its peak memory is its own); ``threads``: torch's
    thread setting there (``OMP_NUM_THREADS``), which caps our host passes' workers."""
    command = [sys.executable, "-m", "benchmarks.scaling", "--one", name, str(n),
               "--repeats", str(repeats), "--model", model, "--device", device]  # fmt: skip
    env = None if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads)}
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env
        )
    except subprocess.TimeoutExpired:
        return {"strategy": name, "n": n, "error": f"over {timeout:.0f} s"}
    if done.returncode != 0:
        return {"strategy": name, "n": n, "error": done.stderr.strip().splitlines()[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of log(seconds) against log(n)."""
    xs = [math.log(n) for n, _ in points]
    ys = [math.log(t) for _, t in points]
    mx, my = statistics.mean(xs), statistics.mean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )


def memory_text(result: dict) -> str:
    """A cell's peak extra host memory, and the CUDA allocator's peak when measured."""
    gpu = f" (GPU {result['gpu_mib']:.0f} MiB)" if "gpu_mib" in result else ""
    return f"+{result['extra_mib']:.0f} MiB{gpu}"


def report(
    rows: list[dict], clients: list[int], names: list[str], repeats: int, device: str
) -> str:
    size = sum(math.prod(s) for s in SHAPES.values())
    cell = {(r["strategy"], r["n"]): r for r in rows}
    lines = [
        f"# Scaling with the number of clients ({device.upper()})",
        "",
        f"A {size:,}-parameter model ({size * 4 / 2**20:.1f} MiB of float32), n clients, "
        f"f = (n - 3) // 4; `aggregate_train` on identical replies, median of {repeats} "
        "calls after a first one; peak extra memory = the resident set's maximum during the "
        "first call (sampled every ms) minus the resident set before it, each (strategy, n) "
        "in its own process.",
        "",
        "| strategy | " + " | ".join(f"n = {n}" for n in clients) + " | slope |",
        "|---|" + "---:|" * (len(clients) + 1),
    ]
    for name in names:
        texts, points = [], []
        for n in clients:
            r = cell.get((name, n))
            if r is None or "error" in r:
                texts.append("n/a" if r is None else f"n/a ({r['error']})")
                continue
            texts.append(f"{r['seconds']:.2f} s, {memory_text(r)}")
            points.append((n, r["seconds"]))
        fitted = f"{slope(points):.2f}" if len(points) > 1 else ""
        lines.append(f"| {name} | " + " | ".join(texts) + f" | {fitted} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 5))
    for name in names:
        points = sorted(
            (r["n"], r["seconds"]) for r in rows if r["strategy"] == name and "error" not in r
        )
        if points:
            label = f"{name} (slope {slope(points):.2f})" if len(points) > 1 else name
            axes.loglog(*zip(*points, strict=True), marker="o", label=label)
    axes.set_xlabel("clients n")
    axes.set_ylabel("aggregate_train seconds")
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="*", default=[10, 50, 100, 200, 500])
    parser.add_argument("--strategies", nargs="*", default=list(STRATEGIES))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--one", nargs=2, metavar=("STRATEGY", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--model", default="1m", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one = measure(args.one[0], int(args.one[1]), args.repeats, args.model, args.device)
        print(json.dumps(one))
        return
    RESULTS.mkdir(exist_ok=True)
    store = RESULTS / f"scaling_{args.device}.jsonl"
    done = [json.loads(line) for line in store.read_text().splitlines()] if store.exists() else []
    finished = {(r["strategy"], r["n"]) for r in done}
    for n in args.clients:
        for name in args.strategies:
            if (name, n) in finished:
                continue
            done.append(run(name, n, args.repeats, args.timeout, device=args.device))
            with open(store, "a") as handle:
                handle.write(json.dumps(done[-1]) + "\n")
            print(done[-1], flush=True)
    rows = done
    clients = sorted({r["n"] for r in rows})
    text = report(rows, clients, args.strategies, args.repeats, args.device)
    print(text)
    (RESULTS / f"scaling_{args.device}.md").write_text(text)
    plot(rows, args.strategies, RESULTS / f"scaling_{args.device}.png")


if __name__ == "__main__":
    main()
