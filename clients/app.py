"""The ClientApp: trains a torch model on its partition; may behave Byzantine.

What a client sends (the one place this is decided): the ArrayRecord ``arrays`` with
the same names, shapes and dtypes as received. For the float arrays it is
``w + u``, where ``w`` is what the server sent and ``u`` the reported update:

* ``optimizer = "sgd"``: ``u`` is the local training update ``w_local - w`` (local SGD
  for the configured epochs or steps); with ``worker-momentum = beta > 0`` it is the
  worker momentum ``m_t = beta m_{t-1} + (1 - beta)(w_local - w)`` instead;
* ``optimizer = "mu2-sgd"``: ``u = -lr d_t``, the double-momentum estimate of
  :mod:`clients.optim` (one mini-batch per round);
* a Byzantine node replaces ``u`` by what its behaviour returns
  (:mod:`flwr_flag.attacks`; label flip: :mod:`clients.label_flip`).

Non-float arrays (e.g. BatchNorm's step counters) are sent as trained. The reply's
MetricRecord has ``num-examples``, ``train-loss`` and ``byzantine`` (0/1); a
ConfigRecord ``node`` gives the node's own ``partition-id`` (under DETOX also its
``detox-group``), the ``behaviour`` and its parameters (``behaviour.<name>``), for
summaries and studies.
State across rounds (worker momentum, mu^2-SGD) lives in ``context.state``. A train
config with ``detox-group`` (sent by the DETOX strategy) makes the node train on that
group's shard (``detox-group`` of ``detox-groups`` partitions) with ``detox-seed`` and
deterministic torch algorithms, so a group's honest members send equal updates.
"""

from __future__ import annotations

import copy
import functools
from collections import OrderedDict
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flwr_flag.attacks import AttackContext
from flwr_flag.attacks.base import digest, shared
from flwr_flag.attacks.updates import (
    Arrays,
    apply_update,
    flatten,
    float_names,
    round_seed,
    to_record,
)

from .config import MU2_GAMMA_MIN, ClientSettings
from .data import Split, load_partition
from .models import build_model, get_arrays, set_arrays
from .optim import Mu2State, mu2_step
from .train import batch_gradient, deterministic, evaluate, local_train

app = ClientApp()


@functools.lru_cache(maxsize=4)
def network(name: str, shape: tuple[int, int, int], num_classes: int) -> torch.nn.Module:
    """The one network of this architecture in this process. Every update a message
    makes (a node's own, each colluder sample, the next message's) loads the arrays it
    received into it, all of them (``set_arrays`` is strict), and every gradient is
    zeroed before it is computed, so nothing carries over from one update to the next;
    a Flower runtime runs one message at a time per process. Building a
    network per update (with its ``torch.manual_seed``) took 4 ms: as long as a
    one-step round's training of the digits CNN."""
    return build_model(name, shape, num_classes)


@dataclass(frozen=True)
class Shard:
    """The data a node trains on when it is not its own partition: DETOX's group shard
    ``index`` of a ``count``-way split (``detox-shards``), drawn and trained with
    ``seed``."""

    index: int
    count: int
    seed: int

    @classmethod
    def from_config(cls, config: ConfigRecord) -> Shard | None:
        if "detox-group" not in config:
            return None
        count = config.get("detox-shards", config["detox-groups"])
        return cls(int(config["detox-group"]), int(count), int(config["detox-seed"]))


class Node:
    """One node's round: its settings, data and the arrays it received.

    With a ``shard`` the node trains on it (data and training seed), but keeps its own
    identity: its partition id and the run's node count are what it reports and what
    its behaviour sees."""

    def __init__(
        self, settings: ClientSettings, sent: Arrays, server_round: int, shard: Shard | None = None
    ) -> None:
        self.settings = settings
        self.sent = sent
        self.server_round = server_round
        self.names = float_names(sent)
        if shard is None:
            self.data = self.partition(settings.partition_id)
            self.seed = round_seed(settings.seed, server_round, settings.partition_id)
        else:
            self.data = self.partition(shard.index, shard.count, shard.seed)
            self.seed = round_seed(shard.seed, server_round, shard.index)
        self.labels = lambda y: settings.behaviour.labels(y, self.data.num_classes)

    def partition(
        self, partition_id: int, count: int | None = None, seed: int | None = None
    ) -> Split:
        s = self.settings
        return load_partition(
            s.dataset,
            partition_id,
            count or s.num_partitions,
            s.partitioning,
            s.alpha,
            s.seed if seed is None else seed,
            s.data_files,
        )

    def model(self) -> torch.nn.Module:
        """The received model, in training mode: :func:`network` with ``sent`` loaded."""
        s, x = self.settings, self.data.x
        model = network(s.model, tuple(x.shape[1:]), self.data.num_classes)
        set_arrays(model, self.sent)
        return model.train()

    def sgd_update(self, data: Split, seed: int) -> tuple[np.ndarray, Arrays, float]:
        model = self.model()
        loss = local_train(model, data, self.settings, self.labels, seed)
        trained = get_arrays(model)
        return flatten(trained, self.names) - flatten(self.sent, self.names), trained, loss

    def mu2_update(
        self, state: RecordDict, data: Split, seed: int
    ) -> tuple[np.ndarray, Arrays, float]:
        model = self.model()
        previous = None
        if "mu2" in state:
            record = state["mu2"]
            previous = Mu2State(
                int(state["mu2-t"]["t"]),
                torch.from_numpy(record["x"].numpy()),
                torch.from_numpy(record["d"].numpy()),
            )
        w = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
        gradient = batch_gradient(model, data, self.labels, self.settings, seed)
        new = mu2_step(
            gradient, w, previous, self.settings.mu2_beta_min, self.settings.mu2_gamma_min
        )
        state["mu2"] = to_record({"x": new.x.numpy(), "d": new.d.numpy()})
        state["mu2-t"] = MetricRecord({"t": new.t})
        step = OrderedDict()
        offset = 0
        for name, param in model.named_parameters():
            step[name] = (-self.settings.lr * new.d[offset : offset + param.numel()]).numpy()
            offset += param.numel()
        update = np.concatenate(
            [
                step[k].ravel() if k in step else np.zeros(self.sent[k].size, np.float32)
                for k in self.names
            ]
        )
        return update, self.sent, float("nan")

    def honest_update(
        self, state: RecordDict, data: Split | None = None, seed: int | None = None
    ) -> tuple[np.ndarray, Arrays, float]:
        """The update an honest node sends from ``state`` (updated in place): with the
        configured optimizer (local SGD, worker momentum, mu^2-SGD), on ``data`` (the
        node's own by default) with ``seed``."""
        data = self.data if data is None else data
        seed = self.seed if seed is None else seed
        if self.settings.optimizer == "mu2-sgd":
            return self.mu2_update(state, data, seed)
        update, trained, loss = self.sgd_update(data, seed)
        beta = self.settings.worker_momentum
        if beta > 0:
            previous = (
                state["momentum"]["m"].numpy() if "momentum" in state else np.zeros_like(update)
            )
            update = beta * previous + (1 - beta) * update
            state["momentum"] = to_record({"m": update})
        return update, trained, loss

    def attack_context(self, state: RecordDict, run_config: Mapping[str, Any]) -> AttackContext:
        """What this node's behaviour may use. ``state`` is the node's state as it was
        before this round's update: the colluders' honest samples are made the way honest
        nodes make their updates, with the same optimizer from a copy of that state (a
        plain SGD step's scale is not mu^2-SGD's or worker momentum's). Another node's
        state is out of reach: its update is made from this node's."""
        rng = np.random.default_rng(self.seed)
        s = self.settings

        def honest_samples(k: int) -> np.ndarray:
            updates = []
            for i in range(k):
                index = torch.from_numpy(rng.integers(0, len(self.data), len(self.data)))
                sample = self.honest_update(
                    copy.deepcopy(state), self.data.subset(index), self.seed + 1 + i
                )
                updates.append(sample[0])
            return np.stack(updates)

        def honest_update_for(partition_id: int) -> np.ndarray:
            target_seed = round_seed(s.seed, self.server_round, partition_id)
            data = self.partition(partition_id)
            return self.honest_update(copy.deepcopy(state), data, target_seed)[0]

        def population_samples(k: int) -> np.ndarray:
            # one draw per round for all colluders: an id no partition has seeds it
            draw = np.random.default_rng(round_seed(s.seed, self.server_round, s.num_partitions))
            honest = [p for p in range(s.num_partitions) if p not in s.byzantine_nodes]
            chosen = draw.choice(honest, size=k, replace=k > len(honest))
            make = lambda: np.stack([honest_update_for(int(p)) for p in chosen])  # noqa: E731
            if len(state):  # the samples start from this node's own optimizer state
                return make()
            known = (
                "population",
                k,
                self.server_round,
                s.num_partitions,
                digest(*self.sent.values()),
                tuple(sorted(run_config.items())),
            )
            return shared(known, make)

        def anchor_reference() -> np.ndarray:
            def make() -> np.ndarray:
                from .anchor import anchor_from_config  # the server's own recipe

                trained = anchor_from_config(run_config, s).at_round(self.sent, self.server_round)
                own = flatten(self.sent, self.names)
                if isinstance(trained, list):  # one reference per class
                    return np.stack([flatten(m, self.names) - own for m in trained])
                return flatten(trained, self.names) - own

            known = ("anchor", self.server_round, digest(*self.sent.values()))
            return shared((*known, tuple(sorted(run_config.items()))), make)

        return AttackContext(
            rng,
            self.server_round,
            s.num_partitions,
            len(s.byzantine_nodes),
            honest_samples,
            honest_update_for,
            population_samples,
            run_config,
            anchor_reference if run_config.get("anchor-per-class", 0) else None,
        )


@app.train()
def train(message: Message, context: Context) -> Message | None:
    """One round of local training, then the node's behaviour."""
    settings = ClientSettings.from_config(context.run_config, context.node_config)
    sent = OrderedDict((k, v.numpy()) for k, v in message.content["arrays"].items())
    config = message.content["config"]
    server_round = int(config.get("server-round", 1))
    if "anytime-gamma-min" in config:  # the server's AnyTime floor: both average alike
        floor = MU2_GAMMA_MIN.check(
            "train config", "anytime-gamma-min", config["anytime-gamma-min"]
        )
        settings = replace(settings, mu2_gamma_min=floor)
    shard = Shard.from_config(config)  # DETOX: the group's shard, for every member
    node = Node(settings, sent, server_round, shard)
    behaviour = settings.behaviour
    # The state before this round's update, for the colluders' estimates (honest nodes
    # never make any, and skip the copy).
    before = copy.deepcopy(context.state) if behaviour.name != "honest" else RecordDict()
    with deterministic() if shard else nullcontext():
        update, trained, loss = node.honest_update(context.state)
    attack = node.attack_context(before, context.run_config)
    behaviour.before_reply(attack)
    reported = behaviour.update(update, attack)
    if reported is None:
        return None
    described = {
        "behaviour" if k == "name" else f"behaviour.{k}": v
        if isinstance(v, (int, float, str))
        else str(v)
        for k, v in behaviour.describe().items()
    }
    content = RecordDict(
        {
            "arrays": to_record(apply_update(sent, trained, reported.astype(np.float32))),
            "metrics": MetricRecord(
                {
                    "num-examples": len(node.data),
                    "train-loss": loss,
                    "byzantine": int(behaviour.name != "honest"),
                }
            ),
            "node": ConfigRecord(
                {
                    "partition-id": settings.partition_id,
                    **({"detox-group": shard.index} if shard else {}),
                    **described,
                }
            ),
        }
    )
    return Message(content, reply_to=message)


@app.evaluate()
def evaluate_global(message: Message, context: Context) -> Message:
    """Loss and accuracy of the received model on this node's partition."""
    settings = ClientSettings.from_config(context.run_config, context.node_config)
    sent = OrderedDict((k, v.numpy()) for k, v in message.content["arrays"].items())
    node = Node(settings, sent, int(message.content["config"].get("server-round", 0)))
    loss, accuracy = evaluate(node.model(), node.data)
    metrics = {"num-examples": len(node.data), "eval-loss": loss, "eval-accuracy": accuracy}
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=message)
