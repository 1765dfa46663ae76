"""Order statistics along the rows of an ``(n, c)`` chunk: the coordinate-wise kernel.

The coordinate-wise rules need, for every column ``j``, a few order statistics
``x_(k),j`` of its ``n`` values (the median: ``k = n // 2``; a trimmed mean: ``b <= k < n - b``).
Which kernel is fastest depends on ``n`` and the device (measured on this project's CPU,
float32, ns per element of the chunk):

=============================  =======  ======  ======  ======  =======
kernel                         n = 10   n = 20  n = 32  n = 50  n = 500
=============================  =======  ======  ======  ======  =======
sorting network (this module)     1.7     2.4     3.0     5.1
``numpy.sort`` of the rows of     4.4     3.1     1.7     2.2     2-3.5
the transposed chunk
``numpy.sort(axis=0)``           11.8     4.3     4.1     3.8     8.1
``numpy.partition`` (2 ranks)                     12      11      12
``numpy.median``, ``torch``      15-18   15-18   15-18   15-18
=============================  =======  ======  ======  ======  =======

So on the host, up to ``NETWORK_MAX_ROWS`` rows go through Batcher's odd-even merge
sorting network, run as whole-row ``minimum``/``maximum`` compare-exchanges on
cache-sized column blocks (``O(n log^2 n)`` vectorised passes over a block that stays in
cache, no per-column call); the comparators that cannot reach the wanted ranks are
pruned (the median costs 1.0-1.6 ns per element for n = 10-24 in a later measurement).
Above that, numpy's SIMD sort of each column as a contiguous row (``O(n log n)``). On a
GPU, torch's sort.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

NETWORK_MAX_ROWS = 24
"""Largest ``n`` that the sorting network handles; numpy's sort is faster above it."""
NETWORK_BLOCK = 1 << 16
"""Columns per compare-exchange block (``n`` rows of 256 KiB each, in the core's L2
for ten clients). Fewer, longer compare-exchanges also keep the workers of a split
host pass from waiting on each other for the interpreter's lock between them: ten
clients of ResNet-18 on two workers took 0.20 s a median with this block, 0.25 s with
16,384 columns (one worker: 0.27 s and 0.26 s)."""


@lru_cache(maxsize=64)
def sorting_network(n: int, ranks: range) -> tuple[tuple[int, int], ...]:
    """Comparators ``(a, b)`` (``a < b``; after it ``x_a <= x_b``) of Batcher's odd-even
    merge sort on ``n`` wires, keeping only those that can affect the output wires
    ``ranks``: ``O(n log^2 n)`` comparators."""
    size = 1 << max(n - 1, 0).bit_length()
    comparators = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    a, b = i + j, i + j + k
                    if a // (2 * p) == b // (2 * p) and b < n:
                        comparators.append((a, b))
            k //= 2
        p *= 2
    # Walking backwards from the outputs: a comparator matters when it writes a wire
    # that a later comparator (or an output) reads.
    needed, kept = set(ranks), []
    for a, b in reversed(comparators):
        if a in needed or b in needed:
            needed.update((a, b))
            kept.append((a, b))
    return tuple(reversed(kept))


def order_statistics(chunk: Tensor, ranks: range) -> Tensor:
    """``x_(k), j`` for ``k`` in ``ranks``: rows ``ranks`` of ``chunk`` sorted along dim 0.

    Returns a ``(len(ranks), c)`` tensor on the chunk's device; ``chunk`` is not
    modified. Cost: ``O(n log^2 n c)`` elementwise work for ``n <= NETWORK_MAX_ROWS`` on
    the host, a sort per column otherwise.
    """
    n = chunk.shape[0]
    if chunk.device.type != "cpu":
        return chunk.sort(dim=0).values[ranks.start : ranks.stop]
    values = chunk.numpy()
    if n > NETWORK_MAX_ROWS:
        # Each column made a contiguous row: numpy sorts rows with SIMD kernels, and
        # 2-4x slower along a strided axis 0.
        by_column = np.sort(np.ascontiguousarray(values.T), axis=1)
        return torch.from_numpy(by_column[:, ranks.start : ranks.stop].T)
    comparators = sorting_network(n, ranks)
    width = max(1, min(NETWORK_BLOCK, values.shape[1]))
    out = np.empty((len(ranks), values.shape[1]), dtype=values.dtype)
    block = np.empty((n + 1, width), dtype=values.dtype)
    for start in range(0, values.shape[1], width):
        stop = min(start + width, values.shape[1])
        block[:n, : stop - start] = values[:, start:stop]
        # A wire is a row of the block; a compare-exchange writes its minimum into the
        # spare row and that row becomes wire a (no copy back).
        wires, spare = [row[: stop - start] for row in block[:n]], block[n, : stop - start]
        for a, b in comparators:
            np.minimum(wires[a], wires[b], out=spare)
            np.maximum(wires[a], wires[b], out=wires[b])
            wires[a], spare = spare, wires[a]
        for k in ranks:
            out[k - ranks.start, start:stop] = wires[k]
    return torch.from_numpy(out)
