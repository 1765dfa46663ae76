"""Streaming from per-client array lists equals the in-memory result for every rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flwr_flag.engine import ArraysSource, StackedSource
from flwr_flag.rules import PREAGGREGATORS, RULES, aggregate

SHAPES = [(3, 4), (5,), (2, 3, 2), (1,)]  # 30 coordinates in 4 arrays
P = sum(int(np.prod(s)) for s in SHAPES)
N, F = 11, 2


def layers(seed: int) -> tuple[list[list[np.ndarray]], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    base = [rng.normal(size=s) for s in SHAPES]
    clients = [
        [b + rng.normal(size=s) * (10 if i < F else 1) for b, s in zip(base, SHAPES, strict=True)]
        for i in range(N)
    ]
    return clients, base


def stacked(clients, base) -> torch.Tensor:
    flat = [
        np.concatenate([(a - b).ravel() for a, b in zip(c, base, strict=True)]) for c in clients
    ]
    return torch.from_numpy(np.stack(flat))


# 1 and 7 split arrays mid-way (12 is the first array's end), 64 > p is one chunk.
@pytest.mark.parametrize("chunk_size", [1, 7, 12, 64])
@pytest.mark.parametrize("rule", sorted(set(RULES) - {"detox"}))  # test_detox.py has its own
def test_arrays_source_equals_stacked(rule, chunk_size):
    clients, base = layers(seed=3)
    kw = (
        {"previous": torch.linspace(-1, 1, P, dtype=torch.float64)}
        if rule == "centered-clipping"
        else {}
    )
    streamed = ArraysSource(clients, base, dtype=torch.float64, device="cpu", chunk_size=chunk_size)
    expected, _ = aggregate(StackedSource(stacked(clients, base), chunk_size=P), rule, F, **kw)
    got, _ = aggregate(streamed, rule, F, **kw)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("pre", sorted(PREAGGREGATORS))
@pytest.mark.parametrize("rule", ["median", "krum", "flag"])
def test_preaggregated_streaming(pre, rule):
    clients, base = layers(seed=4)
    step = {
        "bucketing": (pre, {"seed": 1}),
        "anchor": (pre, {"reference": stacked(clients, base)[F:].mean(dim=0)}),
    }.get(pre, pre)
    f = 1 if pre == "bucketing" else F
    expected, _ = aggregate(stacked(clients, base), rule, f, pre=[step])
    got, _ = aggregate(
        ArraysSource(clients, base, dtype=torch.float64, device="cpu", chunk_size=5),
        rule,
        f,
        pre=[step],
    )
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-11)


def test_float32_chunking_changes_only_rounding():
    clients, base = layers(seed=5)
    clients = [[a.astype(np.float32) for a in c] for c in clients]
    results = [
        aggregate(ArraysSource(clients, base, device="cpu", chunk_size=c), "flag", F).vector
        for c in (3, 11, P)
    ]
    for r in results[1:]:
        torch.testing.assert_close(r, results[0], rtol=1e-4, atol=1e-5)


def test_no_stacked_copy_is_made():
    # Peak extra memory is O(n * chunk): the buffers handed out are chunk-sized.
    clients, base = layers(seed=6)
    source = ArraysSource(clients, base, device="cpu", chunk_size=4)
    assert all(chunk.shape == (N, min(4, P - cols.start)) for cols, chunk in source.chunks())


def test_a_sparse_output_reads_only_its_rows(monkeypatch):
    from flwr_flag.engine import ArraysSource

    rng = np.random.default_rng(5)
    base = [rng.normal(size=(30, 7)).astype(np.float32), rng.normal(size=11).astype(np.float32)]
    clients = [[a + rng.normal(size=a.shape).astype(np.float32) for a in base] for _ in range(8)]
    source = ArraysSource(clients, base=base, device="cpu", chunk_size=50)
    source.gram()  # the first pass: every row checked
    fetched = []  # the rows each output pass reads
    original = ArraysSource._host_combine
    monkeypatch.setattr(
        ArraysSource, "_host_combine", lambda self, c: fetched.append(self.n) or original(self, c)
    )
    one_hot = torch.zeros(8, dtype=torch.float64)
    one_hot[5] = 1.0
    row = np.concatenate([(c - b).ravel() for c, b in zip(clients[5], base, strict=True)])
    np.testing.assert_array_equal(source.combine(one_hot).numpy(), row)
    assert fetched == [1]  # one row, not eight
    dense = torch.full((8,), 1 / 8, dtype=torch.float64)
    fetched.clear()
    expected = np.mean(
        [np.concatenate([(c - b).ravel() for c, b in zip(x, base, strict=True)]) for x in clients],
        axis=0,
    )
    np.testing.assert_allclose(source.combine(dense).numpy(), expected, rtol=1e-5, atol=1e-6)
    assert fetched == [8]


def test_a_sparse_output_of_a_stacked_source_reads_only_its_rows(monkeypatch):
    """Krum's output on the stacked tensor: after the Gram pass, the output pass fetches
    the chosen row alone, and the result is that row."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(9, 500, generator=g)
    source = StackedSource(x, device="cpu", chunk_size=64)
    source.gram()
    fetched = []
    original = StackedSource._fetch
    monkeypatch.setattr(
        StackedSource,
        "_fetch",
        lambda self, a, b: fetched.append(self.n) or original(self, a, b),
    )
    one_hot = torch.zeros(9, dtype=torch.float64)
    one_hot[4] = 1.0
    torch.testing.assert_close(source.combine(one_hot), x[4])
    assert fetched and set(fetched) == {1}
    pair = torch.zeros(9, dtype=torch.float64)
    pair[[2, 7]] = torch.tensor([0.25, 0.75], dtype=torch.float64)
    fetched.clear()
    torch.testing.assert_close(source.combine(pair), 0.25 * x[2] + 0.75 * x[7])
    assert set(fetched) == {2}
    fetched.clear()
    torch.testing.assert_close(source.combine(torch.full((9,), 1 / 9)), x.mean(dim=0))
    assert set(fetched) == {9}


def test_the_fused_first_pass_of_a_mean_checks_and_combines():
    from flwr_flag.engine import NonFiniteUpdateError

    rng = np.random.default_rng(6)
    base = [rng.normal(size=(300, 70)).astype(np.float32), np.array(3, dtype=np.int64)]
    clients = [
        [base[0] + rng.normal(size=(300, 70)).astype(np.float32), base[1] + i] for i in range(6)
    ]
    weights = torch.tensor([1.0, 2, 3, 4, 5, 6], dtype=torch.float64) / 21
    source = ArraysSource(clients, base=base, device="cpu")
    got = source.combine(weights)
    stacked = torch.stack(
        [
            torch.from_numpy(
                np.concatenate([(c - b).ravel() for c, b in zip(x, base, strict=True)]).astype(
                    np.float32
                )
            )
            for x in clients
        ]
    )
    torch.testing.assert_close(got, weights.float() @ stacked, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        source.sq_norms(), stacked.double().square().sum(1), rtol=1e-5, atol=0
    )
    clients[4][0] = clients[4][0].copy()
    clients[4][0][7, 3] = np.nan
    with pytest.raises(NonFiniteUpdateError) as error:
        ArraysSource(clients, base=base, device="cpu").combine(weights)
    assert error.value.rows == [4]


@pytest.mark.parametrize("nonzeros", [1, 2, 8, 11], ids=lambda k: f"{k}-per-row")
def test_mixed_rows_equal_the_dense_product(nonzeros):
    """Sparse mixing matrices (bucketing's) are applied as sums of gathered rows, dense
    ones (NNM's) as a product: both are P X."""
    clients, base = layers(seed=4)
    x = stacked(clients, base)
    g = torch.Generator().manual_seed(nonzeros)
    matrix = torch.zeros(5, N, dtype=torch.float64)
    for row in matrix:
        row[torch.randperm(N, generator=g)[:nonzeros]] = torch.rand(nonzeros, generator=g).double()
    arrays = ArraysSource(clients, base, chunk_size=7, dtype=torch.float64)
    for source in (StackedSource(x, chunk_size=7), arrays):
        mixed = source.mix(matrix)
        assert (mixed._sparse is not None) == (nonzeros <= 8)
        torch.testing.assert_close(mixed.combine(torch.eye(5, dtype=torch.float64)), matrix @ x)


def test_a_checked_arrays_source_subsets_to_its_clients_alone():
    """After the first pass, a subset reads only its clients' replies (DETOX's second
    stage: the n / r winners), and equals the rows it names."""
    clients, base = layers(seed=5)
    source = ArraysSource(clients, base, dtype=torch.float64)
    unchecked = source.subset([4, 1])
    assert type(unchecked).__name__ == "RowSubset"  # an error must name the parent's rows
    source.sq_norms()
    picked = source.subset([4, 1])
    assert isinstance(picked, ArraysSource) and picked.n == 2
    torch.testing.assert_close(
        picked.combine(torch.eye(2, dtype=torch.float64)), stacked(clients, base)[[4, 1]]
    )


class CountingSource(StackedSource):
    """Counts the chunks read, to tell a free answer from another pass."""

    reads = 0

    def _fetch(self, start: int, stop: int) -> torch.Tensor:
        self.reads += 1
        return super()._fetch(start, stop)


SPAN_AND_MAP = [
    ("flag", []),
    ("ctma", ["nnm"]),
    ("krum", []),
    ("median", []),
    ("trimmed-mean", []),
    ("geomed", []),
]


@pytest.mark.parametrize(("rule", "pre"), SPAN_AND_MAP)
def test_the_rows_inner_products_with_the_aggregate_cost_no_pass(rule, pre):
    """Before: the round's limited nodes took one more pass over the replies."""
    from flwr_flag.rules import aggregate

    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 3000, generator=g, dtype=torch.float64) + 1
    source = CountingSource(x, chunk_size=500)
    vector = aggregate(source, rule, 2, pre=pre).vector
    before = source.reads
    torch.testing.assert_close(source.inner_with(vector), x @ vector)
    assert source.reads == before
    other = torch.randn(3000, generator=g, dtype=torch.float64)
    torch.testing.assert_close(source.inner_with(other), x @ other)
    assert source.reads > before  # not the last output: one pass


@pytest.mark.parametrize("n", [7, 40, 150])
def test_the_host_output_pass_takes_the_inner_products_when_asked(n):
    """A mean has no Gram: with track_inner its one pass also gives <g_i, mean> (each
    block's product with its piece of the mean, in cache), for any number of rows."""
    from flwr_flag.rules import aggregate

    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 5000, generator=g, dtype=torch.float64)
    source = ArraysSource(
        [[row.numpy()] for row in x], device="cpu", dtype=torch.float64, track_inner=True
    )
    vector = aggregate(source, "mean", 2).vector
    assert source._output[0] is vector and source._output[2] == "inner"
    torch.testing.assert_close(vector, x.mean(dim=0))
    torch.testing.assert_close(source.inner_with(vector), x @ vector)
    other = vector.clone()  # not the last output: a pass of its own, host or generic
    torch.testing.assert_close(source.inner_with(other), x @ other)
    source.host_passes = False
    torch.testing.assert_close(source.inner_with(other), x @ other)


@pytest.mark.parametrize("offset", [0.0, 100.0])  # 100: nearly parallel, centred on a row
def test_the_host_gram_pass_reads_each_reply_once_unless_it_recentres(offset, monkeypatch):
    """The first block's product chooses the reference; kept at the origin, it is that
    block's share of the Gram, so a model of one block is read once, not twice."""
    rng = np.random.default_rng(0)
    replies = [[offset + rng.normal(size=(20, 30)).astype(np.float32)] for _ in range(6)]
    source = ArraysSource(replies, device="cpu")
    reads = []
    original = ArraysSource._update_into
    monkeypatch.setattr(
        ArraysSource,
        "_update_into",
        lambda self, *args: reads.append(args[1]) or original(self, *args),
    )
    gram = source.gram()
    assert len(reads) == (6 if offset == 0 else 12)
    stacked = torch.tensor(np.stack([r[0].ravel() for r in replies]), dtype=torch.float64)
    torch.testing.assert_close(gram.raw(), stacked @ stacked.T, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("workers", [1, 2])
def test_the_host_combine_sums_groups_of_clients_and_checks_every_row(workers, monkeypatch):
    """Above COMBINE_ROWS clients (no inner products asked) the combine pass sums its
    blocks group by group into the result: X^T c and the squared norms are those of
    all rows, and a non-finite value in the last group is caught with its row named."""
    from flwr_flag.engine import threads
    from flwr_flag.engine.source import NonFiniteUpdateError

    monkeypatch.setattr("flwr_flag.engine.source.COMBINE_ROWS", 4)
    monkeypatch.setattr("flwr_flag.engine.source.COMBINE_MIN_COLUMNS", 64)
    monkeypatch.setattr(threads, "MIN_WORK", 1)
    monkeypatch.setattr(threads, "host_workers", lambda: workers)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(11, 3000, generator=g, dtype=torch.float64)
    c = torch.randn(11, generator=g, dtype=torch.float64)

    def source(rows: torch.Tensor) -> ArraysSource:
        arrays = [[row[:1000].numpy(), row[1000:].numpy()] for row in rows]
        return ArraysSource(arrays, device="cpu", dtype=torch.float64)

    grouped = source(x)
    torch.testing.assert_close(grouped.combine(c), x.T @ c)
    torch.testing.assert_close(grouped.sq_norms(), (x * x).sum(dim=1))
    bad = x.clone()
    bad[9, 2500] = float("nan")
    with pytest.raises(NonFiniteUpdateError) as caught:
        source(bad).combine(c)
    assert caught.value.rows == [9]
