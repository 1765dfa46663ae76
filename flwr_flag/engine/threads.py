r"""How many threads the host passes use, chosen per pass, and restored afterwards.

A server shares its cores (the SuperLink, the SuperExec, simulated clients, other
services). Torch's intra-op threads meet at a barrier after every operation, and when
another process holds one of the cores the barrier waits for a descheduled thread: a
scheduler time slice, milliseconds, per operation. The host passes run thousands of
small operations (a cache-sized piece per client, several operations each), so with
two threads beside one busy process they ran 4-25 times slower than on an idle machine,
while numpy's single-threaded loops did not move.

The policy, per pass:

* no torch operation of a pass runs on more than one intra-op thread, and a rule's
  ``n x n`` algebra between passes (eigenproblems, Weiszfeld steps on the Gram matrix)
  is microseconds of work per operation: one thread, no barrier at all
  (:func:`one_thread`);
* the host passes over the replies (the Gram pass, the output combination, the
  coordinate-wise blocks) are parallel at a coarse grain instead: their pieces are cut
  into a few contiguous ranges per worker (:func:`split_run`), each worker walks a
  range alone on one thread and then takes the next, and the pass meets at one
  barrier, at its end. A worker slowed by another process on its core takes fewer
  ranges, where a barrier per operation would have waited a time slice thousands of
  times. Workers: the cores this process may run on that no other process runs on when
  the pass starts, at most the caller's torch setting (:func:`host_workers`);
* the generic chunked passes' Gram products (a GPU's, and the CPU's without replies
  to walk) get one thread per :data:`GEMM_WORK` multiply-adds of a block, at most the
  caller's setting (:func:`gemm_threads`).

Torch's thread count is process-wide: every change here is undone when the pass ends,
so the user's ``torch.set_num_threads`` is what it was (tested). The workers are this
module's own threads, set to one intra-op thread each when they start, which happens
inside a pass's :func:`one_thread` (so the setting that threads inherit is restored by
the pass's end).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from typing import TypeVar

import torch

Item = TypeVar("Item")
Result = TypeVar("Result")

GEMM_WORK = 1 << 26
"""Multiply-adds of a Gram block per thread (about 5-10 ms of one core): below it, a
block's barrier costs more than a second thread saves when a core is busy."""


_CALLERS: list[int] = []
"""The caller's setting, while a policy is in force (policies nest: a rule's ``n x n``
algebra runs on one thread, the Gram pass inside it may use the caller's threads)."""


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Torch's intra-op threads set to ``count`` inside, restored on the way out."""
    previous = torch.get_num_threads()
    _CALLERS.append(_CALLERS[-1] if _CALLERS else previous)
    try:
        if count == previous:
            yield
            return
        torch.set_num_threads(count)
        try:
            yield
        finally:
            torch.set_num_threads(previous)
    finally:
        _CALLERS.pop()


def one_thread() -> AbstractContextManager[None]:
    """For the element-wise host passes (module docstring)."""
    return torch_threads(1)


def gemm_threads(rows: int, columns: int) -> int:
    """Threads for the ``rows x rows`` products of ``rows x columns`` blocks: one per
    :data:`GEMM_WORK` multiply-adds, between 1 and the caller's setting."""
    return max(1, min(_caller_threads(), rows * rows * columns // GEMM_WORK))


def _caller_threads() -> int:
    """The caller's torch setting, also inside a policy that changed it."""
    return _CALLERS[-1] if _CALLERS else torch.get_num_threads()


MIN_WORK = 1 << 20
"""Elements a range of a host pass gets at least (about a millisecond of one core's
memory traffic): a model smaller than that runs as one range, in the caller's thread."""
RANGES_PER_WORKER = 4
"""Ranges a split pass is cut into per worker. A worker that finishes its range takes
the next one, so a worker slowed by another process on its core does less of the pass.
Measured beside one busy process on two cores (ten clients of ResNet-18), a Gram pass
still took 0.14-0.16 s against 0.12 s on one thread alone and 0.09 s idle: the workers
then hand the interpreter's lock to each other on about one core."""

_POOLS: dict[int, ThreadPoolExecutor] = {}
if hasattr(os, "register_at_fork"):  # a forked child has none of the pools' threads
    os.register_at_fork(after_in_child=_POOLS.clear)


LOADAVG = "/proc/loadavg"
"""Linux's load line; its fourth field, ``running/total``, counts the tasks runnable
this instant, the threads of this process among them."""
OWN_TASKS = "/proc/self/task"
"""This process's threads, each with a ``stat`` line giving its state (``R``: runnable)."""


def host_workers() -> int:
    """Workers of a host pass: the cores this process may run on (its CPU affinity),
    no more than the machine's cores that no other process is running on this instant
    (:func:`cores_taken`), at least one, at most the caller's torch setting
    (``torch.set_num_threads(1)`` makes every pass serial).

    Beside a busy process, a second worker would share a core with it and hand the
    interpreter's lock back and forth with the first at the scheduler's pace: ten
    clients of ResNet-18, one Gram pass beside one busy process on two cores, took
    0.14-0.16 s on two workers and 0.10 s on one."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    free = (os.cpu_count() or 1) - cores_taken()
    return max(1, min(_caller_threads(), affinity or 1, free))


def cores_taken() -> int:
    """Tasks of other processes runnable this instant: :data:`LOADAVG`'s count less
    this process's runnable threads (:data:`OWN_TASKS`), 0 where the system has no such
    file. The caller alone (a count of one) needs no more reading: this process's
    threads are read only beside other runnable tasks, and the count is read again
    after them, so that a worker of the last pass that went to sleep in between is in
    neither. A snapshot, read once per pass, so a burst that ends during the pass costs
    that pass a worker."""
    running = _running()
    if running <= 1:
        return 0
    own = 0
    for task in os.listdir(OWN_TASKS) if os.path.isdir(OWN_TASKS) else ():
        try:
            with open(os.path.join(OWN_TASKS, task, "stat")) as stat:
                own += stat.read().rsplit(")", 1)[1].split()[0] == "R"
        except (OSError, IndexError):
            continue  # a thread that ended meanwhile
    return max(min(running, _running()) - max(own, 1), 0)


def _running() -> int:
    """:data:`LOADAVG`'s count of runnable tasks, 0 where it cannot be read."""
    try:
        with open(LOADAVG) as line:
            return int(line.read().split()[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return 0


def pass_workers(elements: int) -> int:
    """Workers of a host pass over ``elements`` elements: :func:`host_workers`, or one
    for a pass too short to split (under two ranges of :data:`MIN_WORK`)."""
    return host_workers() if elements >= 2 * MIN_WORK else 1


def split_run(
    task: Callable[[Sequence[Item]], Result],
    items: Sequence[Item],
    sizes: Sequence[int],
    workers: int | None = None,
) -> list[Result]:
    """``task`` on contiguous ranges of ``items`` balanced by the items' ``sizes``
    (elements), ``RANGES_PER_WORKER`` per worker, each range taken by the next free
    worker; the ranges' results in order. ``workers``: a count the caller took from
    :func:`pass_workers` (to size its pieces by it), else read here. The calling thread
    runs a single range itself. Call it inside :func:`one_thread`."""
    count = min(max(1, sum(sizes) // MIN_WORK), len(items))
    workers = pass_workers(sum(sizes)) if workers is None else workers
    count = min(count, workers * RANGES_PER_WORKER)
    if workers <= 1 or count <= 1:
        return [task(items)]
    share, ranges, start, done = sum(sizes) / count, [], 0, 0
    for end, size in enumerate(sizes, start=1):
        done += size
        if done >= share * (len(ranges) + 1) and len(ranges) < count - 1:
            ranges.append(items[start:end])
            start = end
    ranges.append(items[start:])
    if workers not in _POOLS:
        _POOLS[workers] = ThreadPoolExecutor(
            max_workers=workers,
            thread_name_prefix="flwr-flag-pass",
            initializer=torch.set_num_threads,
            initargs=(1,),
        )
    return list(_POOLS[workers].map(task, [r for r in ranges if r]))
