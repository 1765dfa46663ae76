"""The seed papers' protocols, re-run on this project's code, with a verdict per claim.

The papers' data sets (CIFAR-10, MNIST) need a download; by default each protocol runs
on the bundled digits with the small CNN (``--dataset cifar10 --model resnet18`` takes
the papers' own, where the hub is reachable). Every cell is real federated training of
this project's ClientApp and strategies, in-process (:func:`benchmarks.harness.train`).

* ``fa`` (Almasi et al.; hamidralmasi/FlagAggregator ``run_exp.sh``,
  ``run_exp_augmented.sh``): 15 workers; none, or f in {1, 2, 3} workers sending
  uniform noise (the paper's ``random``); FA with r = 8, lambda = 0 in three forms (our
  default output, ``output="paper"``, one IRLS step) against Bulyan, Krum, median,
  MeaMed, trimmed mean and mean; then f = 3 honest workers on heavily warped data, no
  attacker. Claims: FA at least as accurate as every other robust rule; FA needs no
  more rounds (bytes) than they do to reach 90 % and 95 % of clean FedAvg's accuracy.
* ``ctma`` (Dahan & Levy; dahan198/synchronous-fault-tolerant-ml ``main.py``): 17
  workers, 8 Byzantine; label flip, sign flip, IPM (epsilon 0.5), ALIE; bases mean,
  median, geometric median, each alone, with CTMA, with NNM, with NNM + CTMA; one
  local step per round (batch 32) for 600 rounds; as their code, each worker's gradient
  norm clipped to 2.0 and mu^2-SGD (lr 0.1, beta_t = 1/t and gamma_t = 2/(t+1), both
  floored at 0.01; the server's AnyTime average x_t is the model) against SGD (lr 0.1)
  on the worker momentum ``m = 0.9 m + 0.1 g``.
  Claims: CTMA lifts cheap bases to NNM-level accuracy at a fraction of NNM's
  aggregation time; mu^2-SGD is at least as robust as momentum.
* ``tuning`` (the CTMA paper's "simplifies tuning"): the ctma protocol's learning rate
  from 0.01 to 1 (five values) for both optimizers, without an attacker and under sign
  flip. Claim: mu^2-SGD's accuracy varies less across the sweep.
* ``detox`` (Rajput et al.; hwang595/DETOX): r = 3; reverse gradient, constant -100,
  ALIE; second stage Multi-Krum, Bulyan, median against the same rules flat, at equal
  per-node compute; accuracy and aggregation seconds at n = 15 and n = 45; and one
  aggregation's seconds from 45 to 501 nodes (:mod:`detox_scaling`, 1M parameters).
  Claims: DETOX is at least as accurate as the flat rule and aggregates faster; its
  cost is nearly linear in n.

Cells go to ``benchmarks/results/papers/cells.jsonl`` (a rerun skips finished ones);
the report is ``benchmarks/results/papers.md``. ``--quick`` runs each protocol's
smallest cells (one seed, a few rounds; ``papers-quick``): a smoke run, not evidence.

    python -m benchmarks.papers [--paper fa|ctma|tuning|detox] [--quick] [--seeds 0 1 2]
        [--settings "alie, mu2-sgd" ...] [--workers 2] [--report]
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from benchmarks import detox_scaling, harness, robustness

RESULTS = harness.RESULTS
PAPERS = ("fa", "ctma", "tuning", "detox")


@dataclass(frozen=True)
class Cell:
    """One protocol cell: a rule (run-config keys) against an attack, on ``nodes``."""

    paper: str
    rule: str
    setting: str
    nodes: int
    f: int
    seed: int
    rounds: int
    config: tuple[tuple[str, Any], ...] = field(default=())

    @property
    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, default=str)


FA_RULES = {
    "FA (default output)": {"rule": "flag", "flag.subspace-dim": 8, "flag.lam": 0.0},
    "FA (paper output)": {"rule": "flag", "flag.subspace-dim": 8, "flag.output": "paper"},
    "FA (one IRLS step)": {"rule": "flag", "flag.subspace-dim": 8, "flag.max-iter": 1},
    "bulyan": {"rule": "bulyan"},
    "krum": {"rule": "krum"},
    "median": {"rule": "median"},
    "meamed": {"rule": "meamed"},
    "trimmed-mean": {"rule": "trimmed-mean"},
    "mean": {"rule": "mean"},
}
FA_PEERS = ("bulyan", "krum", "median", "meamed", "trimmed-mean")
"""The robust rules FA is compared with (the mean is the baseline, not a peer)."""
CTMA_BASES = ("mean", "median", "geomed")
"""The paper's bases but its trimmed mean: at f = 8 of 17 it trims 8 values from each side
of every coordinate and leaves the coordinate median (the one-seed run of the old
protocol gave identical numbers to the digit, cell by cell)."""
CTMA_ATTACKS = {
    "label-flip": {"attack": "label-flip"},
    "sign-flip": {"attack": "sign-flip"},
    "ipm": {"attack": "ipm", "ipm.epsilon": 0.5},
    "alie": {"attack": "alie"},
}
CTMA_OPTIMIZERS = {
    "mu2-sgd": {"optimizer": "mu2-sgd", "lr": 0.1, "mu2.beta-min": 0.01,
                "mu2.gamma-min": 0.01, "momentum": 0.0, "grad-clip": 2.0},
    # Their momentum is the worker's (it persists across rounds); a local optimizer's
    # momentum would restart with every one-step round.
    "sgd-momentum": {"optimizer": "sgd", "lr": 0.1, "momentum": 0.0,
                     "worker-momentum": 0.9, "grad-clip": 2.0},
}  # fmt: skip


def ctma_rule(base: str, variant: str) -> dict[str, Any]:
    """``base`` alone, under CTMA, after NNM, or NNM then CTMA."""
    config: dict[str, Any] = {"rule": "ctma", "ctma.base": base} if "CTMA" in variant else {}
    config.setdefault("rule", base)
    config["pre"] = "nnm" if "NNM" in variant else ""  # CTMA alone: not its default NNM
    return config


DETOX_ATTACKS = {
    "reverse gradient": {"attack": "sign-flip"},
    "constant -100": {"attack": "constant", "constant.c": -100.0},
    "alie": {"attack": "alie"},
}
DETOX_STAGES = ("multi-krum", "bulyan", "median")
DETOX_ROUNDS = {15: 20, 45: 60}
"""Rounds until the rows flatten: 45 nodes hold a third of the data each 15
do, and at 20 rounds they were still at 86-90 %."""
SCALE = ([45, 99, 201, 501], 1_000_000, 3, "detox_scaling_cpu.jsonl")
SCALE_QUICK = ([15, 30], 2000, 3, "papers-quick-detox_scaling.jsonl")
"""DETOX at scale (:mod:`detox_scaling`): node counts, parameters, timed repeats and the
rows' file (next to the cells' directory)."""
TUNING_LRS = (0.01, 0.03, 0.1, 0.3, 1.0)
TUNING_CONDITIONS = {
    "no attack": {"rule": "mean", "byzantine-nodes": 0},
    "sign-flip": {**ctma_rule("median", "NNM + CTMA"), **CTMA_ATTACKS["sign-flip"],
                  "byzantine-nodes": 8},
}  # fmt: skip
"""The learning-rate sweep (two decades) of both optimizers, without an attacker and
under the attack that separated them most in the one-seed protocol."""


def protocol(paper: str, seeds: list[int], quick: bool) -> list[Cell]:
    """The cells of one paper's protocol (the smallest one with ``quick``)."""
    cells: list[Cell] = []

    def add(label, setting, nodes, f, rounds, **config):
        for seed in seeds:
            items = tuple(sorted(config.items()))
            cells.append(Cell(paper, label, setting, nodes, f, seed, rounds, items))

    if paper == "fa":
        rounds = 3 if quick else 20
        # quick: FA, one peer and the mean (clean FedAvg: the rounds-to-target reference)
        rules = ["FA (default output)", "median", "mean"] if quick else list(FA_RULES)
        for f in (0, 1) if quick else (0, 1, 2, 3):
            for rule in rules:
                # no attack: the rules configured for the protocol's largest f
                add(rule, f"random, f={f}" if f else "no attack", 15, f or 3, rounds,
                    **FA_RULES[rule], attack="random", **{"byzantine-nodes": f})  # fmt: skip
        if not quick:
            for rule in rules:
                add(rule, "augmented, f=3 honest", 15, 3, rounds, **FA_RULES[rule],
                    **{"byzantine-nodes": 0, "heavy-augment": "warp",
                       "heavy-augment-nodes": "0,1,2"})  # fmt: skip
    elif paper == "ctma":
        # one-step rounds until the clean rows flatten: both optimizers gain < 1 point
        # over the last 100 of 600 (mu^2-SGD's x_t 95.3 -> 96.9, momentum 96.9 -> 97.2)
        rounds = 5 if quick else 600
        for optimizer, opt in list(CTMA_OPTIMIZERS.items())[: 1 if quick else 2]:
            if not quick:
                add("mean", f"no attack, {optimizer}", 17, 0, rounds, rule="mean", **opt,
                    **{"local-steps": 1, "byzantine-nodes": 0})  # fmt: skip
            for attack, spec in list(CTMA_ATTACKS.items())[: 1 if quick else 4]:
                for base in CTMA_BASES[: 1 if quick else 3]:
                    for variant in ("alone", "CTMA", "NNM", "NNM + CTMA")[: 2 if quick else 4]:
                        rule = base if variant == "alone" else f"{base} + {variant}"
                        add(rule, f"{attack}, {optimizer}", 17, 8, rounds,
                            **ctma_rule(base, variant), **spec, **opt, **{"local-steps": 1,
                            "byzantine-nodes": 8})  # fmt: skip
    elif paper == "tuning":
        rounds = 5 if quick else 600
        for optimizer, opt in CTMA_OPTIMIZERS.items():
            for condition, spec in list(TUNING_CONDITIONS.items())[: 1 if quick else 2]:
                for lr in TUNING_LRS[1:3] if quick else TUNING_LRS:
                    add(f"lr {lr}", f"{condition}, {optimizer}", 17, spec["byzantine-nodes"],
                        rounds, **{**opt, **spec, "lr": lr, "local-steps": 1})  # fmt: skip
    elif paper == "detox":
        for nodes in (15,) if quick else (15, 45):
            f, rounds = nodes // 5, 3 if quick else DETOX_ROUNDS[nodes]
            for attack, spec in list(DETOX_ATTACKS.items())[: 1 if quick else 3]:
                for stage in DETOX_STAGES[: 1 if quick else 3]:
                    common = {**spec, "byzantine-nodes": f}
                    add(f"DETOX({stage})", f"{attack}, n={nodes}", nodes, f, rounds,
                        rule="detox", **{"detox.stage2": stage, "detox.equal-compute": True,
                        "detox.stage2-pre": "bucketing" if stage == "median" else ""},
                        **common)  # fmt: skip
                    add(f"flat {stage}", f"{attack}, n={nodes}", nodes, f, rounds,
                        rule=stage, **common)  # fmt: skip
    else:
        raise ValueError(f"--paper {paper!r} is not one of {PAPERS}")
    return cells


def cell_config(cell: Cell, dataset: str, model: str) -> dict[str, Any]:
    """The run config of ``cell``: the robustness grid's defaults under the cell's own."""
    config = robustness.run_config(robustness.Cell("mean (FedAvg)", "none", 0.2, "iid", 0, 1))
    config.update(
        {
            "num-byzantine": cell.f,
            "seed": cell.seed,
            "dataset": dataset,
            "model": model,
            "min-available-nodes": cell.nodes,
            **dict(cell.config),
        }
    )
    return config


def run_cell(cell: Cell, dataset: str, model: str) -> dict[str, Any]:
    from flwr_flag import strategy_from_config

    config = cell_config(cell, dataset, model)
    needs = harness.cannot_run_rule(config, cell.nodes, cell.f)
    if needs is not None:
        return {**asdict(cell), "key": cell.key, "accuracy": [], "na": needs}
    strategy = strategy_from_config(config)
    return {
        **asdict(cell),
        "key": cell.key,
        **harness.train(config, cell.nodes, strategy, cell.rounds, cell.seed),
    }


class Summary(NamedTuple):
    """A rule's cell over its seeds: final accuracy's mean, std and worst seed, and the
    mean seconds of one aggregation."""

    mean: float
    std: float
    seconds: float
    worst: float

    @classmethod
    def of(cls, runs: list[dict[str, Any]]) -> Summary:
        """The summary of one cell's runs (its seeds)."""
        finals = [r["accuracy"][-1] for r in runs]
        std = statistics.stdev(finals) if len(finals) > 1 else 0.0
        seconds = statistics.mean(r["aggregation_seconds"] for r in runs)
        return cls(statistics.mean(finals), std, seconds, min(finals))


def table(rows: list[dict[str, Any]], paper: str) -> list[str]:
    """Final accuracy (mean ± std over seeds and the worst seed; the value alone for
    one seed) and aggregation seconds, rule x setting, then how many seeds the cells
    have."""
    mine = [r for r in rows if r["paper"] == paper]
    settings = list(dict.fromkeys(r["setting"] for r in mine))
    rules = list(dict.fromkeys(r["rule"] for r in mine))
    lines = ["| rule | " + " | ".join(settings) + " |", "|---|" + "---:|" * len(settings)]
    seeds: collections.Counter[int] = collections.Counter()
    for rule in rules:
        texts = []
        for setting in settings:
            runs = [r for r in mine if r["rule"] == rule and r["setting"] == setting]
            if not runs:
                texts.append("")
                continue
            seeds[len(runs)] += 1
            if "na" in runs[0]:
                texts.append(f"n/a ({runs[0]['na']})")
            elif any(r.get("diverged") for r in runs):
                texts.append("diverged")
            else:
                cell = Summary.of(runs)
                spread = f" ± {100 * cell.std:.1f}, worst {100 * cell.worst:.1f}"
                texts.append(
                    f"{100 * cell.mean:.1f}{spread if len(runs) > 1 else ''} "
                    f"({cell.seconds * 1000:.0f} ms)"
                )
        lines.append(f"| {rule} | " + " | ".join(texts) + " |")
    counts = ", ".join(f"{k} in {seeds[k]}" for k in sorted(seeds, reverse=True))
    return [*lines, "", f"Seeds per cell: {counts} cells."]


def summary(rows: list[dict[str, Any]], paper: str) -> dict[tuple[str, str], Summary]:
    """``(rule, setting)`` -> its :class:`Summary`, for the cells that trained (no
    ``n/a``, not diverged)."""
    out = {}
    # in protocol order (a set's would change with the hash seed, and the report with it)
    for key in dict.fromkeys((r["rule"], r["setting"]) for r in rows if r["paper"] == paper):
        runs = [r for r in rows if r["paper"] == paper and (r["rule"], r["setting"]) == key]
        if not any("na" in r or r.get("diverged") for r in runs):
            out[key] = Summary.of(runs)
    return out


def sweep_range(rows: list[dict[str, Any]], setting: str) -> float | None:
    """Max minus min over the learning rates of the mean final accuracy (a diverged run
    counts as what it scored, 0); None until ``setting`` has every rate of the sweep
    (every rate any tuning row has)."""
    tuning = [r for r in rows if r["paper"] == "tuning"]
    finals: dict[str, list[float]] = {lr: [] for lr in dict.fromkeys(r["rule"] for r in tuning)}
    for r in tuning:
        if r["setting"] == setting:
            finals[r["rule"]].append(r["accuracy"][-1])
    if len(finals) < 2 or not all(finals.values()):
        return None
    means = [statistics.mean(values) for values in finals.values()]
    return max(means) - min(means)


TARGETS = (0.90, 0.95)
"""FA's communication claim: rounds to reach these fractions of clean FedAvg's final
accuracy."""


def rounds_to(curve: list[float], target: float) -> float:
    """The first round whose model reaches ``target`` (``curve[0]`` is the initial
    model's); infinite if none does."""
    return next((r for r, a in enumerate(curve) if r and a >= target), math.inf)


def reference_curves(rows: list[dict[str, Any]], paper: str, points: int = 6) -> list[str]:
    """The clean rows' accuracy (mean over seeds) at ``points`` evenly spaced rounds:
    where they flatten is where the protocol's round count comes from."""
    clean = [r for r in rows if r["paper"] == paper and r["setting"].startswith("no attack")]
    if not clean:
        return []
    last = min(len(r["accuracy"]) for r in clean) - 1
    marks = [round(last * (i + 1) / points) for i in range(points)]
    lines = [
        "Clean reference curves (accuracy % by round, mean over seeds):",
        "",
        "| rule, setting | " + " | ".join(str(m) for m in marks) + " |",
        "|---|" + "---:|" * points,
    ]
    for key in dict.fromkeys((r["rule"], r["setting"]) for r in clean):
        runs = [r for r in clean if (r["rule"], r["setting"]) == key]
        means = [100 * statistics.mean(r["accuracy"][m] for r in runs) for m in marks]
        lines.append(f"| {key[0]}, {key[1]} | " + " | ".join(f"{a:.1f}" for a in means) + " |")
    return lines


def parameters(dataset: str, model: str) -> int:
    from clients.data import load_test
    from clients.models import build_model

    test = load_test(dataset)
    net = build_model(model, tuple(test.x.shape[1:]), test.num_classes)
    return sum(t.numel() for t in net.parameters())


def communication(rows: list[dict[str, Any]], dataset: str, model: str) -> list[str]:
    """Rounds (mean ± std over seeds) and megabytes for each FA-protocol rule to reach
    each of :data:`TARGETS` of clean FedAvg's final accuracy, and the verdict: every FA
    form needs no more rounds than every other robust rule (a round's tolerance)."""
    fa = [r for r in rows if r["paper"] == "fa"]
    clean = [r["accuracy"][-1] for r in fa if (r["rule"], r["setting"]) == ("mean", "no attack")]
    if not clean:
        return []
    reference = statistics.mean(clean)
    nodes = fa[0]["nodes"]
    megabytes = 2 * nodes * parameters(dataset, model) * 4 / 1e6  # float32 down and up
    settings = list(dict.fromkeys(r["setting"] for r in fa))
    rules = list(dict.fromkeys(r["rule"] for r in fa))
    rounds: dict[tuple[str, str, float], list[float]] = {}
    for r in fa:
        for target in TARGETS:
            key = (r["rule"], r["setting"], target)
            rounds.setdefault(key, []).append(rounds_to(r["accuracy"], target * reference))

    def text(values: list[float]) -> str:
        if math.inf in values:
            return f"not reached ({len(values) - values.count(math.inf)}/{len(values)})"
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.1f} ± {std:.1f}"

    lines = [
        f"Rounds to {' / '.join(f'{t:.0%}' for t in TARGETS)} of clean FedAvg's final "
        f"accuracy ({100 * reference:.1f} %) and, in parentheses, the megabytes moved to "
        f"the last target: a round moves {megabytes:.2f} MB ({nodes} nodes, the model "
        "down and the update up in float32, the same for every rule); "
        '"not reached (k/n)": k of n seeds reached it within the rounds run.',
        "",
        "| rule | " + " | ".join(settings) + " |",
        "|---|" + "---:|" * len(settings),
    ]
    for rule in rules:
        cells = []
        for setting in settings:
            per = [rounds.get((rule, setting, t), []) for t in TARGETS]
            last = statistics.mean(per[-1]) if per[-1] else math.inf
            moved = "" if math.isinf(last) else f" ({last * megabytes:.1f} MB)"
            cells.append(" / ".join(text(v) for v in per) + moved if per[-1] else "")
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    lines.append("")
    for form in [r for r in rules if r.startswith("FA")]:
        checks = []
        for setting in settings:
            for target in TARGETS:
                ours = rounds.get((form, setting, target))
                for other in FA_PEERS:
                    theirs = rounds.get((other, setting, target))
                    if ours and theirs:
                        a, b = statistics.mean(ours), statistics.mean(theirs)
                        checks.append((f"{setting}, {target:.0%}, vs {other}", a <= b + 1))
        claim = (
            f"{form} reaches each target in no more rounds than every other robust rule "
            "(within one round)"
        )
        lines.append(verdict(claim, checks))
    return lines


NOISE = 0.01
"""Accuracy differences below 1 point (3-4 of the 360 test images) count as ties: the
robustness study's seeds move single cells by about that much."""


def at_least(a: Summary, b: Summary) -> bool:
    """``a``'s accuracy is not below ``b``'s beyond their seeds' spread (one std each,
    at least ``NOISE``), in the mean and in the worst seed (one ``NOISE`` more: the
    worst of three seeds moves more than their mean). A rule whose mean holds while
    one seed in three collapses is not as robust."""
    spread = a.std + b.std
    return a.mean >= b.mean - max(spread, NOISE) and a.worst >= b.worst - spread - NOISE


def paired(s: dict, settings: list[str], names, ours, theirs) -> tuple[list, list]:
    """Rule ``ours(name)`` against ``theirs(name)`` in every setting where both ran:
    ``(where, not less accurate)`` and ``(where, aggregates faster)`` pairs."""
    accuracy, speed = [], []
    for setting in settings:
        for name in names:
            a, b = s.get((ours(name), setting)), s.get((theirs(name), setting))
            if a and b:
                accuracy.append((f"{name}, {setting}", at_least(a, b)))
                speed.append((f"{name}, {setting}", a.seconds < b.seconds))
    return accuracy, speed


def verdict(claim: str, checks: list[tuple[str, bool]]) -> str:
    """``- claim: holds here`` / ``does not hold here in k/n: where`` / ``cannot be
    tested here`` from ``(where, held)`` checks."""
    if not checks:
        return f"- {claim}: cannot be tested here (its cells were not run)"
    failed = [where for where, ok in checks if not ok]
    if not failed:
        return f"- {claim}: holds here ({len(checks)} comparisons)"
    return f"- {claim}: does not hold here in {len(failed)}/{len(checks)}: {'; '.join(failed)}"


def verdicts(rows: list[dict[str, Any]], paper: str) -> list[str]:
    """One line per claim: holds here / does not hold here (where) / cannot be tested."""
    s = summary(rows, paper)
    settings = sorted({k[1] for k in s})
    lines = []
    if paper == "fa":
        for form in [r for r in FA_RULES if r.startswith("FA")]:
            checks = [
                (f"{setting} vs {other}", at_least(s[(form, setting)], s[(other, setting)]))
                for setting in settings
                for other in FA_PEERS
                if (form, setting) in s and (other, setting) in s
            ]
            lines.append(verdict(f"{form} at least as accurate as every other robust rule", checks))
    elif paper == "ctma":
        accuracy, speed = paired(
            s, settings, CTMA_BASES, lambda b: f"{b} + CTMA", lambda b: f"{b} + NNM"
        )
        momentum = []
        for rule, setting in s:
            if setting.endswith("mu2-sgd") and not setting.startswith("no attack"):
                other = (rule, setting.replace("mu2-sgd", "sgd-momentum"))
                if other in s:
                    momentum.append((f"{rule}, {setting}", at_least(s[(rule, setting)], s[other])))
        lines += [
            verdict("CTMA lifts a base to NNM-level accuracy", accuracy),
            verdict("CTMA aggregates faster than NNM", speed),
            verdict("mu2-SGD at least as robust as SGD on worker momentum 0.9", momentum),
        ]
    elif paper == "tuning":
        checks = []
        for condition in TUNING_CONDITIONS:
            spread = {opt: sweep_range(rows, f"{condition}, {opt}") for opt in CTMA_OPTIMIZERS}
            if None not in spread.values():
                mu2, momentum = spread["mu2-sgd"], spread["sgd-momentum"]
                where = f"{condition}: range {100 * mu2:.1f} vs {100 * momentum:.1f} points"
                checks.append((where, mu2 <= momentum + NOISE))
        claim = "mu2-SGD's final accuracy varies less across the learning rates than momentum's"
        lines.append(verdict(claim, checks))
    else:
        accuracy, speed = paired(
            s, settings, DETOX_STAGES, lambda st: f"DETOX({st})", lambda st: f"flat {st}"
        )
        lines += [
            verdict("DETOX at least as accurate as the flat rule (equal compute)", accuracy),
            verdict("DETOX aggregates faster than the flat rule", speed),
        ]
    return lines


def report(
    rows: list[dict[str, Any]],
    papers: list[str],
    quick: bool,
    path: Path,
    extra: dict[str, list[str]],
) -> Path:
    """The report: per paper its table, its verdicts, the ``extra`` lines measured
    outside the cells (FA's rounds to target, DETOX at scale); what they mean is
    written by hand in ``benchmarks/results/README.md``."""
    lines = [
        "# The seed papers' protocols on this code",
        "",
        f"Made by `python -m benchmarks.papers` at commit {harness.commit()}.",
        "",
        "Final test accuracy in % (mean ± std over the seeds run, and the worst seed; "
        "each seed's row is in `papers/cells.jsonl`) and, in parentheses, the mean "
        "seconds of one `aggregate_train`. A claim that one rule is at least as "
        "accurate as another must hold in the mean and in the worst seed, each within "
        "the seeds' spread. "
        + ("**Quick smoke run: a few rounds, one seed; not evidence.**" if quick else ""),
        "",
    ]
    for paper in papers:
        lines += [f"## {paper}", "", *table(rows, paper), "", *verdicts(rows, paper)]
        lines += [*([""] if extra.get(paper) else []), *extra.get(paper, []), ""]
        lines += [f"Reading: `benchmarks/results/README.md`, {paper}.", ""]
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paper", choices=PAPERS, action="append")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--settings", nargs="*", default=None, help="run only the cells of these settings"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="cells directory; the report is OUT.md"
    )
    parser.add_argument(
        "--report", action="store_true", help="train nothing: the report of the stored cells"
    )
    args = parser.parse_args(argv)
    papers = args.paper or list(PAPERS)
    seeds = args.seeds[:1] if args.quick else args.seeds
    cells = [c for p in papers for c in protocol(p, seeds, args.quick)]
    if args.settings is not None:
        cells = [c for c in cells if c.setting in args.settings]
    if args.report:
        cells = []
    out = args.out or RESULTS / ("papers-quick" if args.quick else "papers")
    out.mkdir(parents=True, exist_ok=True)
    store = out / "cells.jsonl"
    done = {}
    if store.exists():
        done = {
            json.loads(line)["key"]: json.loads(line) for line in store.read_text().splitlines()
        }
    # one seed of every cell first, so that a partial run covers the whole protocol
    todo = sorted((c for c in cells if c.key not in done), key=lambda c: c.seed)
    run_one = functools.partial(run_cell, dataset=args.dataset, model=args.model)
    for cell, row in harness.train_cells(todo, run_one, store, args.workers, len(cells)):
        done[cell.key] = row
    # The report covers every paper's current protocol, over every seed in the store, in
    # protocol order (cells finish in any order); rows of superseded protocols (other
    # rounds, other bases) stay in the store but not in the report.
    stored = sorted({r["seed"] for r in done.values()} | set(seeds))
    current = [c.key for p in PAPERS for c in protocol(p, stored, args.quick)]
    rows = [done[key] for key in current if key in done]
    present = [p for p in PAPERS if any(r["paper"] == p for r in rows)]
    extra = {
        "fa": communication(rows, args.dataset, args.model),
        "ctma": reference_curves(rows, "ctma"),
    }
    if "detox" in present:
        sizes, p, repeats, scale = SCALE_QUICK if args.quick else SCALE
        scale_rows = detox_scaling.measure(sizes, p, "cpu", repeats, out.parent / scale)
        extra["detox"] = detox_scaling.lines(scale_rows, "cpu")
    path = report(rows, present, args.quick, out.with_suffix(".md"), extra)
    print(path.read_text())
    return path


if __name__ == "__main__":
    main()
