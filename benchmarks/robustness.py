"""Robustness study: every rule against every attack, with Flower's built-ins as peers.

Each cell is a real federated training run of this project's ServerApp strategy and
ClientApp, in-process (``InProcessGrid``, no Ray): 15 nodes (the FA paper's workers),
bundled digits, the small CNN, centralized test accuracy per round. The grid:

* rules: ours (``mean`` = FedAvg on updates, Krum, Multi-Krum, Bulyan, median, trimmed
  mean, geometric median, centered clipping, FA, CTMA over mean / median / geomed / FA,
  NNM + median, DETOX) and, unchanged, Flower's ``Krum``, ``FedMedian``,
  ``FedTrimmedAvg`` and ``Bulyan``;
* attacks: none, sign-flip, label-flip, gaussian, random, ALIE, IPM, min-max, NaN, and
  ``heavy-augment`` (no attacker: the FA paper's honest nodes with heavily augmented
  data, as many as the Byzantine fraction);
* Byzantine fraction 10 / 20 / 30 % of 15 nodes (f = 1, 3, 4); IID and Dirichlet(0.5);
  3 seeds.

Results are appended per cell to ``--out/cells.jsonl`` (default
``benchmarks/results/robustness/default``) and a rerun skips finished cells
(resumable). At the end it writes ``robustness.md`` (final accuracy mean +- std per
rule x attack, per fraction and partitioning, the clean FedAvg reference, the best rule
per column in bold), ``robustness-heatmap.png`` and ``robustness-curves.png`` (accuracy
per round under the hardest attacks): in ``benchmarks/results/`` for the default grid,
in ``--out`` otherwise. ``--quick`` is a small grid for a first look.

    python -m benchmarks.robustness            # the default grid
    python -m benchmarks.robustness --quick
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.harness import (
    app_config,
    cannot_run_rule,
    flower_cannot_run,
    flower_peer,
    load,
    pending,
    train,
    train_cells,
)

RESULTS = harness.RESULTS / "robustness"
NODES = 15

OURS = {
    "mean (FedAvg)": ("mean", {}),
    "krum": ("krum", {}),
    "multi-krum": ("multi-krum", {}),
    "bulyan": ("bulyan", {}),
    "median": ("median", {}),
    "trimmed-mean": ("trimmed-mean", {}),
    "geomed": ("geomed", {}),
    "centered-clipping": ("centered-clipping", {}),
    "FA": ("flag", {}),
    "CTMA(mean)": ("ctma", {"ctma.base": "mean", "pre": ""}),
    "CTMA(median)": ("ctma", {"ctma.base": "median", "pre": ""}),
    "CTMA(geomed)": ("ctma", {"ctma.base": "geomed", "pre": ""}),
    "CTMA(FA)": ("ctma", {"ctma.base": "flag", "pre": ""}),
    "NNM + median": ("median", {"pre": "nnm"}),
    "DETOX": ("detox", {}),
}
PEERS = ("flower Krum", "flower FedMedian", "flower FedTrimmedAvg", "flower Bulyan")
ATTACKS = (
    "none",
    "sign-flip",
    "label-flip",
    "gaussian",
    "random",
    "alie",
    "ipm",
    "min-max",
    "nan",
    "heavy-augment",
)
FRACTIONS = (0.1, 0.2, 0.3)
PARTITIONINGS = ("iid", "dirichlet")
QUICK = {
    "rules": ["mean (FedAvg)", "FA", "CTMA(geomed)", "median", "flower Krum"],
    "attacks": ["none", "sign-flip", "alie"],
    "fractions": [0.2],
    "partitionings": ["iid"],
    "seeds": [0],
}
# Standardised inputs, 4 local epochs of SGD (lr 0.1, momentum 0.9), 20 rounds: clean
# FedAvg on 15 IID nodes reaches 95 % by round 9 and is flat from round 12 (96-97 %).
TRAINING = {
    "model": "cnn",
    "local-epochs": 4,
    "batch-size": 32,
    "lr": 0.1,
    "momentum": 0.9,
    "fraction-evaluate": 0.0,
    "device": "cpu",
    "detox.equal-compute": True,
}
ROUNDS = 20
SECONDS_PER_CELL = 12.0  # measured here, one thread, no attacker; colluders train 5x
COLLUDING = ("alie", "ipm", "min-max")


@dataclass(frozen=True)
class Cell:
    rule: str
    attack: str
    fraction: float
    partitioning: str
    seed: int
    rounds: int

    @property
    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @property
    def f(self) -> int:
        return int(self.fraction * NODES)


def run_config(cell: Cell) -> dict[str, Any]:
    config = app_config()
    config.update(TRAINING)
    config.update(
        {
            "num-byzantine": cell.f,
            "seed": cell.seed,
            "partitioning": cell.partitioning,
            "num-server-rounds": cell.rounds,
        }
    )
    if cell.attack == "heavy-augment":
        config.update(
            {
                "byzantine-nodes": 0,
                "heavy-augment": "warp",
                "heavy-augment-nodes": ",".join(map(str, range(cell.f))),
            }
        )
    elif cell.attack == "none":
        config["byzantine-nodes"] = 0
    else:
        config.update({"byzantine-nodes": cell.f, "attack": cell.attack})
    if cell.rule in OURS:
        rule, extra = OURS[cell.rule]
        config.update({"rule": rule, **extra})
    return config


def strategy_for(cell: Cell, config: dict[str, Any]):
    from flwr_flag import strategy_from_config

    if cell.rule in PEERS:
        common = {"fraction_evaluate": 0.0, "min_available_nodes": NODES}
        return flower_peer(cell.rule, cell.f, NODES, **common)
    return strategy_from_config(config)


def cannot_run(cell: Cell) -> str | None:
    """Why the rule cannot run at this ``f`` with ``NODES`` nodes (``None``: it can):
    such a cell is reported ``n/a``, not trained."""
    if cell.rule in PEERS:
        return flower_cannot_run(cell.rule, NODES, cell.f)
    rule, extra = OURS[cell.rule]
    return cannot_run_rule({**run_config(cell), "rule": rule, **extra}, NODES, cell.f)


def run_cell(cell: Cell) -> dict[str, Any]:
    """One training run of the grid; returns the cell with its accuracy per round."""
    config = run_config(cell)
    return {
        **asdict(cell),
        **train(config, NODES, strategy_for(cell, config), cell.rounds, cell.seed),
    }


def grid_cells(rules, attacks, fractions, partitionings, seeds, rounds) -> list[Cell]:
    """Every cell, seeds innermost-last so that a partial run covers every rule x attack
    with one seed first. ``none`` runs at each fraction: the rules are configured with
    that fraction's ``f`` even when nobody attacks."""
    return [
        Cell(rule, attack, fraction, partitioning, seed, rounds)
        for seed in seeds
        for partitioning in partitionings
        for fraction in fractions
        for attack in attacks
        for rule in rules
    ]


def run(cells: list[Cell], out: Path, workers: int) -> dict[str, dict[str, Any]]:
    store, done, todo = pending(cells, out, cannot_run)
    estimate = sum(SECONDS_PER_CELL * (2 if c.attack in COLLUDING else 1) for c in todo)
    print(
        f"{len(todo)} cells to train ({len(cells) - len(todo)} done or n/a); estimated "
        f"{estimate / workers / 3600:.1f} h with {workers} workers",
        flush=True,
    )
    for cell, row in train_cells(todo, run_cell, store, workers, len(cells)):
        done[cell.key] = row
    return {c.key: done[c.key] for c in cells}


@dataclass(frozen=True)
class Outcome:
    """What a rule x attack cell shows over its seeds: ``text`` when it has no number
    (``n/a (...)``, ``diverged``), else the final accuracies."""

    finals: tuple[float, ...] = ()
    text: str | None = None

    @property
    def mean(self) -> float:
        return statistics.mean(self.finals)

    @property
    def std(self) -> float:
        return statistics.stdev(self.finals) if len(self.finals) > 1 else 0.0


def outcomes(rows: Iterable[dict[str, Any]], fraction, partitioning) -> dict[tuple, Outcome]:
    """``(rule, attack)`` -> its :class:`Outcome` at this fraction and partitioning."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r["partitioning"] == partitioning and r["fraction"] == fraction:
            grouped.setdefault((r["rule"], r["attack"]), []).append(r)
    out = {}
    for key, runs in grouped.items():
        if any("na" in r for r in runs):
            out[key] = Outcome(text=f"n/a ({runs[0]['na']})")
        elif any(r.get("diverged") for r in runs):
            bad = sum(bool(r.get("diverged")) for r in runs)
            out[key] = Outcome(text=f"diverged ({bad}/{len(runs)} seeds)")
        else:
            out[key] = Outcome(tuple(r["accuracy"][-1] for r in runs))
    return out


def summary_table(
    rows: Iterable[dict[str, Any]], rules, attacks, fraction, partitioning
) -> list[str]:
    """Mean ± std per cell; the best of each column in bold; ``≈`` marks a cell whose
    one-std interval overlaps the best's (not distinguishable at these seeds)."""
    results = outcomes(rows, fraction, partitioning)
    best: dict[str, Outcome] = {}
    for (_, attack), outcome in results.items():
        if outcome.text is None and (attack not in best or outcome.mean > best[attack].mean):
            best[attack] = outcome
    lines = ["| rule | " + " | ".join(attacks) + " |", "|---|" + "---:|" * len(attacks)]
    for rule in rules:
        cells = []
        for attack in attacks:
            outcome = results.get((rule, attack))
            if outcome is None:
                cells.append("")
            elif outcome.text is not None:
                cells.append(outcome.text)
            else:
                text = f"{100 * outcome.mean:.1f} ± {100 * outcome.std:.1f}"
                top = best[attack]
                if outcome is top:
                    text = f"**{text}**"
                elif outcome.mean + outcome.std >= top.mean - top.std:
                    text = f"≈ {text}"
                cells.append(text)
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    return lines


CLAIMED = ("FA", "CTMA(mean)", "CTMA(median)", "CTMA(geomed)", "CTMA(FA)")
PEERS_COMPARED = ("flower Krum", "flower FedMedian")


def compare(ours: Outcome, theirs: Outcome) -> str:
    """``"above"`` / ``"below"`` when the one-std intervals are apart (a diverged peer is
    below any number), else ``"tied"``."""
    if theirs.text is not None:
        return "above" if theirs.text.startswith("diverged") else "tied"
    if ours.mean - ours.std > theirs.mean + theirs.std:
        return "above"
    if ours.mean + ours.std < theirs.mean - theirs.std:
        return "below"
    return "tied"


def claims(rows: list[dict[str, Any]], attacks, partitionings, fraction: float) -> list[str]:
    """The study's claims checked on its own numbers: FA and CTMA within 2 points of
    clean FedAvg under every attack, and above Flower's Krum and FedMedian in at least
    80 % of the attack x partitioning cells (each as its mean over the seeds run)."""
    lines = [f"## Claims at {round(fraction * 100)} % Byzantine", ""]
    for partitioning in partitionings:
        results = outcomes(rows, fraction, partitioning)
        clean = results.get(("mean (FedAvg)", "none"))
        if clean is None or clean.text is not None:
            continue
        for rule in CLAIMED:
            misses = [
                f"{a} {100 * (results[(rule, a)].mean - clean.mean):+.1f}"
                for a in attacks
                if (rule, a) in results
                and results[(rule, a)].text is None
                and results[(rule, a)].mean < clean.mean - 0.02
            ]
            verdict = "holds" if not misses else "does not hold: " + ", ".join(misses)
            lines.append(
                f"- {partitioning}, {rule} within 2 points of clean FedAvg "
                f"({100 * clean.mean:.1f} %) under every attack: {verdict}"
            )
    for rule in CLAIMED:
        for peer in PEERS_COMPARED:
            tally = {"above": 0, "tied": 0, "below": 0}
            for partitioning in partitionings:
                results = outcomes(rows, fraction, partitioning)
                for attack in attacks:
                    ours, theirs = results.get((rule, attack)), results.get((peer, attack))
                    if ours is not None and theirs is not None and not ours.text:
                        tally[compare(ours, theirs)] += 1
            total = sum(tally.values())
            if total:
                lines.append(
                    f"- {rule} above {peer} in {tally['above']}/{total} attack x partitioning "
                    f"cells ({100 * tally['above'] / total:.0f} %; claim: >= 80 %), tied "
                    f"(one-std intervals overlap) in {tally['tied']}, below in {tally['below']}"
                )
    return [*lines, ""]


def report(
    rows: list[dict[str, Any]],
    rules,
    attacks,
    fractions,
    partitionings,
    out: Path,
    rounds: int,
    seeds,
) -> Path:
    trained = [r for r in rows if "na" not in r]
    clean = [
        r["accuracy"][-1]
        for r in trained
        if r["rule"] == "mean (FedAvg)" and r["attack"] == "none" and r["partitioning"] == "iid"
    ]
    seconds = [r["seconds"] for r in trained if "seconds" in r]
    lines = [
        "# Robustness study",
        "",
        f"Made by `python -m benchmarks.robustness` at commit {harness.commit()}.",
        "",
        f"{NODES} nodes, bundled digits (standardised), small CNN, {rounds} rounds of "
        f"{TRAINING['local-epochs']} local epochs (SGD lr {TRAINING['lr']}, momentum "
        f"{TRAINING['momentum']}), seeds {list(seeds)}; final test accuracy in %, mean ± std "
        "over the seeds finished. Every rule gets the same data and compute per node per "
        "round; DETOX too (`detox.equal-compute`: a group member trains on a "
        "partition-sized shard, not on 1/groups of the data). Bold: best of the column; "
        "≈: within one std of the best; `n/a`: the rule cannot run at this f (left out "
        "of best); `diverged`: a non-finite model. Robust rules count each reply once.",
        "",
    ]
    if clean:
        lines.append(
            f"Reference: clean FedAvg (IID, no attack) {100 * statistics.mean(clean):.1f} % "
            f"({len(clean)} runs)."
        )
    if seconds:
        lines.append(
            f"Seconds per trained cell (one thread): median {statistics.median(seconds):.1f}, "
            f"max {max(seconds):.1f}; {len(seconds)} cells."
        )
    lines.append("")
    partial = []
    for partitioning in partitionings:
        for fraction in fractions:
            section = {
                (r["rule"], r["attack"])
                for r in rows
                if r["partitioning"] == partitioning and r["fraction"] == fraction
            }
            if len(section) < len(rules) * len(attacks):
                if section:  # begun, not one seed complete: no table of gaps
                    partial.append(
                        f"{round(fraction * 100)} % {partitioning} ({len(section)} of "
                        f"{len(rules) * len(attacks)} cells)"
                    )
                continue
            lines += [
                f"## {round(fraction * 100)} % Byzantine (f = {int(fraction * NODES)}), "
                f"{partitioning}",
                "",
            ]
            lines += [*summary_table(rows, rules, attacks, fraction, partitioning), ""]
    if partial:
        lines += [f"Begun but not shown (not one seed complete): {', '.join(partial)}.", ""]
    if 0.2 in fractions:
        lines += claims(rows, attacks, partitionings, 0.2)
    lines += ["Reading: `benchmarks/results/README.md`.", ""]
    path = out / "robustness.md"  # figures beside it: robustness-*.png
    path.write_text("\n".join(lines))
    fraction = fractions[len(fractions) // 2]
    plot_heatmap(rows, rules, attacks, fraction, partitionings[0], out / "robustness-heatmap.png")
    plot_curves(trained, rules, attacks, fraction, partitionings[0], out / "robustness-curves.png")
    return path


def _grid_values(rows, rules, attacks, fraction, partitioning):
    import numpy as np

    results = outcomes(rows, fraction, partitioning)
    values = np.full((len(rules), len(attacks)), np.nan)
    for i, rule in enumerate(rules):
        for j, attack in enumerate(attacks):
            outcome = results.get((rule, attack))
            if outcome is not None and outcome.text is None:
                values[i, j] = 100 * outcome.mean
    return values


def plot_heatmap(rows, rules, attacks, fraction, partitioning, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = _grid_values(rows, rules, attacks, fraction, partitioning)
    figure, axes = plt.subplots(figsize=(1.0 + 0.9 * len(attacks), 1.0 + 0.4 * len(rules)))
    image = axes.imshow(values, vmin=0, vmax=100, cmap="viridis", aspect="auto")
    axes.set_xticks(range(len(attacks)), attacks, rotation=45, ha="right")
    axes.set_yticks(range(len(rules)), rules)
    for i in range(len(rules)):
        for j in range(len(attacks)):
            if values[i, j] == values[i, j]:
                axes.text(
                    j,
                    i,
                    f"{values[i, j]:.0f}",
                    ha="center",
                    va="center",
                    color="white" if values[i, j] < 60 else "black",
                    fontsize=7,
                )
    figure.colorbar(image, label="final test accuracy (%)")
    axes.set_title(f"{round(fraction * 100)} % Byzantine, {partitioning}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_curves(rows, rules, attacks, fraction, partitioning, path: Path) -> None:
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = _grid_values(rows, rules, attacks, fraction, partitioning)
    mean_accuracy = {a: float(np.nanmean(values[:, j])) for j, a in enumerate(attacks)}
    hardest = sorted((a for a in attacks if a != "none"), key=mean_accuracy.get)[:3]
    figure, panels = plt.subplots(
        1, max(len(hardest), 1), figsize=(5 * max(len(hardest), 1), 4), squeeze=False
    )
    for axes, attack in zip(panels[0], hardest, strict=False):
        for rule in rules:
            curves = [
                r["accuracy"]
                for r in rows
                if r["rule"] == rule
                and r["attack"] == attack
                and r["fraction"] == fraction
                and r["partitioning"] == partitioning
            ]
            if curves:
                mean = [statistics.mean(c[k] for c in curves) for k in range(len(curves[0]))]
                axes.plot(range(len(mean)), mean, label=rule)
        axes.set_title(attack)
        axes.set_xlabel("round")
        axes.set_ylim(0, 1)
        axes.grid(alpha=0.3)
    panels[0][0].set_ylabel("test accuracy")
    if panels[0][-1].get_legend_handles_labels()[0]:
        panels[0][-1].legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rules", nargs="*", default=[*OURS, *PEERS])
    parser.add_argument("--attacks", nargs="*", default=list(ATTACKS))
    parser.add_argument("--fractions", type=float, nargs="*", default=list(FRACTIONS))
    parser.add_argument("--partitionings", nargs="*", default=list(PARTITIONINGS))
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--report-only", action="store_true", help="write the report from the cells finished so far"
    )
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    out = args.out or (RESULTS / ("quick" if args.quick else "default"))
    cells = grid_cells(
        args.rules, args.attacks, args.fractions, args.partitionings, args.seeds, args.rounds
    )
    if args.report_only:
        done = load(out / "cells.jsonl", Cell)
        rows = [done[c.key] for c in cells if c.key in done]
    else:
        rows = list(run(cells, out, args.workers).values())
    # The default grid's report is the study's: benchmarks/results/robustness.md.
    path = report(
        rows,
        args.rules,
        args.attacks,
        args.fractions,
        args.partitionings,
        out if args.out or args.quick else RESULTS.parent,
        args.rounds,
        args.seeds,
    )
    print(path.read_text())
    return path


if __name__ == "__main__":
    main()
