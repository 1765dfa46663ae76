"""The app's run-config defaults (pyproject) build every rule and every attack, and
declare every hyperparameter so that ``--run-config`` can override it."""

from __future__ import annotations

import dataclasses
import inspect
import tomllib
from pathlib import Path

import pytest
from flwr.common.config import flatten_dict

from clients.config import ClientSettings  # also registers label-flip
from flwr_flag import strategy_from_config
from flwr_flag.attacks import BEHAVIOURS
from flwr_flag.rules import PREAGGREGATORS, RULES

PYPROJECT = Path(__file__).parents[1] / "pyproject.toml"
CONFIG = flatten_dict(tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"])
# Round state (previous aggregate, DETOX's groups), or taken from another rule's table.
NOT_CONFIGURABLE = {"previous", "base_params", "groups", "stage2_params", "reference"}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_every_rule_builds_from_the_defaults(rule):
    strategy = strategy_from_config({**CONFIG, "rule": rule})
    assert strategy.rule == rule


@pytest.mark.parametrize("attack", sorted(BEHAVIOURS))
def test_every_attack_builds_from_the_defaults(attack):
    settings = ClientSettings.from_config(
        {**CONFIG, "attack": attack, "num-partitions": 10}, {"partition-id": 0}
    )
    assert settings.behaviour.name == attack


def declared(name: str, parameters) -> list[str]:
    return [
        p
        for p in parameters
        if p not in NOT_CONFIGURABLE and f"{name}.{p.replace('_', '-')}" not in CONFIG
    ]


@pytest.mark.parametrize("name", sorted({**RULES, **PREAGGREGATORS}))
def test_every_rule_hyperparameter_is_declared(name):
    entry = {**RULES, **PREAGGREGATORS}[name]
    params = list(inspect.signature(inspect.unwrap(entry.function)).parameters)[3:]
    assert declared(name, params) == []


@pytest.mark.parametrize("attack", sorted(BEHAVIOURS))
def test_every_attack_parameter_is_declared(attack):
    assert declared(attack, BEHAVIOURS[attack].parameters()) == []


def test_main_job_defaults():
    assert (CONFIG["rule"], CONFIG["attack"], CONFIG["byzantine-nodes"]) == ("flag", "alie", 2)
    assert CONFIG["dataset"] == "digits"


def test_pyproject_values_are_the_declared_defaults():
    """One source of defaults: pyproject declares what the code would use anyway."""
    from clients.config import SETTINGS
    from flwr_flag.strategy.core import RobustCore
    from server_app.app import NUM_SERVER_ROUNDS, OUTPUT_DIR

    def value(key):
        return None if CONFIG[key] == "auto" else CONFIG[key]

    for name, entry in {**RULES, **PREAGGREGATORS}.items():
        for param, default in entry.defaults.items():
            key = f"{name}.{param.replace('_', '-')}"
            if key in CONFIG and key != "detox.stage2-pre":  # a list as one string
                assert value(key) == default, key
    fields = {f.name: f.default for f in dataclasses.fields(ClientSettings)}
    for key, (name, _) in SETTINGS.items():
        assert CONFIG[key] == fields[name], key
    for attack, cls in BEHAVIOURS.items():
        for param in cls.parameters():
            default = inspect.signature(cls.__init__).parameters[param].default
            assert value(f"{attack}.{param.replace('_', '-')}") == default, (attack, param)
    core = inspect.signature(RobustCore.__init__).parameters
    for key in ("server-lr", "server-momentum", "device"):
        assert CONFIG[key] == core[key.replace("-", "_")].default, key
    assert (CONFIG["num-server-rounds"], CONFIG["output-dir"]) == (NUM_SERVER_ROUNDS, OUTPUT_DIR)
