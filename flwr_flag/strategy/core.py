"""The aggregation round shared by the Message-API strategies and the legacy adapters.

Data flows one way: replies -> structural checks -> update source (``g_i = w_i - w``,
streamed, never stacked) -> value checks in the engine's first pass (NaN/Inf, norm
bound) -> robust rule -> server step ``w <- w + lr * m``, ``m = beta m + agg`` -> arrays.

A round never raises because of what a client sent, and never emits a non-finite model:
a reply that fails a check (it cannot be decoded, its structure or values are wrong, its
node already replied this round) is rejected with a logged reason; every other reply
counts once (``weighting="uniform"``; claimed example counts weigh only when the user
opts in). If too few remain for the rule's ``f`` (or the rule refuses its input) the
current model is kept and the reason logged.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from logging import INFO, WARNING
from typing import Any, NamedTuple

import numpy as np
import torch
from flwr.common.logger import log

from ..engine import ArraysSource, NonFiniteUpdateError, resolve_device
from ..rules import AggregationResult, aggregate, get_rule
from ..rules.diagnostics import Nested, PerRow, Rows
from ..rules.inputs import InputRangeError
from ..rules.registry import PreStep, check_params, check_pre, rows_after
from ..validation import Boolean, Device, Integer, Real, check_int
from .checkpoint import Checkpoint, CheckpointStore
from .replies import Reply, arrays_mismatch, screen, structural_problem
from .weighting import DEFAULT_MAX_WEIGHT_RATIO, check_weighting, reply_weights

Arrays = OrderedDict[str, np.ndarray]
Metrics = dict[str, int | float | list[int] | list[float]]


class RoundOutcome(NamedTuple):
    """A round's new arrays (``None``: the model is kept), its ``robust.*`` metrics, and
    the indices of the replies whose updates were aggregated, in row order."""

    arrays: Arrays | None
    metrics: Metrics
    used: list[int]


class RobustCore:
    """One robust aggregation round; the state a server keeps between rounds.

    Parameters
    ----------
    rule : str
        A registered rule (see :mod:`flwr_flag.rules`).
    num_byzantine : int
        ``f``, the number of Byzantine replies to tolerate.
    rule_params : mapping
        The rule's own hyperparameters.
    pre : sequence
        Pre-aggregators, as names or ``(name, params)`` pairs.
    server_lr : float
        Server learning rate ``lr > 0`` of the step ``w <- w + lr * m``.
    server_momentum : float
        ``0 <= beta < 1``; with ``beta > 0``, ``m = beta m + agg`` (heavy ball).
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
        Continue the run whose checkpoints ``checkpoint_dir`` holds.
    weighting : {"uniform", "num-examples"}
        ``"uniform"`` (default): every valid reply counts once, whatever it claims.
        ``"num-examples"`` trusts the clients' claimed counts (see
        :mod:`~flwr_flag.strategy.weighting`).
    max_weight_ratio : float or None
        With ``weighting="num-examples"``, each weight is clipped to this multiple of
        the median weight (default 2); ``None`` removes the cap.
    """

    def __init__(
        self,
        rule: str,
        num_byzantine: int = 0,
        rule_params: Mapping[str, Any] | None = None,
        pre: Sequence[PreStep] = (),
        server_lr: float = 1.0,
        server_momentum: float = 0.0,
        device: str = "auto",
        chunk_size: int | None = None,
        max_update_norm: float | None = None,
        checkpoint_dir: str | None = None,
        resume: bool = False,
        weighting: str = "uniform",
        max_weight_ratio: float | None = DEFAULT_MAX_WEIGHT_RATIO,
    ) -> None:
        entry = get_rule(rule)
        self.rule = rule
        self.num_byzantine = check_int("strategy", "num_byzantine", num_byzantine, 0)
        self.rule_params = check_params(rule, rule_params or {})
        self.pre = check_pre("pre", pre)
        self.server_lr = Real(0.0, low_open=True).check("strategy", "server_lr", server_lr)
        self.server_momentum = Real(0.0, 1.0, high_open=True).check(
            "strategy", "server_momentum", server_momentum
        )
        Integer(1, optional=True).check("strategy", "chunk_size", chunk_size)
        Real(0.0, low_open=True, optional=True).check(
            "strategy", "max_update_norm", max_update_norm
        )
        self.weighting, self.max_weight_ratio = check_weighting(weighting, max_weight_ratio)
        self.device = resolve_device(Device().check("strategy", "device", device))
        self.chunk_size = chunk_size
        self.max_update_norm = max_update_norm
        Boolean().check("strategy", "resume", resume)
        self.checkpoints = (
            None if checkpoint_dir is None else CheckpointStore(checkpoint_dir, resume=resume)
        )
        self._momentum: torch.Tensor | None = None
        self._previous: torch.Tensor | None = None
        self._uses_previous = "previous" in entry.state
        self.row_params: Callable[[list[Reply]], dict[str, Any]] | None = None
        """Optional per-round hyperparameters that depend on which replies are aggregated
        (DETOX's group label of each row); called with the replies in row order."""

    def settings(self) -> dict[str, Any]:
        """The settings, for ``summary()`` logs."""
        return {
            "rule": self.rule,
            "num_byzantine": self.num_byzantine,
            "rule_params": self.rule_params,
            "pre": self.pre,
            "server_lr": self.server_lr,
            "server_momentum": self.server_momentum,
            "device": str(self.device),
            "chunk_size": self.chunk_size or "auto",
            "max_update_norm": self.max_update_norm,
            "weighting": self.weighting,
            "max_weight_ratio": self.max_weight_ratio,
            "checkpoint_dir": str(self.checkpoints.directory) if self.checkpoints else None,
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {}
        if self._momentum is not None:
            state["momentum"] = self._momentum
        if self._previous is not None:
            state["previous"] = self._previous
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor], size: int | None = None) -> None:
        """Restore the state; with ``size`` (the model's parameter count), refuse state
        of another model."""
        expected = {"momentum"} | ({"previous"} if self._uses_previous else set())
        unknown = set(state) - expected
        if unknown:
            raise ValueError(f"resume: state {sorted(unknown)} does not belong to {self.rule}")
        for key, value in state.items():
            if size is not None and tuple(value.shape) != (size,):
                raise ValueError(
                    f"resume: state {key!r} has shape {tuple(value.shape)}, but the model has "
                    f"{size} parameters"
                )
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f"resume: state {key!r} is not finite")
        self._momentum = state["momentum"].to(self.device) if "momentum" in state else None
        self._previous = state["previous"].to(self.device) if "previous" in state else None

    def resume(self, initial: Arrays) -> Checkpoint | None:
        """The newest readable checkpoint, checked against the ``initial`` arrays (names,
        shapes, dtypes, finite values) with its state loaded; ``None`` if there is none."""
        if self.checkpoints is None:
            raise ValueError("resume=True needs checkpoint_dir")
        checkpoint = self.checkpoints.latest()
        if checkpoint is None:
            return None
        where = (
            f"resume: checkpoint of round {checkpoint.server_round} in {self.checkpoints.directory}"
        )
        mismatch = arrays_mismatch(checkpoint.arrays, initial)
        if mismatch is not None:
            raise ValueError(f"{where} does not fit the model: {mismatch}")
        for name, array in checkpoint.arrays.items():
            if array.dtype.kind in "fc" and not np.isfinite(array).all():
                raise ValueError(f"{where}: array '{name}' is not finite")
        self.load_state_dict(checkpoint.state, sum(a.size for a in initial.values()))
        log(
            INFO,
            "Resuming after round %d from %s",
            checkpoint.server_round,
            self.checkpoints.directory,
        )
        return checkpoint

    def round(
        self, server_round: int, reference: Arrays, replies: Sequence[Reply], failures: int
    ) -> RoundOutcome:
        """Aggregate one round: the new global arrays (``None``: keep the model), the
        metrics, and which replies (indices into ``replies``) were aggregated."""
        start = time.perf_counter()
        candidates, rejected = screen(
            [r.node_id for r in replies], lambda i: structural_problem(replies[i], reference)
        )
        result, used, why_kept = self._aggregate(reference, replies, candidates, rejected)
        for index, reason in rejected.items():
            log(
                WARNING,
                "Round %d: rejected reply from node %d: %s",
                server_round,
                replies[index].node_id,
                reason,
            )

        arrays = None
        if result is not None:
            arrays = self._server_step(reference, result.vector)
            if arrays is None:
                why_kept = "the aggregate is not finite"
        if why_kept:
            log(WARNING, "Round %d: keeping the current model: %s", server_round, why_kept)
        metrics: Metrics = {
            "robust.received": len(replies),
            "robust.rejected": len(rejected),
            "robust.failed": failures,
            "robust.rejected-nodes": sorted(replies[i].node_id for i in rejected),
            "robust.f": self.byzantine_left(replies, rejected, used),
            "robust.kept-model": int(arrays is None),
            "robust.weighted-by-num-examples": int(self.weighting == "num-examples"),
            "robust.aggregation-seconds": time.perf_counter() - start,
        }
        if result is not None:
            node_ids = [replies[i].node_id for i in used]
            metrics.update(summarize(result.diagnostics, node_ids))
        if arrays is not None and self.checkpoints is not None:
            self.checkpoints.save(server_round, arrays, self.state_dict())
        return RoundOutcome(arrays, metrics, used if result is not None else [])

    def _aggregate(
        self,
        reference: Arrays,
        replies: Sequence[Reply],
        candidates: list[int],
        rejected: dict[int, str],
    ) -> tuple[AggregationResult | None, list[int], str | None]:
        """The rule's result on the candidates that pass the value checks, and those
        replies' indices: row ``i`` of the rule's input is ``replies[live[i]]``."""
        names = list(reference)
        requirement = get_rule(self.rule).requirement
        # float64 models are aggregated in float64, as Flower's FedAvg does.
        wide = any(a.dtype == np.float64 for a in reference.values())
        dtype = torch.float64 if wide else torch.float32
        live = list(candidates)
        while True:
            f = self.byzantine_left(replies, rejected, live)
            rows = rows_after(self.pre, len(live))
            if rows < requirement.minimum(f):
                after = f" ({rows} rows after {self.pre})" if rows != len(live) else ""
                why = f"{len(live)} valid replies{after}, but {self.rule} with f={f} needs "
                why += str(requirement)
                return None, live, why
            chosen = [replies[i] for i in live]
            source = ArraysSource(
                [[r.arrays[k] for k in names] for r in chosen],
                base=list(reference.values()),
                device=self.device,
                dtype=dtype,
                chunk_size=self.chunk_size,
            )
            try:
                if self.max_update_norm is not None:
                    norms = source.sq_norms().sqrt().tolist()
                    too_large = {i for i, v in enumerate(norms) if v > self.max_update_norm}
                    for i in too_large:
                        rejected[live[i]] = (
                            f"update norm {norms[i]:.4g} exceeds "
                            f"max_update_norm={self.max_update_norm}"
                        )
                    if too_large:
                        live = [r for i, r in enumerate(live) if i not in too_large]
                        continue
                params = dict(self.rule_params)
                if self._uses_previous and self._previous is not None:
                    params["previous"] = self._previous
                if self.row_params is not None:
                    params.update(self.row_params(chosen))
                weights = reply_weights(
                    [r.num_examples for r in chosen], self.weighting, self.max_weight_ratio
                )
                result = aggregate(source, self.rule, f, weights, pre=self.pre, **params)
                return result, live, None
            except NonFiniteUpdateError as error:
                bad = set(error.rows)
                for i in bad:
                    rejected[live[i]] = "update contains NaN or Inf (or overflows)"
                live = [r for i, r in enumerate(live) if i not in bad]
            except InputRangeError as error:
                return None, live, str(error)

    def byzantine_left(
        self, replies: Sequence[Reply], rejected: Mapping[int, str], live: Sequence[int]
    ) -> int:
        """The f the rule gets: ``num_byzantine`` less the nodes already caught. Honest
        nodes send well-formed, finite updates, so a node none of whose replies passed
        the checks is one of the f, and at most ``f - caught`` faulty nodes remain among
        the rest (a NaN attacker no longer costs Bulyan at ``n = 4f + 3`` its round)."""
        kept = {replies[i].node_id for i in live}
        caught = {replies[i].node_id for i in rejected} - kept
        return max(self.num_byzantine - len(caught), 0)

    def _server_step(self, reference: Arrays, aggregate_update: torch.Tensor) -> Arrays | None:
        """``w + lr * m`` array by array, in each array's own dtype: the step is moved to
        the host once, in float32 unless an array is float64 (one rounding of the step
        and one of the sum, so the result is within two float32 ulps of the float64
        step's); integer arrays (step counters) get the rounded float64 step. The new
        arrays are written into the step's own buffer when no state keeps it (a rule's
        output is a fresh tensor), so the step costs no model-sized copy; ``None`` when a new
        array would not be finite."""
        step = aggregate_update
        if self.server_momentum > 0:
            momentum = self._momentum if self._momentum is not None else torch.zeros_like(step)
            step = self.server_momentum * momentum + aggregate_update
        kept = self.server_momentum > 0 or self._uses_previous
        wide = any(a.dtype == np.float64 for a in reference.values())
        delta = step.to("cpu", torch.float64 if wide else torch.float32, copy=kept)
        if self.server_lr != 1:
            delta.mul_(self.server_lr)
        host = delta.numpy()
        out: Arrays = OrderedDict()
        offset = 0
        for name, base in reference.items():
            piece = host[offset : offset + base.size].reshape(base.shape)
            if base.dtype == host.dtype:
                value = np.add(piece, base, out=piece)
            elif np.issubdtype(base.dtype, np.floating):
                value = base + piece.astype(base.dtype)
            elif np.isfinite(piece).all():
                value = np.rint(base.astype(np.float64) + piece.astype(np.float64))
            else:
                return None
            # A non-finite step, or a sum that overflows, leaves a non-finite value.
            if value.dtype.kind in "fc" and not np.isfinite(value).all():
                return None
            out[name] = np.asarray(value, dtype=base.dtype)  # 0-d arrays stay arrays
            offset += base.size
        if self.server_momentum > 0:
            self._momentum = step
        if self._uses_previous:
            self._previous = aggregate_update
        return out


def summarize(diagnostics: Mapping[str, Any], node_ids: Sequence[int]) -> Metrics:
    """A rule's diagnostics as MetricRecord entries: every :class:`Rows` list mapped to
    node ids (``<key>-nodes``, nested rules' too, through :class:`Nested` row maps; lists
    over mixed rows, as after bucketing, are left out), every :class:`PerRow` as its min
    and median, finite scalars as they are; ``outvoted-nodes`` gathers every node some
    list marks as set aside. Knows no rule's key names."""
    out: Metrics = {}
    outvoted: set[int] = set()

    def walk(prefix: str, diag: Mapping[str, Any], ids: list[int] | None) -> None:
        if isinstance(diag, Nested):
            ids = None if ids is None or diag.rows is None else [ids[i] for i in diag.rows]
        for key, value in diag.items():
            name = f"{prefix}{key.replace('_', '-')}"
            if isinstance(value, Rows):
                if ids is not None:
                    out[f"{name}-nodes"] = [int(ids[i]) for i in value]
                    if value.outvoted:
                        outvoted.update(ids[i] for i in value)
            elif isinstance(value, PerRow):
                values = torch.tensor(value, dtype=torch.float64)
                out[f"{name}-min"] = float(values.min())
                out[f"{name}-median"] = float(values.median())
            elif isinstance(value, Mapping):
                walk(f"{name}.", value, ids)
            elif isinstance(value, (bool, int, float)) and math.isfinite(value):
                out[name] = float(value) if isinstance(value, float) else int(value)

    walk("robust.", diagnostics, [int(i) for i in node_ids])
    out["robust.outvoted-nodes"] = sorted(outvoted)
    return out
