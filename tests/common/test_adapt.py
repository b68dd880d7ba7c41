"""The inner loop on a synthetic merchant: it learns, it is seeded, it is local."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
import torch

from common import synthetic
from common.adapt import MerchantData, adapt, round_seed
from common.config import AdaptConfig, ModelConfig
from common.model import init_parameters, item_buckets
from common.protocol import MarketSplit, leave_one_out
from common.reptile import compute_delta

MODEL = ModelConfig(embedding_dim=16, num_buckets=1024, max_history=50)
INNER = AdaptConfig(inner_steps=20, inner_lr=0.01, batch_size=64)
ITEM_TABLES = ("history_items.weight", "target_items.weight", "item_bias.weight")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One torch thread, as each merchant runs: fast on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def _merchant() -> tuple[MarketSplit, MerchantData]:
    """The first source merchant of the synthetic federation (seed 0)."""
    merchant = synthetic.source_merchants(seed=0, num_merchants=1)[0]
    split = leave_one_out(merchant.interactions, merchant.market, seed=0)
    return split, MerchantData.from_split(split, MODEL)


def test_adaptation_lowers_the_support_loss() -> None:
    # Prepare
    _, data = _merchant()
    theta = init_parameters(MODEL, seed=0)

    # Execute
    result = adapt(theta, data, MODEL, INNER, seed=1)

    # Assert: a clear drop (by a tenth at least), not noise.
    assert result.loss_after < 0.9 * result.loss_before, (
        result.loss_before,
        result.loss_after,
    )
    assert result.num_examples == data.num_examples > 0


def test_adaptation_is_deterministic_for_a_seed_and_differs_for_another() -> None:
    # Prepare
    _, data = _merchant()
    theta = init_parameters(MODEL, seed=0)

    # Execute
    first = adapt(theta, data, MODEL, INNER, seed=5)
    again = adapt(theta, data, MODEL, INNER, seed=5)
    other = adapt(theta, data, MODEL, INNER, seed=6)

    # Assert
    for name in theta:
        np.testing.assert_array_equal(first.parameters[name], again.parameters[name])
    assert first.loss_after == again.loss_after
    assert not np.array_equal(
        first.parameters["target_items.weight"],
        other.parameters["target_items.weight"],
    )


def test_adaptation_leaves_theta_itself_untouched() -> None:
    # Prepare
    _, data = _merchant()
    theta = init_parameters(MODEL, seed=0)
    copy = {name: array.copy() for name, array in theta.items()}

    # Execute
    adapt(theta, data, MODEL, INNER, seed=1)

    # Assert
    for name in theta:
        np.testing.assert_array_equal(theta[name], copy[name])


def test_bias_lr_sets_the_step_size_of_the_item_biases_alone() -> None:
    # Prepare: Adam's first step moves every coordinate with a gradient by exactly
    # its learning rate (m̂ / √v̂ = ±1), so one step shows each group's step size.
    _, data = _merchant()
    theta = init_parameters(MODEL, seed=0)
    one_step = replace(INNER, inner_steps=1, inner_lr=1e-4, bias_lr=0.05)

    # Execute
    moved = compute_delta(theta, adapt(theta, data, MODEL, one_step, seed=1).parameters)

    # Assert
    bias_step = np.abs(moved["item_bias.weight"]).max()
    vector_step = np.abs(moved["target_items.weight"]).max()
    np.testing.assert_allclose(bias_step, 0.05, rtol=1e-3)
    np.testing.assert_allclose(vector_step, 1e-4, rtol=1e-2)


def test_bias_lr_equal_to_inner_lr_is_exactly_the_single_step_size_run() -> None:
    # Prepare
    _, data = _merchant()
    theta = init_parameters(MODEL, seed=0)

    # Execute
    plain = adapt(theta, data, MODEL, INNER, seed=3).parameters
    split = adapt(
        theta, data, MODEL, replace(INNER, bias_lr=INNER.inner_lr), seed=3
    ).parameters

    # Assert
    for name in theta:
        np.testing.assert_array_equal(plain[name], split[name])


def test_adapt_config_rejects_a_non_positive_bias_lr() -> None:
    with pytest.raises(ValueError, match="bias_lr"):
        AdaptConfig(bias_lr=0.0)


def test_delta_is_zero_on_the_rows_of_items_the_merchant_never_saw() -> None:
    # Prepare: the rows of products of the synthetic world the merchant does not
    # sell, less any row a product it sells also hashes to.
    split, data = _merchant()
    world = synthetic.make_world(seed=0)
    unseen = np.setdiff1d(world.item_ids, split.item_ids.astype(str))
    seen_rows = set(data.catalogue.ravel().tolist())
    unseen_rows = sorted(
        set(item_buckets(unseen, MODEL.num_buckets).ravel().tolist()) - seen_rows
    )
    theta = init_parameters(MODEL, seed=0)

    # Execute
    result = adapt(theta, data, MODEL, INNER, seed=1)
    delta = compute_delta(theta, result.parameters)

    # Assert: untouched rows are exactly zero; the merchant's own rows moved.
    assert len(unseen) > 100 and len(unseen_rows) > 100
    for name in ITEM_TABLES:
        assert np.all(delta[name][unseen_rows] == 0.0), name
    assert np.abs(delta["target_items.weight"][sorted(seen_rows)]).max() > 0
    assert np.abs(delta["history_items.weight"][sorted(seen_rows)]).max() > 0
    assert np.abs(delta["user_transform.weight"]).max() > 0


def test_a_snapshot_after_k_steps_is_exactly_a_k_step_run() -> None:
    # Prepare
    _, data = _merchant()
    theta = init_parameters(MODEL, seed=0)

    # Execute
    long = adapt(theta, data, MODEL, INNER, seed=3, snapshots={0, 7, 20})
    short = adapt(theta, data, MODEL, replace(INNER, inner_steps=7), seed=3)

    # Assert: bit for bit, and 0 steps is θ itself.
    assert set(long.snapshots) == {0, 7, 20}
    for name in theta:
        np.testing.assert_array_equal(long.snapshots[7][name], short.parameters[name])
        np.testing.assert_array_equal(long.snapshots[0][name], theta[name])
        np.testing.assert_array_equal(long.snapshots[20][name], long.parameters[name])
    assert not np.array_equal(
        long.snapshots[7]["target_items.weight"], long.parameters["target_items.weight"]
    )


def test_adapt_rejects_snapshots_beyond_its_steps() -> None:
    _, data = _merchant()
    with pytest.raises(ValueError, match=r"snapshots \[21\] are outside 0..20"):
        adapt(init_parameters(MODEL, 0), data, MODEL, INNER, seed=0, snapshots={21})


def test_adapt_rejects_a_merchant_without_support_data() -> None:
    # Prepare
    empty = MerchantData(
        catalogue=np.zeros((1, 2), np.int64),
        histories=np.full((1, 1), -1, np.int64),
        example_user=np.zeros(0, np.int64),
        example_position=np.zeros(0, np.int64),
    )

    # Execute / Assert
    with pytest.raises(ValueError, match="no support interactions"):
        adapt(init_parameters(MODEL, seed=0), empty, MODEL, INNER, seed=0)


def test_round_seed_depends_on_seed_round_and_merchant() -> None:
    # Execute
    base = round_seed(0, 1, "merchant-000")

    # Assert: stable, and a change of any part gives another seed.
    assert round_seed(0, 1, "merchant-000") == base
    assert len({base, *(round_seed(*parts) for parts in _neighbours())}) == 4


def _neighbours() -> list[tuple[int, int, str]]:
    return [(1, 1, "merchant-000"), (0, 2, "merchant-000"), (0, 1, "merchant-001")]
