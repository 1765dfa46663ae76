"""The ServerApp: robust federated training with centralized evaluation.

Every knob comes from ``context.run_config`` (defaults in pyproject
``[tool.flwr.app.config]``): the aggregation keys of :mod:`flwr_flag.config`, the
client keys of :mod:`clients.config`, and ``num-server-rounds`` and ``output-dir``.
Each round the global model is evaluated on the held-out test set and the row is
written to the run directory (:mod:`server_app.results`); the run ends with a summary.
"""

from __future__ import annotations

from collections import OrderedDict
from logging import INFO

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from clients.data import load_test
from clients.models import build_model, set_arrays
from clients.train import evaluate
from flwr_flag import strategy_from_config

from .results import RunRecorder

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Build the strategy and model from the run config, train, record, summarize."""
    config = context.run_config
    strategy = strategy_from_config(config)
    dataset, seed = str(config.get("dataset", "digits")), int(config.get("seed", 0))
    data_dir = str(config.get("data-dir", ""))
    files = {s: f"{data_dir}/{s}.parquet" for s in ("train", "test")} if data_dir else None
    test = load_test(dataset, seed, files)
    model_name = str(config.get("model", "cnn"))
    model = build_model(model_name, tuple(test.x.shape[1:]), test.num_classes, seed)
    recorder = RunRecorder(config.get("output-dir", "outputs"), strategy.rule, config)

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
        num_rounds=int(config.get("num-server-rounds", 10)),
        evaluate_fn=central_evaluation,
    )
    recorder.save_model(OrderedDict((k, v.numpy()) for k, v in result.arrays.items()))
    for line in recorder.summary(strategy.partitions).splitlines():
        log(INFO, line)
