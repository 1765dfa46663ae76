"""The app under Flower's real runtimes: ``flwr run .`` (simulation engine) and a
loopback deployment (SuperLink + SuperNodes, TLS, SuperNode authentication). Slow
(about a minute each); every test stops the processes it started, also on failure."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from processes import matching  # noqa: E402

FLOWER = ("flower-super",)


def flower_processes() -> set[int]:
    return matching(*FLOWER) | matching("flwr-serverapp") | matching("flwr-clientapp")


def results(output: Path) -> list[dict]:
    (run,) = list(output.iterdir())
    with open(run / "rounds.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def no_leftovers():
    before = flower_processes()
    yield
    assert flower_processes() - before == set()


def test_flwr_run_simulation(tmp_path, no_leftovers):
    output = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "scripts/run_simulation.py",
            "--run-config",
            f"num-server-rounds=2 output-dir='{output}' model='mlp' local-steps=3 "
            "byzantine-nodes=1 num-byzantine=1 attack='nan' rule='ctma'",
        ],
        cwd=ROOT,
        env={**__import__("os").environ, "NUM_SUPERNODES": "4"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = results(output)
    assert [r["round"] for r in table] == ["0", "1", "2"]
    assert [r["rejected"] for r in table[1:]] == ["1", "1"]
    assert "Final accuracy" in done.stdout + done.stderr


@pytest.mark.parametrize("mode", [[], ["--auth", "--unregistered", "1"]], ids=["insecure", "auth"])
def test_loopback_deployment(tmp_path, mode, no_leftovers):
    output = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "scripts/deploy_local.py",
            "--nodes",
            "2",
            "--byzantine",
            "0",
            "--rounds",
            "2",
            "--work-dir",
            str(tmp_path / "work"),
            "--output-dir",
            str(output),
            "--run-config",
            "model='mlp' local-steps=3",
            *mode,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = results(output)
    assert [r["round"] for r in table] == ["0", "1", "2"]
    assert all(r["received"] == "2" for r in table[1:])
    if mode:
        refused = (tmp_path / "work" / "logs" / "supernode-2.log").read_text()
        assert "Failed to activate SuperNode" in refused
        work = tmp_path / "work"
        assert work.stat().st_mode & 0o777 == 0o700
        private = [work / "server.key", *work.glob("supernode-?")]
        assert len(private) == 4  # the server's TLS key and three SuperNodes' keys
        assert all(p.stat().st_mode & 0o777 == 0o600 for p in private)
