"""The app under Flower's real runtimes: ``flwr run .`` (simulation engine) and a
loopback deployment (SuperLink + SuperNodes, TLS, SuperNode authentication). Slow
(about a minute each); every test stops the processes it started, also on failure."""

from __future__ import annotations

import csv
import datetime as dt
import itertools
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
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


@contextmanager
def deployment_under_way(*args: str, env: dict | None = None):
    """``scripts/deploy_local.py`` on 2 nodes (MLP, 50 rounds) with ``args``, once its
    SuperLink is up and the run has gone on for 3 s; killed on the way out."""
    script = subprocess.Popen(
        [
            sys.executable,
            "scripts/deploy_local.py",
            *("--nodes", "2", "--byzantine", "0", "--rounds", "50", *args),
            *("--run-config", "model='mlp' local-steps=3"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        line = ""
        while "SuperLink on" not in line and time.monotonic() < deadline:
            line = script.stdout.readline()
        assert "SuperLink on" in line
        time.sleep(3)  # the run is under way
        yield script
    finally:
        script.kill()
        script.stdout.close()


def test_deploy_local_stops_everything_on_sigterm(tmp_path, no_leftovers):
    """Before: cleanup ran only in ``finally``, which SIGTERM skips; the SuperLink and
    SuperNodes (own sessions) kept running and the run went on."""
    with deployment_under_way("--work-dir", str(tmp_path / "work")) as script:
        script.send_signal(signal.SIGTERM)
        assert script.wait(timeout=60) == 128 + signal.SIGTERM


def test_two_quick_ctrl_cs_still_stop_everything_and_remove_the_keys(tmp_path, no_leftovers):
    """Before: a second SIGINT 0.05 s after the first raised inside the cleanup; eight
    processes (SuperLink, SuperNodes, SuperExecs, ServerApp, ClientApp) kept running
    in their own sessions and ``server.key`` stayed on disk."""
    with deployment_under_way("--tls", env={**os.environ, "TMPDIR": str(tmp_path)}) as script:
        assert list(tmp_path.glob("flwr-flag-deploy-*/**/server.key"))
        script.send_signal(signal.SIGINT)
        time.sleep(0.05)
        script.send_signal(signal.SIGINT)
        assert script.wait(timeout=60) == 128 + signal.SIGINT
    assert list(tmp_path.glob("flwr-flag-deploy-*")) == []


def test_deploy_local_refuses_an_existing_work_dir(tmp_path):
    """Before: an existing --work-dir was chmodded to 0700 (the system temporary
    directory, as root, would have locked everyone else out)."""
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o1777)
    (shared / "someone-elses").write_text("x")
    done = subprocess.run(
        [sys.executable, "scripts/deploy_local.py", "--work-dir", str(shared)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "exists" in done.stderr
    assert shared.stat().st_mode & 0o7777 == 0o1777
    assert sorted(p.name for p in shared.iterdir()) == ["someone-elses"]


def test_deploy_local_refuses_too_few_nodes_for_the_rule_before_starting_any(tmp_path):
    """Before: ``--nodes 2`` with the default ``--byzantine 1`` (FA needs 3 nodes for
    f = 1) started everything, then round 1 waited for a third node until the 900 s
    limit. Now it stops before any process starts, naming the rule, f and the count."""
    work = tmp_path / "work"
    done = subprocess.run(
        [sys.executable, "scripts/deploy_local.py", "--nodes", "2", "--work-dir", str(work)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "rule='flag' with num-byzantine=1 needs at least 3 nodes" in done.stderr
    assert not work.exists()
    bad = [sys.executable, "scripts/deploy_local.py", "--run-config", "rule='fedavg'"]
    done = subprocess.run(bad, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "rule='fedavg' is not one of" in done.stderr
    assert "Traceback" not in done.stderr
    bad[-1] = "rule=flag"  # not a TOML string: Flower's parser refuses it
    done = subprocess.run(bad, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--run-config: a value is not TOML" in done.stderr
    bad[-1] = "rule='krum' lr="  # Flower's parser would skip the half-typed pair
    done = subprocess.run(bad, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--run-config: not key=value pairs: lr=" in done.stderr


def test_deploy_local_finds_enough_nodes_from_the_run_config():
    from deploy_local import too_few_nodes

    assert too_few_nodes(2, "num-byzantine=0 model='mlp'") is None
    assert too_few_nodes(3, "num-byzantine=1") is None
    assert "needs at least 5" in too_few_nodes(4, "num-byzantine=1 rule='krum'")
    # Flower's own minimum, from the run config, is waited for too.
    assert "needs at least 6" in too_few_nodes(4, "num-byzantine=1 min-train-nodes=6")


def test_private_keys_are_never_written_through_a_planted_link(tmp_path):
    from deploy_local import write_private

    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "server.key").symlink_to(victim)
    with pytest.raises(OSError):
        write_private(tmp_path / "server.key", b"secret")
    assert victim.read_text() == "precious"
    write_private(tmp_path / "node.key", b"secret")
    assert (tmp_path / "node.key").stat().st_mode & 0o777 == 0o600


def test_a_supernode_that_dies_mid_run_does_not_stop_the_run(tmp_path, no_leftovers):
    """Before: deploy_local set min-available-nodes to N, so after one SuperNode died the
    next round waited for N nodes until the 900 s timeout. Now the run needs what its
    rule needs and goes on with the nodes that reply."""
    from deploy_local import BIN, ROOT, Deployment

    output = tmp_path / "out"
    deployment = Deployment(tmp_path / "work", tls=False, auth=False)
    try:
        deployment.start_superlink()
        for i in range(3):
            deployment.start_supernode(i, f"partition-id={i} num-partitions=3 byzantine=false")
        deployment.wait_for_nodes(3)
        config = (
            f"num-server-rounds=4 output-dir='{output}' byzantine-nodes=0 round-timeout=30 "
            "num-byzantine=0 rule='mean' model='mlp' local-steps=3"
        )
        run = subprocess.Popen(
            [str(BIN / "flwr"), "run", str(ROOT), "deploy", "--stream", "--run-config", config],
            env=deployment.env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 240
        killed = False
        while run.poll() is None and time.monotonic() < deadline:
            rows = list(output.glob("*/rounds.csv"))
            if not killed and rows and len(rows[0].read_text().splitlines()) >= 3:
                deployment.processes[-1].kill()  # SuperNode 2, after round 1
                killed = True
            time.sleep(0.5)
        assert run.wait(timeout=10) == 0 and killed
    finally:
        deployment.close()
    table = results(output)
    assert [r["round"] for r in table] == ["0", "1", "2", "3", "4"]
    assert table[1]["received"] == "3" and table[-1]["received"] == "2"


def test_round_timeline_cuts_rounds_from_flower_debug_logs(tmp_path):
    """Synthetic DEBUG logs, one node, pushes every 10 s; each mark a known offset after
    the push: every step's median is the gap between two marks, the server's share the
    rest of the round."""
    from round_timeline import NODE_MARKS, STEPS, timeline

    start = dt.datetime(2026, 1, 1, 12)
    offsets = (3.0, 3.1, 3.5, 4.3, 4.5, 8.5, 9.0)  # after the push, per NODE_MARKS

    def line(t: dt.datetime, message: str) -> str:
        stamp = t.strftime("%Y-%m-%d %H:%M:%S,") + f"{t.microsecond // 1000:03d}"
        return f"\x1b[94mDEBUG {stamp}\x1b[0m:     {message}"

    pushes = [start + dt.timedelta(seconds=10 * r) for r in range(5)]
    link = [line(t, "Runtime.PushMessages") for t in pushes]
    node = ["INFO:     127.0.0.1 - noise without a time stamp"]
    for push in pushes[:-1]:
        for mark, offset in zip(NODE_MARKS, offsets, strict=True):
            node.append(line(push + dt.timedelta(seconds=offset), f"{mark} (id)"))
            node.append(line(push + dt.timedelta(seconds=offset), "Runtime.PullObject"))
    (tmp_path / "superlink.log").write_text("\n".join(link))
    (tmp_path / "supernode-0.log").write_text("\n".join(node))
    table = timeline(tmp_path)
    gaps = [b - a for a, b in itertools.pairwise((0.0, *offsets))]
    assert [table[s] for s in STEPS] == pytest.approx(gaps)
    assert table["server after last reply"] == pytest.approx(1.0)
    assert table["round"] == pytest.approx(10.0)
