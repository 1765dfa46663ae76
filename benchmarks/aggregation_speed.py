"""Aggregation speed: every flwr-flag rule against its peers, on the same updates.

For each (n, p) the script builds ``n`` float32 updates (``f = (n - 3) // 4`` of them
scaled outliers) and times, median over ``--repeats`` runs:

* every registered rule, on the stacked ``(n, p)`` tensor on ``--device``, plus a few
  compositions (NNM -> median, CTMA over FA) and the streaming path from per-client
  numpy arrays (the layout Flower replies arrive in) for Krum, median and FA;
* Flower's own Message-API ``Krum``, ``MultiKrum``, ``Bulyan``, ``FedMedian`` and
  ``FedTrimmedAvg`` (``aggregate_train`` on replies carrying the same updates);
* ByzFL's ``Krum``, ``Median`` and ``GeometricMedian`` on the stacked tensor;
* floors: one read of the data (a sum) and one Gram product ``X X^T``.

It prints and writes a markdown table per (n, p) with median seconds, the peak extra
memory of each call (host RSS on CPU, allocator peak on CUDA), the ratio to the Gram
floor and the ratio to the matching peer (< 1 means we are faster).

    python -m benchmarks.aggregation_speed                 # n in 16 32 64, p in 1M 4M
    python -m benchmarks.aggregation_speed --device cuda
    python -m benchmarks.aggregation_speed --n 16 --p 1000000 --repeats 1
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import logging
import math
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import PeakMemory
from flwr_flag.engine import ArraysSource, StackedSource
from flwr_flag.rules import RULES, aggregate
from flwr_flag.rules.registry import ROUND_STATE
from flwr_flag.rules.subsets import DEFAULT_MAX_SUBSETS

RESULTS = Path(__file__).parent / "results"

# Our rule -> the peer it is compared with.
PEERS = {
    "krum": ["flower Krum", "byzfl Krum"],
    "multi-krum": ["flower MultiKrum"],
    "bulyan": ["flower Bulyan"],
    "median": ["flower FedMedian", "byzfl Median"],
    "trimmed-mean": ["flower FedTrimmedAvg"],
    "geomed": ["byzfl GeometricMedian"],
}


def measure(
    call: Callable[[], object], setup: Callable[[], object], device: torch.device, repeats: int
) -> tuple[float, float]:
    """Median seconds and max peak extra MiB over ``repeats`` timed calls."""
    times, peaks = [], []
    for _ in range(repeats):
        args = setup()
        with PeakMemory(device.type) as memory:
            start = time.perf_counter()
            call(*args) if args is not None else call()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        peaks.append(memory.peak / 2**20)
        del args
    return statistics.median(times), max(peaks)


def make_updates(n: int, p: int, f: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=g)
    x[:f] *= 10.0
    return x


def layer_split(x: torch.Tensor) -> list[list[np.ndarray]]:
    """Per-client arrays, as a model with four tensors of unequal sizes."""
    p = x.shape[1]
    cuts = [0, p // 2, p // 2 + p // 4, p // 2 + p // 4 + p // 8, p]
    return [[row[a:b].numpy() for a, b in itertools.pairwise(cuts)] for row in x]


def flower_peers(clients: list[list[np.ndarray]], f: int) -> dict[str, Callable]:
    """Flower's strategies, each with a setup that builds fresh replies (some mutate them)."""
    from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.serverapp.strategy import Bulyan, FedMedian, FedTrimmedAvg, Krum, MultiKrum
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    logging.getLogger("flwr").setLevel(logging.WARNING)
    n = len(clients)

    def replies() -> tuple[list[Message]]:
        return (
            [
                Message(
                    content=RecordDict(
                        {
                            "arrays": ArrayRecord(
                                {f"a{k}": Array(a) for k, a in enumerate(arrays)}
                            ),
                            "metrics": MetricRecord({"num-examples": 1}),
                        }
                    ),
                    dst_node_id=i + 1,
                    message_type="train",
                )
                for i, arrays in enumerate(clients)
            ],
        )

    strategies = {
        "flower Krum": Krum(num_malicious_nodes=f),
        "flower MultiKrum": MultiKrum(num_malicious_nodes=f, num_nodes_to_select=n - f),
        "flower Bulyan": Bulyan(num_malicious_nodes=f),
        "flower FedMedian": FedMedian(),
        "flower FedTrimmedAvg": FedTrimmedAvg(beta=f / n),
    }

    def runner(strategy):
        def call(messages):
            with contextlib.redirect_stdout(io.StringIO()):
                strategy.aggregate_train(1, messages)

        return call

    return {name: (runner(s), replies) for name, s in strategies.items()}


def byzfl_peers(x: torch.Tensor, f: int) -> dict[str, tuple[Callable, Callable]]:
    try:
        import byzfl
    except ImportError:
        return {}
    none = lambda: None  # noqa: E731
    return {
        "byzfl Krum": (lambda: byzfl.Krum(f=f)(x), none),
        "byzfl Median": (lambda: byzfl.Median()(x), none),
        "byzfl GeometricMedian": (lambda: byzfl.GeometricMedian()(x), none),
    }


def ours(x: torch.Tensor, clients, f: int, device: torch.device, chunk: int | None):
    """Our rules and compositions, each building a fresh source (nothing cached)."""

    def on_stacked(rule: str, **kw):
        return lambda: aggregate(StackedSource(x, chunk_size=chunk), rule, f, **kw)

    def on_arrays(rule: str):
        return lambda: aggregate(ArraysSource(clients, device=device, chunk_size=chunk), rule, f)

    calls: dict[str, Callable] = {}
    for name in sorted(RULES):
        if name in ("mda", "smea") and math.comb(x.shape[0], f) > DEFAULT_MAX_SUBSETS:
            continue
        if any(ROUND_STATE[k].needs_strategy for k in RULES[name].state):
            continue  # DETOX needs each row's group: its own table (run_detox_case)
        calls[name] = on_stacked(name)
    calls["nnm -> median"] = on_stacked("median", pre=["nnm"])
    calls["ctma(flag)"] = on_stacked("ctma", base="flag")
    for name in ("krum", "median", "flag"):
        calls[f"{name} [from arrays]"] = on_arrays(name)
    return calls


def run_case(n: int, p: int, device: torch.device, repeats: int, chunk: int | None) -> str:
    f = (n - 3) // 4
    host = make_updates(n, p, f, seed=n + p)
    clients = layer_split(host)
    x = host.to(device)
    none = lambda: None  # noqa: E731
    rows: dict[str, tuple[float, float]] = {}
    rows["floor: one read"] = measure(lambda: x.sum(), none, device, repeats)
    rows["floor: one Gram X X^T"] = measure(lambda: x @ x.T, none, device, repeats)
    for name, call in ours(x, clients, f, device, chunk).items():
        rows[name] = measure(call, none, device, repeats)
        print(f"  n={n} p={p} {name}: {rows[name][0]:.3f}s", flush=True)
    if device.type == "cpu":
        peers = {**flower_peers(clients, f), **byzfl_peers(x, f)}
    else:
        peers = byzfl_peers(x, f)  # Flower's strategies are numpy-only
    for name, (call, setup) in peers.items():
        rows[name] = measure(call, setup, device, repeats)
        print(f"  n={n} p={p} {name}: {rows[name][0]:.3f}s", flush=True)

    gram = rows["floor: one Gram X X^T"][0]
    lines = [
        f"### n = {n}, p = {p:,} (f = {f})",
        "",
        "| method | median s | peak extra MiB | / Gram floor | vs peer (ours / peer) |",
        "|---|---:|---:|---:|---|",
    ]
    for name, (seconds, peak) in rows.items():
        base = name.split(" [")[0]
        versus = ", ".join(
            f"{peer}: {seconds / rows[peer][0]:.2f}x"
            for peer in PEERS.get(base, [])
            if peer in rows and "[" not in name
        )
        lines.append(f"| {name} | {seconds:.4f} | {peak:.0f} | {seconds / gram:.2f} | {versus} |")
    return "\n".join(lines) + "\n"


DETOX_VERSUS = {
    "detox (r=3)": "detox",
    "multi-krum": "multi-krum",
    "bulyan": "bulyan",
}
"""DETOX and the flat rules it is compared with (its paper's)."""
DETOX_BUDGET = ("mean pass", "stage 2 on n/3")
"""What DETOX's math costs: a pass over all ``n`` rows (the plain mean), and its
default second stage (median of bucket means) alone on the ``n / 3`` winners. Stage 1's
vote is one streamed pass, so DETOX should cost at most 3 mean passes plus stage 2."""


def detox_case(n: int, p: int, device: torch.device) -> tuple[torch.Tensor, int, list[int]]:
    """``n`` updates in groups of r = 3 (honest group members equal, one Byzantine node
    in each of the first ``f`` groups), ``f`` and each row's group."""
    # The largest f that Bulyan and DETOX's default second stage (median over
    # ceil(G / 2) bucket means of the G = n / 3 winners, f' = f // 2) both accept.
    buckets = math.ceil((n // 3) / 2)
    f = min((n - 3) // 4, 2 * ((buckets - 1) // 2) + 1)
    groups = [g for g in range(n // 3) for _ in range(3)]
    x = make_updates(n // 3, p, 0, seed=n).to(device).repeat_interleave(3, dim=0)
    x[[3 * i for i in range(f)]] *= 10.0
    return x, f, groups


def time_detox_case(name: str, x: torch.Tensor, f: int, groups: list[int], repeats: int) -> float:
    """Median seconds of one aggregation of ``x`` by ``name`` of :data:`DETOX_VERSUS`,
    or of one part of :data:`DETOX_BUDGET`."""
    if name == "mean pass":
        call = lambda: aggregate(StackedSource(x), "mean")  # noqa: E731
    elif name == "stage 2 on n/3":
        winners = x[::3].contiguous()  # one member of each group of 3
        pre = [("bucketing", {"s": 2})]
        call = lambda: aggregate(StackedSource(winners), "median", f // 2, pre=pre)  # noqa: E731
    else:
        rule = DETOX_VERSUS[name]
        kw = {"groups": groups} if rule == "detox" else {}
        call = lambda: aggregate(StackedSource(x), rule, f, **kw)  # noqa: E731
    return measure(call, lambda: None, x.device, repeats)[0]


def run_detox_case(n: int, p: int, device: torch.device, repeats: int) -> str:
    """DETOX (r = 3, default second stage) against flat Multi-Krum and Bulyan."""
    x, f, groups = detox_case(n, p, device)
    seconds = {name: time_detox_case(name, x, f, groups, repeats) for name in DETOX_VERSUS}
    detox = seconds["detox (r=3)"]
    line = (
        f"| {n} | {f} | "
        + " | ".join(f"{v:.4f}" for v in seconds.values())
        + f" | {detox / seconds['multi-krum']:.2f}x | {detox / seconds['bulyan']:.2f}x |"
    )
    print(line, flush=True)
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--p", type=int, nargs="+", default=[1_000_000, 4_000_000])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--detox-n", type=int, nargs="*", default=[15, 30, 60])
    parser.add_argument("--detox-p", type=int, default=1_000_000)
    parser.add_argument("--only-detox", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    header = [
        f"# Aggregation speed on {args.device} ({card or platform.machine()}, "
        f"{torch.get_num_threads()} CPU threads, torch {torch.__version__})",
        "",
        f"Median of {args.repeats} runs; float32 updates; chunk size "
        f"{args.chunk_size or 'default'}. Ours run on the stacked tensor unless marked "
        "[from arrays] (streamed from per-client numpy arrays). Peers get the same "
        "updates: Flower as reply ArrayRecords, ByzFL as the stacked tensor.",
        "",
    ]
    sections = (
        []
        if args.only_detox
        else [run_case(n, p, device, args.repeats, args.chunk_size) for p in args.p for n in args.n]
    )
    if args.detox_n:
        table = [run_detox_case(n, args.detox_p, device, args.repeats) for n in args.detox_n]
        sections.append(
            "\n".join(
                [
                    f"### DETOX vs flat rules, p = {args.detox_p:,} (one aggregation)",
                    "",
                    "| n | f | detox s | multi-krum s | bulyan s | detox / multi-krum "
                    "| detox / bulyan |",
                    "|---:|---:|---:|---:|---:|---:|---:|",
                    *table,
                ]
            )
            + "\n"
        )
    report = "\n".join(header) + "\n".join(sections)
    print(report)
    out = args.out or RESULTS / f"aggregation_speed_{device.type}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)


if __name__ == "__main__":
    main()
