"""The library's thread policy (:mod:`flwr_flag.engine.threads`) never outlives a pass."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from flwr_flag.engine import ArraysSource, NonFiniteUpdateError, threads
from flwr_flag.engine.threads import (
    GEMM_WORK,
    gemm_threads,
    host_workers,
    one_thread,
    torch_threads,
)
from flwr_flag.rules import RULES, aggregate


@pytest.fixture
def three_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(3)
    yield
    torch.set_num_threads(previous)


def clients(n: int, poison: bool = False) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(0)
    out = [[rng.normal(size=(40, 30)).astype(np.float32), rng.normal(size=7)] for _ in range(n)]
    if poison:
        out[2][0][3, 3] = np.nan
    return out


@pytest.mark.parametrize("rule", sorted(set(RULES) - {"detox"}))
def test_every_rule_leaves_the_users_thread_setting_as_it_found_it(rule, three_threads):
    aggregate(ArraysSource(clients(11), device="cpu"), rule, 2)
    assert torch.get_num_threads() == 3


@pytest.mark.parametrize("rule", ["mean", "median", "krum"])
def test_a_pass_that_raises_still_restores_the_setting(rule, three_threads):
    with pytest.raises(NonFiniteUpdateError):
        aggregate(ArraysSource(clients(11, poison=True), device="cpu"), rule, 2)
    assert torch.get_num_threads() == 3


def test_the_policy_inside_a_pass(three_threads):
    with one_thread():
        assert torch.get_num_threads() == 1
        with torch_threads(2):
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 3
    assert gemm_threads(11, 16384) == 1  # ten clients: too little work per block to share
    assert gemm_threads(1000, 16384) == 3  # capped by the caller's setting
    assert gemm_threads(101, -(-2 * GEMM_WORK // 101**2)) == 2
    with one_thread():  # a rule's algebra runs on one thread; its Gram pass may use 3
        assert gemm_threads(1000, 16384) == 3


def test_a_pass_split_between_workers_runs_each_on_one_thread_and_restores_the_setting(
    three_threads, monkeypatch
):
    """The host pass's workers (threads.split_run) each walk a range of pieces on one
    intra-op thread; afterwards the caller's setting is what it was, in this thread and
    in a thread started later (which inherits the process's setting)."""
    import threading

    seen, calls = [], []
    original = threads.split_run

    def spy(task, items, sizes, workers=None):
        def watched(part):
            seen.append((threading.current_thread().name, torch.get_num_threads()))
            return task(part)

        calls.append((len(items), []))
        return original(
            lambda part: calls[-1][1].append(len(part)) or watched(part), items, sizes, workers
        )

    monkeypatch.setattr(threads, "MIN_WORK", 1)
    monkeypatch.setattr(threads, "host_workers", lambda: 3)
    monkeypatch.setattr("flwr_flag.engine.source.split_run", spy)
    # Gram blocks of 64 columns: pieces to split besides the one choosing the reference.
    monkeypatch.setattr("flwr_flag.engine.source.GRAM_COLUMNS", 64)
    monkeypatch.setattr("flwr_flag.engine.source.GRAM_ELEMENTS", 64)
    source = ArraysSource(clients(11), device="cpu")
    serial = ArraysSource(clients(11), device="cpu")
    serial.host_passes = False
    torch.testing.assert_close(
        aggregate(source, "flag", 2).vector, aggregate(serial, "flag", 2).vector
    )
    assert seen and all(count == 1 for _, count in seen)
    assert all(name.startswith("flwr-flag-pass") for name, _ in seen)
    assert all(len(parts) >= 2 and sum(parts) == items for items, parts in calls)
    assert torch.get_num_threads() == 3
    later = []
    started = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    started.start()
    started.join()
    assert later == [3]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_process_forked_after_a_split_pass_runs_its_own(monkeypatch):
    """A forked child inherits the parent's pool objects but none of their threads: a
    pass there must start its own workers, not wait for ever on the parent's."""
    monkeypatch.setattr(threads, "MIN_WORK", 1)
    monkeypatch.setattr(threads, "host_workers", lambda: 2)
    expected = aggregate(ArraysSource(clients(11), device="cpu"), "median", 2).vector
    assert threads._POOLS  # the parent's pool exists
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            got = aggregate(ArraysSource(clients(11), device="cpu"), "median", 2).vector
            os.write(write, b"1" if torch.equal(got, expected) else b"0")
        finally:
            os._exit(0)
    os.close(write)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and os.waitpid(child, os.WNOHANG) == (0, 0):
        time.sleep(0.05)
    else:
        if time.monotonic() >= deadline:
            os.kill(child, 9)
    assert os.read(read, 1) == b"1"


def test_a_pass_leaves_the_cores_that_other_processes_run_on(tmp_path, monkeypatch):
    loadavg, own = tmp_path / "loadavg", tmp_path / "task"
    monkeypatch.setattr(threads, "LOADAVG", str(loadavg))
    monkeypatch.setattr(threads, "OWN_TASKS", str(own))
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)  # the caller's setting

    def threads_of_ours(*states: str) -> None:
        for i, state in enumerate(states):
            (own / str(i)).mkdir(parents=True, exist_ok=True)
            (own / str(i) / "stat").write_text(f"{i} (py thread) {state} 1 2 3\n")

    threads_of_ours("R", "S", "S")  # the caller runs, the pool's workers sleep
    for running, workers in [(1, 4), (2, 3), (4, 1), (9, 1)]:
        loadavg.write_text(f"0.52 0.40 0.31 {running}/321 4242\n")
        assert host_workers() == workers
    threads_of_ours("R", "R", "R")  # the last pass's workers, not yet asleep
    loadavg.write_text("0.52 0.40 0.31 3/321 4242\n")
    assert host_workers() == 4
    loadavg.write_text("not a load line")
    assert host_workers() == 4
    loadavg.unlink()
    assert host_workers() == 4
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    loadavg.write_text("0.52 0.40 0.31 1/321 4242\n")
    assert host_workers() == 2  # the caller's setting caps it
