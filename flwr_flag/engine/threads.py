r"""How many threads the host passes use, chosen per pass, and restored afterwards.

A server shares its cores (the SuperLink, the SuperExec, simulated clients, other
services). Torch's intra-op threads meet at a barrier after every operation, and when
another process holds one of the cores the barrier waits for a descheduled thread: a
scheduler time slice, milliseconds, per operation. The host passes run thousands of
small operations (a cache-sized piece per client, several operations each), so with
two threads beside one busy process they ran 4-25 times slower than on an idle machine,
while numpy's single-threaded loops did not move.

The policy, per pass:

* element-wise passes (the output combination, the coordinate-wise rules' blocks) are
  memory-bound and cut into cache-sized pieces, and a rule's ``n x n`` algebra between
  passes (eigenproblems, Weiszfeld steps on the Gram matrix) is microseconds of work per
  operation: one thread, no barrier at all (:func:`one_thread`);
* the Gram pass's products are compute-bound: a block of ``w`` columns for ``m`` rows
  costs :math:`m^2 w` multiply-adds, so it gets one thread per :data:`GEMM_WORK` of
  them, at most the caller's setting (:func:`gemm_threads`): ten clients' blocks run on
  one thread, a hundred clients' on all of them, where a barrier per block is amortised
  over milliseconds of work.

Torch's thread count is process-wide: every change here is undone when the pass ends,
so the user's ``torch.set_num_threads`` is what it was (tested).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import torch

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
    available = _CALLERS[-1] if _CALLERS else torch.get_num_threads()
    return max(1, min(available, rows * rows * columns // GEMM_WORK))
