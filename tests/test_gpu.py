"""The CUDA path against the CPU result: every rule, and each strategy's aggregate_train.

Skipped without CUDA (CI has none). On a machine with a GPU: ``python -m pytest -m gpu``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flower_helpers import SHAPES, random_model, reply
from test_strategy import configured

from flwr_flag.rules import RULES, aggregate
from flwr_flag.strategy import STRATEGIES

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
RULE_NAMES = sorted(set(RULES) - {"detox"})


@pytest.mark.parametrize("rule", RULE_NAMES)
def test_every_rule_on_cuda_matches_cpu(rule):
    x = torch.randn(15, 5000, generator=torch.Generator().manual_seed(0))
    x[:2] *= -8.0
    cpu = aggregate(x, rule, 2)
    gpu = aggregate(x.cuda(), rule, 2)
    torch.testing.assert_close(gpu.vector.cpu(), cpu.vector, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(set(STRATEGIES) - {"detox"}))
def test_every_strategy_on_cuda_matches_cpu(name):
    global_model = random_model(0)
    messages = [reply(i + 1, random_model(i + 1), **{"num-examples": 1}) for i in range(11)]
    arrays = {}
    for device in ("cpu", "cuda"):
        strategy = configured(STRATEGIES[name](num_byzantine=2, device=device), global_model, 11)
        record, _ = strategy.aggregate_train(1, messages)
        arrays[device] = {k: record[k].numpy() for k in SHAPES}
    for k in SHAPES:
        np.testing.assert_allclose(arrays["cuda"][k], arrays["cpu"][k], rtol=1e-4, atol=1e-5)
