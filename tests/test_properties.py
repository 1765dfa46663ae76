"""Properties every robust rule should have, checked with hypothesis."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flwr_flag.rules import PREAGGREGATORS, RULES, aggregate, get_rule
from flwr_flag.rules.inputs import InputRangeError

# DETOX needs the group label of every row; tests/test_detox.py covers it.
ALL = sorted(set(RULES) - {"detox"})
# Rules with no tie-dependent or reference-dependent choice: permuting rows cannot
# change the output. (krum/monna pick by index on exact ties; bucketing is random.)
PERMUTATION_INVARIANT = [r for r in ALL if r != "monna"]
# Output moves with a common shift of all updates. FA normalises updates and CC clips
# around a fixed v0, so neither is translation equivariant.
TRANSLATION_EQUIVARIANT = [r for r in ALL if r not in ("flag", "centered-clipping")]
# With f = 0 these reduce to the (weighted) mean.
MEAN_AT_F0 = [
    "mean",
    "trimmed-mean",
    "meamed",
    "multi-krum",
    "bulyan",
    "mda",
    "smea",
    "caf",
    "ctma",
]
# Rules whose output lies in the honest cluster when f updates are far away. Centered
# clipping is left out: it bounds each outlier's pull by tau / n instead of removing it.
# So is FA: these honest updates are nearly parallel, so its r = n/2 subspace has spare
# dimensions that fit an outlier exactly and only the median-norm clipping bounds its
# pull (f/n of the median norm); tests/test_flag.py checks FA where honest updates
# fill the subspace.
ROBUST = [r for r in ALL if r not in ("mean", "centered-clipping", "flag")]

settings.register_profile("rules", max_examples=25, deadline=None, derandomize=True)
settings.load_profile("rules")


@st.composite
def problems(draw, min_n: int = 7):
    n = draw(st.integers(min_n, 12))
    p = draw(st.integers(2, 9))
    f = draw(st.integers(0, (n - 3) // 4))
    seed = draw(st.integers(0, 2**16))
    x = torch.randn(n, p, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return x, f, seed


def run(x: torch.Tensor, rule: str, f: int) -> torch.Tensor:
    return aggregate(x, rule, f).vector


@given(problems(), st.sampled_from(PERMUTATION_INVARIANT))
def test_permutation_invariance(problem, rule):
    x, f, seed = problem
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + 1))
    # Iterative geometric medians (geomed, FA's default output) stop when the objective
    # stops decreasing; a flat objective pins the point only to ~sqrt(machine eps), and
    # the order of the rows changes the rounding. Order dependence shows far above this.
    torch.testing.assert_close(run(x[perm], rule, f), run(x, rule, f), rtol=1e-6, atol=1e-7)


@given(problems(), st.sampled_from(TRANSLATION_EQUIVARIANT))
def test_translation_equivariance(problem, rule):
    x, f, seed = problem
    shift = (
        torch.randn(
            x.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 2)
        )
        * 3
    )
    torch.testing.assert_close(
        run(x + shift, rule, f), run(x, rule, f) + shift, rtol=1e-6, atol=1e-7
    )


@given(problems(), st.sampled_from(ALL))
def test_identical_inputs_return_that_vector(problem, rule):
    x, f, _ = problem
    same = x[:1].repeat(len(x), 1)
    torch.testing.assert_close(run(same, rule, f), x[0], rtol=1e-7, atol=1e-9)


@given(problems(), st.sampled_from(MEAN_AT_F0))
def test_f_zero_is_the_mean(problem, rule):
    x, _, _ = problem
    torch.testing.assert_close(run(x, rule, 0), x.mean(dim=0), rtol=1e-7, atol=1e-9)


@given(problems(min_n=9), st.sampled_from(ROBUST), st.sampled_from([1e3, 1e6]))
def test_far_outliers_do_not_move_the_output(problem, rule, scale):
    x, f, seed = problem
    f = max(f, 1)
    honest = x[f:] * 0.1 + 1.0
    outliers = (
        torch.randn(
            f, x.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 3)
        )
        * scale
    )
    # Outliers last: MoNNA trusts row 0, which must be honest.
    out = run(torch.cat([honest, outliers]), rule, f)
    # Within the honest cluster's bounding box, up to a tenth of its spread.
    spread = honest.max(dim=0).values - honest.min(dim=0).values
    assert bool((out >= honest.min(dim=0).values - 0.1 * spread).all()), rule
    assert bool((out <= honest.max(dim=0).values + 0.1 * spread).all()), rule


def largest_f(rule: str, n: int, pre: tuple[str, ...] = ()) -> int:
    """The largest ``f < n / 2`` that ``rule`` (after ``pre``) accepts with ``n`` rows."""

    def fits(f: int) -> bool:
        rows = n
        for step in pre:
            entry = PREAGGREGATORS[step]
            if rows < entry.requirement.minimum(f):
                return False
            rows = entry.rows(rows, entry.defaults)
        return rows >= get_rule(rule).requirement.minimum(f)

    return max(f for f in range(0, (n + 1) // 2) if fits(f))


# Every rule that claims a breakdown point, alone and behind each pre-aggregator.
# The anchor needs the round's reference update, which a strategy supplies:
# tests/test_anchor.py.
STANDALONE_PRE = sorted(set(PREAGGREGATORS) - {"anchor"})
BREAKDOWN = [(r, ()) for r in ALL if r != "mean"] + [("median", (p,)) for p in STANDALONE_PRE]


@given(
    st.integers(7, 13),
    st.integers(2, 8),
    st.integers(0, 2**16),
    st.floats(0.0, 30.0),
    st.booleans(),
)
@pytest.mark.parametrize("case", BREAKDOWN, ids=lambda c: "+".join((*c[1], c[0])))
def test_breakdown_bound(case, n, p, seed, exponent, together):
    """With the largest f < n/2 the rule accepts, the f other replies anywhere (up to
    1e30, together or apart) cannot take the output out of the honest replies' ball
    times 3. The ball holds the honest replies and the zero update, towards which the
    clipping rules shrink."""
    rule, pre = case
    f = largest_f(rule, n, pre)
    g = torch.Generator().manual_seed(seed)
    honest = 1.0 + 0.1 * torch.randn(n - f, p, dtype=torch.float64, generator=g)
    direction = torch.randn(1 if together else f, p, dtype=torch.float64, generator=g)
    outliers = (direction / direction.norm(dim=1, keepdim=True) * 10**exponent).expand(f, p)
    out = aggregate(torch.cat([honest, outliers]), rule, f, pre=list(pre)).vector
    center = honest.mean(dim=0)
    radius = max(float((honest - center).norm(dim=1).max()), float(center.norm()))
    assert float((out - center).norm()) <= 3 * radius, (rule, pre, f, float(out.norm()))


@st.composite
def degenerate(draw):
    """Updates on one line (through the origin or not), duplicated rows, rank one, or
    a ladder ``0.1 i`` in every coordinate: inputs where Gram-space quadratic forms
    round to tiny negatives."""
    n = draw(st.integers(5, 12))
    p = draw(st.sampled_from([1, 2, 4, 50]))
    kind = draw(st.sampled_from(["line", "shifted-line", "duplicates", "ladder"]))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    direction, t = torch.randn(p, generator=g), torch.randn(n, generator=g)
    if kind == "line":
        x = t[:, None] * direction
    elif kind == "shifted-line":
        x = 3.0 + t[:, None] * direction
    elif kind == "duplicates":
        x = direction.repeat(n, 1)
        x[: n // 3] = torch.randn(n // 3, p, generator=g)
    else:
        x = torch.tensor([[0.1 * i] * p for i in range(n)])
    return x.to(dtype), draw(st.integers(0, (n - 1) // 2))


@settings(max_examples=60)
@given(degenerate(), st.sampled_from(ALL), st.sampled_from([(), *((s,) for s in STANDALONE_PRE)]))
def test_degenerate_inputs_give_a_finite_result_or_a_range_refusal(problem, rule, pre):
    """Collinear, duplicated and rank-one updates: every rule, alone and behind every
    pre-aggregator, returns a finite vector or refuses the round's size
    (:class:`InputRangeError`); nothing else may escape (the geometric median's step
    norm once became complex here)."""
    x, f = problem
    try:
        out = aggregate(x, rule, f, pre=list(pre)).vector
    except InputRangeError:
        return
    assert out.shape == (x.shape[1],)
    assert bool(torch.isfinite(out).all()), (rule, pre)
