"""Accuracy curves of one or several runs, for comparing rules.

    python -m server_app.plot outputs/20261127-101500-flag outputs/20261127-102000-krum \\
        --output comparison.png

Each run directory is one written by the ServerApp (``rounds.csv``, ``config.json``);
curves are labelled ``rule / attack`` from the run's config, or the directory name.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Sequence
from pathlib import Path


def read_run(directory: Path) -> tuple[str, list[int], list[float]]:
    """``(label, rounds, accuracies)`` of a run directory."""
    with open(directory / "rounds.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["accuracy"] != ""]
    label = directory.name
    config_path = directory / "config.json"
    if config_path.exists():
        config = json.loads(config_path.read_text())
        attack = config.get("attack", "?") if config.get("byzantine-nodes", 0) else "no attack"
        label = f"{config.get('rule', '?')} / {attack}"
    return label, [int(r["round"]) for r in rows], [float(r["accuracy"]) for r in rows]


def plot_runs(directories: Sequence[Path], output: Path, title: str | None = None) -> Path:
    """Draw the accuracy-vs-round curves of ``directories`` into the PNG ``output``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for directory in directories:
        label, rounds, accuracy = read_run(Path(directory))
        axes.plot(rounds, accuracy, marker="o", markersize=3, label=label)
    axes.set_xlabel("round")
    axes.set_ylabel("test accuracy")
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.legend()
    axes.set_title(title or "Test accuracy per round")
    figure.tight_layout()
    figure.savefig(output, dpi=120)
    plt.close(figure)
    return output


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Plot accuracy curves of flwr-flag runs.")
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--output", "-o", type=Path, default=Path("accuracy.png"))
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    print(plot_runs(args.runs, args.output, args.title))


if __name__ == "__main__":
    main()
