"""Client settings from Flower's run config, overridden per node by its node config.

Run-config keys (defaults in pyproject ``[tool.flwr.app.config]``)::

    dataset = "digits"        partitioning = "iid"      dirichlet-alpha = 0.5
    data-dir = ""             # with dataset = "parquet": train.parquet, test.parquet
    seed = 0                  model = "cnn"             client-device = "cpu"
    local-epochs = 1          local-steps = 0           # steps > 0 overrides epochs
    batch-size = 32           lr = 0.05                 momentum = 0.0
    weight-decay = 0.0        worker-momentum = 0.0     optimizer = "sgd"
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
from dataclasses import dataclass, field
from typing import Any

from flwr_flag.attacks import Behaviour, make_behaviour, node_list
from flwr_flag.config import section
from flwr_flag.rules.validation import check_choice, check_float, check_int

from . import label_flip  # noqa: F401  (registers "label-flip")
from .augment import PIPELINES
from .data import check_data_options
from .models import MODELS

OPTIMIZERS = ("sgd", "mu2-sgd")


@dataclass(frozen=True)
class ClientSettings:
    """Validated settings of one node (see the module docstring for the keys)."""

    partition_id: int
    num_partitions: int
    dataset: str = "digits"
    partitioning: str = "iid"
    alpha: float = 0.5
    data_dir: str = ""
    seed: int = 0
    model: str = "cnn"
    device: str = "cpu"
    local_epochs: int = 1
    local_steps: int = 0
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    worker_momentum: float = 0.0
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
        c = {**run_config, **node_config}
        n = check_int("client", "num-partitions", c.get("num-partitions", 1), 1)
        pid = check_int("client", "partition-id", c.get("partition-id", 0), 0, n - 1)
        byzantine = node_list("byzantine-nodes", c.get("byzantine-nodes", 0), n)
        heavy = node_list("heavy-augment-nodes", c.get("heavy-augment-nodes", ""), n)
        is_byzantine = bool(c["byzantine"]) if "byzantine" in c else pid in byzantine
        attack = str(c.get("attack", "sign-flip"))
        behaviour = make_behaviour(attack, section(c, attack))  # validated on every node
        settings = cls(
            partition_id=pid,
            num_partitions=n,
            dataset=str(c.get("dataset", "digits")),
            partitioning=str(c.get("partitioning", "iid")),
            alpha=float(c.get("dirichlet-alpha", 0.5)),
            data_dir=str(c.get("data-dir", "")),
            seed=int(c.get("seed", 0)),
            model=check_choice("client", "model", c.get("model", "cnn"), MODELS),
            device=str(c.get("client-device", "cpu")),
            local_epochs=check_int("client", "local-epochs", c.get("local-epochs", 1), 0),
            local_steps=check_int("client", "local-steps", c.get("local-steps", 0), 0),
            batch_size=check_int("client", "batch-size", c.get("batch-size", 32), 1),
            lr=check_float("client", "lr", c.get("lr", 0.05), 0.0, low_open=True),
            momentum=check_float(
                "client", "momentum", c.get("momentum", 0.0), 0.0, 1.0, high_open=True
            ),
            weight_decay=check_float("client", "weight-decay", c.get("weight-decay", 0.0), 0.0),
            worker_momentum=check_float(
                "client", "worker-momentum", c.get("worker-momentum", 0.0), 0.0, 1.0, high_open=True
            ),
            optimizer=check_choice("client", "optimizer", c.get("optimizer", "sgd"), OPTIMIZERS),
            mu2_beta_min=check_float(
                "client", "mu2.beta-min", c.get("mu2.beta-min", 0.1), 0.0, 1.0, low_open=True
            ),
            mu2_gamma_min=check_float(
                "client", "mu2.gamma-min", c.get("mu2.gamma-min", 0.1), 0.0, 1.0, low_open=True
            ),
            augment=check_choice("client", "augment", c.get("augment", "none"), PIPELINES),
            augment_copies=check_int("client", "augment-copies", c.get("augment-copies", 1), 1),
            heavy_augment=check_choice(
                "client", "heavy-augment", c.get("heavy-augment", "warp"), PIPELINES
            ),
            heavy_augment_nodes=heavy,
            byzantine_nodes=byzantine,
            behaviour=behaviour if is_byzantine else Behaviour(),
        )
        check_data_options(settings.dataset, settings.partitioning, settings.alpha)
        if settings.local_epochs == 0 and settings.local_steps == 0:
            raise ValueError("client: local-epochs and local-steps are both 0; set one >= 1")
        return settings
