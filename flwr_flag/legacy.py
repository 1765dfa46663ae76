"""The same strategies for projects on Flower's legacy API (``ServerAppComponents``).

``from flwr_flag.legacy import FlagAggregator`` gives a ``flwr.server.strategy.FedAvg``
subclass whose ``aggregate_fit`` runs the shared :class:`~flwr_flag.strategy.RobustCore`
(the one the Message-API classes use): only the conversion of ``FitRes`` lives here.
Arrays have no names in this API; they are checked and reported by position.
Metrics are returned as scalars (node-id lists as comma-separated strings). With
``resume=True``, ``initialize_parameters`` starts from the newest checkpoint and the
rounds this strategy aggregates and saves are numbered after it (Flower's legacy loop
itself counts from 1 and runs its configured number of rounds again).
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from logging import INFO
from typing import Any

from flwr.common import EvaluateRes, FitIns, FitRes, Parameters, Scalar
from flwr.common.logger import log
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg as LegacyFedAvg

from .strategy import named
from .strategy.client_metrics import (
    MetricsSummary,
    read_metrics,
    screened_metrics,
    value_problem,
)
from .strategy.detox import DetoxGroups
from .strategy.npy import npy_bytes, npy_view
from .strategy.options import RobustOptions
from .strategy.replies import Reply, common_zeros, decoded


def _by_position(parameters: Parameters) -> OrderedDict:
    """The arrays of ``parameters`` viewed in place (no copy), named by position."""
    return OrderedDict((str(i), npy_view(t)) for i, t in enumerate(parameters.tensors))


def _parameters(arrays: OrderedDict) -> Parameters:
    return Parameters([npy_bytes(a) for a in arrays.values()], "numpy.ndarray")


def node_of(proxy: ClientProxy) -> int:
    """The node id of a result: ``proxy.node_id`` where the runtime sets it, else the
    ``cid`` (Flower's ``GrpcClientProxy`` from ``start_server`` sets only that): its
    integer value, or a stable 32-bit hash of a non-numeric ``cid``."""
    node_id = getattr(proxy, "node_id", None)
    if isinstance(node_id, int) and not isinstance(node_id, bool):
        return node_id
    cid = str(proxy.cid)
    return int(cid) if cid.isdigit() else zlib.crc32(cid.encode())


def _scalars(metrics: dict[str, Any]) -> dict[str, Scalar]:
    """Metrics as the legacy API's scalars: lists as comma-separated strings."""
    return {k: ",".join(map(str, v)) if isinstance(v, list) else v for k, v in metrics.items()}


class RobustStrategy(RobustOptions, LegacyFedAvg):
    """Legacy-API twin of :class:`flwr_flag.strategy.RobustStrategy` (same options;
    Flower's options are those of the legacy ``FedAvg``, e.g. ``fraction_fit``).

    Flower's ``accept_failures`` (``False``: a round with any failure keeps the model)
    and ``fit_metrics_aggregation_fn`` / ``evaluate_metrics_aggregation_fn`` (given the
    accepted results' ``(num_examples, metrics)``) are honoured; without them the
    clients' metrics are dropped, as FedAvg does, unless ``diagnostics="full"``: then
    they are screened and averaged as in the Message API
    (:mod:`~flwr_flag.strategy.client_metrics`). ``inplace`` is accepted and changes nothing:
    replies are never modified. Evaluation results go through the same screening, the
    loss included, and each accepted result counts once (or by its capped count)."""

    def __init__(self, num_byzantine: int = 0, **options: Any) -> None:
        super().__init__(num_byzantine, **options)
        self._sent: Parameters | None = None
        self._offset = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.core.settings()})"

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """The newest checkpoint's arrays when resuming (checked against the initial
        parameters, when given), else FedAvg's. Round numbers continue after the
        checkpoint's: Flower's legacy loop counts from 1, this strategy adds the offset.
        Before round 1, it waits for the nodes the rule needs (``node_wait``)."""
        initial = super().initialize_parameters(client_manager)
        if self.resume:
            if initial is None:
                raise ValueError(
                    "resume=True needs initial_parameters to check the checkpoint against"
                )
            checkpoint = self.core.resume(_by_position(initial))
            if checkpoint is not None:
                self._offset = checkpoint.server_round
                initial = _parameters(checkpoint.arrays)
        self.wait_for_nodes(client_manager.num_available)
        return initial

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """FedAvg's; remembers the parameters sent, the reference of the updates (and
        sends the AnyTime floor, as the Message API does)."""
        self._sent = parameters
        instructions = super().configure_fit(server_round, parameters, client_manager)
        if self.core.anytime is None:
            return instructions
        floor = {"anytime-gamma-min": self.core.anytime.gamma_min}
        return [(p, FitIns(ins.parameters, {**ins.config, **floor})) for p, ins in instructions]

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        """FedAvg's centralised evaluation, of the AnyTime average when it is on (Flower's
        legacy loop keeps the last parameters as its final model)."""
        anytime = self.core.anytime
        if anytime is not None and anytime.t:
            parameters = _parameters(anytime.arrays())
        return super().evaluate(server_round, parameters)

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Robust aggregation of the fit results' updates. Without a prior
        :meth:`configure_fit` each result's parameters are taken as its update from
        zero (the rule applied to the parameters themselves)."""
        if not results or (failures and not self.accept_failures):
            return None, {}
        replies = [
            decoded(
                node_of(proxy),
                lambda p=proxy, r=res: Reply(
                    node_of(p), _by_position(r.parameters), r.num_examples
                ),
            )
            for proxy, res in results
        ]
        if self._sent is None:
            reference = common_zeros(replies)
            log(INFO, "Round %d: no configure_fit before: results taken as updates", server_round)
        else:
            reference = _by_position(self._sent)
        arrays, metrics, used = self.core.round(
            server_round + self._offset, reference, replies, len(failures)
        )
        client = self._client_metrics(
            server_round, [results[i] for i in used], self.fit_metrics_aggregation_fn
        )
        scalars = _scalars(self.core.shown({**client.metrics, **metrics}))
        if arrays is None:
            return None, scalars
        return _parameters(arrays), scalars

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        """The screened loss and metrics of the evaluation results (see the class
        docstring), with ``robust.received`` / ``robust.rejected`` /
        ``robust.rejected-nodes`` / ``robust.failed``."""
        if not results or (failures and not self.accept_failures):
            return None, {}
        summary = self._client_metrics(
            server_round, results, self.evaluate_metrics_aggregation_fn, with_loss=True
        )
        rejected = sorted(node_of(results[i][0]) for i in summary.rejected)
        losses = [float(results[i][1].loss) for i in summary.accepted]
        loss = sum(w * v for w, v in zip(summary.weights, losses, strict=True)) if losses else None
        log(
            INFO,
            "Round %d: evaluation from %d of %d results (%d rejected, %d failed)",
            server_round,
            len(summary.accepted),
            len(results),
            len(rejected),
            len(failures),
        )
        robust = {
            "robust.received": len(results),
            "robust.rejected": len(rejected),
            "robust.rejected-nodes": rejected,
            "robust.failed": len(failures),
        }
        return loss, _scalars(self.core.shown({**summary.metrics, **robust}))

    def _client_metrics(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes | EvaluateRes]],
        aggregate_fn: Callable[[list[tuple[int, dict[str, Scalar]]]], dict[str, Scalar]] | None,
        with_loss: bool = False,
    ) -> MetricsSummary:
        """The screened metrics of ``results`` (a non-finite ``loss`` rejects an
        evaluation result too); a user's ``aggregate_fn`` gets the accepted results
        and, if it raises, the round goes on without client metrics."""
        count_key = "num-examples"

        def read(res: FitRes | EvaluateRes) -> Callable[[], dict[str, object]]:
            def values() -> dict[str, object]:
                if with_loss and value_problem("loss", res.loss) is not None:
                    raise ValueError(f"loss={res.loss!r} is not a finite number")
                return {**res.metrics, count_key: res.num_examples}

            return values

        own = None
        if aggregate_fn is not None:
            own = lambda accepted: aggregate_fn(  # noqa: E731
                [(results[i][1].num_examples, results[i][1].metrics) for i in accepted]
            )
        summary = screened_metrics(
            server_round,
            [read_metrics(node_of(proxy), read(res)) for proxy, res in results],
            count_key,
            self.core.weighting,
            self.core.max_weight_ratio,
            own,
        )
        if own is None and self.core.diagnostics == "short":  # as FedAvg: no function, none
            return replace(summary, metrics={})
        return summary


class Detox(DetoxGroups, RobustStrategy):
    """Legacy-API twin of :class:`flwr_flag.strategy.Detox` (same options)."""

    rule = "detox"

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """FedAvg's sampling, then groups of ``r`` with their shard and seed."""
        instructions = super().configure_fit(server_round, parameters, client_manager)
        extra = self._assign([node_of(p) for p, _ in instructions], server_round + self._offset)
        return [
            (proxy, FitIns(ins.parameters, {**ins.config, **extra[node_of(proxy)]}))
            for proxy, ins in instructions
            if node_of(proxy) in extra
        ]


def twin(named_class: type) -> type[RobustStrategy]:
    """The legacy-API class of a named Message-API strategy: the same rule, defaults,
    required options and text, on Flower's legacy ``FedAvg`` (its signature and
    ``help()`` list that API's options)."""
    return type(
        named_class.__name__,
        (RobustStrategy,),
        {
            "__doc__": named_class.__doc__,
            "__module__": __name__,
            "__qualname__": named_class.__name__,
            "rule": named_class.rule,
            "defaults": named_class.defaults,
            "requires": named_class.requires,
        },
    )


# One line per named class (tests/test_registry.py checks the pairs against the registry).
Mean = twin(named.Mean)
Median = twin(named.Median)
TrimmedMean = twin(named.TrimmedMean)
MeaMed = twin(named.MeaMed)
Krum = twin(named.Krum)
MultiKrum = twin(named.MultiKrum)
Bulyan = twin(named.Bulyan)
GeometricMedian = twin(named.GeometricMedian)
CenteredClipping = twin(named.CenteredClipping)
FlagAggregator = twin(named.FlagAggregator)
CTMA = twin(named.CTMA)
MDA = twin(named.MDA)
SMEA = twin(named.SMEA)
CAF = twin(named.CAF)
FLTrust = twin(named.FLTrust)
MoNNA = twin(named.MoNNA)
