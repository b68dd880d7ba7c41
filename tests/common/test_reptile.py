"""The Reptile outer update against numbers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.reptile import (
    apply_step,
    compute_delta,
    delta_weights,
    global_norm,
    meta_lr_at,
    reptile_update,
    weighted_mean,
)

TOLERANCE = 1e-6


def _theta() -> dict[str, np.ndarray]:
    return {"w": np.array([1.0, 2.0], np.float32)}


def _deltas() -> list[dict[str, np.ndarray]]:
    return [
        {"w": np.array([0.5, -1.0], np.float32)},
        {"w": np.array([1.5, 3.0], np.float32)},
    ]


# ---------------------------------------------------------------------------
# One Reptile step
# ---------------------------------------------------------------------------


def test_reptile_update_weighted_by_examples_matches_the_hand_computed_step() -> None:
    # Prepare: weights 1 and 3, meta_lr 0.5.
    #   weighted mean = (1·[0.5, -1] + 3·[1.5, 3]) / 4 = [5, 8] / 4 = [1.25, 2]
    #   θ' = [1, 2] + 0.5·[1.25, 2] = [1.625, 3]
    weights = delta_weights([1, 3], "examples")

    # Execute
    updated = reptile_update(_theta(), _deltas(), weights, meta_lr=0.5)

    # Assert
    assert weights == [1.0, 3.0]
    np.testing.assert_allclose(updated["w"], [1.625, 3.0], rtol=0, atol=TOLERANCE)
    assert updated["w"].dtype == np.float32


def test_reptile_update_weighted_uniformly_matches_the_hand_computed_step() -> None:
    # Prepare: the same merchants, every one weighed alike.
    #   mean = ([0.5, -1] + [1.5, 3]) / 2 = [1, 1]
    #   θ' = [1, 2] + 0.5·[1, 1] = [1.5, 2.5]
    weights = delta_weights([1, 3], "uniform")

    # Execute
    updated = reptile_update(_theta(), _deltas(), weights, meta_lr=0.5)

    # Assert
    assert weights == [1.0, 1.0]
    np.testing.assert_allclose(updated["w"], [1.5, 2.5], rtol=0, atol=TOLERANCE)


def test_reptile_update_with_meta_lr_one_and_one_merchant_is_its_adapted_weights() -> (
    None
):
    # Prepare: θ' = θ + 1·(θ_1 − θ) = θ_1 = [3, -4]
    theta = _theta()
    adapted = {"w": np.array([3.0, -4.0], np.float32)}

    # Execute
    updated = reptile_update(theta, [compute_delta(theta, adapted)], [7.0], 1.0)

    # Assert
    np.testing.assert_allclose(updated["w"], [3.0, -4.0], rtol=0, atol=TOLERANCE)


def test_reptile_update_works_array_by_array() -> None:
    # Prepare: two named arrays; weights 1 and 3, meta_lr 0.5.
    #   b: mean = (1·2 + 3·(-2)) / 4 = -1, θ' = 0 + 0.5·(-1) = -0.5
    theta = {**_theta(), "b": np.zeros((1, 1), np.float32)}
    deltas = [
        {**_deltas()[0], "b": np.full((1, 1), 2.0, np.float32)},
        {**_deltas()[1], "b": np.full((1, 1), -2.0, np.float32)},
    ]

    # Execute
    updated = reptile_update(theta, deltas, [1.0, 3.0], meta_lr=0.5)

    # Assert
    np.testing.assert_allclose(updated["w"], [1.625, 3.0], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(updated["b"], [[-0.5]], rtol=0, atol=TOLERANCE)
    assert updated["b"].shape == (1, 1)


def test_apply_step_keeps_float32() -> None:
    # Prepare: θ + 0.25·[4, 8] = [1 + 1, 2 + 2] = [2, 4]
    step = {"w": np.array([4.0, 8.0], np.float64)}

    # Execute
    updated = apply_step(_theta(), step, 0.25)

    # Assert
    np.testing.assert_allclose(updated["w"], [2.0, 4.0], rtol=0, atol=TOLERANCE)
    assert updated["w"].dtype == np.float32


def test_delta_weights_rejects_an_unknown_weighting() -> None:
    with pytest.raises(ValueError, match="weighting must be 'examples' or 'uniform'"):
        delta_weights([1, 2], "median")


# ---------------------------------------------------------------------------
# meta_lr annealing
# ---------------------------------------------------------------------------


def test_meta_lr_is_annealed_linearly_from_initial_to_final() -> None:
    # Prepare: 11 rounds from 1.0 to 0.1; round r is (r - 1)/10 of the way:
    #   round 1 -> 1.0, round 3 -> 1 - 0.9·0.2 = 0.82, round 6 (midpoint) ->
    #   1 - 0.9·0.5 = 0.55, round 11 -> 0.1
    expected = {1: 1.0, 3: 0.82, 6: 0.55, 11: 0.1}

    # Execute
    values = {r: meta_lr_at(r, 11, initial=1.0, final=0.1) for r in expected}

    # Assert
    for server_round, value in expected.items():
        assert math.isclose(values[server_round], value, abs_tol=1e-12), (
            server_round,
            values[server_round],
        )


def test_meta_lr_annealing_can_rise_and_stays_inside_the_run() -> None:
    # Prepare: 5 rounds from 0.2 up to 1.0: round 3 is half way -> 0.6.
    # Execute
    midpoint = meta_lr_at(3, 5, initial=0.2, final=1.0)
    after_last = meta_lr_at(9, 5, initial=0.2, final=1.0)
    before_first = meta_lr_at(0, 5, initial=0.2, final=1.0)

    # Assert: rounds outside 1..num_rounds are held at the ends.
    assert math.isclose(midpoint, 0.6, abs_tol=1e-12)
    assert math.isclose(after_last, 1.0, abs_tol=1e-12)
    assert math.isclose(before_first, 0.2, abs_tol=1e-12)


def test_meta_lr_of_a_single_round_run_is_the_initial_value() -> None:
    assert meta_lr_at(1, 1, initial=0.7, final=0.1) == 0.7


def test_meta_lr_equal_ends_disable_annealing() -> None:
    values = [meta_lr_at(r, 4, initial=0.3, final=0.3) for r in range(1, 5)]
    assert values == pytest.approx([0.3] * 4, abs=1e-12)


# ---------------------------------------------------------------------------
# Deltas and their mean
# ---------------------------------------------------------------------------


def test_compute_delta_is_adapted_minus_theta() -> None:
    # Prepare: [3, -4] - [1, 2] = [2, -6]; [[0.5]] - [[2]] = [[-1.5]]
    theta = {"w": np.array([1.0, 2.0]), "b": np.array([[2.0]], np.float32)}
    adapted = {"w": np.array([3.0, -4.0]), "b": np.array([[0.5]], np.float32)}

    # Execute
    delta = compute_delta(theta, adapted)

    # Assert
    np.testing.assert_allclose(delta["w"], [2.0, -6.0], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(delta["b"], [[-1.5]], rtol=0, atol=TOLERANCE)
    assert delta["w"].dtype == np.float32
    assert delta["b"].dtype == np.float32


def test_compute_delta_rejects_different_names() -> None:
    with pytest.raises(ValueError, match=r"names differ: \['b', 'w'\]"):
        compute_delta(_theta(), {"b": np.zeros(2, np.float32)})


def test_weighted_mean_of_one_delta_is_that_delta() -> None:
    mean = weighted_mean([_deltas()[1]], [5.0])
    np.testing.assert_allclose(mean["w"], [1.5, 3.0], rtol=0, atol=TOLERANCE)


def test_weighted_mean_ignores_a_zero_weight() -> None:
    # Prepare: weights 0 and 2: the mean is the second delta alone.
    mean = weighted_mean(_deltas(), [0.0, 2.0])
    np.testing.assert_allclose(mean["w"], [1.5, 3.0], rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize(
    "weights",
    [
        [-1.0, 3.0],
        [0.0, 0.0],
        [float("nan"), 1.0],
        [float("inf"), 1.0],
    ],
    ids=["negative", "all-zero", "nan", "inf"],
)
def test_weighted_mean_rejects_bad_weights(weights: list[float]) -> None:
    with pytest.raises(ValueError, match="weights must be >= 0 with a positive sum"):
        weighted_mean(_deltas(), weights)


def test_weighted_mean_rejects_a_weight_count_that_differs() -> None:
    with pytest.raises(ValueError, match="2 deltas but 3 weights"):
        weighted_mean(_deltas(), [1.0, 1.0, 1.0])


def test_weighted_mean_rejects_no_deltas() -> None:
    with pytest.raises(ValueError, match="no deltas"):
        weighted_mean([], [])


def test_global_norm_is_the_norm_of_all_arrays_together() -> None:
    # Prepare: sqrt(3² + 4² + 12²) = sqrt(169) = 13
    arrays = {"a": np.array([3.0, 4.0]), "b": np.array([[12.0]])}

    # Execute / Assert
    assert math.isclose(global_norm(arrays), 13.0, abs_tol=1e-12)
