"""Where a rule's output sits between the honest nodes and the colluders, round by
round, in one cell of a paper's protocol (:mod:`papers`).

Each round, with ``w`` the model sent, ``u_i`` the replies (models: their differences
are the updates' differences), ``h`` the honest replies' mean, ``b`` the colluders' and
``a`` the aggregate:

* ``t = <a - h, b - h> / ||b - h||^2``: 0 at the honest mean, 1 at the colluders'
  (the plain mean of ``n - f`` honest and ``f`` Byzantine replies gives ``f / n``);
* ``gap = ||b - h||``, against the honest ``spread = sqrt(mean_i ||u_i - h||^2)``:
  a rule that works by order or distance can only tell the groups apart while the
  gap is large beside the spread;
* ``honest_step = ||h - w||``, ``byzantine_step = ||b - w||`` (IPM's colluders all
  send ``-epsilon mu_hat``: their step over ``epsilon`` is ``||mu_hat||``) and
  ``cos``, the cosine of ``a - w`` with ``h - w``.

One cell costs what :func:`papers.run_cell` costs (O(n p) more per round). Rows go to
``benchmarks/results/papers/geometry/<cell>-<rounds>-rounds.jsonl``; the summary is
their mean per block of rounds::

    python -m benchmarks.cell_geometry --paper ctma --rule "median + CTMA" \\
        --setting "label-flip, mu2-sgd" --seed 2 [--rounds 600] [--block 100] \\
        [--run-config "mu2.beta-min=1e-4 mu2.gamma-min=1e-4"]

``--run-config`` (Flower's ``key=value`` syntax) changes the cell's config, to test
what a setting does to the geometry; the file's name then carries it.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness, papers
from flwr_flag.runconfig import parse_overrides

COLUMNS = ("t", "gap", "spread", "honest_step", "byzantine_step", "cos")


def geometry(
    replies: np.ndarray, byzantine: np.ndarray, aggregate: np.ndarray, sent: np.ndarray
) -> dict[str, float]:
    """One round's row (see the module docstring) from the ``(n, p)`` replies, the
    ``(n,)`` Byzantine mask, the aggregate and the model sent, all flattened. Without
    colluders ``t`` and ``gap`` are NaN."""
    h = replies[~byzantine].mean(0)
    b = replies[byzantine].mean(0) if byzantine.any() else np.full_like(h, np.nan)
    gap, step, moved = b - h, h - sent, aggregate - sent
    norm = float(np.linalg.norm(moved) * np.linalg.norm(step))
    return {
        "t": float((aggregate - h) @ gap / (gap @ gap)),
        "gap": float(np.linalg.norm(gap)),
        "spread": float(np.sqrt(((replies[~byzantine] - h) ** 2).sum(1).mean())),
        "honest_step": float(np.linalg.norm(step)),
        "byzantine_step": float(np.linalg.norm(b - sent)),
        "cos": float(moved @ step) / norm if norm > 0 else float("nan"),
    }


def trace(cell: papers.Cell, dataset: str, model: str) -> tuple[list[dict], list[float]]:
    """Train ``cell`` as :func:`papers.run_cell` does; its geometry row per round and
    its accuracy curve."""
    from flwr_flag import strategy_from_config

    def flat(arrays) -> np.ndarray:
        return np.concatenate([v.numpy().ravel().astype(np.float64) for v in arrays.values()])

    config = papers.cell_config(cell, dataset, model)
    strategy = strategy_from_config(config)
    configure_train, aggregate_train = strategy.configure_train, strategy.aggregate_train
    rows: list[dict[str, Any]] = []
    sent: list[np.ndarray] = []

    def sending(server_round, arrays, train_config, grid):
        sent.append(flat(arrays))
        return configure_train(server_round, arrays, train_config, grid)

    def observed(server_round, replies):
        replies = sorted(replies, key=lambda m: m.metadata.src_node_id)  # as the rows
        out = aggregate_train(server_round, replies)
        stacked = np.stack([flat(m.content["arrays"]) for m in replies])
        byzantine = np.array([bool(m.content["metrics"]["byzantine"]) for m in replies])
        kept = out[0] is None  # the round kept the model: the aggregate is the model sent
        row = geometry(stacked, byzantine, sent[-1] if kept else flat(out[0]), sent[-1])
        rows.append({"round": server_round, **row})
        return out

    strategy.configure_train, strategy.aggregate_train = sending, observed
    result = harness.train(config, cell.nodes, strategy, cell.rounds, cell.seed)
    return rows, result["accuracy"]


def blocks(rows: list[dict], accuracy: list[float], size: int) -> list[str]:
    """A markdown table: each column's mean per ``size`` rounds, and the accuracy at
    each block's end."""
    lines = [
        "| rounds | " + " | ".join(COLUMNS) + " | accuracy % |",
        "|---" * (len(COLUMNS) + 2) + "|",
    ]
    for start in range(0, len(rows), size):
        block = rows[start : start + size]
        means = [statistics.fmean(r[c] for r in block) for c in COLUMNS]
        end = block[-1]["round"]
        lines.append(
            f"| {block[0]['round']}-{end} | "
            + " | ".join(f"{m:.3f}" for m in means)
            + f" | {100 * accuracy[end]:.1f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paper", choices=papers.PAPERS, default="ctma")
    parser.add_argument("--rule", required=True)
    parser.add_argument("--setting", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--rounds", type=int, default=None, help="the cell's by default")
    parser.add_argument("--run-config", default="", help="overrides of the cell's config")
    parser.add_argument("--block", type=int, default=100)
    parser.add_argument("--out", type=Path, default=papers.RESULTS / "papers" / "geometry")
    args = parser.parse_args(argv)
    cells = papers.protocol(args.paper, [args.seed], args.quick)
    matches = [c for c in cells if (c.rule, c.setting) == (args.rule, args.setting)]
    if not matches:
        parser.error(
            f"no cell of --paper {args.paper} has --rule {args.rule!r} and --setting "
            f"{args.setting!r}; they are: "
            + "; ".join(sorted({f"{c.rule!r} / {c.setting!r}" for c in cells}))
        )
    try:
        overrides = parse_overrides(args.run_config)
    except ValueError as error:
        parser.error(f"--run-config: {error}")
    config = tuple(sorted({**dict(matches[0].config), **overrides}.items()))
    cell = replace(matches[0], rounds=args.rounds or matches[0].rounds, config=config)
    rows, accuracy = trace(cell, args.dataset, args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    title = f"{args.rule} {args.setting} seed {args.seed} {cell.rounds} rounds {args.run_config}"
    name = re.sub(r"[^a-z0-9.]+", "-", title.strip().lower())
    path = args.out / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = blocks(rows, accuracy, args.block)
    print(f"{args.rule}, {args.setting}, seed {args.seed} ({path}):", *lines, sep="\n")
    return lines


if __name__ == "__main__":
    main()
