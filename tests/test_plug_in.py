"""An existing Flower app (PyTorch template layout) switches to flwr-flag by changing
the import and the constructor line only, and runs."""

from __future__ import annotations

import importlib
import shutil
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from flwr.app import Context, RecordDict
from flwr.common.config import flatten_dict

from flwr_flag.inprocess import InProcessGrid

TEMPLATE = Path(__file__).parents[1] / "examples" / "pytorch_template"
IMPORT = ("from flwr.serverapp.strategy import FedAvg", "from flwr_flag import FlagAggregator")
CONSTRUCTOR = (
    "    strategy = FedAvg(fraction_train=fraction_train)",
    "    strategy = FlagAggregator(num_byzantine=1, fraction_train=fraction_train)",
)


@pytest.fixture
def switched_app(tmp_path, monkeypatch):
    project = tmp_path / "pytorch_template"
    shutil.copytree(TEMPLATE, project)
    server = project / "pytorch_template" / "server_app.py"
    original = server.read_text()
    changed = original.replace(*IMPORT).replace(*CONSTRUCTOR)
    assert (
        sum(a != b for a, b in zip(original.splitlines(), changed.splitlines(), strict=True)) == 2
    )
    server.write_text(changed)
    monkeypatch.syspath_prepend(str(project))
    monkeypatch.chdir(tmp_path)
    for name in [m for m in sys.modules if m.startswith("pytorch_template")]:
        monkeypatch.delitem(sys.modules, name)
    config = flatten_dict(
        tomllib.loads((project / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    )
    return importlib.import_module("pytorch_template.server_app"), config


def test_template_runs_with_flag_aggregator(switched_app):
    server, config = switched_app
    client = importlib.import_module("pytorch_template.client_app")
    grid = InProcessGrid(client.app, 5, run_config=config)
    server.main(grid, Context(1, 0, {}, RecordDict(), config))
    final = torch.load("final_model.pt")
    assert set(final) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    assert all(torch.isfinite(v).all() for v in final.values())
    assert isinstance(server.FlagAggregator, type)
