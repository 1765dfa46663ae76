"""Every rule against a brute-force reference written here from the paper's definition
(pairwise loops, explicit sorts, p x p matrices), in float64 on random data."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from flwr_flag.rules import aggregate

SHAPES = [(7, 1, 5), (11, 2, 9), (15, 3, 6), (16, 3, 12)]  # (n, f, p)
SORTED = [*SHAPES, (31, 7, 5)]  # n > NETWORK_MAX_ROWS: numpy's sort, not the network


def data(n: int, p: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p))
    x[: max(1, n // 5)] += rng.normal(scale=8.0, size=(max(1, n // 5), p))  # outliers
    return x


def ours(x: np.ndarray, rule: str, f: int, **kw) -> np.ndarray:
    vector, _ = aggregate(torch.from_numpy(x), rule, f, **kw)
    return vector.numpy()


def dist2(a: np.ndarray, b: np.ndarray) -> float:
    return float(sum((ai - bi) ** 2 for ai, bi in zip(a, b, strict=True)))


def krum_scores(x: np.ndarray, f: int) -> list[float]:
    n = len(x)
    scores = []
    for i in range(n):
        others = sorted(dist2(x[i], x[j]) for j in range(n) if j != i)
        scores.append(sum(others[: max(1, n - f - 2)]))
    return scores


def krum_order(x: np.ndarray, f: int) -> list[int]:
    """Indices by Krum score; exact ties go to the smaller total distance, then index."""
    scores = krum_scores(x, f)
    total = [sum(dist2(a, b) for b in x) for a in x]
    return sorted(range(len(x)), key=lambda i: (scores[i], total[i], i))


def around_median(column: np.ndarray, keep: int) -> float:
    med = np.median(column)
    ranked = sorted(column, key=lambda v: abs(v - med))
    return float(np.mean(ranked[:keep]))


@pytest.fixture(params=SHAPES, ids=lambda s: "n{}-f{}-p{}".format(*s))
def case(request):
    n, f, p = request.param
    return data(n, p, seed=n * 100 + p), f


@pytest.fixture(params=SORTED, ids=lambda s: "n{}-f{}-p{}".format(*s))
def sorted_case(request):
    """The coordinate-wise rules' cases: both order-statistics kernels."""
    n, f, p = request.param
    return data(n, p, seed=n * 100 + p), f


def test_mean_weighted(case):
    x, f = case
    w = np.arange(1, len(x) + 1, dtype=float)
    expected = sum(wi * xi for wi, xi in zip(w, x, strict=True)) / w.sum()
    np.testing.assert_allclose(ours(x, "mean", f, weights=w), expected, rtol=1e-12)


def test_median(sorted_case):
    x, f = sorted_case
    expected = [
        np.sort(x[:, j])[len(x) // 2]
        if len(x) % 2
        else np.sort(x[:, j])[len(x) // 2 - 1 : len(x) // 2 + 1].mean()
        for j in range(x.shape[1])
    ]
    np.testing.assert_allclose(ours(x, "median", f), expected, rtol=1e-12)


def test_trimmed_mean(sorted_case):
    x, f = sorted_case
    expected = [np.sort(x[:, j])[f : len(x) - f].mean() for j in range(x.shape[1])]
    np.testing.assert_allclose(ours(x, "trimmed-mean", f), expected, rtol=1e-12)


def test_meamed(sorted_case):
    x, f = sorted_case
    expected = [around_median(x[:, j], len(x) - f) for j in range(x.shape[1])]
    np.testing.assert_allclose(ours(x, "meamed", f), expected, rtol=1e-12)


@pytest.mark.parametrize("n", [5, 8, 30])
def test_mean_around_median_keeps_a_nearest_set_on_ties(n):
    from flwr_flag.rules.coordinate import mean_around_median

    # Small integers: many values exactly as far from the median as others.
    x = np.random.default_rng(n).integers(-3, 4, size=(n, 400)).astype(np.float64)
    for keep in range(n // 2 + 1, n + 1):
        got = mean_around_median(torch.from_numpy(x), keep).numpy()
        for j, column in enumerate(x.T):
            distance = np.abs(column - np.median(column))
            cut = np.sort(distance)[keep - 1]
            inside, tied = column[distance < cut], column[distance == cut]
            # The rest are tied values, below or above the median: any mix will do.
            rest, below = keep - len(inside), int((tied < np.median(column)).sum())
            low, high = tied.min(), tied.max()
            means = [
                (inside.sum() + k * low + (rest - k) * high) / keep
                for k in range(max(0, rest - (len(tied) - below)), min(rest, below) + 1)
            ]
            assert any(math.isclose(got[j], m, abs_tol=1e-12) for m in means), (keep, j)


def test_krum(case):
    x, f = case
    best = krum_order(x, f)[0]
    vector, diagnostics = aggregate(torch.from_numpy(x), "krum", f)
    assert diagnostics["selected"] == [best]
    np.testing.assert_allclose(diagnostics["scores"], krum_scores(x, f), rtol=1e-9)
    np.testing.assert_allclose(vector.numpy(), x[best], rtol=1e-12)


@pytest.mark.parametrize("m", [None, 3])
def test_multi_krum(case, m):
    x, f = case
    w = np.linspace(1, 2, len(x))
    m = len(x) - f if m is None else m
    chosen = krum_order(x, f)[:m]
    expected = sum(w[i] * x[i] for i in chosen) / w[chosen].sum()
    np.testing.assert_allclose(ours(x, "multi-krum", f, weights=w, m=m), expected, rtol=1e-10)


def test_bulyan(sorted_case):
    x, f = sorted_case
    remaining, selected = list(range(len(x))), []
    for _ in range(len(x) - 2 * f):
        selected.append(remaining.pop(krum_order(x[remaining], f)[0]))
    beta = len(selected) - 2 * f
    chosen = x[sorted(selected)]
    expected = [around_median(chosen[:, j], beta) for j in range(x.shape[1])]
    np.testing.assert_allclose(ours(x, "bulyan", f), expected, rtol=1e-10)


def test_geometric_median(case):
    x, f = case
    w = np.linspace(1, 3, len(x))
    w = w / w.sum()
    z = w @ x
    for _ in range(5000):
        d = np.array([max(1e-12, math.sqrt(dist2(z, xi))) for xi in x])
        z = (w / d) @ x / (w / d).sum()

    def objective(v):
        return sum(wi * np.linalg.norm(v - xi) for wi, xi in zip(w, x, strict=True))

    got = ours(x, "geomed", f, weights=w, tol=1e-15, max_iter=5000, nu=1e-12)
    assert objective(got) <= objective(z) + 1e-9
    np.testing.assert_allclose(got, z, atol=1e-5)


@pytest.mark.parametrize("iterations", [1, 3])
def test_centered_clipping(case, iterations):
    x, f = case
    previous = np.full(x.shape[1], 0.3)
    tau = 2.0
    v = previous.copy()
    for _ in range(iterations):
        v = v + np.mean([(xi - v) * min(1.0, tau / np.linalg.norm(xi - v)) for xi in x], axis=0)
    got = ours(
        x,
        "centered-clipping",
        f,
        previous=torch.from_numpy(previous),
        tau=tau,
        iterations=iterations,
    )
    np.testing.assert_allclose(got, v, rtol=1e-10)


def test_nnm_then_mean(case):
    x, f = case
    mixed = []
    for i in range(len(x)):
        near = sorted(range(len(x)), key=lambda j: (dist2(x[i], x[j]), j != i))[: len(x) - f]
        mixed.append(x[near].mean(axis=0))
    np.testing.assert_allclose(ours(x, "mean", f, pre=["nnm"]), np.mean(mixed, axis=0), rtol=1e-10)


def test_bucketing_then_median(case):
    x, f = case
    s = 2
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(7)).tolist()
    buckets = [x[order[i : i + s]].mean(axis=0) for i in range(0, len(x), s)]
    n_buckets = len(buckets)
    f = min(f, (n_buckets - 1) // 2)
    got = ours(x, "median", f, pre=[("bucketing", {"s": s, "seed": 7})])
    np.testing.assert_allclose(got, np.median(buckets, axis=0), rtol=1e-10)


def test_static_clipping_then_mean(case):
    x, f = case
    tau = 2.5
    clipped = [xi * min(1.0, tau / np.linalg.norm(xi)) for xi in x]
    got = ours(x, "mean", f, pre=[("clip", {"tau": tau})])
    np.testing.assert_allclose(got, np.mean(clipped, axis=0), rtol=1e-10)


def test_arc_then_mean(case):
    x, f = case
    n = len(x)
    k = int(2 * (f / n) * (n - f))
    order = sorted(range(n), key=lambda i: -np.linalg.norm(x[i]))
    threshold = np.linalg.norm(x[order[k]])
    clipped = [
        x[i] * (threshold / np.linalg.norm(x[i]) if i in order[:k] else 1.0) for i in range(n)
    ]
    np.testing.assert_allclose(
        ours(x, "mean", f, pre=["arc"]), np.mean(clipped, axis=0), rtol=1e-10
    )


def test_monna(case):
    x, f = case
    ref = 2
    near = sorted(range(len(x)), key=lambda j: dist2(x[ref], x[j]))[: len(x) - f]
    np.testing.assert_allclose(ours(x, "monna", f, reference=ref), x[near].mean(axis=0), rtol=1e-10)


def subsets(n: int, f: int):
    return itertools.combinations(range(n), n - f)


def test_mda(case):
    x, f = case

    def diameter(s):
        return max(dist2(x[i], x[j]) for i in s for j in s)

    best = min(subsets(len(x), f), key=diameter)
    np.testing.assert_allclose(ours(x, "mda", f), x[list(best)].mean(axis=0), rtol=1e-10)


def test_smea(case):
    x, f = case

    def top_eigenvalue(s):
        y = x[list(s)] - x[list(s)].mean(axis=0)
        return np.linalg.eigvalsh(y.T @ y / len(s))[-1]

    best = min(subsets(len(x), f), key=top_eigenvalue)
    np.testing.assert_allclose(ours(x, "smea", f), x[list(best)].mean(axis=0), rtol=1e-10)


def test_caf(case):
    x, f = case
    n = len(x)
    c = np.ones(n)
    best_value, best = np.inf, x.mean(axis=0)
    while c.sum() > n - 2 * f:
        mu = c @ x / c.sum()
        y = x - mu
        cov = (c[:, None] * y).T @ y / c.sum()
        values, vectors = np.linalg.eigh(cov)
        if values[-1] < best_value:
            best_value, best = values[-1], mu
        tau = (y @ vectors[:, -1]) ** 2 * (c > 0)
        c = c * (1 - tau / tau.max())
    np.testing.assert_allclose(ours(x, "caf", f), best, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("base", ["geomed", "median", "krum"])
def test_ctma(case, base):
    x, f = case
    w = np.linspace(1, 2, len(x))
    anchor = ours(x, base, f, weights=w)
    order = sorted(range(len(x)), key=lambda i: dist2(x[i], anchor))
    # The default trim: the share of the f heaviest weights, the most f liars can hold.
    budget, kept = w.sum() - np.sort(w)[len(x) - f :].sum(), np.zeros(len(x))
    for i in order:
        kept[i] = min(w[i], max(0.0, budget - kept.sum()))
    expected = kept @ x / kept.sum()
    np.testing.assert_allclose(ours(x, "ctma", f, weights=w, base=base), expected, rtol=1e-9)


def flag_reference(x: np.ndarray, r: int, lam: float, eps: float, iterations: int):
    """FA by IRLS with the explicit p x p scatter, for small p."""
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    n = len(u)
    d2, w = np.ones(n), np.ones((n, n)) - np.eye(n)
    for _ in range(iterations):
        scatter = sum(d2[i] * np.outer(u[i], u[i]) for i in range(n))
        scatter = scatter + lam * sum(
            w[i, j] * np.outer(u[i] - u[j], u[i] - u[j]) for i in range(n) for j in range(i)
        )
        y = np.linalg.eigh(scatter)[1][:, ::-1][:, :r]
        ratios = np.array([np.linalg.norm(y.T @ ui) ** 2 for ui in u])
        pair = np.array(
            [
                [
                    np.linalg.norm(u[i] - u[j]) ** 2 - np.linalg.norm(y.T @ (u[i] - u[j])) ** 2
                    for j in range(n)
                ]
                for i in range(n)
            ]
        )
        d2 = (1 - ratios + eps) ** -0.5
        w = (np.clip(pair, 0, None) + eps) ** -0.5 * (1 - np.eye(n))
    return y, ratios


@pytest.mark.parametrize("lam", [0.0, 0.3])
def test_flag_matches_explicit_scatter(case, lam):
    x, f = case
    p = x.shape[1]
    r = min(3, p - 1)
    steps = 4
    y, ratios = flag_reference(x, r, lam, 1e-6, steps)
    settings = {"subspace_dim": r, "lam": lam, "eps": 1e-6, "tol": 0.0, "max_iter": steps}
    vector, diagnostics = aggregate(torch.from_numpy(x), "flag", f, output="paper", **settings)
    np.testing.assert_allclose(diagnostics["ratios"], ratios, atol=1e-8)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(vector.numpy(), y @ y.T @ u.sum(axis=0) / r, atol=1e-8)
    norms = np.linalg.norm(x, axis=1)
    clipped_mean = np.mean(x * np.minimum(1, np.median(norms) / norms)[:, None], axis=0)
    projected, _ = aggregate(torch.from_numpy(x), "flag", f, output="projected-mean", **settings)
    np.testing.assert_allclose(projected.numpy(), y @ y.T @ clipped_mean, atol=1e-8)
    clipped = x * np.minimum(1, np.median(norms) / norms)[:, None]
    center = clipped.mean(axis=0)
    for _ in range(3000):  # Weiszfeld for the geometric median of the clipped updates
        inverse = 1 / np.maximum(np.linalg.norm(clipped - center, axis=1), 1e-12)
        center = inverse @ clipped / inverse.sum()
    default, _ = aggregate(torch.from_numpy(x), "flag", f, **settings)
    np.testing.assert_allclose(default.numpy(), y @ y.T @ center, atol=1e-6)
