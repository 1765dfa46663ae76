"""Robust aggregation rules: pure torch functions of the updates, no Flower types.

Every rule is called as ``rule(updates, f=0, weights=None, **hyperparameters)`` where
``updates`` is an ``(n, p)`` tensor, per-client lists of arrays, or an
:class:`~flwr_flag.engine.UpdateSource`, and returns an :class:`AggregationResult`
``(vector, diagnostics)``. :func:`aggregate` looks rules up by name and chains
pre-aggregators::

    aggregate(updates, "krum", f=2)
    aggregate(updates, "median", f=2, pre=["nnm"])
    aggregate(updates, "ctma", f=2, base="flag", base_params={"subspace_dim": 4})

========================  ======================  ===============================
name                      needs                   module
========================  ======================  ===============================
mean                      n >= 1                  :mod:`.mean`
median, trimmed-mean,     n >= 2f + 1             :mod:`.coordinate`
meamed
krum, multi-krum          n >= 2f + 3             :mod:`.krum`
bulyan                    n >= 4f + 3             :mod:`.krum`
geomed                    n >= 2f + 1             :mod:`.geomed`
centered-clipping         n >= 2f + 1             :mod:`.clipping`
monna                     n >= 2f + 1             :mod:`.mixing`
mda, smea                 n >= 2f + 1             :mod:`.subsets`
caf                       n >= 2f + 1             :mod:`.filtering`
flag                      n >= 2f + 1             :mod:`.flag`
ctma                      n >= 2f + 1 (and base)  :mod:`.ctma`
detox                     groups (stage 2 rule)   :mod:`.detox`
========================  ======================  ===============================

Pre-aggregators (``pre=[...]``): ``nnm``, ``bucketing`` (:mod:`.mixing`), ``clip``,
``arc`` (:mod:`.clipping`), and ``anchor`` (:mod:`.anchor`: FLTrust's scoring against
the server's reference update, added by a strategy's ``anchor`` option).
"""

from . import (
    anchor,
    clipping,
    coordinate,
    ctma,
    detox,
    filtering,
    flag,
    geomed,
    krum,
    mean,
    mixing,
    subsets,
)
from .diagnostics import AggregationResult
from .inputs import Requirement
from .registry import (
    PREAGGREGATORS,
    RULES,
    Preaggregated,
    Rule,
    aggregate,
    get_preaggregator,
    get_rule,
)

__all__ = [
    "PREAGGREGATORS",
    "RULES",
    "AggregationResult",
    "Preaggregated",
    "Requirement",
    "Rule",
    "aggregate",
    "anchor",
    "clipping",
    "coordinate",
    "ctma",
    "detox",
    "filtering",
    "flag",
    "geomed",
    "get_preaggregator",
    "get_rule",
    "krum",
    "mean",
    "mixing",
    "subsets",
]
