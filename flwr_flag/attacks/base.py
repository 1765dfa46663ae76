"""The interface every node behaviour implements, and the registry of behaviours.

A behaviour acts at three points of a training round, all optional:

* :meth:`Behaviour.labels` -- the labels the node trains on (label flipping);
* :meth:`Behaviour.update` -- the update it reports, from its honest update
  ``g = w_local - w`` (a flat float32 vector over the model's float arrays); returning
  ``None`` sends no reply;
* :meth:`Behaviour.before_reply` -- side effects (crash, straggle).

This project's ClientApp and :func:`~flwr_flag.attacks.mod.byzantine_mod` send
``w + update`` for float arrays (others stay as trained), so the server sees exactly the
update a behaviour returns. Randomness comes only from
``context.rng``, seeded by (run seed, round, partition): a behaviour is deterministic
given the seed. Subclasses register themselves by ``name``; a new behaviour is one
module in this package.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from ..validation import InvalidParameterError, Param

BEHAVIOURS: dict[str, type[Behaviour]] = {}

_SHARED: OrderedDict[tuple, Any] = OrderedDict()


def shared(key: tuple, make: Callable[[], Any], size: int = 32) -> Any:
    """``make()``, computed once per ``key`` among the last ``size`` keys of this
    process. Colluders that run in one process (a simulation) and know the same things
    reach the same result: the first computes it, the others reuse it. ``key`` must hold
    everything the result depends on."""
    if key not in _SHARED:
        _SHARED[key] = make()
        while len(_SHARED) > size:
            _SHARED.popitem(last=False)
    return _SHARED[key]


def digest(*arrays: np.ndarray) -> bytes:
    """A short fingerprint of arrays' contents, for :func:`shared` keys."""
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.digest()


@dataclass
class AttackContext:
    """What a behaviour may use in a round.

    ``honest_samples(k)`` trains ``k`` more honest updates on bootstrap resamples of
    the node's own data (what a colluding attacker on one SuperNode can compute to
    estimate the honest mean and spread); ``honest_update_for(pid)`` trains on
    partition ``pid``'s data, reachable in a simulation where all partitions live on
    one machine; ``population_samples(k)``, where reachable, the updates of ``k`` honest
    nodes drawn at random for the round (the same for every colluder).
    ``run_config`` is the run's config as the node received it: where it names the
    server's rule and options, the colluders know them. ``anchor_reference()``, where
    reachable, is the server's trust-anchor update of the round, computed as the server
    does (in a simulation: the same trusted samples, the same seed), ``(p,)``, or
    ``(K, p)`` for the per-class anchor: full knowledge of the anchor.
    """

    rng: np.random.Generator
    server_round: int
    num_nodes: int
    num_byzantine: int
    honest_samples: Callable[[int], np.ndarray]
    honest_update_for: Callable[[int], np.ndarray]
    population_samples: Callable[[int], np.ndarray] | None = None
    run_config: Mapping[str, Any] = field(default_factory=dict)
    anchor_reference: Callable[[], np.ndarray] | None = None


class Behaviour:
    """Honest by default; subclasses override what they change."""

    name: ClassVar[str] = "honest"
    needs: ClassVar[str | None] = None
    """What the behaviour needs beyond the node's own update (training data), if
    anything; :func:`~flwr_flag.attacks.mod.byzantine_mod` refuses such behaviours."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:  # shared bases without a name of their own stay out
            BEHAVIOURS[cls.name] = cls

    params: ClassVar[Mapping[str, Param]] = {}
    """The behaviour's parameters and their kinds, declared once: :func:`make_behaviour`,
    the constructor and :func:`~flwr_flag.attacks.mod.byzantine_mod` check them from
    here (the defaults are the constructor's)."""

    def __init__(self, **values: Any) -> None:
        for key, value in values.items():
            setattr(self, key, self.params[key].check(f"attack {self.name}", key, value))

    def labels(self, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        return y

    def update(self, honest: np.ndarray, context: AttackContext) -> np.ndarray | None:
        return honest

    def before_reply(self, context: AttackContext) -> None:
        return None

    @classmethod
    def parameters(cls) -> list[str]:
        """The names of the behaviour's parameters."""
        return list(cls.params)

    def describe(self) -> dict[str, Any]:
        """Name and parameters, reported in the reply."""
        return {"name": self.name, **{k: getattr(self, k) for k in self.parameters()}}


BEHAVIOURS["honest"] = Behaviour


def make_behaviour(
    name: str, params: dict[str, Any], key: Callable[[str], str] | None = None
) -> Behaviour:
    """Behaviour ``name`` with ``params``, each checked against its declaration; errors
    list the valid names or parameters. ``key(param)`` is how the caller's config names
    a parameter (the mod: ``byzantine.<attack>.<param>``), so that errors name it."""
    if name not in BEHAVIOURS:
        raise InvalidParameterError(f"attack={name!r} is not one of {sorted(BEHAVIOURS)}")
    cls = BEHAVIOURS[name]
    owner, key = (f"attack {name}", str) if key is None else ("run config", key)
    accepted = cls.parameters()
    unknown = sorted(key(p) for p in set(params) - set(accepted))
    if unknown:
        raise InvalidParameterError(
            f"{owner}: unknown parameter(s) {unknown}; accepted {[key(p) for p in accepted]}"
        )
    for param, value in params.items():
        cls.params[param].check(owner, key(param), value)
    return cls(**params)
