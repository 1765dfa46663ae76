"""The real ServerApp and ClientApp in-process: rule x attack smoke runs, the results
directory, the plot, and resuming from a checkpoint."""

from __future__ import annotations

import csv
import json
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict
from flwr.common.config import flatten_dict

from clients.app import app as client_app
from flwr_flag.inprocess import InProcessGrid
from flwr_flag.validation import InvalidParameterError
from server_app.app import main
from server_app.plot import plot_runs

DEFAULTS = flatten_dict(
    tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["tool"]["flwr"][
        "app"
    ]["config"]
)
FAST = {"local-steps": 3, "model": "mlp", "num-server-rounds": 2, "device": "cpu"}


def run_app(tmp_path: Path, nodes: int = 6, **overrides) -> Path:
    config = {**DEFAULTS, **FAST, "output-dir": str(tmp_path / "out"), **overrides}
    grid = InProcessGrid(client_app, nodes, run_config=config)
    main(grid, Context(1, 0, {}, RecordDict(), config))
    runs = sorted((tmp_path / "out").iterdir())
    return runs[-1]


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    ("rule", "attack"),
    [
        ("flag", "alie"),
        ("ctma", "sign-flip"),
        ("krum", "nan"),
        ("median", "label-flip"),
        ("bulyan", "gaussian"),
        ("centered-clipping", "ipm"),
        ("geomed", "min-max"),
        ("trimmed-mean", "bit-flip"),
        ("mean", "crash"),
    ],
)
def test_rule_attack_smoke(tmp_path, rule, attack):
    nodes = 7 if rule == "bulyan" else 6
    run = run_app(
        tmp_path, nodes, rule=rule, attack=attack, **{"byzantine-nodes": 1, "num-byzantine": 1}
    )
    history = rows(run)
    assert [r["round"] for r in history] == [0, 1, 2]
    assert all(np.isfinite(r["loss"]) for r in history)
    if attack == "nan":
        assert all(len(r["rejected-nodes"]) == 1 for r in history[1:])
    if attack == "crash":
        assert all(r["failed"] == 1 for r in history[1:])
    model = torch.load(run / "final_model.pt")
    assert all(torch.isfinite(v.float()).all() for v in model.values())


def test_results_files_and_plot(tmp_path):
    first = run_app(tmp_path, rule="flag")
    second = run_app(tmp_path, rule="krum", **{"num-byzantine": 1})
    config = json.loads((first / "config.json").read_text())
    assert config["rule"] == "flag" and config["attack"] == "alie"
    with open(first / "rounds.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [int(r["round"]) for r in table] == [0, 1, 2]
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 for r in table)
    assert table[1]["received"] == "6" and table[1]["rejected"] == "0"
    assert "ratios-min" in rows(first)[1]
    assert "selected-nodes" in rows(second)[1]
    png = plot_runs([first, second], tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_a_resumed_run_continues_from_its_checkpoint(tmp_path):
    checkpoints = str(tmp_path / "checkpoints")
    common = {"checkpoint-dir": checkpoints, "server-momentum": 0.5}
    straight = run_app(
        tmp_path / "a", **{**common, "checkpoint-dir": str(tmp_path / "c1"), "num-server-rounds": 4}
    )
    run_app(tmp_path / "b", **{**common, "num-server-rounds": 2})
    resumed = run_app(tmp_path / "b", **{**common, "num-server-rounds": 4, "resume": True})
    assert [r["round"] for r in rows(resumed)] == [2, 3, 4]
    a, b = torch.load(straight / "final_model.pt"), torch.load(resumed / "final_model.pt")
    for k in a:
        torch.testing.assert_close(a[k], b[k])


class CountingGrid(InProcessGrid):
    """Counts the messages pushed: a refused configuration pushes none."""

    pushed = 0

    def push_messages(self, messages):
        messages = list(messages)
        CountingGrid.pushed += len(messages)
        return super().push_messages(messages)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"attack": "nope"}, "attack='nope'"),
        ({"attack": "gaussian", "gaussian.sigma": -1.0}, "sigma=-1.0"),
        ({"byzantine-nodes": "0,99"}, "byzantine-nodes='0,99'"),
        ({"lr": -1.0}, "lr=-1.0"),
        ({"batch-size": 0}, "batch-size=0"),
        ({"dirichlet-alpha": 0.0}, "dirichlet-alpha=0.0"),
        ({"local-epochs": "2"}, "local-epochs='2'"),
        ({"model": "vgg"}, "model='vgg'"),
        ({"num-server-rounds": -3}, "num-server-rounds=-3"),
        ({"num-server-rounds": 0}, "num-server-rounds=0"),
        ({"rule": "flag", "flag.subspace-dim": 2.5}, "subspace_dim=2.5"),
        ({"fraction-train": 5.0}, "fraction_train=5.0"),
    ],
)
def test_a_configuration_mistake_stops_the_run_before_round_1(tmp_path, overrides, key):
    config = {**DEFAULTS, **FAST, "output-dir": str(tmp_path / "out"), **overrides}
    CountingGrid.pushed = 0
    grid = CountingGrid(client_app, 10, run_config=config)
    with pytest.raises(InvalidParameterError, match=re.escape(key)):
        main(grid, Context(1, 0, {}, RecordDict(), config))
    assert CountingGrid.pushed == 0
    assert not (tmp_path / "out").exists()
