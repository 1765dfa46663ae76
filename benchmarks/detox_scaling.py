"""DETOX at scale: one aggregation's seconds against flat Multi-Krum and Bulyan as n grows.

The DETOX paper (Rajput et al. 2019) claims a per-iteration cost "nearly linear in n"
and large speed-ups over flat robust aggregation in the regime of hundreds of nodes.
Each (rule, n) runs in a fresh process on the same updates
(:func:`aggregation_speed.detox_case`: groups of r = 3, honest members equal, the
largest f that Bulyan and DETOX's second stage accept), a 1M-parameter model by
default; the median of ``--repeats`` calls after one untimed call. Rows go to
``benchmarks/results/detox_scaling_<device>.jsonl`` (a rerun skips those done); the
report, ``detox_scaling_<device>.md`` and ``.png``, gives the seconds, DETOX's speed-up
per n (the verdict per n: faster or not) and each rule's log-log slope of seconds
against n (1: linear, 2: quadratic).

    python -m benchmarks.detox_scaling                 # n = 45 99 201 501
    python -m benchmarks.detox_scaling --n 45 99 --p 100000
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

from benchmarks.harness import RESULTS, ROOT


def one(name: str, n: int, p: int, device: str, repeats: int) -> dict:
    """Time ``name`` at ``n`` in this process (the child's side)."""
    import torch

    from benchmarks import aggregation_speed as speed

    x, f, groups = speed.detox_case(n, p, torch.device(device))
    speed.time_detox_case(name, x, f, groups, 1)  # first call: allocations, kernels
    return {
        "rule": name,
        "n": n,
        "p": p,
        "f": f,
        "seconds": speed.time_detox_case(name, x, f, groups, repeats),
    }


def slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of log(seconds) against log(n)."""
    xs = [math.log(n) for n, _ in points]
    ys = [math.log(s) for _, s in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )


NEARLY_LINEAR = 1.25
"""The largest log-log slope we read as "nearly linear in n"."""


def lines(rows: list[dict], device: str) -> list[str]:
    """The seconds per rule and n, DETOX's speed-up over each flat peer with the verdict
    per n, each rule's log-log slope, and the two claims' verdicts."""
    from benchmarks.aggregation_speed import DETOX_BUDGET, DETOX_VERSUS

    seconds = {(r["rule"], r["n"]): r["seconds"] for r in rows}
    sizes = sorted({r["n"] for r in rows})
    out = [
        f"DETOX at scale ({device}, p = {rows[0]['p']:,}, one aggregation, each in its "
        "own process):",
        "",
        "| n | f | "
        + " | ".join(f"{name} s" for name in DETOX_VERSUS)
        + " | multi-krum / detox | bulyan / detox | verdict |",
        "|---:|---:|" + "---:|" * len(DETOX_VERSUS) + "---:|---:|---|",
    ]
    within: dict[int, str] = {}
    for n in sizes:
        parts = [seconds.get((name, n)) for name in ("detox (r=3)", *DETOX_BUDGET)]
        if None not in parts:
            detox, mean_pass, stage2 = parts
            budget = 3 * mean_pass + stage2
            within[n] = f"{detox:.3f} s vs {budget:.3f} s ({detox / budget:.2f}x)"
    faster_at: dict[int, bool] = {}
    beats: dict[str, list[str]] = {"multi-krum": [], "bulyan": []}
    for n in sizes:
        f = next(r["f"] for r in rows if r["n"] == n)
        detox = seconds.get(("detox (r=3)", n))
        row = [seconds.get((name, n)) for name in DETOX_VERSUS]
        ratios = [
            "" if detox is None or (peer, n) not in seconds else seconds[(peer, n)] / detox
            for peer in ("multi-krum", "bulyan")
        ]
        faster_at[n] = all(isinstance(r, float) and r > 1 for r in ratios)
        for peer, ratio in zip(beats, ratios, strict=True):
            if isinstance(ratio, float) and ratio > 1:
                beats[peer].append(str(n))
        out.append(
            f"| {n} | {f} | "
            + " | ".join("" if s is None else f"{s:.3f}" for s in row)
            + " | "
            + " | ".join(r if isinstance(r, str) else f"{r:.1f}x" for r in ratios)
            + f" | {'DETOX faster than both' if faster_at[n] else 'DETOX not faster than both'} |"
        )
    out += ["", "Log-log slope of seconds against n (1: linear in n, 2: quadratic):", ""]
    slopes = {}
    for name in DETOX_VERSUS:
        points = [(n, seconds[(name, n)]) for n in sizes if (name, n) in seconds]
        if len(points) >= 2:
            slopes[name] = slope(points)
            out.append(f"- {name}: {slopes[name]:.2f}")
    linear = slopes.get("detox (r=3)")
    slower = [str(n) for n, ok in faster_at.items() if not ok]
    out += [
        "",
        "- DETOX's per-iteration cost nearly linear in n (log-log slope <= "
        f"{NEARLY_LINEAR}): "
        + (
            "cannot be tested here (fewer than two n)"
            if linear is None
            else f"{'holds' if linear <= NEARLY_LINEAR else 'does not hold'} here "
            f"(slope {linear:.2f})"
        ),
        "- DETOX aggregates faster than flat Multi-Krum and Bulyan at scale: "
        + (
            f"holds here at every n ({', '.join(map(str, sizes))})"
            if not slower
            else f"does not hold here at {len(slower)} of {len(sizes)} n "
            f"({', '.join(slower)}); faster than "
            + " and than ".join(
                f"{peer} at n = {', '.join(ns) or 'none'}" for peer, ns in beats.items()
            )
        ),
    ]
    if within:
        out += [
            "",
            "DETOX against the cost of its math, 3 mean passes over the n rows plus its "
            "second stage alone on the n / 3 winners (the budget; `mean pass` and "
            "`stage 2 on n/3` rows of the store):",
            "",
            *(f"- n = {n}: {text}" for n, text in within.items()),
        ]
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.aggregation_speed import DETOX_VERSUS

    figure, axes = plt.subplots(figsize=(6, 4))
    for name in DETOX_VERSUS:
        points = sorted((r["n"], r["seconds"]) for r in rows if r["rule"] == name)
        if len(points) >= 2:
            axes.loglog(*zip(*points, strict=True), marker="o", label=name)
    axes.set_xlabel("n (nodes)")
    axes.set_ylabel("seconds per aggregation")
    axes.grid(alpha=0.3, which="both")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def measure(sizes: list[int], p: int, device: str, repeats: int, out: Path) -> list[dict]:
    """Every (rule, n) row at ``p``, each timed in a fresh process; rows go to ``out``
    as they finish and a rerun skips those already there."""
    from benchmarks.aggregation_speed import DETOX_BUDGET, DETOX_VERSUS

    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    done = {(r["rule"], r["n"], r["p"]) for r in rows}
    for n in sizes:
        for name in [*DETOX_VERSUS, *DETOX_BUDGET]:
            if (name, n, p) in done:
                continue
            command = [sys.executable, "-m", "benchmarks.detox_scaling", "--one", name, str(n),
                       "--p", str(p)]  # fmt: skip
            command += ["--device", device, "--repeats", str(repeats)]
            result = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
            row = json.loads(result.stdout.strip().splitlines()[-1])
            print(row, flush=True)
            rows.append(row)
            with open(out, "a") as handle:
                handle.write(json.dumps(row) + "\n")
    return [r for r in rows if r["p"] == p and r["n"] in sizes]


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[45, 99, 201, 501])
    parser.add_argument("--p", type=int, default=1_000_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--one", nargs=2, metavar=("RULE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.p, args.device, args.repeats)))
        return Path()
    out = args.out or RESULTS / f"detox_scaling_{args.device.split(':')[0]}.jsonl"
    rows = measure(args.n, args.p, args.device, args.repeats, out)
    path = out.with_suffix(".md")
    path.write_text("\n".join(["# DETOX at scale", "", *lines(rows, args.device), ""]))
    plot(rows, path.with_suffix(".png"))
    print(path.read_text())
    return path


if __name__ == "__main__":
    main()
