"""Secure aggregation: Reptile rounds through Flower's SecAgg+, the server sees only Σ.

SecAgg+ (Bell, Bonawitz, Gascón, Lepoint and Raykova 2020, "Secure Single-Server
Aggregation with (Poly)Logarithmic Overhead", ePrint 2020/704) lets the server learn the
weighted sum of the merchants' deltas and nothing about any single one: each merchant
quantises its delta, adds pairwise masks agreed with its neighbours (which cancel in
the sum) and a private mask (removed with secret shares once the merchant is known to
have answered). A merchant that drops out after sending its keys is recovered from its
neighbours' shares.

Flower ships SecAgg+ only in its legacy layer: ``SecAggPlusWorkflow`` drives four
message exchanges per round through a ``LegacyContext`` whose legacy strategy samples
the merchants (``configure_fit``) and receives the unmasked aggregate
(``aggregate_fit``); on the merchant's side ``secaggplus_mod`` wraps the train handler.
This module drives that workflow from the ServerApp's own round loop, one round at a
time, so the checkpoints, the round store and resuming stay exactly those of the plain
path; only the train step changes. The legacy strategy here samples merchants with the
Reptile strategy's seeded rule and hands the unmasked mean back; the Reptile step,
the clipping of the aggregate and the DP noise happen here, after it.

What the protocol rules out: the server never holds a single delta, so it cannot clip
one, take a median or trimmed mean, or reject one holding NaN (a merchant's values are
clipped to ±clip-norm by the quantiser). Those options are refused with secure
aggregation on (``common.config.DefenceConfig``). What it keeps: each honest merchant
clips its own delta to ``clip_norm``, so the mean's norm is at most ``clip_norm``; the
server clips the unmasked mean to that bound, which caps what a hostile merchant can do
in one round to what an honest-looking one could. The quantiser maps each coordinate to
one of 2²² levels over [−clip_norm, clip_norm]: the mean is exact to within
2·clip_norm / 2²² per coordinate (stochastic rounding).
"""

from __future__ import annotations

import logging
import random
from typing import cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager, SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from common.config import DefenceConfig, MetaConfig
from common.privacy import epsilon
from common.reptile import apply_step, global_norm, meta_lr_at
from common.robust import clip_by_norm
from server.strategy import ReplyOutcome, RoundSummary

logger = logging.getLogger(__name__)

# Names of θ's arrays travel in the fit config, in the order of the legacy arrays.
NAMES_KEY = "parameter-names"
# SecAgg+'s quantisation levels (Flower's default) and the modulus of the masks.
QUANTISATION_RANGE = 1 << 22
MODULUS_RANGE = 1 << 32
RECONSTRUCTION_THRESHOLD = 0.6


class _MeanCollector(Strategy):
    """The legacy strategy SecAgg+ needs: seeded sampling, and a hand-back of the mean.

    ``aggregate_fit`` receives every merchant's FitRes with ``parameters`` already
    replaced by the unmasked weighted mean (the workflow does that); the per-merchant
    metrics (losses, examples) travel in clear beside the masked vectors.
    """

    def __init__(self, meta: MetaConfig, seed: int) -> None:
        self.meta = meta
        self.seed = seed
        self.grid: Grid | None = None
        self.run_id = 0
        self.config: dict[str, Scalar] = {}
        self.sampled: list[int] = []
        self.available = 0
        self.mean: list[np.ndarray] | None = None
        self.results: list[FitRes] = []
        self.failures = 0

    def __repr__(self) -> str:
        return "SecAgg+ Reptile"

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """θ comes from the ServerApp's checkpoint, never from here."""
        return None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """The Reptile strategy's seeded sample of node ids, each sent θ."""
        assert self.grid is not None
        node_ids = sorted(self.grid.get_node_ids())
        size = max(
            int(len(node_ids) * self.meta.fraction_train),
            self.meta.min_train_merchants,
        )
        size = min(size, len(node_ids))
        self.sampled = random.Random(self.seed * 100_003 + server_round).sample(
            node_ids, size
        )
        self.available = len(node_ids)
        self.mean, self.results, self.failures = None, [], 0
        fit = FitIns(parameters, dict(self.config))
        return [
            (GridClientProxy(node_id, self.grid, self.run_id), fit)
            for node_id in self.sampled
        ]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Keep the unmasked mean and the merchants' clear metrics."""
        self.results = [fit for _, fit in results]
        self.failures = len(failures)
        if results:
            self.mean = parameters_to_ndarrays(results[0][1].parameters)
        return None, {}

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        """No federated evaluation in a SecAgg+ round."""
        return []

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        """No federated evaluation in a SecAgg+ round."""
        return None, {}

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        """The ServerApp scores new merchants itself."""
        return None


class SecureReptile:
    """Reptile rounds whose train step goes through SecAgg+ (see the module docstring).

    ``train_round`` replaces the plain path's configure / send / aggregate and fills
    ``last_round`` like the Reptile strategy does, so the ServerApp's loop records
    both paths alike.
    """

    def __init__(
        self,
        meta: MetaConfig,
        defence: DefenceConfig,
        context: Context,
        seed: int = 0,
    ) -> None:
        if not defence.secure_aggregation:
            raise ValueError("SecureReptile needs secure-aggregation = true")
        self.meta = meta
        self.defence = defence
        self.seed = seed
        self._collector = _MeanCollector(meta, seed)
        self._collector.run_id = context.run_id
        # A context of its own: the workflow keeps its records in ``state``.
        own = Context(
            run_id=context.run_id,
            node_id=context.node_id,
            node_config=context.node_config,
            state=RecordDict(),
            run_config=context.run_config,
        )
        self._context = LegacyContext(
            own, strategy=self._collector, client_manager=SimpleClientManager()
        )
        self._noise = np.random.default_rng()  # OS entropy: see common.robust
        self.last_round: RoundSummary | None = None

    def summary(self) -> None:
        """Log the settings of the secure path."""
        logger.info(
            "secagg: SecAgg+ rounds, values quantised in ±%g to %d levels, "
            "weights capped at %g, DP noise multiplier %g",
            self.defence.clip_norm,
            QUANTISATION_RANGE,
            self._max_weight,
            self.defence.dp_noise_multiplier,
        )

    @property
    def _max_weight(self) -> float:
        return (
            self.defence.secagg_max_weight if self.meta.weighting == "examples" else 1.0
        )

    def train_round(
        self,
        grid: Grid,
        server_round: int,
        arrays: ArrayRecord,
        config: ConfigRecord,
        timeout: float | None = None,
    ) -> ArrayRecord | None:
        """One SecAgg+ round: θ out, the unmasked mean back, the Reptile step.

        Returns the new θ, or None (θ unchanged) when too few merchants finished.
        """
        names = list(arrays.keys())
        theta = {name: arrays[name].numpy() for name in names}
        collector = self._collector
        collector.grid = grid
        collector.config = {
            **{k: cast(Scalar, v) for k, v in config.items()},
            "server-round": server_round,
            NAMES_KEY: ",".join(names),
            "secagg-max-weight": self._max_weight,
        }
        state = self._context.state
        state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
            {WorkflowKey.CURRENT_ROUND: server_round}
        )
        # Legacy parameters are a plain list: send them in the order of ``names``.
        state.array_records[MAIN_PARAMS_RECORD] = _legacy_record(
            [theta[name] for name in names]
        )

        # Sample, then run the four SecAgg+ stages. Every sampled merchant holds a
        # share of every other's secrets (num_shares = 1.0, the whole sample); 60% of
        # them rebuild a secret, so a minority may drop out mid-round.
        workflow = SecAggPlusWorkflow(
            num_shares=1.0,
            reconstruction_threshold=RECONSTRUCTION_THRESHOLD,
            max_weight=self._max_weight,
            clipping_range=float(self.defence.clip_norm),
            quantization_range=QUANTISATION_RANGE,
            modulus_range=MODULUS_RANGE,
            timeout=timeout,
        )
        workflow(grid, self._context)

        summary = RoundSummary(
            server_round,
            sampled=len(collector.sampled),
            bytes_sent=arrays.count_bytes() * len(collector.sampled),
        )
        for fit in collector.results:
            metrics = fit.metrics
            summary.outcomes.append(
                ReplyOutcome(
                    str(metrics.get("merchant-id", "unknown")),
                    -1,
                    "replied",
                    num_examples=int(cast(int, metrics.get("num-examples", 0))),
                    loss_before=_number(metrics.get("loss-before")),
                    loss_after=_number(metrics.get("loss-after")),
                )
            )
        for _ in range(summary.sampled - len(collector.results)):
            summary.outcomes.append(
                ReplyOutcome("unknown", -1, "failed", "dropped out of SecAgg+")
            )
        self.last_round = summary
        if collector.mean is None or len(collector.results) < max(
            self.meta.min_train_merchants, 1
        ):
            logger.warning(
                "round %d: SecAgg+ finished with %d merchants, fewer than the "
                "minimum %d: θ unchanged",
                server_round,
                len(collector.results),
                self.meta.min_train_merchants,
            )
            return None

        # The unmasked mean: bounded like any honest delta, then the DP noise.
        mean = {
            name: np.asarray(value, np.float32)
            for name, value in zip(names, collector.mean, strict=True)
        }
        if not all(np.isfinite(value).all() for value in mean.values()):
            logger.warning(
                "round %d: SecAgg+ mean holds NaN or Inf: θ unchanged", server_round
            )
            return None
        bounded = clip_by_norm(mean, self.defence.clip_norm)
        # Single deltas are hidden: the rate says whether the mean had to be bounded.
        summary.clip_rate = 1.0 if bounded.clipped else 0.0
        step = bounded.delta
        if self.defence.dp_noise_multiplier > 0:
            # (Σ Δ_i + N(0, z²C²)) / m with Σ Δ_i = mean · replied (uniform weights).
            stddev = self.defence.dp_noise_multiplier * self.defence.clip_norm
            replied = len(collector.results)
            step = {
                name: (
                    (
                        value.astype(np.float64) * replied
                        + self._noise.normal(0.0, stddev, size=value.shape)
                    )
                    / summary.sampled
                ).astype(np.float32)
                for name, value in step.items()
            }
            summary.epsilon = epsilon(
                self.defence.dp_noise_multiplier,
                summary.sampled / max(collector.available, 1),
                server_round,
                self.defence.dp_delta,
            )
        summary.meta_lr = meta_lr_at(
            server_round,
            self.meta.num_rounds,
            self.meta.meta_lr,
            self.meta.meta_lr_final,
        )
        new_theta = apply_step(theta, step, summary.meta_lr)
        summary.update_norm = global_norm({k: new_theta[k] - theta[k] for k in theta})
        return ArrayRecord({name: Array(new_theta[name]) for name in names})


def _legacy_record(values: list[np.ndarray]) -> ArrayRecord:
    from flwr.compat.common.recorddict_compat import parameters_to_arrayrecord

    return parameters_to_arrayrecord(ndarrays_to_parameters(values), keep_input=True)


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None
