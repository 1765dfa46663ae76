"""The aggregation round shared by the Message-API strategies and the legacy adapters.

Data flows one way: replies -> structural checks (:mod:`.replies`) -> update source
(``g_i = w_i - w``, streamed, never stacked) -> value checks in the engine's first pass
(NaN/Inf, norm bound) -> robust rule -> server step (:mod:`.step`) -> arrays.

A round never raises because of what a client sent, and never emits a non-finite model:
a reply that fails a check (it cannot be decoded, its structure or values are wrong, its
node already replied this round) is rejected with a logged reason; every other reply
counts once (``weighting="uniform"``; claimed example counts weigh only when the user
opts in). If too few remain for the rule's ``f`` (or the rule refuses its input) the
current model is kept and the reason logged.
"""

from __future__ import annotations

import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from logging import WARNING
from typing import Any, NamedTuple

import numpy as np
import torch
from flwr.common.logger import log

from ..engine import ArraysSource, NonFiniteUpdateError, UpdateSource, resolve_device
from ..engine.source import CHUNK_SIZE
from ..rules import AggregationResult, aggregate, get_rule
from ..rules.history import HistoryRows, NodeHistory
from ..rules.inputs import InputRangeError
from ..rules.registry import (
    ROUND_STATE,
    PreStep,
    RoundState,
    check_params,
    check_pre,
    split_step,
)
from ..validation import (
    Boolean,
    ByzantineCount,
    Choice,
    Device,
    Function,
    Integer,
    InvalidParameterError,
    Param,
    Real,
    Typed,
    byzantine_count,
    validate,
)
from .checkpoint import CheckpointStore
from .persistence import Persistence
from .replies import Reply, arrays_mismatch, screen, structural_problem
from .round_metrics import VERBOSITY, Metrics, least_aligned, shown, summarize
from .step import PARAMS as STEP_PARAMS
from .step import AnyTimeAverage, ServerStep
from .weighting import DEFAULT_MAX_WEIGHT_RATIO, WEIGHTINGS, reply_weights

Arrays = OrderedDict[str, np.ndarray]

OPTIONS: dict[str, Param] = {
    "server_lr": STEP_PARAMS["lr"],
    "server_momentum": STEP_PARAMS["momentum"],
    "device": Device(),
    "chunk_size": CHUNK_SIZE,
    "max_update_norm": Real(0.0, low_open=True, optional=True),
    "checkpoint_dir": Typed(kind=(str, os.PathLike), optional=True),
    "resume": Boolean(),
    "resume_with_changes": Boolean(),
    "weighting": Choice(choices=WEIGHTINGS),
    "max_weight_ratio": Real(1.0, optional=True),
    "anytime_gamma_min": Real(0.0, 1.0, low_open=True, optional=True),
    "anchor": Function(optional=True),
    "max_kept_rounds": Integer(1, optional=True),
    "history": Typed(kind=(bool, Mapping), optional=True),
    "diagnostics": Choice(choices=VERBOSITY),
}
"""The aggregation options of every robust strategy, declared once: checked when a
strategy is built, and listed in its docstring from here."""


class NotTrainingError(RuntimeError):
    """The run keeps the model round after round (``max_kept_rounds``), or ended
    without any round changing it: it is not training."""


class RoundOutcome(NamedTuple):
    """A round's new arrays (``None``: the model is kept), its ``robust.*`` metrics, and
    the indices of the replies whose updates were aggregated, in row order."""

    arrays: Arrays | None
    metrics: Metrics
    used: list[int]


class Aggregation(NamedTuple):
    """What the rule made of a round's candidates: its result (``None``: keep the
    model, for the reason ``why_kept``) and the replies it ran on (row ``i`` of its input
    is ``replies[used[i]]``)."""

    result: AggregationResult | None
    used: list[int]
    f: int
    why_kept: str | None = None
    source: UpdateSource | None = None
    """The rows the rule ran on: the replies' updates, or every known node's row with
    ``history``."""
    nodes: list[int] | None = None
    """Each row's node."""
    history: HistoryRows | None = None


class RobustCore(Persistence):
    r"""One robust aggregation round; the state a server keeps between rounds.

    Parameters
    ----------
    rule : str
        A registered rule (see :mod:`flwr_flag.rules`).
    num_byzantine : int or float
        ``f``, the number of Byzantine replies to tolerate, or a float in (0, 0.5): the
        fraction of each round's replying nodes, ``f = ceil(fraction * n)`` (a user
        who samples 50 of 1,000 nodes knows a fraction, not a count).
    rule_params : mapping
        The rule's own hyperparameters.
    pre : sequence, optional
        Pre-aggregators, as names or ``(name, params)`` pairs; ``None`` (default): the
        rule's own default (:attr:`~flwr_flag.rules.registry.Rule.default_pre`: NNM
        before CTMA, none before the others); ``()``: none.
    server_lr, server_momentum : float
        The server step ``w <- w + lr * m``, ``m = beta m + agg`` (:class:`.ServerStep`).
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda[:i]"``.
    chunk_size : int, optional
        Coordinates per chunk of the streaming engine.
    max_update_norm : float, optional
        Replies whose update norm ``||w_i - w||`` exceeds this are rejected.
    checkpoint_dir : path, optional
        Where each round's global arrays and state are written atomically; a new run
        needs a directory without checkpoints (see :mod:`~.checkpoint`).
    resume : bool
        Continue the run whose checkpoints ``checkpoint_dir`` holds, with the settings
        it was written with (:meth:`settings_record`); other settings are refused.
    resume_with_changes : bool
        Resume with the settings given now although they differ: each difference is
        logged, and state that no longer applies (a momentum buffer when
        ``server_momentum=0``, the round state of another rule) is dropped.
    weighting : {"uniform", "num-examples"}
        ``"uniform"`` (default): every valid reply counts once, whatever it claims.
        ``"num-examples"`` trusts the clients' claimed counts (see
        :mod:`~flwr_flag.strategy.weighting`).
    max_weight_ratio : float or None
        With ``weighting="num-examples"``, each weight is clipped to this multiple of
        the median weight (default 2); ``None`` removes the cap.
    anytime_gamma_min : float, optional
        Keep mu^2-SGD's AnyTime average of the global models with this floor
        :math:`\gamma_{\min}` (:class:`.AnyTimeAverage`): what is evaluated and
        returned, and what the clients running mu^2-SGD average too. ``None``: off.
    anchor : callable, optional
        The server's trust anchor (:mod:`~flwr_flag.rules.anchor`, FLTrust):
        ``anchor(arrays) -> arrays``, the model after the server's own local training on
        its trusted data from the round's global model ``arrays`` (same names, shapes
        and dtypes). Each round its update :math:`g_0` scores every reply, which is
        weighted by its clipped cosine with it and scaled down to the round's median
        norm if longer, before the rule (the ``anchor`` pre-aggregator runs first; its
        ``rescale`` param). An anchor that returns a
        sequence of arrays, the server's training on each class's samples alone, gives
        the per-class scoring for label skew (an honest node holding a few classes is
        explained by theirs). ``None``: off.
    max_kept_rounds : int or None
        Stop the run with an error (:class:`NotTrainingError`, from the round) once
        this many rounds in a row kept the model (default 10), naming the last reason:
        a run that never trains must not end like one that did; a run none of whose
        rounds changed the model ends with it too. ``None``: neither.

    The rule's round state (the previous aggregate, each row's group) comes from the
    providers its module registered (:class:`~flwr_flag.rules.registry.RoundState`), one
    per key, in :attr:`round_state`.
    """

    def __init__(
        self,
        rule: str,
        num_byzantine: int | float = 0,
        rule_params: Mapping[str, Any] | None = None,
        pre: Sequence[PreStep] | None = None,
        server_lr: float = 1.0,
        server_momentum: float = 0.0,
        device: str = "auto",
        chunk_size: int | None = None,
        max_update_norm: float | None = None,
        checkpoint_dir: str | None = None,
        resume: bool = False,
        resume_with_changes: bool = False,
        weighting: str = "uniform",
        max_weight_ratio: float | None = DEFAULT_MAX_WEIGHT_RATIO,
        anytime_gamma_min: float | None = None,
        anchor: Callable[[Arrays], Mapping[str, np.ndarray]] | None = None,
        max_kept_rounds: int | None = 10,
        history: bool | Mapping[str, Any] | None = None,
        diagnostics: str = "short",
    ) -> None:
        validate("strategy", OPTIONS, locals())
        self.rule = rule
        self.num_byzantine = ByzantineCount().check("strategy", "num_byzantine", num_byzantine)
        self.rule_params = check_params(rule, rule_params or {})
        self.pre = check_pre("pre", get_rule(rule).default_pre if pre is None else pre)
        self.anchor = anchor
        named = [split_step(step)[0] for step in self.pre]
        if "anchor" in named and anchor is None:
            raise InvalidParameterError(
                "strategy: pre-aggregator 'anchor' scores updates against the server's "
                "reference update; give the strategy anchor=<function>"
            )
        if anchor is not None and "anchor" not in named:
            self.pre = ["anchor", *self.pre]
        if anchor is not None:
            self.rule_params, self.pre = get_rule(rule).behind_anchor(self.rule_params, self.pre)
        self.step = ServerStep(server_lr, server_momentum)
        self.device = resolve_device(device)
        self.chunk_size = chunk_size
        self.max_update_norm = max_update_norm
        self.weighting, self.max_weight_ratio = weighting, max_weight_ratio
        self.checkpoints = (
            None if checkpoint_dir is None else CheckpointStore(checkpoint_dir, resume=resume)
        )
        self.resume_with_changes = resume_with_changes
        self.max_kept_rounds = max_kept_rounds
        self.diagnostics = diagnostics
        self.kept_in_a_row = 0
        """Rounds in a row that kept the model, up to the last one."""
        self.rounds_stepped = 0
        """Rounds of this process that changed the model."""
        self.anytime = None if anytime_gamma_min is None else AnyTimeAverage(anytime_gamma_min)
        self.history = None if not history else NodeHistory(**({} if history is True else history))
        if self.history is not None and weighting != "uniform":
            raise InvalidParameterError(
                f"strategy: history weighs each known node by its staleness alone; it takes "
                f"weighting='uniform', not {weighting!r}"
            )
        self.round_state: dict[str, RoundState] = {
            key: ROUND_STATE[key]() for key in sorted(get_rule(rule).state)
        }

    def settings(self) -> dict[str, Any]:
        """The settings, for ``summary()`` logs."""
        return {
            "rule": self.rule,
            "num_byzantine": self.num_byzantine,
            "rule_params": self.rule_params,
            "pre": self.pre,
            "server_lr": self.step.lr,
            "server_momentum": self.step.momentum,
            "device": str(self.device),
            "chunk_size": self.chunk_size or "auto",
            "max_update_norm": self.max_update_norm,
            "weighting": self.weighting,
            "max_weight_ratio": self.max_weight_ratio,
            "checkpoint_dir": str(self.checkpoints.directory) if self.checkpoints else None,
            "history": None if self.history is None else self.history.options(),
            "diagnostics": self.diagnostics,
        }

    def round(
        self, server_round: int, reference: Arrays, replies: Sequence[Reply], failures: int
    ) -> RoundOutcome:
        """Aggregate one round: the new global arrays (``None``: keep the model), the
        metrics, and which replies (indices into ``replies``) were aggregated."""
        start = time.perf_counter()
        if self.anytime is not None and not self.anytime.t:
            self.anytime.add(reference)  # x_1 = w_1, the model of the first round
        candidates, rejected = screen(
            [r.node_id for r in replies], lambda i: structural_problem(replies[i], reference)
        )
        # The rules are symmetric in their rows, float sums are not, and Flower samples
        # nodes in a random order: rows by node id make the aggregate the same bits
        # whatever order the replies arrive in, so a seed fixes a run.
        candidates.sort(key=lambda i: replies[i].node_id)
        anchored = time.perf_counter()
        pre = self._pre_with_anchor(reference)
        anchor_seconds = time.perf_counter() - anchored
        outcome = self._aggregate(server_round, reference, replies, candidates, rejected, pre)
        result, used, why_kept = outcome.result, outcome.used, outcome.why_kept
        for index, reason in rejected.items():
            log(
                WARNING,
                "Round %d: rejected reply from node %d: %s",
                server_round,
                replies[index].node_id,
                reason,
            )
        arrays, metrics = None, {}
        if result is not None:
            # Before the step, which writes the new model into the aggregate's tensor.
            metrics = self._limited(outcome, replies)
            metrics.update(summarize(result.diagnostics, outcome.nodes))
            keep = any(p.keeps_aggregate for p in self.round_state.values())
            arrays = self.step(reference, result.vector, keep=keep)
            if arrays is None:
                why_kept = "the aggregate is not finite"
            else:
                for provider in self.round_state.values():
                    provider.after_step(result.vector)
        if why_kept:
            log(WARNING, "Round %d: keeping the current model: %s", server_round, why_kept)
        self._count_kept(server_round, arrays is None, why_kept)
        metrics.update(
            {
                "robust.received": len(replies),
                "robust.rejected": len(rejected),
                "robust.failed": failures,
                "robust.rejected-nodes": sorted(replies[i].node_id for i in rejected),
                "robust.f": outcome.f,
                "robust.kept-model": int(arrays is None),
                "robust.weighted-by-num-examples": int(self.weighting == "num-examples"),
                "robust.aggregation-seconds": time.perf_counter() - start,
            }
        )
        if self.anchor is not None:
            metrics["robust.anchor-seconds"] = anchor_seconds
        if outcome.history is not None:
            metrics["robust.history.known"] = len(outcome.history.node_ids)
            metrics["robust.history.clipped-nodes"] = outcome.history.clipped
        if self.anytime is not None:
            self.anytime.add(reference if arrays is None else arrays)
        if arrays is not None and self.checkpoints is not None:
            self.checkpoints.save(server_round, arrays, self.state_dict(), self.settings_record())
        return RoundOutcome(arrays, metrics, used if result is not None else [])

    def shown(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """The metrics this strategy's ``diagnostics`` shows (:func:`.round_metrics.shown`)."""
        return shown(metrics, self.diagnostics)

    @staticmethod
    def _limited(outcome: Aggregation, replies: Sequence[Reply]) -> Metrics:
        """The nodes the round's aggregate followed least (:func:`.least_aligned`), by
        node id and, where their replies name one, by partition."""
        rows = least_aligned(outcome.source, outcome.result.vector, outcome.f)
        nodes = [outcome.nodes[i] for i in rows]
        metrics: Metrics = {"robust.limited-nodes": nodes}
        partitions = {r.node_id: r.partition_id for r in replies if r.partition_id is not None}
        if partitions:
            metrics["robust.limited-partitions"] = [partitions[j] for j in nodes if j in partitions]
        return metrics

    def _count_kept(self, server_round: int, kept: bool, why: str | None) -> None:
        """Count the round; raise :class:`NotTrainingError` at ``max_kept_rounds``
        kept in a row."""
        self.kept_in_a_row = self.kept_in_a_row + 1 if kept else 0
        self.rounds_stepped += not kept
        if self.max_kept_rounds is not None and self.kept_in_a_row >= self.max_kept_rounds:
            raise NotTrainingError(
                f"round {server_round}: {self.kept_in_a_row} rounds in a row kept the model "
                f"(the last because {why}); the run is not training, so it stops here. Fix "
                "the cause, or pass max_kept_rounds=None (run config max-kept-rounds = "
                "'none') to go on"
            )

    def _pre_with_anchor(self, model: Arrays) -> list[PreStep]:
        r"""The pre-aggregators with this round's reference update :math:`g_0 =
        \mathrm{anchor}(w) - w` given to the ``anchor`` step (taken with the replies'
        difference rule), or one per class when the anchor returns a sequence of
        arrays (the per-class scoring of :mod:`~flwr_flag.rules.anchor`). A reference
        that is not finite reaches the step as NaN, which refuses the round with its
        reason; arrays that do not fit the model are the anchor function's bug, and
        raise."""
        if self.anchor is None:
            return self.pre
        trained = self.anchor(OrderedDict((k, v.copy()) for k, v in model.items()))
        per_class = isinstance(trained, Sequence) and not isinstance(trained, (str, Mapping))
        models = list(trained) if per_class else [trained]
        if not models:
            raise ValueError("anchor: returned no arrays")
        for one in models:
            if not isinstance(one, Mapping):
                raise TypeError(
                    f"anchor: returned a {type(one).__name__}, not arrays by name (or a "
                    "sequence of them, one per class)"
                )
        models = [{k: np.asarray(v) for k, v in one.items()} for one in models]  # 0-d: scalars
        for one in models:
            mismatch = arrays_mismatch(one, model)
            if mismatch is not None:
                raise ValueError(f"anchor: its arrays do not fit the model: {mismatch}")
        size = sum(a.size for a in model.values())
        try:
            source = self._source(model, [Reply(j, one) for j, one in enumerate(models)])
            g0 = source.combine(torch.eye(len(models)) if per_class else torch.ones(1))
        except NonFiniteUpdateError:
            g0 = torch.full((len(models), size) if per_class else (size,), math.nan)
        return [
            (name, {**params, "reference": g0}) if name == "anchor" else (name, params)
            for name, params in map(split_step, self.pre)
        ]

    def _aggregate(
        self,
        server_round: int,
        reference: Arrays,
        replies: Sequence[Reply],
        candidates: list[int],
        rejected: dict[int, str],
        pre: list[PreStep],
    ) -> Aggregation:
        """The rule on the candidates that pass the value checks. A check that rejects
        rows (the norm bound, NaN/Inf found in the first pass) records why in
        ``rejected`` and starts over on the rest; the loop ends with a result or with
        the reason the model is kept. With ``history``, the rule runs on every known
        node's row, and a node caught this round leaves the history."""
        live = list(candidates)
        if self.history is not None:
            self.history.forget([replies[i].node_id for i in rejected])
        while True:
            ids = [replies[i].node_id for i in live]
            n = len(live) if self.history is None else self.history.rows_for(ids, server_round)
            f = self.byzantine_left(replies, rejected, live, n)
            why = get_rule(self.rule).why_not(n, f, self.rule_params, self.pre)
            if why is not None:
                return Aggregation(None, live, f, why)
            chosen = [replies[i] for i in live]
            # The limited nodes' inner products come with the output pass.
            source = self._source(reference, chosen, track_inner=f > 0 and self.history is None)
            try:
                bad = self._too_large(source)
                if not bad:
                    weights = reply_weights(
                        [r.num_examples for r in chosen], self.weighting, self.max_weight_ratio
                    )
                    rows = None
                    if self.history is not None:
                        rows = self.history.rows(source, ids, server_round, self.chunk_size)
                        source, ids, weights = rows.source, rows.node_ids, rows.weights
                    params = {
                        **self.rule_params,
                        **{k: s.value(ids) for k, s in self.round_state.items()},
                    }
                    result = aggregate(source, self.rule, f, weights, pre=pre, **params)
                    return Aggregation(result, live, f, None, source, ids, rows)
            except NonFiniteUpdateError as error:
                bad = dict.fromkeys(error.rows, "update contains NaN or Inf (or overflows)")
            except InputRangeError as error:
                return Aggregation(None, live, f, str(error))
            rejected.update({live[i]: reason for i, reason in bad.items()})
            if self.history is not None:
                self.history.forget([replies[live[i]].node_id for i in bad])
            live = [r for i, r in enumerate(live) if i not in bad]

    def _source(
        self, reference: Arrays, chosen: list[Reply], track_inner: bool = False
    ) -> UpdateSource:
        """The updates ``w_i - w`` of ``chosen``, streamed from their arrays; float64
        models are aggregated in float64, as Flower's FedAvg does."""
        wide = any(a.dtype == np.float64 for a in reference.values())
        return ArraysSource(
            [[r.arrays[k] for k in reference] for r in chosen],
            base=list(reference.values()),
            track_inner=track_inner,
            device=self.device,
            dtype=torch.float64 if wide else torch.float32,
            chunk_size=self.chunk_size,
        )

    def _too_large(self, source: UpdateSource) -> dict[int, str]:
        """Rows whose update norm exceeds ``max_update_norm``, with the reason."""
        if self.max_update_norm is None:
            return {}
        norms = source.sq_norms().sqrt().tolist()
        return {
            i: f"update norm {v:.4g} exceeds max_update_norm={self.max_update_norm}"
            for i, v in enumerate(norms)
            if v > self.max_update_norm
        }

    def byzantine_left(
        self,
        replies: Sequence[Reply],
        rejected: Mapping[int, str],
        live: Sequence[int],
        rows: int | None = None,
    ) -> int:
        """The f the rule gets: ``num_byzantine`` (a count, or the fraction of the nodes
        that replied, or of the ``rows`` the rule sees with history, rounded up) less
        the nodes already caught. Honest
        nodes send well-formed, finite updates, so a node none of whose replies passed
        the checks is one of the f, and at most ``f - caught`` faulty nodes remain among
        the rest (so a NaN attacker does not cost Bulyan at ``n = 4f + 3`` its round)."""
        kept = {replies[i].node_id for i in live}
        caught = {replies[i].node_id for i in rejected} - kept
        nodes = len({r.node_id for r in replies}) if rows is None else rows + len(caught)
        return max(byzantine_count(self.num_byzantine, nodes) - len(caught), 0)
