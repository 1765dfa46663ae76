"""Robust aggregation as a Flower Message-API strategy."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from logging import INFO, WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from .client_metrics import MetricsSummary, read_metrics, screened_metrics
from .core import NotTrainingError
from .npy import array_record, numpy_view
from .options import RobustOptions
from .polling import short_polled
from .replies import Reply, common_zeros, decoded, partition_of


def _metric_record(message: Message) -> Callable[[], MetricRecord]:
    """How to read a reply's one MetricRecord (Flower's replies carry exactly one)."""

    def read() -> MetricRecord:
        records = message.content.metric_records
        if len(records) != 1:
            raise ValueError(f"expected one MetricRecord, found {len(records)}")
        return next(iter(records.values()))

    return read


class RobustStrategy(RobustOptions, FedAvg):
    """FedAvg's sampling, configuration and evaluation, with robust aggregation.

    Each round the updates ``g_i = w_i - w`` relative to the arrays sent in that round
    are checked (decodable, one reply per node, array keys, shapes, dtypes, a
    well-formed ``num-examples``, NaN/Inf, optionally a norm bound), aggregated by the
    rule on the configured device without stacking the replies, each valid reply
    counting once (``weighting="uniform"``; ``"num-examples"`` opts in to trusting the
    clients' claimed counts, capped by ``max_weight_ratio``), and applied as
    ``w <- w + server_lr * m`` (``m`` with optional server momentum). Invalid replies
    are rejected with a logged reason; with too few valid replies for the rule's ``f``
    the round keeps the current model. Replies are never modified.

    Parameters
    ----------
    num_byzantine : int
        ``f``, how many Byzantine replies to tolerate per round.
    rule : str, optional
        The rule's registry name; the named subclasses (``Krum``, ``FlagAggregator``,
        ...) set it.
    resume : bool
        With ``checkpoint_dir``, continue from the newest readable checkpoint.
    node_wait : float or None
        Seconds :meth:`start` waits for the nodes the rule needs with ``f`` before
        round 1 (default 300), then stops with an error naming them; ``None``: wait for
        ever. Flower's ``min_train_nodes`` and ``min_available_nodes`` are raised to that
        need, so no round samples fewer nodes than the rule can run with.
    **options
        The rule's hyperparameters (e.g. ``subspace_dim`` for FA, ``base`` for CTMA),
        the aggregation options of :class:`~flwr_flag.strategy.core.RobustCore`
        (``pre``, ``server_lr``, ``server_momentum``, ``device``, ``chunk_size``,
        ``max_update_norm``, ``checkpoint_dir``) and Flower's ``FedAvg`` options
        (``fraction_train``, ``min_available_nodes``, ...).

    The returned training MetricRecord holds the clients' aggregated metrics and
    ``robust.*`` entries: received / rejected / failed counts, rejected node ids,
    whether the model was kept, aggregation seconds, and the rule's diagnostics
    (selected or trimmed node ids, FA's ratio and weight summaries, iterations, ...).
    """

    def __init__(self, num_byzantine: int = 0, **options: Any) -> None:
        super().__init__(num_byzantine, **options)
        self._sent: ArrayRecord | None = None
        self._sampled = 0
        self._sampled_evaluate = 0
        self._offset = 0
        self.history: dict[int, MetricRecord] = {}
        """Each round's ``robust.*`` metrics, by round (for recorders)."""
        self.partitions: dict[int, int] = {}
        """Node id -> the partition id its first decodable reply claimed in a ConfigRecord
        ``node`` (as this project's ClientApp sends): a client's word, used only to name
        nodes in summaries."""

    def summary(self) -> None:
        """Log the robust aggregation settings, then FedAvg's sampling and record keys,
        saying what weighs a reply (FedAvg's own line would name ``num-examples`` even
        when each reply counts once)."""
        log(INFO, "\t├──> Robust aggregation:")
        for key, value in self.core.settings().items():
            log(INFO, "\t│\t├── %s: %s", key, value)
        log(INFO, "\t├──> Sampling:")
        log(
            INFO,
            "\t│\t├──Fraction: train (%.2f) | evaluate (%.2f)",
            self.fraction_train,
            self.fraction_evaluate,
        )
        log(
            INFO,
            "\t│\t├──Minimum nodes: train (%d) | evaluate (%d)",
            self.min_train_nodes,
            self.min_evaluate_nodes,
        )
        log(INFO, "\t│\t└──Minimum available nodes: %d", self.min_available_nodes)
        weighted = (
            f"'{self.weighted_by_key}'"
            if self.core.weighting == "num-examples"
            else f"nothing: each valid reply counts once ('{self.weighted_by_key}' is not read)"
        )
        log(INFO, "\t└──> Keys in records:")
        log(INFO, "\t\t├── Weighted by: %s", weighted)
        log(INFO, "\t\t├── ArrayRecord key: '%s'", self.arrayrecord_key)
        log(INFO, "\t\t└── ConfigRecord key: '%s'", self.configrecord_key)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's sampling; remembers the arrays sent, the reference of the updates.
        With the AnyTime average on, the train config carries its floor
        (``anytime-gamma-min``), so that clients running mu^2-SGD average with it."""
        self._sent = arrays
        if self.core.anytime is not None:
            config["anytime-gamma-min"] = self.core.anytime.gamma_min
        messages = list(super().configure_train(server_round + self._offset, arrays, config, grid))
        self._sampled = len(messages)
        return messages

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's, with the round number continued after a resume."""
        messages = list(
            super().configure_evaluate(server_round + self._offset, arrays, config, grid)
        )
        self._sampled_evaluate = len(messages)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Robust aggregation of the replies' updates (see the class docstring).

        Called without a prior :meth:`configure_train` (as Flower's own strategy tests
        do), it has no arrays to take the updates from: each reply's arrays are taken
        as its update from zero, so the result is the rule applied to the replies'
        arrays (with ``server_lr=1``), checked against the arrays most replies send."""
        replies = list(replies)
        answered, failed = self._answered(server_round, replies, self._sampled)
        decoded_replies = [decoded(m.metadata.src_node_id, self._reader(m)) for m in answered]
        if self._sent is None:
            reference = common_zeros(decoded_replies)
            log(INFO, "Round %d: no configure_train before: replies taken as updates", server_round)
        else:
            reference = OrderedDict((k, numpy_view(self._sent[k])) for k in self._sent.keys())
        arrays, metrics, used = self.core.round(
            server_round + self._offset, reference, decoded_replies, failed
        )
        self.history[server_round + self._offset] = MetricRecord(metrics)
        for reply in decoded_replies:
            if reply.partition_id is not None:
                self.partitions.setdefault(reply.node_id, reply.partition_id)
        client = self._client_metrics(
            server_round, [answered[i] for i in used], self.train_metrics_aggr_fn
        )
        record = MetricRecord(self.core.shown({**client.metrics, **metrics}))
        if arrays is None:
            return None, record
        return array_record(arrays), record

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """The replies' evaluation metrics under the training replies' trust model
        (:mod:`~flwr_flag.strategy.client_metrics`): a bad reply is rejected with its reason,
        each accepted reply counts once (or by its capped claimed count), medians sit
        beside the means, and ``robust.received`` / ``robust.rejected`` /
        ``robust.rejected-nodes`` / ``robust.failed`` say what came back. ``None``
        when nothing came back at all."""
        replies = list(replies)
        if not replies:
            return None
        answered, failed = self._answered(server_round, replies, self._sampled_evaluate)
        client = self._client_metrics(server_round, answered, self.evaluate_metrics_aggr_fn)
        rejected = sorted(answered[i].metadata.src_node_id for i in client.rejected)
        log(
            INFO,
            "Round %d: evaluation metrics from %d of %d replies (%d rejected, %d failed)",
            server_round,
            len(client.accepted),
            len(replies),
            len(rejected),
            failed,
        )
        return MetricRecord(
            self.core.shown(
                {
                    **client.metrics,
                    "robust.received": len(answered),
                    "robust.rejected": len(rejected),
                    "robust.rejected-nodes": rejected,
                    "robust.failed": failed,
                }
            )
        )

    def _answered(
        self, server_round: int, replies: list[Message], sampled: int
    ) -> tuple[list[Message], int]:
        """The replies without an error, and how many sampled nodes did not answer."""
        answered = [m for m in replies if not m.has_error()]
        for message in replies:
            if message.has_error():
                log(
                    WARNING,
                    "Round %d: node %d failed: %s",
                    server_round,
                    message.metadata.src_node_id,
                    message.error.reason,
                )
        return answered, max(sampled, len(replies)) - len(answered)

    def _client_metrics(
        self,
        server_round: int,
        messages: list[Message],
        aggregate_fn: Callable[[list[RecordDict], str], MetricRecord],
    ) -> MetricsSummary:
        """The screened clients' metrics of ``messages`` (:func:`.screened_metrics`); a
        user's own ``*_metrics_aggr_fn`` gets the accepted replies."""
        own = None
        if aggregate_fn is not aggregate_metricrecords:
            own = lambda accepted: aggregate_fn(  # noqa: E731
                [messages[i].content for i in accepted], self.weighted_by_key
            )
        return screened_metrics(
            server_round,
            [read_metrics(m.metadata.src_node_id, _metric_record(m)) for m in messages],
            self.weighted_by_key,
            self.core.weighting,
            self.core.max_weight_ratio,
            own,
        )

    def _reader(self, message: Message) -> Callable[[], Reply]:
        """How to decode a reply: its arrays, example count and ``node`` record (run
        inside the round's checks by :func:`~.replies.decoded`)."""

        def read() -> Reply:
            content = message.content
            records = content.array_records
            if self.arrayrecord_key not in records:
                raise ValueError(
                    f"no ArrayRecord {self.arrayrecord_key!r} (arrayrecord_key); found "
                    f"{sorted(records)}"
                )
            record = records[self.arrayrecord_key]
            arrays = {k: numpy_view(record[k]) for k in record.keys()}
            count = next(
                (
                    m[self.weighted_by_key]
                    for m in content.metric_records.values()
                    if self.weighted_by_key in m
                ),
                None,
            )
            partition = partition_of(content.config_records.get("node", {}))
            return Reply(message.metadata.src_node_id, arrays, count, partition)

        return read

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Flower's loop; with ``resume=True`` it continues after the last checkpoint. In
        a deployment, replies are pulled every 0.1 s instead of Flower's 3 s
        (:mod:`~flwr_flag.strategy.polling`). With the AnyTime average on
        (``anytime_gamma_min``), ``evaluate_fn`` sees and the result holds the average
        :math:`x_t`, mu^2-SGD's output, instead of the last model :math:`w_t`. A run
        in which no round changed the model ends with :class:`~.core.NotTrainingError`
        instead of a result (``max_kept_rounds`` stops one earlier; ``None`` turns both
        off)."""
        done = 0
        if self.resume:
            initial = OrderedDict((k, numpy_view(v)) for k, v in initial_arrays.items())
            checkpoint = self.core.resume(initial)
            if checkpoint is not None:
                done = checkpoint.server_round
                initial_arrays = array_record(checkpoint.arrays)
        self.wait_for_nodes(lambda: len(list(grid.get_node_ids())))
        self._offset = done
        shifted = (
            None if evaluate_fn is None else (lambda r, a: evaluate_fn(r + done, self._output(a)))
        )
        result = super().start(
            short_polled(grid),
            initial_arrays,
            max(num_rounds - done, 0),
            timeout,
            train_config,
            evaluate_config,
            shifted,
        )
        for records in (
            result.train_metrics_clientapp,
            result.evaluate_metrics_clientapp,
            result.evaluate_metrics_serverapp,
        ):
            shifted = {r + done: v for r, v in records.items()}
            records.clear()
            records.update(shifted)
        if num_rounds > done and self.core.max_kept_rounds and not self.core.rounds_stepped:
            raise NotTrainingError(
                f"none of the {num_rounds - done} rounds changed the model (robust.kept-model "
                "is 1 in every round's metrics, the reasons are logged): the run did not "
                "train"
            )
        result.arrays = self._output(result.arrays or initial_arrays)
        return result

    def _output(self, arrays: ArrayRecord) -> ArrayRecord:
        """What the strategy's model is: ``arrays``, or the AnyTime average when on."""
        anytime = self.core.anytime
        return arrays if anytime is None or not anytime.t else array_record(anytime.arrays())
