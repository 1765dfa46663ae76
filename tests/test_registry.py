"""A rule is one module and one registration: everything else (both strategy APIs, the
run config, the ServerApp's checks, the round state, the public names) comes from the
registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flower_helpers import SHAPES, reply
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from test_strategy import configured
from test_strategy_runs import Proxy

import flwr_flag
import flwr_flag.legacy
import flwr_flag.strategy
from flwr_flag.rules import RULES
from flwr_flag.rules.diagnostics import AggregationResult, Rows
from flwr_flag.rules.registry import ROUND_STATE, rule
from flwr_flag.strategy import STRATEGIES
from flwr_flag.validation import Real


@pytest.fixture
def coordinate_max():
    """A toy rule defined here, as a contributor's new module would: the coordinate-wise
    maximum of the updates times ``scale``. Unregistered afterwards."""

    @rule("coordinate-max", needs=(1, 1), params={"scale": Real(0.0, low_open=True)})
    def coordinate_max(source, f: int, weights: torch.Tensor, scale: float = 1.0):
        top = source.map_columns(lambda chunk: chunk.max(dim=0).values)
        return AggregationResult(top * scale, {"top": Rows([0])})

    yield "coordinate-max"
    del RULES["coordinate-max"]


def models(n: int = 4) -> list[dict[str, np.ndarray]]:
    return [{k: np.full(s, float(i), np.float32) for k, s in SHAPES.items()} for i in range(n)]


@pytest.mark.app  # the ServerApp's checks
def test_a_new_rule_runs_through_both_apis_the_run_config_and_the_server_app(coordinate_max):
    from server_app.app import validated

    zero = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    messages = [reply(i + 1, m, **{"num-examples": 1}) for i, m in enumerate(models())]
    strategy = flwr_flag.RobustStrategy(
        rule=coordinate_max, num_byzantine=1, scale=2.0, diagnostics="full"
    )
    arrays, metrics = configured(strategy, zero, 4).aggregate_train(1, messages)
    assert np.all(arrays["w"].numpy() == 6.0) and metrics["robust.top-nodes"] == [1]

    legacy = flwr_flag.legacy.RobustStrategy(rule=coordinate_max, num_byzantine=1, scale=2.0)
    legacy._sent = ndarrays_to_parameters([zero[k] for k in SHAPES])
    results = [
        (Proxy(i + 1), FitRes(Status(Code.OK, ""), ndarrays_to_parameters(list(m.values())), 1, {}))
        for i, m in enumerate(models())
    ]
    parameters, _ = legacy.aggregate_fit(1, results, [])
    assert np.all(parameters_to_ndarrays(parameters)[0] == 6.0)

    config = {"rule": coordinate_max, "num-byzantine": 1, "coordinate-max.scale": 3.0}
    built = flwr_flag.strategy_from_config({**config, "min-available-nodes": "auto"})
    assert built.core.rule_params == {"scale": 3.0} and built.min_available_nodes == 2
    assert validated(config, 4)[0].rule == coordinate_max
    with pytest.raises(ValueError, match=r"coordinate-max: scale=-1.0 is out of range"):
        validated({**config, "coordinate-max.scale": -1.0}, 4)
    assert RULES[coordinate_max].why_not(1, 1) == (
        "1 valid replies, but coordinate-max with f=1 needs n >= f + 1"
    )


def test_every_named_strategy_has_its_legacy_twin_and_public_names():
    for name, cls in STRATEGIES.items():
        assert cls.rule == name in RULES
        twin = getattr(flwr_flag.legacy, cls.__name__)
        assert (twin.rule, dict(twin.defaults)) == (name, dict(cls.defaults))
        # The same text, but for Flower's options, those of the twin's API; DETOX's twin
        # says more.
        own = "Also the aggregation options"
        assert twin.__doc__.split(own)[0] == cls.__doc__.split(own)[0] or name == "detox"
        assert "fraction_fit" in twin.__doc__ and "fraction_train" in cls.__doc__
        assert cls.__name__ in flwr_flag.__all__ and cls.__name__ in flwr_flag.strategy.__all__
        assert getattr(flwr_flag, cls.__name__) is cls


def test_every_round_state_key_has_one_provider():
    for entry in RULES.values():
        for key in entry.state:
            assert key in ROUND_STATE, (entry.name, key)


TOY_RULE = '''"""A contributor's new rule: the coordinate-wise maximum times ``scale``."""

from flwr_flag.rules import AggregationResult, Rows, rule
from flwr_flag.validation import Real


@rule("coordinate-max", needs=(1, 1), params={"scale": Real(0.0, low_open=True)})
def coordinate_max(source, f, weights, scale=1.0):
    top = source.map_columns(lambda chunk: chunk.max(dim=0).values)
    return AggregationResult(top * scale, {"top": Rows([0])})
'''

USES_IT = """
import sys
import numpy as np
from flower_helpers import SHAPES, reply
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from test_strategy import configured
from test_strategy_runs import Proxy

import flwr_flag, flwr_flag.legacy
from server_app.app import validated

assert flwr_flag.__file__.startswith(sys.argv[1]), flwr_flag.__file__
zero = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
models = [{k: np.full(s, float(i), np.float32) for k, s in SHAPES.items()} for i in range(4)]
messages = [reply(i + 1, m, **{"num-examples": 1}) for i, m in enumerate(models)]
config = {"rule": "coordinate-max", "num-byzantine": 1, "coordinate-max.scale": 2.0}
strategy = validated(config, 4)[0]
arrays, metrics = configured(strategy, zero, 4).aggregate_train(1, messages)
legacy = flwr_flag.legacy.RobustStrategy(rule="coordinate-max", num_byzantine=1, scale=2.0)
legacy._sent = ndarrays_to_parameters([zero[k] for k in SHAPES])
results = [
    (Proxy(i + 1), FitRes(Status(Code.OK, ""), ndarrays_to_parameters(list(m.values())), 1, {}))
    for i, m in enumerate(models)
]
parameters, _ = legacy.aggregate_fit(1, results, [])
print(float(arrays["w"].numpy().max()), float(parameters_to_ndarrays(parameters)[0].max()))
"""


def test_a_rule_is_one_new_module_file(tmp_path):
    """A copy of the package with one file added, ``rules/coordinate_max.py``, and no
    other change: the rule is discovered and runs from a run config through the
    ServerApp's checks, the Message API and the legacy API."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[1]
    copy = tmp_path / "flwr_flag"
    shutil.copytree(root / "flwr_flag", copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "rules" / "coordinate_max.py").write_text(TOY_RULE)
    path = [str(tmp_path), str(root / "tests"), str(root)]
    done = subprocess.run(
        [sys.executable, "-c", USES_IT, str(copy)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": ":".join(path), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-2:] == ["6.0", "6.0"]  # max of 0..3, times 2
