"""Client settings from Flower's run config, overridden per node by its node config.

Run-config keys (defaults in pyproject ``[tool.flwr.app.config]``)::

    dataset = "digits"        partitioning = "iid"      dirichlet-alpha = 0.5
    data-dir = ""             # with dataset = "parquet": train.parquet, test.parquet
    seed = 0                  model = "cnn"             client-device = "cpu"
    local-epochs = 2          local-steps = 0           # steps > 0 overrides epochs
    batch-size = 32           lr = 0.1                  momentum = 0.9
    weight-decay = 0.0        worker-momentum = 0.0     optimizer = "sgd"
    grad-clip = 0.0           # > 0: each gradient's norm clipped to it (0: off)
    mu2.beta-min = 0.1        mu2.gamma-min = 0.1       # optimizer = "mu2-sgd"
    augment = "none"          augment-copies = 1
    heavy-augment = "warp"    heavy-augment-nodes = ""  # e.g. "3,4": honest nodes
    byzantine-nodes = 0       # N: partitions 0..N-1; or a list "0,4,7"
    attack = "sign-flip"      sign-flip.k = 1.0         # <attack>.<parameter>

A SuperNode's ``--node-config`` sets ``partition-id`` and ``num-partitions`` and may
set ``byzantine = true`` and any key above for that node alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from flwr_flag.attacks import Behaviour, make_behaviour, node_list
from flwr_flag.runconfig import section
from flwr_flag.validation import (
    SEED_MAX,
    Boolean,
    Choice,
    Device,
    Integer,
    InvalidParameterError,
    Param,
    Real,
    Text,
    check_int,
)

from . import label_flip  # noqa: F401  (registers "label-flip")
from .augment import PIPELINES
from .data import DATA_OPTIONS
from .models import MODELS

OPTIMIZERS = ("sgd", "mu2-sgd")
MU2_GAMMA_MIN = Real(0.0, 1.0, low_open=True)
"""The AnyTime average's floor (run config ``mu2.gamma-min``, or the server's)."""

SETTINGS: dict[str, tuple[str, Param]] = {
    "dataset": ("dataset", DATA_OPTIONS["dataset"]),
    "partitioning": ("partitioning", DATA_OPTIONS["partitioning"]),
    "dirichlet-alpha": ("alpha", DATA_OPTIONS["dirichlet-alpha"]),
    "data-dir": ("data_dir", Text()),
    "seed": ("seed", Integer(0, SEED_MAX)),
    "model": ("model", Choice(choices=MODELS)),
    "client-device": ("device", Device()),
    "local-epochs": ("local_epochs", Integer(0)),
    "local-steps": ("local_steps", Integer(0)),
    "batch-size": ("batch_size", Integer(1)),
    "lr": ("lr", Real(0.0, low_open=True)),
    "momentum": ("momentum", Real(0.0, 1.0, high_open=True)),
    "weight-decay": ("weight_decay", Real(0.0)),
    "worker-momentum": ("worker_momentum", Real(0.0, 1.0, high_open=True)),
    "grad-clip": ("grad_clip", Real(0.0)),
    "optimizer": ("optimizer", Choice(choices=OPTIMIZERS)),
    "mu2.beta-min": ("mu2_beta_min", Real(0.0, 1.0, low_open=True)),
    "mu2.gamma-min": ("mu2_gamma_min", MU2_GAMMA_MIN),
    "augment": ("augment", Choice(choices=PIPELINES)),
    "augment-copies": ("augment_copies", Integer(1)),
    "heavy-augment": ("heavy_augment", Choice(choices=PIPELINES)),
}
"""Run-config key -> (field, kind): every plain client setting, declared once."""


@dataclass(frozen=True)
class ClientSettings:
    """Validated settings of one node (see the module docstring for the keys). The field
    defaults are the app's defaults; pyproject declares the same values (a test checks)."""

    partition_id: int
    num_partitions: int
    dataset: str = "digits"
    partitioning: str = "iid"
    alpha: float = 0.5
    data_dir: str = ""
    seed: int = 0
    model: str = "cnn"
    device: str = "cpu"
    local_epochs: int = 2
    local_steps: int = 0
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    worker_momentum: float = 0.0
    grad_clip: float = 0.0
    optimizer: str = "sgd"
    mu2_beta_min: float = 0.1
    mu2_gamma_min: float = 0.1
    augment: str = "none"
    augment_copies: int = 1
    heavy_augment: str = "warp"
    heavy_augment_nodes: tuple[int, ...] = ()
    byzantine_nodes: tuple[int, ...] = ()
    behaviour: Behaviour = field(default_factory=Behaviour)

    @property
    def data_files(self) -> dict[str, str] | None:
        if not self.data_dir:
            return None
        return {s: f"{self.data_dir}/{s}.parquet" for s in ("train", "test")}

    @property
    def pipeline_name(self) -> str:
        heavy = self.partition_id in self.heavy_augment_nodes
        return self.heavy_augment if heavy else self.augment

    @classmethod
    def from_config(
        cls, run_config: Mapping[str, Any], node_config: Mapping[str, Any]
    ) -> ClientSettings:
        """The settings of the node whose node config is ``node_config``; every key is
        checked (types strict, no coercion), for honest nodes too."""
        c = {**run_config, **node_config}
        n = check_int("client", "num-partitions", c.get("num-partitions", 1), 1)
        pid = check_int("client", "partition-id", c.get("partition-id", 0), 0, n - 1)
        byzantine = node_list("byzantine-nodes", c.get("byzantine-nodes", 0), n)
        heavy = node_list("heavy-augment-nodes", c.get("heavy-augment-nodes", ""), n)
        flag = c.get("byzantine", pid in byzantine)
        is_byzantine = Boolean().check("client", "byzantine", flag)
        attack = Text().check("client", "attack", c.get("attack", "sign-flip"))
        behaviour = make_behaviour(attack, section(c, attack))  # validated on every node
        defaults = {f.name: f.default for f in fields(cls)}
        values = {
            name: kind.check("client", key, c.get(key, defaults[name]))
            for key, (name, kind) in SETTINGS.items()
        }
        settings = cls(
            partition_id=pid,
            num_partitions=n,
            **values,
            heavy_augment_nodes=heavy,
            byzantine_nodes=byzantine,
            behaviour=behaviour if is_byzantine else Behaviour(),
        )
        if settings.local_epochs == 0 and settings.local_steps == 0:
            raise InvalidParameterError(
                "client: local-epochs and local-steps are both 0; set one >= 1"
            )
        return settings
