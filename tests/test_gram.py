"""The Gram matrix: exact algebra, and float32 precision where updates are hard."""

from __future__ import annotations

import pytest
import torch

from flwr_flag.engine import ArraysSource, StackedSource

G = torch.Generator().manual_seed(0)


def exact_sq_distances(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return (x[:, None, :] - x[None, :, :]).square().sum(-1)


def arrays_source(x32: torch.Tensor, chunk_size: int) -> ArraysSource:
    """The same rows as replies: two arrays per client, the host's block-wise pass."""
    rows = x32.numpy()
    return ArraysSource(
        [[r[:1000].reshape(10, 100), r[1000:]] for r in rows], chunk_size=chunk_size
    )


SOURCES = {"stacked": StackedSource, "arrays": arrays_source}


def honest_distance_error(
    x32: torch.Tensor, honest: slice, chunk: int = 1000, kind: str = "stacked"
) -> float:
    got = SOURCES[kind](x32, chunk_size=chunk).gram().sq_distances()[honest, honest]
    want = exact_sq_distances(x32)[honest, honest]
    off = ~torch.eye(want.shape[0], dtype=torch.bool)
    return float(((got - want).abs()[off] / want[off]).max())


@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_large_common_offset_is_resolved(kind):
    # All updates share a component 1e5 times their spread: uncentred float32 would
    # lose every digit of their distances.
    x = 1e3 + torch.randn(8, 4096, generator=G, dtype=torch.float64) * 1e-2
    assert honest_distance_error(x.float(), slice(None), kind=kind) < 1e-3


@pytest.mark.parametrize("kind", sorted(SOURCES))
@pytest.mark.parametrize("scale", [1e4, 1e8])
def test_one_huge_update_does_not_blur_the_others(scale, kind):
    honest = 5.0 + torch.randn(10, 4096, generator=G) * 0.1
    attacker = torch.randn(1, 4096, generator=G) * scale
    x = torch.cat([attacker, honest])
    assert honest_distance_error(x, slice(1, None), kind=kind) < 1e-3


def test_norms_are_exact_and_zero_rows_stay_zero():
    x = torch.randn(6, 3000, generator=G)
    x[2] = 0
    x[4] *= 1e-6
    x[5] *= 1e6
    gram = StackedSource(x, chunk_size=700).gram()
    want = x.double().square().sum(1)
    assert gram.sq_norms[2] == 0
    torch.testing.assert_close(gram.sq_norms, want, rtol=1e-6, atol=0)


def test_mix_subset_and_affine_distances_are_exact():
    x = torch.randn(7, 50, generator=G, dtype=torch.float64) + 3.0
    gram = StackedSource(x, chunk_size=9).gram()
    p = torch.rand(4, 7, generator=G, dtype=torch.float64)  # not row-stochastic
    mixed = p @ x
    torch.testing.assert_close(gram.mix(p).raw(), mixed @ mixed.T)
    torch.testing.assert_close(gram.mix(p).sq_distances(), exact_sq_distances(mixed))
    rows = torch.tensor([5, 1, 3])
    torch.testing.assert_close(gram.subset(rows).raw(), x[rows] @ x[rows].T)
    b = torch.randn(2, 7, generator=G, dtype=torch.float64)  # sums are not 1
    want = ((b @ x)[:, None, :] - x[None, :, :]).square().sum(-1)
    torch.testing.assert_close(gram.sq_distances_to(b), want)


def test_gram_with_point_appends_a_row():
    x = torch.randn(5, 40, generator=G, dtype=torch.float64)
    point = torch.randn(40, generator=G, dtype=torch.float64)
    full = torch.cat([x, point[None]])
    torch.testing.assert_close(StackedSource(x, chunk_size=7).gram_with(point).raw(), full @ full.T)
