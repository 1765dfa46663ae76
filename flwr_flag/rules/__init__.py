"""Robust aggregation rules: pure torch functions of the updates, no Flower types.

Every rule is called as ``rule(updates, f=0, weights=None, **hyperparameters)`` where
``updates`` is an ``(n, p)`` tensor, per-client lists of arrays, or an
:class:`~flwr_flag.engine.UpdateSource`, and returns an :class:`AggregationResult`
``(vector, diagnostics)``. :func:`aggregate` looks rules up by name and chains
pre-aggregators::

    aggregate(updates, "krum", f=2)
    aggregate(updates, "median", f=2, pre=["nnm"])
    aggregate(updates, "ctma", f=2, base="flag", base_params={"subspace_dim": 4})

Each rule lives in one module of this package, which registers it with a decorator
(:func:`rule`, :func:`span_rule`, :func:`preaggregator`) declaring its hyperparameters
and what it needs (``n >= a f + b``): :data:`RULES` and :data:`PREAGGREGATORS` are the
registries, and ``RULES[name].requirement`` says what a rule needs. The modules are
discovered, so a new rule is a new module (``tests/test_registry.py`` adds one). The
names below are the extension API: the decorators, the round-state provider base
(:class:`RoundState`, :func:`round_state`), the source a rule reads
(:class:`UpdateSource`) and what it returns (:class:`AggregationResult`,
:class:`Preaggregated`, with :class:`Rows` and :class:`PerRow` diagnostics).

Pre-aggregators (``pre=[...]``): ``nnm``, ``bucketing`` (:mod:`.mixing`), ``clip``,
``arc`` (:mod:`.clipping`), and ``anchor`` (:mod:`.anchor`: FLTrust's scoring against
the server's reference update, added by a strategy's ``anchor`` option).
"""

import importlib
import pkgutil

from ..engine import UpdateSource
from .diagnostics import AggregationResult, PerRow, Rows
from .inputs import Requirement
from .registry import (
    PREAGGREGATORS,
    RULES,
    Preaggregated,
    RoundState,
    Rule,
    aggregate,
    get_preaggregator,
    get_rule,
    preaggregator,
    round_state,
    rule,
    span_rule,
)

# Every module of this package is imported so that its rules register themselves (as
# the attacks do): adding a rule is adding a module.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "PREAGGREGATORS",
    "RULES",
    "AggregationResult",
    "PerRow",
    "Preaggregated",
    "Requirement",
    "RoundState",
    "Rows",
    "Rule",
    "UpdateSource",
    "aggregate",
    "get_preaggregator",
    "get_rule",
    "preaggregator",
    "round_state",
    "rule",
    "span_rule",
]
