"""One directory per run: resolved config, per-round CSV and JSON lines, final model.

``<output-dir>/<YYYYmmdd-HHMMSS>-<rule>/``::

    config.json     the resolved run config
    rounds.csv      round, accuracy, loss, received, rejected, failed, kept-model,
                    aggregation-seconds, elapsed-seconds (since the recorder started:
                    wall time per round), rejected-nodes (";"-separated)
    rounds.jsonl    the same rows with every diagnostic of the rule
    final_model.pt  the final global arrays (torch.save of name -> tensor)
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

COLUMNS = [
    "round",
    "accuracy",
    "loss",
    "received",
    "rejected",
    "failed",
    "kept-model",
    "aggregation-seconds",
    "elapsed-seconds",
    "rejected-nodes",
]


class RunRecorder:
    """Writes a run's results as rounds complete (a crash keeps the rounds so far)."""

    def __init__(self, output_dir: str | Path, rule: str, config: Mapping[str, Any]) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path(output_dir) / f"{stamp}-{rule}"
        self.directory, suffix = base, 1
        while self.directory.exists():
            suffix += 1
            self.directory = base.with_name(f"{base.name}-{suffix}")
        self.directory.mkdir(parents=True)
        (self.directory / "config.json").write_text(json.dumps(dict(config), indent=2))
        with open(self.directory / "rounds.csv", "w", newline="") as handle:
            csv.writer(handle).writerow(COLUMNS)
        self.rows: list[dict[str, Any]] = []
        self.start = time.perf_counter()

    def record(
        self, server_round: int, evaluation: Mapping[str, float], diagnostics: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Append one round: central evaluation and the strategy's ``robust.*`` metrics."""
        robust = {k.removeprefix("robust."): v for k, v in diagnostics.items()}
        elapsed = time.perf_counter() - self.start
        row = {"round": server_round, **evaluation, **robust, "elapsed-seconds": elapsed}
        self.rows.append(row)
        with open(self.directory / "rounds.jsonl", "a") as handle:
            handle.write(json.dumps(row) + "\n")
        flat = {**row, "rejected-nodes": ";".join(map(str, row.get("rejected-nodes", [])))}
        with open(self.directory / "rounds.csv", "a", newline="") as handle:
            csv.writer(handle).writerow([flat.get(c, "") for c in COLUMNS])
        return row

    def save_model(self, arrays: Mapping[str, np.ndarray]) -> Path:
        path = self.directory / "final_model.pt"
        torch.save({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}, path)
        return path

    def summary(self, partitions: Mapping[int, int] | None = None) -> str:
        """Final accuracy and the nodes rejected or limited over the run (the rounds'
        ``limited-nodes``: those the aggregate followed least), named by partition
        where ``partitions`` maps their node ids."""
        names = partitions or {}
        rejected: dict[int, int] = {}
        limited: dict[int, int] = {}
        for row in self.rows:
            for node in row.get("rejected-nodes", []):
                rejected[node] = rejected.get(node, 0) + 1
            for node in row.get("limited-nodes", []):
                limited[node] = limited.get(node, 0) + 1

        def listing(counts: dict[int, int]) -> str:
            ranked = sorted(counts.items(), key=lambda kv: (-kv[1], names.get(kv[0], kv[0])))
            return ", ".join(
                f"{'partition ' + str(names[n]) if n in names else 'node ' + str(n)}: {c}"
                for n, c in ranked
            )

        last = self.rows[-1]
        lines = [
            f"Final accuracy {last.get('accuracy', float('nan')):.4f} "
            f"(loss {last.get('loss', float('nan')):.4f}) after {len(self.rows) - 1} rounds"
        ]
        if rejected:
            lines.append(f"Rejected replies, in rounds: {listing(rejected)}")
        if limited:
            lines.append(f"Limited (followed least), in rounds: {listing(limited)}")
        lines.append(f"Results in {self.directory}")
        return "\n".join(lines)
