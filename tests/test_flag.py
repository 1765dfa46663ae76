"""Flag Aggregator: IRLS convergence and behaviour on planted data."""

from __future__ import annotations

import itertools

import torch

from flwr_flag.rules import aggregate


def planted(n_honest: int, n_bad: int, p: int, r: int, seed: int) -> torch.Tensor:
    """Honest updates near an r-dim subspace; outliers orthogonal to it."""
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=torch.float64))
    inside, outside = basis[:, :r], basis[:, r:]
    # A shared direction inside the subspace, as real updates have, plus spread.
    honest = (torch.randn(n_honest, r, generator=g, dtype=torch.float64) + 2.0) @ inside.T
    honest += 0.05 * torch.randn(n_honest, p, generator=g, dtype=torch.float64)
    bad = 3 * torch.randn(n_bad, p - r, generator=g, dtype=torch.float64) @ outside.T
    return torch.cat([honest, bad])


def test_converged_objective_no_worse_than_one_step():
    for seed in range(5):
        x = torch.randn(15, 40, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        one = aggregate(x, "flag", 3, subspace_dim=6, max_iter=1).diagnostics
        full = aggregate(x, "flag", 3, subspace_dim=6).diagnostics
        assert full["converged"]
        assert full["iterations"] > 1
        assert full["objective"] <= one["objective"] + 1e-12


def test_objective_decreases_monotonically():
    x = torch.randn(12, 30, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    objectives = [
        aggregate(x, "flag", 2, subspace_dim=4, lam=0.2, tol=0.0, max_iter=k).diagnostics[
            "objective"
        ]
        for k in range(1, 8)
    ]
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(objectives))


def test_planted_outliers_get_the_lowest_weights():
    n_honest, n_bad = 12, 3
    x = planted(n_honest, n_bad, p=50, r=3, seed=0)
    result = aggregate(x, "flag", n_bad, subspace_dim=3)
    weights = torch.tensor(result.diagnostics["irls_weights"])
    ratios = torch.tensor(result.diagnostics["ratios"])
    assert weights[n_honest:].max() < weights[:n_honest].min()
    assert ratios[n_honest:].max() < 0.1 < 0.9 < ratios[:n_honest].min()
    # The aggregate has (almost) nothing outside the honest subspace.
    honest_only = aggregate(x[:n_honest], "flag", 0, subspace_dim=3).vector
    assert (result.vector - honest_only).norm() < 0.2 * honest_only.norm()


def test_sign_flipped_minority_does_not_shrink_the_default_output():
    # A subspace cannot tell g from -g: sign-flipped updates are reconstructed like honest
    # ones. The default output projects a geometric median, which outvotes them; the
    # projected mean is pulled towards zero (what the robustness study showed).
    honest = planted(12, 0, p=60, r=3, seed=4) + 2.0
    x = torch.cat([honest, -honest[:3]])
    clean = aggregate(honest, "flag", 0, subspace_dim=3).vector
    default = aggregate(x, "flag", 3, subspace_dim=3).vector
    mean = aggregate(x, "flag", 3, subspace_dim=3, output="projected-mean").vector
    assert (default - clean).norm() < 0.15 * clean.norm()
    assert (mean - clean).norm() > 2 * (default - clean).norm()


def test_zero_updates_are_dropped():
    x = torch.randn(9, 20, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x[4] = 0
    result = aggregate(x, "flag", 1)
    assert result.diagnostics["ratios"][4] == 0.0
    assert result.diagnostics["irls_weights"][4] == 0.0
    assert torch.isfinite(result.vector).all()


def test_with_f_zero_nobody_is_outvoted():
    """Before: FA with f = 0 reported its lowest-weight node as outvoted."""
    x = torch.randn(6, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert aggregate(x, "flag", 0).diagnostics["least_influence"] == []
    assert len(aggregate(x, "flag", 2).diagnostics["least_influence"]) == 2


def test_the_least_influence_rows_are_a_sign_flipped_minority():
    """Before: the IRLS weights named honest rows, since a subspace cannot tell an update
    from its sign flip; the influence on the projected point can (clip and median)."""
    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        mean = torch.randn(200, generator=g, dtype=torch.float64)
        x = mean + torch.randn(10, 200, generator=g, dtype=torch.float64)
        x[:2] = -10 * x[:2]
        assert sorted(aggregate(x, "flag", 2).diagnostics["least_influence"]) == [0, 1]
