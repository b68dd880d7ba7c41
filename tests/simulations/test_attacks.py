"""The attack benchmark's attacks, exposure measure and hostile-merchant hook."""

from __future__ import annotations

import numpy as np
import pytest

from common.adapt import MerchantData
from common.config import (
    AdaptConfig,
    DataConfig,
    DefenceConfig,
    EvalConfig,
    MetaConfig,
    ModelConfig,
    RunConfig,
)
from common.federation import source_merchants
from common.model import init_parameters
from common.reptile import global_norm
from simulations.attacks import (
    HOSTILE,
    NUM_MERCHANTS,
    Attack,
    nan_inf,
    promotion_boost,
    scale,
    sign_flip,
    targets_held,
    top_k_exposure,
)
from simulations.inprocess import run_inprocess

TINY = RunConfig(
    model=ModelConfig(embedding_dim=4, num_buckets=64, max_history=8),
    adapt=AdaptConfig(inner_steps=2),
    meta=MetaConfig(num_rounds=1, meta_lr=1.0, meta_lr_final=1.0),
    evaluation=EvalConfig(adapt_steps=1),
    data=DataConfig(seed=0),
)


def _delta() -> dict[str, np.ndarray]:
    return {"a": np.array([1.0, -2.0], np.float32), "b": np.array([3.0], np.float32)}


def test_sign_flip_scale_and_nan_inf_by_hand() -> None:
    # Execute
    flipped, scaled, poisoned = (
        sign_flip(_delta()),
        scale(_delta(), 100),
        nan_inf(_delta()),
    )

    # Assert
    np.testing.assert_array_equal(flipped["a"], [-1.0, 2.0])
    np.testing.assert_array_equal(scaled["b"], [300.0])
    assert np.isnan(poisoned["a"][0]) and np.isinf(poisoned["a"][-1])
    np.testing.assert_array_equal(poisoned["b"], [3.0])  # only the first array


def test_promotion_boost_raises_the_score_by_the_asked_logits_times_amplification() -> (
    None
):
    # Prepare: θ of zeros; the product hashes to rows 1 and 2; a user of taste t.
    theta = {
        "item_bias.weight": np.zeros((4, 1), np.float32),
        "target_items.weight": np.zeros((4, 2), np.float32),
    }
    taste = np.array([3.0, 4.0], np.float32)

    # Execute
    boost = promotion_boost(theta, np.array([1, 2]), taste, logits=5.0, amplification=8)

    # Assert: score = u·(p1 + p2) + b1 + b2 = 8·5 / 2 (vectors) + 8·5 / 2 (bias) = 40.
    score = taste @ (
        boost["target_items.weight"][1] + boost["target_items.weight"][2]
    ) + float(boost["item_bias.weight"][1, 0] + boost["item_bias.weight"][2, 0])
    assert score == pytest.approx(40.0, rel=1e-5)
    assert not boost["item_bias.weight"][[0, 3]].any()  # other products untouched


def test_top_k_exposure_counts_users_whose_top_k_holds_the_item() -> None:
    # Prepare: 3 users, 4 items, k = 2; item 3 is the promoted one.
    scores = np.array(
        [
            [0.9, 0.1, 0.2, 0.8],  # item 3 second: exposed
            [0.9, 0.8, 0.7, 0.1],  # item 3 last: not exposed
            [0.9, 0.8, 0.1, 0.5],  # items 0 and 1 are the user's own: item 3 first
        ]
    )
    exclude = [np.array([], np.int64), np.array([], np.int64), np.array([0, 1])]

    # Execute
    exposed = top_k_exposure(scores, 3, exclude, k=2)

    # Assert
    np.testing.assert_array_equal(exposed, [True, False, True])
    # A user who already has the item is never shown it.
    assert not top_k_exposure(scores, 3, [np.array([3])] * 3, k=2).any()


def test_the_hook_tampers_only_with_the_hostile_merchant_and_clipping_bounds_it() -> (
    None
):
    # Prepare: the tiny federation, scale-100 from merchant-000.
    sources = source_merchants(TINY.data, NUM_MERCHANTS)
    hostile = next(m for m in sources if m.merchant_id == HOSTILE)
    attack = Attack(
        "scale-100",
        MerchantData.from_split(hostile.split, TINY.model),
        TINY,
        np.array([0, 1]),
        amplification=8.0,
    )
    theta = init_parameters(TINY.model, 0)
    honest = {name: np.ones_like(value) for name, value in theta.items()}

    # Execute
    untouched = attack(1, "merchant-001", theta, honest)
    none = run_inprocess(
        RunConfig(**{**TINY.__dict__, "defence": DefenceConfig(0.0, "mean")}),
        sources,
        tamper=attack,
    ).parameters
    clipped = run_inprocess(
        RunConfig(**{**TINY.__dict__, "defence": DefenceConfig(1.0, "mean")}),
        sources,
        tamper=attack,
    ).parameters

    # Assert: honest merchants pass through; one round with meta_lr 1 moves θ by the
    # mean of 8 deltas, at most 1 / 8 · 8 = 1 with every delta clipped to norm 1.
    assert untouched is honest
    moved_none = global_norm({k: none[k] - theta[k] for k in theta})
    moved_clipped = global_norm({k: clipped[k] - theta[k] for k in theta})
    assert moved_clipped <= 1.0 + 1e-5
    assert moved_none > 10 * moved_clipped


def test_targets_held_names_the_default_rows_that_miss() -> None:
    # Prepare
    rows = [
        {
            "attack": "noise",
            "defence": "default",
            "ndcg@10-relative": 0.90,
            "exposure-relative": 1.0,
        },
        {
            "attack": "promotion",
            "defence": "default",
            "ndcg@10-relative": 0.99,
            "exposure-relative": 3.0,
        },
        {
            "attack": "promotion",
            "defence": "none",
            "ndcg@10-relative": 0.5,
            "exposure-relative": 30.0,
        },
    ]

    # Execute / Assert
    assert targets_held(rows) == [
        "noise: ndcg@10 0.900 < 0.95",
        "promotion: exposure 3.00 > 2",
    ]
