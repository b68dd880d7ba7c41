"""The in-process engine: the same federated Reptile run with no framework at all.

It calls exactly what the ClientApp and the Reptile strategy call (``common.adapt``,
``common.reptile``), merchant by merchant, in one Python process. Two uses: a check
that Flower's simulation engine computes the same θ for the same seed, and a measure of
the work alone, against which the framework's overhead is timed.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from common import codecs
from common.adapt import AdaptResult, MerchantData, round_seed
from common.algorithms import merchant_delta
from common.config import RunConfig
from common.federation import Merchant
from common.model import init_parameters
from common.reptile import apply_step, delta_weights, meta_lr_at
from common.robust import clip_by_norm, defended_step

logger = logging.getLogger(__name__)

# What a merchant sends instead of its honest delta: (round, merchant id, θ, delta).
Tamper = Callable[
    [int, str, dict[str, np.ndarray], dict[str, np.ndarray]], dict[str, np.ndarray]
]


@dataclass
class InProcessResult:
    """θ after the last round, and per-round mean support losses."""

    parameters: dict[str, np.ndarray]
    loss_before: list[float] = field(default_factory=list)
    loss_after: list[float] = field(default_factory=list)


def client_update(
    theta: dict[str, np.ndarray],
    data: MerchantData,
    merchant_id: str,
    config: RunConfig,
    server_round: int,
    codec: str = "float32",
) -> tuple[dict[str, np.ndarray], AdaptResult]:
    """One merchant's part of a round, as the ClientApp and the strategy compute it:
    adapt θ with the round's seed, and the delta as the server decodes it after the
    merchant encoded it with ``codec``."""
    seed = round_seed(config.seed, server_round, merchant_id)
    delta, adapted = merchant_delta(
        config.meta.algorithm, theta, data, config.model, config.adapt, seed
    )
    delta = clip_by_norm(delta, config.defence.clip_norm).delta
    return codecs.round_trip(delta, codec), adapted


def run_inprocess(
    config: RunConfig,
    merchants: list[Merchant],
    theta: dict[str, np.ndarray] | None = None,
    on_round: Callable[[int, dict[str, np.ndarray]], None] | None = None,
    codec: str = "float32",
    tamper: Tamper | None = None,
) -> InProcessResult:
    """Run ``config.meta.num_rounds`` Reptile rounds over ``merchants``.

    Sampling: with ``fraction_train < 1`` merchants are drawn with the strategy's seeded
    rule over merchant indices; Flower draws over node ids, so only full participation
    gives the two engines the same merchants in every round. ``codec`` is how
    merchants encode their deltas (``common.codecs``): its quality cost shows here.

    Defences are the strategy's (``config.defence``): a delta holding NaN or Inf is
    left out as the server's reply validation leaves it out, then every delta is
    clipped and aggregated by ``common.robust.defended_step``. ``tamper`` replaces a
    merchant's delta before it is sent: the hook of the attack benchmark. The DP noise
    is drawn from a generator seeded by the run's seed, for repeatable simulations.
    """
    data = [MerchantData.from_split(m.split, config.model) for m in merchants]
    theta = theta if theta is not None else init_parameters(config.model, config.seed)
    result = InProcessResult(theta)
    meta = config.meta
    order = sorted(
        range(len(merchants)), key=lambda index: merchants[index].merchant_id
    )
    noise = np.random.default_rng([config.seed, 0xD9])
    for server_round in range(1, meta.num_rounds + 1):
        size = min(
            max(int(len(merchants) * meta.fraction_train), meta.min_train_merchants),
            len(merchants),
        )
        sampled = set(
            random.Random(config.seed * 100_003 + server_round).sample(order, size)
        )
        deltas, examples, before, after = [], [], [], []
        for index in (i for i in order if i in sampled):
            delta, adapted = client_update(
                theta,
                data[index],
                merchants[index].merchant_id,
                config,
                server_round,
                codec,
            )
            if tamper is not None:
                delta = tamper(server_round, merchants[index].merchant_id, theta, delta)
            if not all(np.isfinite(array).all() for array in delta.values()):
                logger.warning(
                    "round %d: rejected the delta of merchant %s: NaN or Inf",
                    server_round,
                    merchants[index].merchant_id,
                )
                continue
            deltas.append(delta)
            examples.append(adapted.num_examples)
            before.append(adapted.loss_before)
            after.append(adapted.loss_after)
        meta_lr = meta_lr_at(
            server_round, meta.num_rounds, meta.meta_lr, meta.meta_lr_final
        )
        if len(deltas) < max(meta.min_train_merchants, 1):
            logger.warning(
                "round %d: %d valid deltas, fewer than the minimum %d: θ unchanged",
                server_round,
                len(deltas),
                meta.min_train_merchants,
            )
            continue
        step = defended_step(
            deltas,
            delta_weights(examples, meta.weighting),
            config.defence,
            num_sampled=size,
            rng=noise,
        )
        theta = apply_step(theta, step.step, meta_lr)
        result.loss_before.append(float(np.average(before, weights=examples)))
        result.loss_after.append(float(np.average(after, weights=examples)))
        logger.info(
            "round %d/%d: %d merchants, loss %.4f -> %.4f, meta_lr %.3f",
            server_round,
            meta.num_rounds,
            len(deltas),
            result.loss_before[-1],
            result.loss_after[-1],
            meta_lr,
        )
        if on_round is not None:
            on_round(server_round, theta)
    result.parameters = theta
    return result
