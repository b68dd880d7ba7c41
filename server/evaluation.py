"""Scoring held-out new merchants while a simulated federation trains.

Only a simulation has new merchants the server may score: their data is the seeded
synthetic world or target markets named in the run config. In a deployment the server
holds no merchant data, and ``server-eval = false`` turns this off.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.adapt import MerchantData
from common.config import RunConfig
from common.evaluation import Budget, cold_start_scores, select_budget
from common.federation import new_merchants
from common.protocol import MarketSplit

logger = logging.getLogger(__name__)

# Budgets a merchant training alone may pick from, on its validation items.
ALONE_BUDGETS = (Budget(100, 0.01), Budget(300, 0.003), Budget(300, 0.01))


@dataclass
class ColdStartEvaluator:
    """Adapt θ on each new merchant's support data and score its test items."""

    config: RunConfig
    merchants: list[tuple[MarketSplit, MerchantData]]
    alone: dict[str, float] | None = None

    @classmethod
    def for_run(
        cls, config: RunConfig, raw: Mapping[str, Any]
    ) -> ColdStartEvaluator | None:
        """An evaluator when the run config names new merchants the server can read."""
        if not bool(raw.get("server-eval", True)):
            return None
        merchants = new_merchants(config.data)
        if not merchants:
            logger.info("evaluate: no held-out new merchants configured")
            return None
        prepared = [
            (m.split, MerchantData.from_split(m.split, config.model)) for m in merchants
        ]
        logger.info(
            "evaluate: %d new merchants, %d customers, %d support interactions",
            len(prepared),
            sum(split.num_users for split, _ in prepared),
            sum(data.num_examples for _, data in prepared),
        )
        return cls(config, prepared)

    @property
    def budget(self) -> Budget:
        """The adaptation budget a new merchant spends on θ."""
        evaluation = self.config.evaluation
        return Budget(
            evaluation.adapt_steps, evaluation.adapt_lr, self.config.adapt.batch_size
        )

    def _seeded(
        self, theta: dict[str, np.ndarray] | None, budget: Budget
    ) -> tuple[float, float, float]:
        """Mean NDCG@10 over seeds, its spread, and the mean HR@10."""
        ndcgs, hits = [], []
        for seed in range(self.config.evaluation.eval_seeds):
            scores = cold_start_scores(
                theta, self.merchants, self.config.model, budget, seed
            )
            ndcgs.append(float(scores.ndcg.mean()))
            hits.append(float(scores.hit_rate.mean()))
        return float(np.mean(ndcgs)), float(np.std(ndcgs)), float(np.mean(hits))

    def trained_alone(self) -> dict[str, float]:
        """The same merchants trained alone from scratch, budget tuned on validation."""
        if self.alone is None:
            budget = select_budget(
                None, self.merchants, self.config.model, ALONE_BUDGETS, seed=0
            )
            mean, spread, hits = self._seeded(None, budget)
            logger.info(
                "evaluate: trained alone (%d steps, lr %g): ndcg@10 %.4f ± %.4f",
                budget.steps,
                budget.lr,
                mean,
                spread,
            )
            self.alone = {
                "ndcg@10-alone": mean,
                "ndcg@10-alone-std": spread,
                "hr@10-alone": hits,
                "alone-steps": float(budget.steps),
            }
        return self.alone

    def evaluate(self, theta: dict[str, np.ndarray]) -> dict[str, float]:
        """Cold-start metrics of θ after adaptation, beside the merchants alone."""
        mean, spread, hits = self._seeded(theta, self.budget)
        return {
            "ndcg@10": mean,
            "ndcg@10-std": spread,
            "hr@10": hits,
            "adapt-steps": float(self.budget.steps),
            **self.trained_alone(),
        }
