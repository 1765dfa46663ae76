"""The coordinate-wise kernel: order statistics along the rows, by sorting network or sort."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flwr_flag.rules.order_statistics import (
    NETWORK_BLOCK,
    NETWORK_MAX_ROWS,
    order_statistics,
    sorting_network,
)


def every_zero_one_column(n: int) -> np.ndarray:
    """All ``2^n`` columns of zeros and ones, as an ``(n, 2^n)`` array."""
    codes = np.arange(1 << n)
    return ((codes[None, :] >> np.arange(n)[:, None]) & 1).astype(np.float32)


@pytest.mark.parametrize("n", range(1, 15))
def test_network_sorts_every_zero_one_input(n: int) -> None:
    # The 0-1 principle: a comparator network that sorts every 0-1 input sorts every
    # input, and the same holds for the wires a pruned network keeps.
    columns = every_zero_one_column(n)
    expected = np.sort(columns, axis=0)
    whole = order_statistics(torch.from_numpy(columns), range(n))
    assert np.array_equal(whole.numpy(), expected)
    for k in range(n):
        picked = order_statistics(torch.from_numpy(columns), range(k, k + 1))
        assert np.array_equal(picked.numpy(), expected[k : k + 1]), k


def test_pruning_drops_comparators_a_median_does_not_need() -> None:
    assert len(sorting_network(15, range(7, 8))) < len(sorting_network(15, range(15)))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, NETWORK_MAX_ROWS + 8),
    columns=st.integers(1, 40),
    data=st.data(),
)
def test_matches_numpy_sort(n: int, columns: int, data: st.DataObject) -> None:
    low = data.draw(st.integers(0, n - 1))
    high = data.draw(st.integers(low + 1, n))
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    # Few distinct values so ties are common; infinities sort like any value.
    values = rng.choice([-np.inf, -2.5, -1.0, 0.0, 0.0, 1.0, 3.0, np.inf], size=(n, columns))
    chunk = torch.from_numpy(values.astype(np.float32))
    before = chunk.clone()
    got = order_statistics(chunk, range(low, high))
    assert torch.equal(chunk, before)  # the input is read, never sorted in place
    assert np.array_equal(got.numpy(), np.sort(chunk.numpy(), axis=0)[low:high])


def test_blocks_and_strided_chunks() -> None:
    # More columns than one block, read from a non-contiguous view of a wider array.
    rng = np.random.default_rng(0)
    wide = torch.from_numpy(rng.standard_normal((9, 2 * NETWORK_BLOCK + 77)).astype(np.float32))
    chunk = wide[:, 5 : NETWORK_BLOCK + 300]
    got = order_statistics(chunk, range(3, 6))
    assert np.array_equal(got.numpy(), np.sort(chunk.numpy(), axis=0)[3:6])
