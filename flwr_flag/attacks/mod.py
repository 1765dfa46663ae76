r"""``byzantine_mod``: this library's Byzantine behaviours for any Flower ClientApp.

::

    from flwr_flag.attacks import byzantine_mod

    app = ClientApp(mods=[byzantine_mod])

Configuration, Flower's way: keys in the project's ``[tool.flwr.app.config]`` (so
``--run-config`` can override them)::

    byzantine.nodes = "0,1"         # partition ids, or a count N (partitions 0..N-1); "" none
    byzantine.attack = "sign-flip"  # any behaviour of flwr_flag.attacks but label-flip, mimic
    byzantine.sign-flip.k = 10.0    # byzantine.<attack>.<param>
    byzantine.seed = 0              # the behaviours' randomness
    byzantine.spread = 1.0          # the honest spread the colluding attacks assume, in
                                    # multiples of |u|; 0: re-run the ClientApp instead

A node's ``partition-id`` and ``num-partitions`` come from its node config (the
simulation sets them; on a SuperNode, ``--node-config``), and ``--node-config
"byzantine=true"`` (or ``false``) decides for that node alone.

On a Byzantine node a train reply's float arrays become ``w + attack(u)``, where ``w``
is what the node received and ``u = w_local - w`` its honest update; other arrays, the
metrics and every other record pass through. Honest nodes' replies and evaluate
messages are returned as the ClientApp made them, except that every train reply gets a
``node`` config record with the node's ``partition-id`` (where its node config has one
and the app sent no such record), so that the strategies can name the nodes a round
limited by the ids attacks are configured with. ``drop`` answers with an error reply;
``crash`` raises; ``straggle`` sleeps before training.

The colluding attacks (ALIE, IPM, min-max, min-sum, consistent) need an estimate of
the honest updates' mean and coordinate-wise spread, which a mod cannot measure: it
sees one node's update ``u`` and no one else's, nor its data. By default it assumes a
documented prior, ``samples`` draws :math:`u + \rho |u| \odot \varepsilon`,
:math:`\varepsilon \sim N(0, I)`: mean ``u``, spread :math:`\rho |u|` per coordinate,
``rho = byzantine.spread`` (1.0: honest nodes disagree about as much as a coordinate's
size, as on non-IID data; the field study measured the spread at 3-5 times the mean's
norm at Dirichlet 0.1). It costs no training. ``byzantine.spread = 0`` re-runs the
wrapped ClientApp ``samples`` more times on copies of the message instead: its spread is
the app's own training noise (batch order, augmentation), none for an app that trains
deterministically, and each Byzantine node's round then costs ``samples + 1`` trainings.
This project's ClientApp, which holds the data, resamples its partition instead
(bootstrap). ALIE's pull on a mean is :math:`(f/n) z \sigma` per coordinate, so its
damage grows with the spread assumed (``tests/test_attack_mod.py`` measures it against
FedAvg and the median). Behaviours that need training data
(``label-flip``, ``mimic``) are refused: they live in a ClientApp with data access, as
this project's ``clients/``.

Every key is checked at each message, honest nodes included, so a bad setting is an
error at the first message, naming the key; a ``byzantine.*`` key the mod does not
know (a typo such as ``byzantine.node``) is an error too, and so is a node named twice.
A ServerApp stops such a run before round 1 with :func:`check_mod_config`.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, RecordDict

from ..runconfig import section
from ..validation import InvalidParameterError, Real, check_int
from .base import BEHAVIOURS, AttackContext, Behaviour, make_behaviour
from .selection import node_list
from .updates import Arrays, apply_update, flatten, float_names, round_seed, to_record

MOD_ERROR = 410
"""The error code of a dropped reply."""


@dataclass(frozen=True)
class ByzantinePlan:
    """One node's part in the attack, read from its context (see the module docstring)."""

    behaviour: Behaviour | None
    partition_id: int
    num_nodes: int
    num_byzantine: int
    seed: int
    spread: float = 1.0
    """:math:`\rho` of the honest-spread prior; 0: re-run the ClientApp instead."""

    @classmethod
    def from_context(cls, context: Context) -> ByzantinePlan:
        return cls.from_configs(context.run_config, context.node_config)

    @classmethod
    def from_configs(cls, run: Mapping[str, Any], node: Mapping[str, Any]) -> ByzantinePlan:
        """The plan of the node with ``node`` config in a run with ``run`` config."""
        unknown = sorted(k for k in run if k.startswith(PREFIX) and k not in known_keys())
        if unknown:
            raise InvalidParameterError(
                f"byzantine_mod: unknown key(s) {unknown}; known: {', '.join(KEYS)} and "
                f"{PREFIX}<attack>.<parameter> for the attacks {sorted(BEHAVIOURS)}"
            )
        num_nodes = _int(node, "num-partitions", 1, low=1)
        partition = _int(node, "partition-id", 0, low=0)
        if partition >= num_nodes:
            raise InvalidParameterError(
                f"node config partition-id={partition} is out of range; allowed "
                f"0 <= partition-id < num-partitions={num_nodes}"
            )
        nodes = node_list("byzantine.nodes", run.get("byzantine.nodes", ""), num_nodes)
        attack = run.get("byzantine.attack", "sign-flip")
        if not isinstance(attack, str):
            raise InvalidParameterError(f"byzantine.attack={attack!r} must be a string")
        if attack not in BEHAVIOURS:
            raise InvalidParameterError(
                f"byzantine.attack={attack!r} is not one of {sorted(BEHAVIOURS)}"
            )
        behaviour = make_behaviour(
            attack,
            section(run, f"byzantine.{attack}"),
            key=lambda param: f"byzantine.{attack}.{param.replace('_', '-')}",
        )
        if behaviour.needs:
            raise InvalidParameterError(
                f"byzantine.attack={attack!r} needs {behaviour.needs}, which a mod cannot "
                "reach; use it in a ClientApp with data access (this project's clients/)"
            )
        flag = node.get("byzantine", partition in nodes)
        if not isinstance(flag, bool):
            raise InvalidParameterError(f"node config byzantine={flag!r} must be true or false")
        return cls(
            behaviour if flag else None,
            partition,
            num_nodes,
            len(nodes),
            _int(run, "byzantine.seed", 0, low=0),
            Real(0.0).check("byzantine_mod", "byzantine.spread", run.get("byzantine.spread", 1.0)),
        )


def check_mod_config(run_config: Mapping[str, Any], num_nodes: int = 0) -> None:
    """Check the ``byzantine.*`` keys of ``run_config`` as every node will, so that a
    bad one stops the run before round 1 instead of failing every client message: one
    line in a ServerApp's ``main`` (this project's calls it). ``num_nodes`` (0: not
    known yet) bounds ``byzantine.nodes``. A run config without such keys passes."""
    if any(k.startswith(PREFIX) for k in run_config):
        node = {"partition-id": 0, "num-partitions": num_nodes or 2**31 - 1}
        ByzantinePlan.from_configs(run_config, node)


PREFIX = "byzantine."
KEYS = ("byzantine.nodes", "byzantine.attack", "byzantine.seed", "byzantine.spread")


def known_keys() -> set[str]:
    """Every run-config key the mod reads: its own and each behaviour's parameters
    (``byzantine.<attack>.<parameter>``, dashes for underscores)."""
    return set(KEYS) | {
        f"{PREFIX}{name}.{param.replace('_', '-')}"
        for name, cls in BEHAVIOURS.items()
        for param in cls.parameters()
    }


def _int(config, key: str, default: int, low: int) -> int:
    return check_int("byzantine_mod", key, config.get(key, default), low)


def _arrays(content: RecordDict) -> tuple[str, ArrayRecord]:
    """The train message's (or reply's) one ArrayRecord, with its key."""
    records = content.array_records
    if len(records) != 1:
        raise ValueError(f"byzantine_mod: expected one ArrayRecord, found {sorted(records)}")
    return next(iter(records.items()))


def _numpy(record: ArrayRecord) -> Arrays:
    return OrderedDict((k, v.numpy()) for k, v in record.items())


def byzantine_mod(message: Message, context: Context, call_next) -> Message:
    """A Flower ClientApp mod: Byzantine nodes replace their train replies' updates by
    their behaviour's (see the module docstring); everything else passes through."""
    plan = ByzantinePlan.from_context(context)
    category = message.metadata.message_type.split(".")[0]
    if category != MessageType.TRAIN:
        return call_next(message, context)
    if plan.behaviour is None:
        return labelled(call_next(message, context), context)
    _, sent_record = _arrays(message.content)
    sent = _numpy(sent_record)
    names = float_names(sent)
    config = message.content.config_records.get("config", {})
    server_round = int(config.get("server-round", 0))

    def update_of(reply: Message) -> tuple[str, Arrays, np.ndarray]:
        key, record = _arrays(reply.content)
        trained = _numpy(record)
        return key, trained, flatten(trained, names) - flatten(sent, names)

    def honest_samples(k: int) -> np.ndarray:
        if plan.spread > 0:  # the documented prior: mean u, spread rho |u|
            noise = np.random.default_rng(
                round_seed(plan.seed, server_round, plan.partition_id) + 1
            ).standard_normal((k, update.size))
            return update + plan.spread * np.abs(update) * noise
        replies = [call_next(copy.deepcopy(message), copy.deepcopy(context)) for _ in range(k)]
        return np.stack([update_of(r)[2] for r in replies if not r.has_error()])

    def not_reachable(partition_id: int) -> np.ndarray:
        raise ValueError("byzantine_mod: another node's update is not reachable from a mod")

    attack = AttackContext(
        np.random.default_rng(round_seed(plan.seed, server_round, plan.partition_id)),
        server_round,
        plan.num_nodes,
        plan.num_byzantine,
        honest_samples,
        not_reachable,
        run_config=context.run_config,
    )
    plan.behaviour.before_reply(attack)
    reply = call_next(message, context)
    if reply.has_error():
        return reply
    key, trained, update = update_of(reply)
    reported = plan.behaviour.update(update, attack)
    if reported is None:
        return Message(Error(MOD_ERROR, "byzantine_mod: reply dropped"), reply_to=message)
    reply.content[key] = to_record(apply_update(sent, trained, reported.astype(np.float32)))
    return labelled(reply, context)


def labelled(reply: Message, context: Context) -> Message:
    """The train reply with its node's ``partition-id`` in a ``node`` config record,
    where the node config has one and the ClientApp did not send its own: the strategies
    name the nodes a round limited by it (``robust.limited-partitions``), the id attacks
    are configured by. It names only; no strategy weighs a reply by it."""
    partition = context.node_config.get("partition-id")
    if reply.has_error() or partition is None or "node" in reply.content.config_records:
        return reply
    reply.content["node"] = ConfigRecord({"partition-id": int(partition)})
    return reply
