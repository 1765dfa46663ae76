"""What every training study shares: the app's run config, the cell trainer (real
federated training in-process), the resumable store of finished cells, the process pool,
Flower's strategies as peers, and the commit a result was made on.

A study (``robustness``, ``field``, ``papers``, ``cell_geometry``) defines its cells (a
frozen dataclass with a ``key``), how to train one, and its report; this module runs
them: :func:`pending` reads the store and records the cells that cannot run as ``n/a``,
:func:`train_cells` trains the rest on a pool and appends each row as it finishes, so a
rerun skips them.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FLOWER_NEEDS = {"flower Bulyan": (4, 3), "flower Krum": (2, 3)}
"""``n >= a f + b`` of Flower's strategies that need more than ``2f + 1`` replies."""


class PeakMemory:
    """Peak extra memory of a block over what was in use at its start, in bytes: the
    host's resident set sampled every millisecond on a thread, or on CUDA the
    allocator's peak. The one memory sampler of the benchmarks."""

    def __init__(self, device: str = "cpu") -> None:
        self.cuda = str(device).startswith("cuda")
        self.peak = 0

    @staticmethod
    def resident() -> int:
        """This process's resident set, in bytes."""
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            self._base, self._done = self.resident(), threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.001):
            self.peak = max(self.peak, self.resident() - self._base)

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self._base
        else:
            self._done.set()
            self._thread.join()
            self.peak = max(self.peak, self.resident() - self._base)


def commit() -> str:
    """The commit the working tree is at (``+`` when it has uncommitted changes)."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return (head or "unknown") + ("+" if dirty else "")


def app_config() -> dict[str, Any]:
    """The app's run config as ``flwr run`` reads it from pyproject (flattened keys)."""
    from flwr.common.config import flatten_dict

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    config = flatten_dict(pyproject["tool"]["flwr"]["app"]["config"])
    # A study records the accuracy whatever happens: a rule that keeps the model in every
    # round (Bulyan when the attackers drop out) scores the untrained model, not an error.
    return {**config, "max-kept-rounds": "none"}


def flower_peer(name: str, f: int, nodes: int, **common: Any):
    """Flower's own strategy ``name`` (``"flower Krum"``, ``"flower FedMedian"``,
    ``"flower FedTrimmedAvg"``, ``"flower Bulyan"``) told ``f`` of ``nodes`` sampled
    replies are Byzantine, with FedAvg's options ``common``."""
    from flwr.serverapp import strategy as flower

    peers = {
        "flower Krum": lambda: flower.Krum(num_malicious_nodes=f, **common),
        "flower FedMedian": lambda: flower.FedMedian(**common),
        "flower FedTrimmedAvg": lambda: flower.FedTrimmedAvg(beta=f / nodes, **common),
        "flower Bulyan": lambda: flower.Bulyan(num_malicious_nodes=f, **common),
    }
    return peers[name]()


def flower_cannot_run(name: str, nodes: int, f: int) -> str | None:
    """Why Flower's ``name`` cannot run with ``f`` of ``nodes`` replies, or ``None``."""
    from flwr_flag.rules import Requirement

    if name not in FLOWER_NEEDS:
        return None
    requirement = Requirement(*FLOWER_NEEDS[name])
    if nodes < requirement.minimum(f):
        return f"needs n >= {requirement.factor}f+{requirement.offset}"
    return None


def cannot_run_rule(config: dict[str, Any], nodes: int, f: int) -> str | None:
    """Why the strategy ``config`` describes cannot run with ``f`` of ``nodes`` replies
    (the registry's answer, :meth:`flwr_flag.rules.registry.Rule.why_not`), or ``None``."""
    from flwr_flag.config import rule_from_config
    from flwr_flag.rules import get_rule

    rule, params, pre, _ = rule_from_config(config)
    return get_rule(rule).why_not(nodes, f, params, pre)


def train(config: dict[str, Any], nodes: int, strategy, rounds: int, seed: int) -> dict[str, Any]:
    """Real federated training in-process: this project's ClientApp on ``nodes`` nodes
    with ``config``, ``strategy`` for ``rounds`` rounds, the model of ``config["model"]``
    evaluated on ``config["dataset"]``'s test set after every round (a non-finite model
    scores 0 and marks the run diverged). Returns the accuracy per round, ``diverged``,
    wall seconds and the mean seconds of ``aggregate_train``."""
    import torch
    from flwr.app import ArrayRecord, MetricRecord

    from clients.app import app as client_app
    from clients.config import ClientSettings
    from clients.data import load_test
    from clients.models import build_model, set_arrays
    from clients.train import evaluate
    from flwr_flag.inprocess import InProcessGrid

    start = time.perf_counter()
    torch.set_num_threads(1)
    logging.getLogger("flwr").setLevel(logging.ERROR)
    settings = ClientSettings.from_config(config, {"partition-id": 0, "num-partitions": nodes})
    test = load_test(settings.dataset, seed, settings.data_files)
    shape = tuple(test.x.shape[1:])
    model = build_model(settings.model, shape, test.num_classes, seed)
    accuracy: dict[int, float] = {}
    diverged: list[int] = []
    aggregation: list[float] = []

    def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        values = {k: v.numpy() for k, v in arrays.items()}
        finite = all(
            torch.isfinite(torch.from_numpy(v.astype("float64"))).all() for v in values.values()
        )
        if finite:
            set_arrays(model, values)
            accuracy[server_round] = evaluate(model, test)[1]
        else:  # a peer emitted a non-finite model: it predicts nothing useful
            accuracy[server_round] = 0.0
            diverged.append(server_round)
        return MetricRecord({"accuracy": accuracy[server_round]})

    aggregate_train = strategy.aggregate_train

    def timed(server_round, replies):
        began = time.perf_counter()
        out = aggregate_train(server_round, replies)
        aggregation.append(time.perf_counter() - began)
        return out

    strategy.aggregate_train = timed
    grid = InProcessGrid(client_app, nodes, run_config=config)
    initial = ArrayRecord(build_model(settings.model, shape, test.num_classes, seed).state_dict())
    strategy.start(grid=grid, initial_arrays=initial, num_rounds=rounds, evaluate_fn=central)
    return {
        "accuracy": [accuracy[r] for r in sorted(accuracy)],
        "diverged": bool(diverged),
        "seconds": time.perf_counter() - start,
        "aggregation_seconds": statistics.mean(aggregation) if aggregation else 0.0,
    }


def load(path: Path, cell_type: type) -> dict[str, dict[str, Any]]:
    """The finished rows of ``path`` by their cell's key (fields a row lacks take the
    cell type's defaults)."""
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    fields = cell_type.__dataclass_fields__
    return {cell_type(**{k: r[k] for k in fields if k in r}).key: r for r in rows}


def pending(
    cells: list, out: Path, cannot_run: Callable[[Any], str | None]
) -> tuple[Path, dict[str, dict[str, Any]], list]:
    """The store under ``out``, the rows done, and the cells still to train: a cell that
    ``cannot_run`` says cannot run is recorded ``n/a`` with the reason, never trained."""
    out.mkdir(parents=True, exist_ok=True)
    store = out / "cells.jsonl"
    done = load(store, type(cells[0])) if cells else {}
    for cell in cells:
        reason = None if cell.key in done else cannot_run(cell)
        if reason is not None:
            done[cell.key] = {**asdict(cell), "accuracy": [], "na": reason}
            with open(store, "a") as handle:
                handle.write(json.dumps(done[cell.key]) + "\n")
    return store, done, [c for c in cells if c.key not in done]


def train_cells(
    todo: list, run_one: Callable[[Any], dict], store: Path, workers: int, total: int
) -> Iterator[tuple[Any, dict]]:
    """``(cell, run_one(cell))`` for every cell of ``todo``, trained on ``workers``
    processes; each row is appended to ``store`` as it finishes (a rerun skips it), under
    a progress bar over ``total`` cells with its ETA."""
    from tqdm import tqdm

    with (
        ProcessPoolExecutor(workers) as pool,
        tqdm(total=total, initial=total - len(todo), desc="cells") as bar,
    ):
        futures = {pool.submit(run_one, c): c for c in todo}
        for future in as_completed(futures):
            row = future.result()
            with open(store, "a") as handle:
                handle.write(json.dumps(row, default=str) + "\n")
            bar.update()
            yield futures[future], row
