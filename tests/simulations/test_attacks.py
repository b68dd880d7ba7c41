"""The attack benchmark's attacks, exposure measure and hostile-merchant hook."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest

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
    NUM_MERCHANTS,
    Attack,
    chance_exposure,
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


def test_promotion_boost_raises_the_bias_by_logits_times_amplification() -> None:
    # Prepare: θ of zeros; the product hashes to rows 1 and 2.
    theta = {
        "item_bias.weight": np.zeros((4, 1), np.float32),
        "target_items.weight": np.zeros((4, 2), np.float32),
    }

    # Execute
    boost = promotion_boost(theta, np.array([1, 2]), logits=5.0, amplification=8)

    # Assert: b1 + b2 = 8·5 = 40, i.e. 5 logits after a mean of 8; nothing else moves.
    bias = boost["item_bias.weight"]
    assert float(bias[1, 0] + bias[2, 0]) == pytest.approx(40.0, rel=1e-6)
    assert not bias[[0, 3]].any()
    assert not boost["target_items.weight"].any()


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
    attack = Attack(
        "scale-100",
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


def test_chance_exposure_is_k_over_the_catalogue_averaged_over_customers() -> None:
    # Prepare: 100 customers with a catalogue of 500, 300 with one of 200.
    splits = [
        SimpleNamespace(num_users=100, item_ids=np.arange(500)),
        SimpleNamespace(num_users=300, item_ids=np.arange(200)),
    ]

    # Execute / Assert: (100·10/500 + 300·10/200) / 400 = (2 + 15) / 400 = 0.0425.
    assert chance_exposure(cast(Any, splits)) == pytest.approx(0.0425)
