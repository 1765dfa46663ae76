"""The main job: ``flwr run .`` on a local simulation, offline, then clean up.

Runs the app with the current virtual environment (no per-run dependency install),
``num-supernodes`` nodes of one CPU each, results under ``outputs/``. Extra arguments
go to ``flwr run`` (e.g. ``--run-config "rule='krum' attack='sign-flip'"``). The local
SuperLink that ``flwr run`` starts in the background is stopped at the end, unless it
was already running before.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from processes import matching, stop

ROOT = Path(__file__).resolve().parents[1]
SUPERLINK = ("flower-superlink", "--simulation")


def main(argv: list[str]) -> int:
    nodes = os.environ.get("NUM_SUPERNODES", "10")
    env = {
        **os.environ,
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    before = matching(*SUPERLINK)
    command = [
        "flwr",
        "run",
        str(ROOT),
        "--stream",
        "--federation-config",
        f"num-supernodes={nodes} client-resources-num-cpus=1",
        "--run-config",
        f"output-dir='{ROOT / 'outputs'}'",
        *argv,
    ]
    try:
        return subprocess.call(command, env=env, cwd=ROOT)
    finally:
        stop(matching(*SUPERLINK) - before)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
