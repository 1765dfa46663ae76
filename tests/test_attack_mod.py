"""``byzantine_mod``: attacks for any Flower ClientApp."""

from __future__ import annotations

import copy
import importlib
import re
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from flower_helpers import arrays_of, linear_app, random_model
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.config import flatten_dict
from flwr.serverapp.strategy import FedAvg

import flwr_flag
from flwr_flag.attacks import ByzantinePlan, byzantine_mod
from flwr_flag.inprocess import InProcessGrid
from flwr_flag.validation import InvalidParameterError

ROOT = Path(__file__).parents[1]
TEMPLATE = ROOT / "examples" / "pytorch_template"


def with_mod(app: ClientApp) -> ClientApp:
    """``app``'s train and evaluate functions behind ``byzantine_mod``."""
    wrapped = ClientApp(mods=[byzantine_mod])
    wrapped.train()(lambda message, context: app(message, context))
    wrapped.evaluate()(lambda message, context: app(message, context))
    return wrapped


def context(run_config: dict, partition: int = 0, **node) -> Context:
    node_config = {"partition-id": partition, "num-partitions": 4, **node}
    return Context(1, partition + 1, node_config, RecordDict(), run_config)


def train_message(kind: str = "train") -> Message:
    content = RecordDict(
        {
            "arrays": arrays_of(random_model(0)),
            "config": ConfigRecord({"server-round": 3}),
        }
    )
    return Message(content=content, dst_node_id=1, message_type=kind)


def arrays(reply: Message) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in reply.content["arrays"].items()}


ATTACK = {"byzantine.nodes": "1", "byzantine.attack": "sign-flip", "byzantine.sign-flip.k": 3.0}


def test_honest_replies_and_evaluate_messages_pass_through_byte_for_byte():
    """Every record the app made is untouched; a train reply gains only its partition
    label (``node``), which the strategies use to name nodes, never to weigh them."""
    plain, attacked = linear_app(), with_mod(linear_app())
    for partition, kind in [(0, "train"), (2, "train"), (1, "evaluate")]:
        message = train_message(kind)
        want = plain(copy.deepcopy(message), context(ATTACK, partition))
        got = attacked(copy.deepcopy(message), context(ATTACK, partition))
        if kind == "train":
            assert dict(got.content.pop("node")) == {"partition-id": partition}
        assert got.content == want.content


@pytest.mark.parametrize(
    ("attack", "params", "expected"),
    [
        ("sign-flip", {"k": 3.0}, lambda u: -3.0 * u),
        ("scale", {"k": 10.0}, lambda u: 10.0 * u),
        ("zero", {}, lambda u: 0.0 * u),
    ],
)
def test_a_byzantine_reply_is_the_behaviour_applied_to_the_update(attack, params, expected):
    run = {"byzantine.nodes": 2, "byzantine.attack": attack}
    run |= {f"byzantine.{attack}.{k}": v for k, v in params.items()}
    message = train_message()
    sent = {k: v.numpy() for k, v in message.content["arrays"].items()}
    honest = arrays(linear_app()(copy.deepcopy(message), context(run, 1)))
    got = arrays(with_mod(linear_app())(copy.deepcopy(message), context(run, 1)))
    for k in sent:
        np.testing.assert_allclose(
            got[k] - sent[k], expected(honest[k] - sent[k]), rtol=1e-5, atol=1e-5
        )
    # On a SuperNode the node config decides: partition 3 is not in "nodes" but says so.
    flagged = with_mod(linear_app())(copy.deepcopy(message), context(run, 3, byzantine=True))
    plain = linear_app()(copy.deepcopy(message), context(run, 3))
    assert flagged.content != plain.content


def test_drop_answers_with_an_error_and_crash_raises():
    dropped = with_mod(linear_app())(
        train_message(), context({"byzantine.nodes": 1, "byzantine.attack": "drop"})
    )
    assert dropped.has_error() and "dropped" in dropped.error.reason
    with pytest.raises(RuntimeError, match="simulated crash"):
        with_mod(linear_app())(
            train_message(), context({"byzantine.nodes": 1, "byzantine.attack": "crash"})
        )


@pytest.mark.parametrize(
    ("run", "node", "key"),
    [
        ({"byzantine.attack": "nope"}, {}, "byzantine.attack"),
        ({"byzantine.attack": "sign-flip", "byzantine.sign-flip.k": "x"}, {}, "sign-flip.k"),
        ({"byzantine.attack": "gaussian", "byzantine.gaussian.sigma": -1.0}, {}, "sigma"),
        ({"byzantine.attack": "sign-flip", "byzantine.sign-flip.bogus": 1}, {}, "bogus"),
        ({"byzantine.nodes": "0,x"}, {}, "byzantine.nodes"),
        ({"byzantine.nodes": "0,9"}, {}, "byzantine.nodes"),
        ({"byzantine.attack": "label-flip"}, {}, "training labels"),
        ({"byzantine.attack": "mimic"}, {}, "another partition"),
        ({"byzantine.seed": -1}, {}, "byzantine.seed"),
        ({}, {"byzantine": "yes"}, "byzantine='yes'"),
        ({}, {"partition-id": 7}, "partition-id=7"),
        ({"byzantine.node": "0"}, {}, "unknown key(s) ['byzantine.node']"),
        ({"byzantine.sign-flip.kk": 2.0}, {}, "unknown key(s) ['byzantine.sign-flip.kk']"),
        ({"byzantine.nodes": "0,0,0,0"}, {}, "byzantine.nodes='0,0,0,0' names node(s) [0]"),
    ],
)
@pytest.mark.app  # label-flip, a behaviour of the app's clients/, must be refused
def test_configuration_errors_name_the_key(run, node, key):
    import clients.label_flip  # noqa: F401  (a registered behaviour the mod must refuse)

    with pytest.raises(InvalidParameterError, match=re.escape(key)):
        ByzantinePlan.from_context(context(run, **node))
    # The same error through an honest node's app, at its first message.
    with pytest.raises(InvalidParameterError, match=re.escape(key)):
        with_mod(linear_app())(train_message(), context(run, 3, **node))


def template(tmp_path, monkeypatch):
    """The PyTorch template with the attack mod added (two lines of client_app.py)."""
    project = tmp_path / "pytorch_template"
    import shutil

    shutil.copytree(TEMPLATE, project)
    client = project / "pytorch_template" / "client_app.py"
    original = client.read_text()
    changed = original.replace(
        "from flwr.clientapp import ClientApp\n",
        "from flwr.clientapp import ClientApp\nfrom flwr_flag.attacks import byzantine_mod\n",
    ).replace("app = ClientApp()", "app = ClientApp(mods=[byzantine_mod])")
    assert len(changed.splitlines()) == len(original.splitlines()) + 1
    client.write_text(changed)
    monkeypatch.syspath_prepend(str(project))
    for name in [m for m in sys.modules if m.startswith("pytorch_template")]:
        monkeypatch.delitem(sys.modules, name)
    config = flatten_dict(
        tomllib.loads((project / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    )
    return importlib.import_module("pytorch_template.client_app").app, config


@pytest.mark.app
def test_template_attacked_collapses_under_fedavg_and_holds_under_a_robust_strategy(
    tmp_path, monkeypatch
):
    app, config = template(tmp_path, monkeypatch)
    task = importlib.import_module("pytorch_template.task")
    x, y = task.load_data(0, 1)

    def accuracy(strategy, attacked: bool) -> float:
        run = {**config, "local-epochs": 10, "lr": 0.5, "byzantine.nodes": int(attacked)}
        run |= {"byzantine.attack": "sign-flip", "byzantine.sign-flip.k": 4.0}
        net = task.Net()
        result = strategy.start(
            grid=InProcessGrid(app, 5, run_config=run),
            initial_arrays=ArrayRecord(net.state_dict()),
            num_rounds=10,
            train_config=ConfigRecord({"lr": 0.5}),
        )
        net.load_state_dict(result.arrays.to_torch_state_dict())
        return task.test(net, x, y)[1]

    clean = accuracy(FedAvg(), attacked=False)
    attacked = accuracy(FedAvg(), attacked=True)
    robust = accuracy(flwr_flag.FlagAggregator(num_byzantine=1, device="cpu"), attacked=True)
    assert clean > 0.9
    assert attacked < 0.5
    assert robust > clean - 0.05


@pytest.mark.parametrize(
    "run",
    [
        {"byzantine.sign-flip.k": -1.0},
        {"byzantine.attack": "nope"},
        {"byzantine.nodes": "0,9"},
        {"byzantine.node": "0"},
    ],
)
def test_a_servers_one_line_check_stops_a_bad_mod_key_before_round_1(run):
    """Before: byzantine.sign-flip.k=-1.0 failed every client message (45 tracebacks a
    round) and flwr run exited 0; the ServerApp now refuses it, naming the key."""
    from flwr_flag.attacks import check_mod_config

    with pytest.raises(InvalidParameterError) as refused:
        check_mod_config(run, num_nodes=4)
    key = next(iter(run))
    assert key.split(".")[-1] in str(refused.value) or "byzantine" in str(refused.value)
    with pytest.raises(type(refused.value), match=re.escape(str(refused.value))):
        ByzantinePlan.from_context(context(run))  # the same words a node would say
    check_mod_config({"rule": "krum"}, num_nodes=4)  # no byzantine.* keys: nothing to check


@pytest.mark.app
def test_the_servers_app_runs_the_mod_check():
    from server_app.app import validated

    with pytest.raises(ValueError, match=r"byzantine.sign-flip.k=-1.0 is out of range"):
        validated({"rule": "flag", "byzantine.sign-flip.k": -1.0}, 4)


@pytest.mark.parametrize("strategy", ["FlagAggregator", "CTMA", "Krum", "Median"])
def test_the_nodes_a_round_limited_are_the_attackers_by_partition(strategy):
    """Before: FA's lowest-weight-nodes named honest nodes in most rounds (a subspace
    cannot tell an update from its sign flip). Sign flip x10 by partitions 0 and 1 of
    10: the limited nodes are the attackers, named by partition, in most rounds."""
    run = {"byzantine.nodes": "0,1", "byzantine.attack": "sign-flip", "byzantine.sign-flip.k": 10.0}
    result = getattr(flwr_flag, strategy)(num_byzantine=2, device="cpu").start(
        grid=InProcessGrid(with_mod(linear_app()), 10, run_config=run),
        initial_arrays=arrays_of({"w": np.zeros((3, 4), np.float32), "b": np.zeros(4, np.float32)}),
        num_rounds=8,
    )
    rounds = result.train_metrics_clientapp
    named = [sorted(rounds[r]["robust.limited-partitions"]) for r in rounds]
    assert sum(partitions == [0, 1] for partitions in named) >= 6, named
    assert all(len(rounds[r]["robust.limited-nodes"]) == 2 for r in rounds)


def distance_after_alie(spread: float, strategy) -> float:
    """How far 6 rounds of ``strategy`` end from the least-squares solution when
    partitions 0-2 of 10 run ALIE through the mod with the given spread prior."""
    run = {"byzantine.nodes": "0,1,2", "byzantine.attack": "alie", "byzantine.spread": spread}
    result = strategy.start(
        grid=InProcessGrid(with_mod(linear_app()), 10, run_config=run),
        initial_arrays=arrays_of({"w": np.zeros((3, 4), np.float32), "b": np.zeros(4, np.float32)}),
        num_rounds=6,
    )
    target = np.array([1.0, -2.0, 0.5, 3.0])
    return float(np.abs(result.arrays["w"].numpy() - target).max())


def test_alie_through_the_mod_has_a_spread_to_hide_in():
    """Before: the mod estimated the spread by re-running the app, whose training here is
    deterministic: ALIE sent its honest update and tested nothing (spread 0 still does
    that). With the documented prior it moves FedAvg's model measurably, more with a
    wider prior, and the median's less."""
    fedavg = {rho: distance_after_alie(rho, flwr_flag.Mean(device="cpu")) for rho in (0, 1, 3)}
    assert fedavg[3.0] > 2 * fedavg[1.0] and fedavg[1.0] > 1.4 * fedavg[0.0]
    median = distance_after_alie(1.0, flwr_flag.Median(num_byzantine=3, device="cpu"))
    assert median < fedavg[1.0]
