"""A ClientApp process starts fast: Flower starts one for every message in a deployment,
so what it imports is paid every round on every node."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from clients.optim import SGD

ROOT = Path(__file__).parents[1]

ROUND = """
import json, sys
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from clients.app import app
from clients.config import ClientSettings
from clients.data import load_test
from clients.models import build_model
settings = ClientSettings.from_config({"model": "mlp", "local-steps": 3}, {})
test = load_test(settings.dataset, settings.seed, None)
model = build_model("mlp", tuple(test.x.shape[1:]), test.num_classes, 0)
content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                      "config": ConfigRecord({"server-round": 1})})
context = Context(1, 1, {"partition-id": 0, "num-partitions": 2}, RecordDict(),
                  {"model": "mlp", "local-steps": 3, "byzantine-nodes": 0})
message = Message(content=content, dst_node_id=1, message_type="train")
reply = app(message, context)
print(json.dumps({"error": reply.has_error(),
                  "loaded": sorted(m for m in ("sklearn", "torch._dynamo", "torchvision")
                                   if m in sys.modules)}))
"""


def run_round(cache: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", "import tests.flower_helpers\n" + ROUND],
        cwd=ROOT,
        env={"FLWR_FLAG_CACHE": str(cache), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_training_round_imports_neither_scikit_learn_nor_dynamo(tmp_path):
    """The first round makes the digits cache (scikit-learn once); every later process
    trains without importing scikit-learn (0.8 s), torch._dynamo (the first
    torch.optim step, ~1 s) or torchvision (augmentation only)."""
    first = run_round(tmp_path)
    assert not first["error"] and (tmp_path / "digits-split-v1.npz").exists()
    again = run_round(tmp_path)
    assert again == {"error": False, "loaded": []}


def test_the_cached_digits_are_the_split_scikit_learn_makes(tmp_path, monkeypatch):
    from clients import data

    monkeypatch.setenv("FLWR_FLAG_CACHE", str(tmp_path))
    made = data._digits_arrays()
    cached = data._digits_arrays()
    for key in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(made[key], cached[key])
    assert made["x_train"].shape == (1437, 1, 8, 8) and made["x_test"].shape == (360, 1, 8, 8)
    (tmp_path / "digits-split-v1.npz").write_bytes(b"truncated")
    np.testing.assert_array_equal(data._digits_arrays()["y_test"], made["y_test"])


def test_our_sgd_step_is_torch_optim_sgd():
    for momentum, decay in ((0.0, 0.0), (0.9, 0.0), (0.9, 5e-4), (0.5, 1e-2)):
        torch.manual_seed(0)
        ours, theirs = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
        theirs.load_state_dict(ours.state_dict())
        mine = SGD(ours.parameters(), lr=0.1, momentum=momentum, weight_decay=decay)
        reference = torch.optim.SGD(
            theirs.parameters(), lr=0.1, momentum=momentum, weight_decay=decay
        )
        for step in range(5):
            x = torch.randn(8, 5, generator=torch.Generator().manual_seed(step))
            for model, optimizer in ((ours, mine), (theirs, reference)):
                optimizer.zero_grad()
                model(x).square().mean().backward()
                optimizer.step()
        for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
