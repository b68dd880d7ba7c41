"""Cold-start evaluation of new merchants: adapt from an initialisation, then rank.

A new merchant receives θ, adapts on its own support data with the adaptation budget
(``steps`` Adam steps at ``lr``), and each of its customers' held-out items is ranked
against sampled negatives (the protocol of ``common.protocol``). The same function
scores a merchant trained alone from a random initialisation, so the two differ only in
where they start and in the budget each is given.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from common.adapt import MerchantData, adapt, score_held_out
from common.config import AdaptConfig, ModelConfig
from common.metrics import full_catalogue_ranks, hit_rate, ndcg, rank_of_positive
from common.model import init_parameters, scale_taste
from common.protocol import MarketSplit

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Budget:
    """An adaptation budget: ``steps`` Adam steps at learning rate ``lr``, the item
    biases at ``bias_lr`` when it is set (see :class:`AdaptConfig`); the adapted
    taste term is then scaled by ``taste_scale`` (see :func:`scale_taste`)."""

    steps: int
    lr: float
    batch_size: int = 64
    bias_lr: float | None = None
    taste_scale: float = 1.0

    def as_adapt_config(self) -> AdaptConfig:
        """The inner-loop settings of this budget."""
        return AdaptConfig(
            inner_steps=self.steps,
            inner_lr=self.lr,
            batch_size=self.batch_size,
            bias_lr=self.bias_lr,
        )

    def describe(self) -> str:
        """``"300 steps, lr 0.001"``, with ``", bias lr 0.03"`` and ``", taste x0.5"``
        when they are set."""
        text = f"{self.steps} steps, lr {self.lr}"
        if self.bias_lr is not None:
            text += f", bias lr {self.bias_lr}"
        if self.taste_scale != 1.0:
            text += f", taste x{self.taste_scale}"
        return text


@dataclass(frozen=True)
class UserScores:
    """Per-user metrics of one merchant (aligned with its split's users)."""

    ndcg: np.ndarray
    hit_rate: np.ndarray
    ndcg_full: np.ndarray | None = None


def adapted_parameters(
    theta: dict[str, np.ndarray],
    data: MerchantData,
    model: ModelConfig,
    budget: Budget,
    seed: int,
) -> dict[str, np.ndarray]:
    """θ adapted on a merchant's support data (θ itself for a budget of 0 steps),
    its taste term scaled by the budget's ``taste_scale``."""
    if budget.steps == 0:
        return scale_taste(theta, budget.taste_scale)
    adapted = adapt(theta, data, model, budget.as_adapt_config(), seed).parameters
    return scale_taste(adapted, budget.taste_scale)


def adapted_budgets(
    theta: dict[str, np.ndarray],
    data: MerchantData,
    model: ModelConfig,
    budgets: Sequence[Budget],
    seed: int,
) -> dict[Budget, dict[str, np.ndarray]]:
    """θ adapted with each of ``budgets``, as :func:`adapted_parameters` gives them.

    Budgets that differ only in steps or taste scale share one run (its first k steps
    are exactly a k-step run with the same seed), so the cost is the longest of each
    learning rate (and bias learning rate).
    """
    runs: dict[tuple[float, int, float | None], list[Budget]] = {}
    for budget in budgets:
        key = (budget.lr, budget.batch_size, budget.bias_lr)
        runs.setdefault(key, []).append(budget)
    adapted: dict[Budget, dict[str, np.ndarray]] = {}
    for group in runs.values():
        longest = max(group, key=lambda budget: budget.steps)
        if longest.steps == 0:
            adapted.update(
                {budget: scale_taste(theta, budget.taste_scale) for budget in group}
            )
            continue
        snapshots = adapt(
            theta,
            data,
            model,
            longest.as_adapt_config(),
            seed,
            snapshots={budget.steps for budget in group},
        ).snapshots
        adapted.update(
            {
                budget: scale_taste(snapshots[budget.steps], budget.taste_scale)
                for budget in group
            }
        )
    return adapted


def score_merchant(
    parameters: dict[str, np.ndarray],
    data: MerchantData,
    split: MarketSplit,
    model: ModelConfig,
    which: str = "test",
    full_catalogue: bool = False,
    k: int = 10,
) -> UserScores:
    """NDCG@k and HR@k per user of a merchant's held-out items."""
    scores = score_held_out(parameters, data, split, model, which, full_catalogue)
    ranks = rank_of_positive(scores.positive, scores.negatives)
    full = None
    if scores.catalogue is not None:
        target = split.test_item if which == "test" else split.valid_item
        full = ndcg(full_catalogue_ranks(scores.catalogue, target, split.support), k)
    return UserScores(ndcg(ranks, k), hit_rate(ranks, k), full)


def cold_start_scores(
    theta: dict[str, np.ndarray] | None,
    merchants: Sequence[tuple[MarketSplit, MerchantData]],
    model: ModelConfig,
    budget: Budget,
    seed: int,
    which: str = "test",
) -> UserScores:
    """Per-user scores of every merchant after adaptation, concatenated.

    ``theta=None`` starts each merchant from a fresh random initialisation (seeded):
    the merchant trained alone.
    """
    ndcgs, hits = [], []
    for index, (split, data) in enumerate(merchants):
        start = (
            theta if theta is not None else init_parameters(model, seed * 1000 + index)
        )
        parameters = adapted_parameters(start, data, model, budget, seed * 1000 + index)
        scores = score_merchant(parameters, data, split, model, which)
        ndcgs.append(scores.ndcg)
        hits.append(scores.hit_rate)
    return UserScores(np.concatenate(ndcgs), np.concatenate(hits))


def select_budget(
    theta: dict[str, np.ndarray] | None,
    merchants: Sequence[tuple[MarketSplit, MerchantData]],
    model: ModelConfig,
    candidates: Sequence[Budget],
    seed: int,
) -> Budget:
    """The candidate budget with the best validation NDCG@10 (never test items)."""
    best, best_score = candidates[0], -1.0
    for budget in candidates:
        score = float(
            cold_start_scores(
                theta, merchants, model, budget, seed, "valid"
            ).ndcg.mean()
        )
        logger.debug(
            "select: steps=%d lr=%g valid ndcg@10=%.4f", budget.steps, budget.lr, score
        )
        if score > best_score:
            best, best_score = budget, score
    return best
