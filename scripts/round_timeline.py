"""Where a deployment round's seconds go, from the DEBUG logs of a loopback deployment.

    FLWR_LOG_LEVEL=DEBUG python scripts/deploy_local.py --nodes 2 --byzantine 0 \\
        --rounds 8 --run-config "model='mlp'" --work-dir /tmp/deploy
    python scripts/round_timeline.py /tmp/deploy/logs

``FLWR_LOG_LEVEL=DEBUG`` makes Flower stamp every log line with its time. A round is
cut into what one node does between two of the ServerApp's pushes (the k-th
``Runtime.PushMessages`` in ``superlink.log`` starts round k); each step is the time
between two marks of the SuperNode's log, and the table gives the median over rounds
2.. (round 1 pays one-time start-up) and over nodes:

========================  ==================================================================
step                      from -> to
========================  ==================================================================
message waits for pull    the ServerApp's push -> the SuperNode's ``Receiving``
pull                      ``Receiving`` -> ``Received successfully``
process spawn             ``Received successfully`` -> the new process's first log line
flwr-clientapp imports    that line -> ``Start `flwr-clientapp` process``
inputs and FAB            ``Start ...`` -> ``Loading ClientApp``
app import and training   ``Loading ClientApp`` -> the app's ``Runtime.PushMessages``
reply upload              that push -> ``Sent successfully``
server after last reply   the round's last ``Sent successfully`` -> the next push (the
                          ServerApp's poll, aggregation, evaluation, the next push)
========================  ==================================================================
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import re
import statistics
from pathlib import Path

STAMP = re.compile(r"(DEBUG|INFO|WARNING|ERROR)\s+(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
STEPS = (
    "message waits for pull",
    "pull",
    "process spawn",
    "flwr-clientapp imports",
    "inputs and FAB",
    "app import and training",
    "reply upload",
)
NODE_MARKS = (
    "Receiving:",
    "Received successfully",
    "DEBUG logs enabled",
    "Start `flwr-clientapp` process",
    "Loading ClientApp",
    "Runtime.PushMessages",
    "Sent successfully",
)
"""A node's marks in a round, in order; step i runs from the push (or mark i - 1) to
mark i. ``DEBUG logs enabled`` is the first line every Flower process logs at DEBUG."""


def events(path: Path) -> list[tuple[dt.datetime, str]]:
    """(time, message) of every time-stamped line of a Flower log."""
    found = []
    for line in path.read_text(errors="replace").splitlines():
        plain = ANSI.sub("", line)
        match = STAMP.search(plain)
        if match:
            stamp = dt.datetime.strptime(match.group(2), "%Y-%m-%d %H:%M:%S,%f")
            found.append((stamp, plain[match.end() :]))
    return found


def node_rounds(log: list[tuple[dt.datetime, str]]) -> list[list[dt.datetime]]:
    """The times of :data:`NODE_MARKS` for each round of one SuperNode's log: marks are
    taken in order, each after the one before it, a round per ``Receiving``."""
    rounds: list[list[dt.datetime]] = []
    for stamp, message in log:
        if NODE_MARKS[0] in message:
            rounds.append([stamp])
        elif rounds and len(rounds[-1]) < len(NODE_MARKS):
            if NODE_MARKS[len(rounds[-1])] in message:
                rounds[-1].append(stamp)
    return [marks for marks in rounds if len(marks) == len(NODE_MARKS)]


def timeline(logs: Path) -> dict[str, float]:
    """Median seconds of each step (:data:`STEPS`, then the server's share and the round)
    over rounds 2.. and nodes."""
    pushes = [t for t, m in events(logs / "superlink.log") if "Runtime.PushMessages" in m]
    nodes = [node_rounds(events(path)) for path in sorted(logs.glob("supernode-*.log"))]
    rounds = min(len(pushes), *(len(n) for n in nodes))
    steps: dict[str, list[float]] = {step: [] for step in (*STEPS, "server after last reply")}
    for r in range(1, rounds - 1):
        for node in nodes:
            marks = [pushes[r], *node[r]]
            for step, (a, b) in zip(STEPS, itertools.pairwise(marks), strict=True):
                steps[step].append((b - a).total_seconds())
        last = max(node[r][-1] for node in nodes)
        steps["server after last reply"].append((pushes[r + 1] - last).total_seconds())
    table = {step: statistics.median(values) for step, values in steps.items() if values}
    table["round"] = statistics.median(
        (pushes[r + 1] - pushes[r]).total_seconds() for r in range(1, rounds - 1)
    )
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", type=Path, help="the logs directory of a --work-dir")
    table = timeline(parser.parse_args(argv).logs)
    print("| step | seconds |\n|---|---:|")
    for step, seconds in table.items():
        print(f"| {step} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
