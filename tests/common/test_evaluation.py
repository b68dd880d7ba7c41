"""Adaptation budgets: runs shared between budgets, the taste scale applied after."""

from __future__ import annotations

import numpy as np

from common import synthetic
from common.adapt import MerchantData
from common.config import ModelConfig
from common.evaluation import Budget, adapted_budgets, adapted_parameters
from common.model import init_parameters, scale_taste
from common.protocol import leave_one_out

MODEL = ModelConfig(embedding_dim=8, num_buckets=512, max_history=20)


def _merchant() -> MerchantData:
    merchant = synthetic.source_merchants(seed=0, num_merchants=1)[0]
    split = leave_one_out(merchant.interactions, merchant.market, seed=0)
    return MerchantData.from_split(split, MODEL)


def test_budgets_that_differ_in_steps_or_taste_share_one_run_exactly() -> None:
    # Prepare
    data, theta = _merchant(), init_parameters(MODEL, seed=0)
    short, long = Budget(5, 0.01, 32), Budget(20, 0.01, 32)
    trusting_less = Budget(20, 0.01, 32, taste_scale=0.5)

    # Execute
    shared = adapted_budgets(theta, data, MODEL, [short, long, trusting_less], seed=1)

    # Assert: each equals its own run, and the scaled one is the long one scaled.
    for budget in (short, long, trusting_less):
        alone = adapted_parameters(theta, data, MODEL, budget, seed=1)
        for name in theta:
            np.testing.assert_array_equal(shared[budget][name], alone[name])
    expected = scale_taste(shared[long], 0.5)
    for name in theta:
        np.testing.assert_array_equal(shared[trusting_less][name], expected[name])
    assert not np.array_equal(
        shared[trusting_less]["user_transform.weight"],
        shared[long]["user_transform.weight"],
    )


def test_a_zero_step_budget_still_applies_its_taste_scale() -> None:
    theta = init_parameters(MODEL, seed=0)
    budget = Budget(0, 0.01, taste_scale=0.25)
    adapted = adapted_budgets(theta, _merchant(), MODEL, [budget], seed=0)[budget]
    np.testing.assert_array_equal(
        adapted["user_transform.bias"], theta["user_transform.bias"] * np.float32(0.25)
    )


def test_a_budget_describes_what_it_sets() -> None:
    assert Budget(300, 0.003).describe() == "300 steps, lr 0.003"
    assert (
        Budget(300, 0.001, bias_lr=0.03, taste_scale=0.5).describe()
        == "300 steps, lr 0.001, bias lr 0.03, taste x0.5"
    )
