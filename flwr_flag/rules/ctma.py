"""CTMA: the centered trimmed meta-aggregator (Dahan & Levy, 2024) over any rule."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..engine import UpdateSource
from ..validation import Real
from .diagnostics import Diagnostics, Rows
from .registry import RuleName, RuleParams, get_rule, span_rule


def trimmed_weights(distances: Tensor, weights: Tensor, trim_fraction: float) -> Tensor:
    r"""Keep the closest :math:`1 - \lambda` of the total weight, renormalised.

    Updates are taken in order of distance (ties by index) with their full weight
    until the kept weight would exceed :math:`1 - \lambda`; the boundary update gets
    the remaining fraction, the rest get zero.
    """
    budget = 1.0 - trim_fraction
    order = torch.sort(distances, stable=True).indices
    before = torch.cumsum(weights[order], 0) - weights[order]
    kept = (budget - before).clamp(min=0.0).minimum(weights[order])
    kept[kept < 1e-12 * budget] = 0.0
    out = torch.zeros_like(weights)
    out[order] = kept
    return out / out.sum()


@span_rule(
    "ctma",
    needs=(2, 1),
    default_pre=("nnm",),  # strategies run NNM first: see strategy.named.CTMA
    # Behind the trust anchor, every row scaled to one length, the reference's unless the
    # round's median norm is longer: field.md, "The anchor's rescaling" (worst case at
    # Dirichlet 0.1 with 2 samples per class 70.7 with the reference's -> 87.2).
    anchored={"anchor.rescale": "longer"},
    params={
        "base": RuleName(exclude=frozenset({"ctma", "detox"})),
        "base_params": RuleParams(optional=True, rule_key="base"),
        "trim_fraction": Real(0.0, 0.5, high_open=True, optional=True),
    },
)
def ctma(
    source: UpdateSource,
    f: int,
    weights: Tensor,
    base: str = "geomed",
    base_params: Mapping[str, Any] | None = None,
    trim_fraction: float | None = None,
) -> tuple[Tensor, Diagnostics]:
    r"""Centered trimmed meta-aggregator, CTMA (Dahan & Levy, ICML 2024).

    Anchor :math:`a = \mathcal{A}(g_1, \dots, g_n)` with the base rule ``base`` (any
    registered rule but ``ctma``, with ``base_params``); sort the updates by
    :math:`\|g_i - a\|`; return the weighted mean of the closest ones holding
    :math:`1 - \lambda` of the total weight, the boundary update with a fractional
    weight (the paper's weighted version). :math:`\lambda` = ``trim_fraction``, by
    default the weight the ``f`` heaviest updates hold together: the most that ``f``
    Byzantine updates can hold, the paper's bound on the Byzantine weight. With uniform
    weights that is ``f / n``, and the result the mean of the ``n - f`` updates closest
    to the anchor.

    Cost on top of the base rule: when the base's output lies in the span of the
    updates (every Gram-space rule) the distances come from the Gram matrix at
    ``O(n^2)``; otherwise (median, trimmed mean, ...) from one ``O(n p)`` pass. Then
    one output pass.
    """
    base_rule = get_rule(base)
    if trim_fraction is None:  # the weights sum to one: f heaviest = worst-case share
        lam = min(float(weights.topk(f).values.sum()) if f else 0.0, 1.0 - 1e-12)
    else:
        lam = trim_fraction
    params = dict(base_params or {})
    if base_rule.coefficients is not None:
        anchor, base_diagnostics = base_rule.coefficients(source, f, weights, **params)
        distances = source.gram().sq_distances_to(anchor)
    else:
        result = base_rule.function(source, f, weights, **params)
        base_diagnostics = result.diagnostics
        distances = source.sq_distances_to(result.vector)
    coefficients = trimmed_weights(distances, weights, lam)
    trimmed = torch.nonzero(coefficients == 0).flatten().tolist()
    return coefficients, {
        "trimmed": Rows(trimmed, outvoted=True),
        "base": base,
        "base_diagnostics": base_diagnostics,
    }
