"""The ServerApp: robust federated training with centralized evaluation.

Every knob comes from ``context.run_config`` (defaults in pyproject
``[tool.flwr.app.config]``): the aggregation keys of :mod:`flwr_flag.config`, the
client keys of :mod:`clients.config`, and ``num-server-rounds`` and ``output-dir``.
Each round the global model is evaluated on the held-out test set and the row is
written to the run directory (:mod:`server_app.results`); the run ends with a summary.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from logging import INFO
from typing import Any, NamedTuple

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from clients.anchor import anchor_from_config
from clients.config import ClientSettings
from clients.data import load_test
from clients.models import build_model, set_arrays
from clients.train import evaluate
from flwr_flag import RobustStrategy, strategy_from_config
from flwr_flag.attacks import check_mod_config
from flwr_flag.validation import Integer, Real, Text

from .results import RunRecorder

app = ServerApp()


NUM_SERVER_ROUNDS = 20
OUTPUT_DIR = "outputs"
ROUND_TIMEOUT = 300.0
"""Seconds a round waits for replies; then it goes on with those that came (a node
that died mid-run costs one timeout, not the run)."""


class ServerSettings(NamedTuple):
    """The ServerApp's own run-config keys."""

    rounds: int
    round_timeout: float
    output_dir: str


def validated(
    config: Mapping[str, Any], num_nodes: int
) -> tuple[RobustStrategy, ClientSettings, ServerSettings]:
    """The strategy, the clients' settings and the number of rounds, every key of the
    run config checked, server and client keys alike, before any round: a mistake stops
    the run here, naming the key, instead of failing every client every round.

    ``num_nodes`` (connected nodes; 0 when none has connected yet) bounds the node ids of
    ``byzantine-nodes`` and ``heavy-augment-nodes``. ``anchor-per-class = k > 0`` gives
    the strategy the server's trust anchor on ``k`` samples per class
    (:mod:`clients.anchor`)."""
    node = {"partition-id": 0, "num-partitions": num_nodes or 2**31 - 1}
    settings = ClientSettings.from_config(config, node)
    check_mod_config(config, num_nodes)  # a project's ClientApp may run byzantine_mod
    strategy = strategy_from_config(config, anchor_from_config(config, settings))
    server = ServerSettings(
        Integer(1).check(
            "run config", "num-server-rounds", config.get("num-server-rounds", NUM_SERVER_ROUNDS)
        ),
        Real(0.0, low_open=True).check(
            "run config", "round-timeout", config.get("round-timeout", ROUND_TIMEOUT)
        ),
        Text().check("run config", "output-dir", config.get("output-dir", OUTPUT_DIR)),
    )
    return strategy, settings, server


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Build the strategy and model from the run config, train, record, summarize."""
    config = context.run_config
    strategy, settings, server = validated(config, len(list(grid.get_node_ids())))
    test = load_test(settings.dataset, settings.seed, settings.data_files)
    shape = tuple(test.x.shape[1:])
    model = build_model(settings.model, shape, test.num_classes, settings.seed)
    recorder = RunRecorder(server.output_dir, strategy.rule, config)

    def central_evaluation(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        set_arrays(model, OrderedDict((k, v.numpy()) for k, v in arrays.items()))
        loss, accuracy = evaluate(model, test)
        recorder.record(
            server_round,
            {"accuracy": accuracy, "loss": loss},
            strategy.history.get(server_round, {}),
        )
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=server.rounds,
        timeout=server.round_timeout,
        evaluate_fn=central_evaluation,
    )
    recorder.save_model(OrderedDict((k, v.numpy()) for k, v in result.arrays.items()))
    for line in recorder.summary(strategy.partitions).splitlines():
        log(INFO, line)
