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

from collections import OrderedDict
from typing import Any

from flwr.common import (
    FitIns,
    FitRes,
    Parameters,
    Scalar,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg as LegacyFedAvg

from .strategy import named
from .strategy.detox import DetoxGroups
from .strategy.npy import npy_bytes, npy_view
from .strategy.options import RobustOptions
from .strategy.replies import Reply, decoded


def _by_position(parameters: Parameters) -> OrderedDict:
    """The arrays of ``parameters`` viewed in place (no copy), named by position."""
    return OrderedDict((str(i), npy_view(t)) for i, t in enumerate(parameters.tensors))


def _parameters(arrays: OrderedDict) -> Parameters:
    return Parameters([npy_bytes(a) for a in arrays.values()], "numpy.ndarray")


class RobustStrategy(RobustOptions, LegacyFedAvg):
    """Legacy-API twin of :class:`flwr_flag.strategy.RobustStrategy` (same options;
    Flower's options are those of the legacy ``FedAvg``, e.g. ``fraction_fit``)."""

    def __init__(self, num_byzantine: int = 0, **options: Any) -> None:
        super().__init__(num_byzantine, **options)
        self._sent: Parameters | None = None
        self._offset = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.core.settings()})"

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """The newest checkpoint's arrays when resuming (checked against the initial
        parameters, when given), else FedAvg's. Round numbers continue after the
        checkpoint's: Flower's legacy loop counts from 1, this strategy adds the offset."""
        initial = super().initialize_parameters(client_manager)
        if not self.resume:
            return initial
        if initial is None:
            raise ValueError("resume=True needs initial_parameters to check the checkpoint against")
        checkpoint = self.core.resume(_by_position(initial))
        if checkpoint is None:
            return initial
        self._offset = checkpoint.server_round
        return _parameters(checkpoint.arrays)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """FedAvg's; remembers the parameters sent, the reference of the updates."""
        self._sent = parameters
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Robust aggregation of the fit results' updates."""
        if self._sent is None:
            raise RuntimeError("aggregate_fit called before configure_fit")
        replies = [
            decoded(
                proxy.node_id,
                lambda p=proxy, r=res: Reply(p.node_id, _by_position(r.parameters), r.num_examples),
            )
            for proxy, res in results
        ]
        arrays, metrics, _ = self.core.round(
            server_round + self._offset, _by_position(self._sent), replies, len(failures)
        )
        scalars: dict[str, Scalar] = {
            k: ",".join(map(str, v)) if isinstance(v, list) else v for k, v in metrics.items()
        }
        if arrays is None:
            return None, scalars
        return _parameters(arrays), scalars


class Detox(DetoxGroups, RobustStrategy):
    """Legacy-API twin of :class:`flwr_flag.strategy.Detox` (same options)."""

    rule = "detox"

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """FedAvg's sampling, then groups of ``r`` with their shard and seed."""
        instructions = super().configure_fit(server_round, parameters, client_manager)
        extra = self._assign(
            [proxy.node_id for proxy, _ in instructions], server_round + self._offset
        )
        return [
            (proxy, FitIns(ins.parameters, {**ins.config, **extra[proxy.node_id]}))
            for proxy, ins in instructions
            if proxy.node_id in extra
        ]


def _legacy(cls: type) -> type[RobustStrategy]:
    return type(
        cls.__name__,
        (RobustStrategy,),
        {
            "rule": cls.rule,
            "defaults": cls.defaults,
            "__doc__": cls.__doc__,
            "__module__": __name__,
        },
    )


Mean = _legacy(named.Mean)
Median = _legacy(named.Median)
TrimmedMean = _legacy(named.TrimmedMean)
MeaMed = _legacy(named.MeaMed)
Krum = _legacy(named.Krum)
MultiKrum = _legacy(named.MultiKrum)
Bulyan = _legacy(named.Bulyan)
GeometricMedian = _legacy(named.GeometricMedian)
CenteredClipping = _legacy(named.CenteredClipping)
FlagAggregator = _legacy(named.FlagAggregator)
CTMA = _legacy(named.CTMA)
MDA = _legacy(named.MDA)
SMEA = _legacy(named.SMEA)
CAF = _legacy(named.CAF)
MoNNA = _legacy(named.MoNNA)
