"""The Reptile strategy: Flower's strategy API, merchants' deltas, validated replies.

Flower's FedAvg averages the weights merchants send back; here merchants send
deltas Δ_i = θ_i − θ, so the strategy remembers the θ it sent in
``configure_train`` and, in ``aggregate_train``, applies the Reptile step
θ ← θ + meta_lr · weighted_mean(Δ) (Nichol et al. 2018, arXiv 1803.02999; the math
is in ``common.reptile``).

Every reply is validated before it is used. Flower's own consistency check raises on
the first malformed reply and ends the whole run; a federation of many merchants must
instead leave a bad reply out of the round, say why, and go on.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from common import codecs
from common.config import DefenceConfig, MetaConfig
from common.privacy import epsilon
from common.reptile import apply_step, delta_weights, global_norm, meta_lr_at
from common.robust import defended_step

logger = logging.getLogger(__name__)

DELTA_KEY = "delta"
METRICS_KEY = "metrics"
MERCHANT_KEY = "merchant"
WEIGHT_KEY = "num-examples"
REQUIRED_METRICS = (WEIGHT_KEY, "loss-before", "loss-after")


@dataclass(frozen=True)
class ReplyOutcome:
    """What became of one sampled merchant's reply."""

    merchant_id: str
    node_id: int
    status: str  # "replied" | "failed" | "rejected"
    reason: str = ""
    num_examples: int = 0
    loss_before: float | None = None
    loss_after: float | None = None
    delta_norm: float | None = None
    bytes_received: int = 0


@dataclass
class RoundSummary:
    """Facts of the last aggregated round: for the log line, the store, the report."""

    server_round: int
    sampled: int = 0
    outcomes: list[ReplyOutcome] = field(default_factory=list)
    meta_lr: float = 0.0
    update_norm: float | None = None
    bytes_sent: int = 0
    clip_rate: float | None = None  # share of the aggregated deltas clipped
    epsilon: float | None = None  # DP ε of the run so far, when DP is on

    def count(self, status: str) -> int:
        """Number of merchants whose reply ended with ``status``."""
        return sum(1 for outcome in self.outcomes if outcome.status == status)

    def weighted(self, attribute: str) -> float | None:
        """Mean of a per-merchant figure over the aggregated replies, by examples."""
        values = [
            (getattr(o, attribute), o.num_examples)
            for o in self.outcomes
            if o.status == "replied" and getattr(o, attribute) is not None
        ]
        total = sum(weight for _, weight in values)
        if not values or total <= 0:
            return None
        return float(sum(value * weight for value, weight in values) / total)


class ReplyError(ValueError):
    """A merchant's reply that cannot be aggregated."""


def _merchant_id(content: RecordDict, node_id: int) -> str:
    record = content.config_records.get(MERCHANT_KEY)
    if record is not None and isinstance(record.get("merchant-id"), str):
        return str(record["merchant-id"])
    return f"node-{node_id}"


# A merchant whose data cannot be used raises "merchant <id>: <reason>" (client.data).
_FAILED_MERCHANT = re.compile(r"merchant ([^\s:'\"]+): ")


def _failed_merchant_id(
    reason: str, node_id: int, known: dict[int, str] | None = None
) -> str:
    """The merchant an error reply names in its reason, else the name the node
    replied with before (``known``), else ``node-<id>``."""
    match = _FAILED_MERCHANT.search(reason)
    if match:
        return match.group(1)
    return (known or {}).get(node_id, f"node-{node_id}")


def _decode_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    arrays = {}
    for name, array in record.items():
        try:
            arrays[name] = array.numpy()
        except Exception as error:  # a corrupt payload must not end the run
            raise ReplyError(f"array {name!r} cannot be decoded: {error}") from error
    return arrays


def validate_reply(
    content: RecordDict, shapes: dict[str, tuple[int, ...]], codec: str
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The decoded delta and metrics of a reply, or a ReplyError saying what is off."""
    if set(content.array_records) != {DELTA_KEY}:
        raise ReplyError(
            f"expected one ArrayRecord {DELTA_KEY!r}, "
            f"got {sorted(content.array_records)}"
        )
    if set(content.metric_records) != {METRICS_KEY}:
        raise ReplyError(
            f"expected one MetricRecord {METRICS_KEY!r}, "
            f"got {sorted(content.metric_records)}"
        )
    metrics_record = content.metric_records[METRICS_KEY]
    missing = [key for key in REQUIRED_METRICS if key not in metrics_record]
    if missing:
        raise ReplyError(f"metrics {missing} missing")
    metrics: dict[str, float] = {}
    for key, value in metrics_record.items():
        if not isinstance(value, int | float) or not np.isfinite(value):
            raise ReplyError(f"metric {key!r} is not a finite number: {value!r}")
        metrics[key] = float(value)
    # A count: a fraction would be truncated to a weight of 0 in the mean.
    if metrics[WEIGHT_KEY] <= 0 or not metrics[WEIGHT_KEY].is_integer():
        raise ReplyError(
            f"{WEIGHT_KEY} must be a whole number > 0, got {metrics[WEIGHT_KEY]}"
        )

    try:
        delta = codecs.decode(
            _decode_arrays(content.array_records[DELTA_KEY]), codec, shapes
        )
    except ValueError as error:
        raise ReplyError(str(error)) from error
    for name, array in delta.items():
        if not np.isfinite(array).all():
            raise ReplyError(f"delta {name!r} holds NaN or Inf")
    return delta, metrics


class Reptile(FedAvg):
    """Federated Reptile over merchants' deltas (see the module docstring).

    Parameters
    ----------
    meta : MetaConfig
        meta_lr and its linear annealing, delta weighting, merchant sampling.
    codec : str
        How merchants encode their deltas (``common.codecs``).
    seed : int
        Seeds the sampling of merchants, so a run can be repeated.
    defence : DefenceConfig, optional
        Clipping, robust aggregation and DP noise (``common.robust``); none by default.
    """

    def __init__(
        self,
        meta: MetaConfig,
        codec: str = "float32",
        seed: int = 0,
        defence: DefenceConfig | None = None,
    ) -> None:
        super().__init__(
            fraction_train=meta.fraction_train,
            fraction_evaluate=0.0,
            min_train_nodes=meta.min_train_merchants,
            min_available_nodes=meta.min_train_merchants,
            weighted_by_key=WEIGHT_KEY,
            arrayrecord_key="theta",
        )
        codecs.check_codec(codec)
        self.meta = meta
        self.codec = codec
        self.seed = seed
        self.defence = defence or DefenceConfig()
        self._sent: dict[str, np.ndarray] = {}
        self._sample_rate = 1.0
        self.last_round: RoundSummary | None = None
        # The round's messages (a failed one is traced to the merchant it went to) and
        # the merchant id each node replied with, to name a node that fails later.
        self._messages: list[Message] = []
        self._known: dict[int, str] = {}

    def summary(self) -> None:
        """Log the strategy's settings."""
        logger.info(
            "strategy: Reptile, meta_lr %.3g -> %.3g over %d rounds, %s weighting, "
            "fraction %.2f, min %d merchants, codec %s",
            self.meta.meta_lr,
            self.meta.meta_lr_final,
            self.meta.num_rounds,
            self.meta.weighting,
            self.meta.fraction_train,
            self.meta.min_train_merchants,
            self.codec,
        )
        logger.info(
            "strategy: clip-norm %g, aggregation %s, DP noise multiplier %g",
            self.defence.clip_norm,
            self.defence.aggregation,
            self.defence.dp_noise_multiplier,
        )
        if self.defence.dp_noise_multiplier > 0 and self.meta.meta_lr > 1:
            logger.warning(
                "strategy: meta_lr %.3g multiplies the DP noise on θ by as much; with "
                "DP keep it at 1 or below (docs/dp_utility_outer_step_3.json: at 3 the "
                "new merchants kept 0.6-0.7 of their NDCG@10 without noise)",
                self.meta.meta_lr,
            )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send θ to a seeded sample of merchants, and remember the θ sent."""
        node_ids = sorted(grid.get_node_ids())
        size = max(int(len(node_ids) * self.fraction_train), self.min_train_nodes)
        size = min(size, len(node_ids))
        sampled = random.Random(self.seed * 100_003 + server_round).sample(
            node_ids, size
        )
        self._sent = {name: array.numpy() for name, array in arrays.items()}
        self._sample_rate = size / max(len(node_ids), 1)
        config["server-round"] = server_round
        config["codec"] = self.codec
        record = RecordDict(
            {self.arrayrecord_key: arrays, self.configrecord_key: config}
        )
        self.last_round = RoundSummary(
            server_round,
            sampled=len(sampled),
            bytes_sent=arrays.count_bytes() * len(sampled),
        )
        self._messages = [
            Message(content=record, message_type=MessageType.TRAIN, dst_node_id=node_id)
            for node_id in sampled
        ]
        return self._messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate every reply, then apply the Reptile step with the valid deltas."""
        summary = self.last_round or RoundSummary(server_round)
        shapes = {name: tuple(array.shape) for name, array in self._sent.items()}
        deltas, examples = [], []
        # Aggregate in merchant order, not arrival order, so that a run is repeatable.
        replies = sorted(
            replies,
            key=lambda reply: (
                _merchant_id(reply.content, reply.metadata.src_node_id)
                if reply.has_content()
                else ""
            ),
        )
        # The SuperLink answers for a merchant gone offline: its error reply comes
        # from the SuperLink, so trace it to the merchant the message was sent to.
        destinations = {
            m.metadata.message_id: m.metadata.dst_node_id
            for m in self._messages
            if m.metadata.message_id
        }
        for reply in replies:
            node_id = reply.metadata.src_node_id
            if reply.has_error():
                node_id = destinations.get(reply.metadata.reply_to_message_id, node_id)
                reason = reply.error.reason or f"error code {reply.error.code}"
                failed = _failed_merchant_id(reason, node_id, self._known)
                summary.outcomes.append(ReplyOutcome(failed, node_id, "failed", reason))
                logger.warning(
                    "round %d: merchant %s failed: %s", server_round, failed, reason
                )
                continue
            merchant_id = _merchant_id(reply.content, node_id)
            self._known[node_id] = merchant_id
            received = sum(
                record.count_bytes() for record in reply.content.array_records.values()
            )
            try:
                delta, metrics = validate_reply(reply.content, shapes, self.codec)
            except ReplyError as error:
                summary.outcomes.append(
                    ReplyOutcome(
                        merchant_id,
                        node_id,
                        "rejected",
                        str(error),
                        bytes_received=received,
                    )
                )
                logger.warning(
                    "round %d: rejected reply of merchant %s: %s",
                    server_round,
                    merchant_id,
                    error,
                )
                continue
            deltas.append(delta)
            examples.append(int(metrics[WEIGHT_KEY]))
            summary.outcomes.append(
                ReplyOutcome(
                    merchant_id,
                    node_id,
                    "replied",
                    num_examples=int(metrics[WEIGHT_KEY]),
                    loss_before=metrics["loss-before"],
                    loss_after=metrics["loss-after"],
                    delta_norm=global_norm(delta),
                    bytes_received=received,
                )
            )
        # Sampled merchants that sent nothing before the timeout failed too.
        answered = {reply.metadata.reply_to_message_id for reply in replies}
        silent = [n for i, n in destinations.items() if i not in answered]
        for index in range(summary.sampled - len(replies)):
            node = silent[index] if index < len(silent) else -1
            name = self._known.get(node, f"node-{node}") if node >= 0 else "unknown"
            summary.outcomes.append(
                ReplyOutcome(name, node, "failed", "no reply before timeout")
            )
        self.last_round = summary

        if len(deltas) < max(self.min_train_nodes, 1):
            logger.warning(
                "round %d: %d valid replies, fewer than the minimum %d: θ unchanged",
                server_round,
                len(deltas),
                self.min_train_nodes,
            )
            return None, None

        summary.meta_lr = meta_lr_at(
            server_round,
            self.meta.num_rounds,
            self.meta.meta_lr,
            self.meta.meta_lr_final,
        )
        weights = delta_weights(examples, self.meta.weighting)
        # Clip each delta, then mean / median / trimmed mean, or the DP noisy mean.
        step = defended_step(
            deltas, weights, self.defence, num_sampled=max(summary.sampled, len(deltas))
        )
        theta = apply_step(self._sent, step.step, summary.meta_lr)
        if not all(np.isfinite(value).all() for value in theta.values()):
            # Finite but huge deltas can overflow float32 when nothing bounds them.
            logger.warning(
                "round %d: step would make θ non-finite (clip-norm %g), θ unchanged",
                server_round,
                self.defence.clip_norm,
            )
            return None, None
        summary.clip_rate = step.clip_rate
        if self.defence.dp_noise_multiplier > 0:
            summary.epsilon = epsilon(
                self.defence.dp_noise_multiplier,
                self._sample_rate,
                server_round,
                self.defence.dp_delta,
            )
        summary.update_norm = global_norm({k: theta[k] - self._sent[k] for k in theta})
        aggregated = MetricRecord(
            {
                "loss-before": summary.weighted("loss_before") or 0.0,
                "loss-after": summary.weighted("loss_after") or 0.0,
                "num-merchants": len(deltas),
            }
        )
        return ArrayRecord(
            array_dict={k: Array(v) for k, v in theta.items()}
        ), aggregated
