"""Clipping, coordinate-wise median and trimmed mean against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from common.config import DefenceConfig
from common.robust import (
    aggregate,
    clip_by_norm,
    coordinate_median,
    defended_step,
    trim_count,
    trimmed_mean,
)

TOLERANCE = 1e-6


def test_clip_scales_a_long_delta_to_the_bound_and_keeps_its_direction() -> None:
    # Prepare: ‖(3, 4) , (12)‖ = √(9 + 16 + 144) = 13.
    delta = {"a": np.array([3.0, 4.0], np.float32), "b": np.array([12.0], np.float32)}

    # Execute
    result = clip_by_norm(delta, 6.5)

    # Assert: scaled by 6.5 / 13 = 0.5.
    assert result.clipped
    assert result.norm == pytest.approx(13.0, abs=TOLERANCE)
    np.testing.assert_allclose(result.delta["a"], [1.5, 2.0], atol=TOLERANCE)
    np.testing.assert_allclose(result.delta["b"], [6.0], atol=TOLERANCE)


def test_clip_leaves_a_short_delta_and_a_disabled_bound_alone() -> None:
    # Prepare
    delta = {"a": np.array([3.0, 4.0], np.float32)}

    # Execute
    short = clip_by_norm(delta, 5.0)
    disabled = clip_by_norm({"a": np.array([300.0, 400.0], np.float32)}, 0.0)

    # Assert
    assert not short.clipped and not disabled.clipped
    np.testing.assert_array_equal(short.delta["a"], [3.0, 4.0])
    np.testing.assert_array_equal(disabled.delta["a"], [300.0, 400.0])


def test_coordinate_median_takes_the_middle_value_of_every_coordinate() -> None:
    # Prepare: three merchants, one of them hostile in coordinate 0.
    deltas = [
        {"w": np.array([1.0, -2.0], np.float32)},
        {"w": np.array([1000.0, 0.0], np.float32)},
        {"w": np.array([2.0, 5.0], np.float32)},
    ]

    # Execute
    median = coordinate_median(deltas)

    # Assert: sorted columns (1, 2, 1000) and (-2, 0, 5).
    np.testing.assert_allclose(median["w"], [2.0, 0.0], atol=TOLERANCE)


def test_coordinate_median_of_an_even_count_averages_the_two_middle_values() -> None:
    # Prepare
    deltas = [{"w": np.array([v], np.float32)} for v in (4.0, 1.0, 3.0, 100.0)]

    # Execute / Assert: middle values 3 and 4.
    np.testing.assert_allclose(coordinate_median(deltas)["w"], [3.5], atol=TOLERANCE)


def test_trimmed_mean_drops_the_extremes_at_both_ends() -> None:
    # Prepare: five merchants, β = 0.2 drops ⌊0.2·5⌋ = 1 value at each end.
    values = [[-50.0, 1.0], [1.0, 2.0], [2.0, 3.0], [3.0, 4.0], [90.0, 5.0]]
    deltas = [{"w": np.array(v, np.float32)} for v in values]

    # Execute
    result = trimmed_mean(deltas, 0.2)

    # Assert: coordinate 0 keeps (1, 2, 3) → 2; coordinate 1 keeps (2, 3, 4) → 3.
    np.testing.assert_allclose(result["w"], [2.0, 3.0], atol=TOLERANCE)


def test_trim_count_floors_and_never_empties_the_set() -> None:
    # Execute / Assert: ⌊0.2·8⌋ = 1, ⌊0.2·10⌋ = 2, ⌊0.2·4⌋ = 0, ⌊0.45·3⌋ = 1.
    assert [trim_count(n, f) for n, f in ((8, 0.2), (10, 0.2), (4, 0.2))] == [1, 2, 0]
    assert trim_count(3, 0.45) == 1
    assert trim_count(2, 0.45) == 0  # (2 − 1) // 2: one value must remain
    with pytest.raises(ValueError, match="trim_fraction"):
        trim_count(8, 0.5)


def test_aggregate_mean_is_the_weighted_mean() -> None:
    # Prepare
    deltas = [{"w": np.array([1.0], np.float32)}, {"w": np.array([4.0], np.float32)}]

    # Execute / Assert: (1·1 + 4·2) / 3 = 3.
    result = aggregate(deltas, [1.0, 2.0], "mean")
    np.testing.assert_allclose(result["w"], [3.0], atol=TOLERANCE)
    with pytest.raises(ValueError, match="aggregation"):
        aggregate(deltas, [1.0, 2.0], "krum")


def test_defended_step_clips_before_averaging_and_counts_the_clipped() -> None:
    # Prepare: a hostile delta of norm 100 beside two honest ones of norm 1.
    deltas = [
        {"w": np.array([1.0, 0.0], np.float32)},
        {"w": np.array([0.0, 1.0], np.float32)},
        {"w": np.array([0.0, -100.0], np.float32)},
    ]
    defence = DefenceConfig(clip_norm=2.0, aggregation="mean")

    # Execute
    result = defended_step(deltas, [1.0, 1.0, 1.0], defence, num_sampled=3)

    # Assert: the hostile delta becomes (0, −2); mean = (1/3, (1 − 2)/3).
    assert result.clipped == 1
    assert result.clip_rate == pytest.approx(1 / 3)
    assert result.norms == pytest.approx((1.0, 1.0, 100.0))
    np.testing.assert_allclose(result.step["w"], [1 / 3, -1 / 3], atol=TOLERANCE)


def test_defended_step_with_dp_adds_noise_of_the_calibrated_size() -> None:
    # Prepare: zero deltas, so the step is the noise alone: N(0, (z·C)²) / m.
    size = 20_000
    deltas = [{"w": np.zeros(size, np.float32)} for _ in range(4)]
    defence = DefenceConfig(clip_norm=2.0, aggregation="mean", dp_noise_multiplier=1.5)

    # Execute
    result = defended_step(
        deltas, [1.0] * 4, defence, num_sampled=5, rng=np.random.default_rng(0)
    )

    # Assert: stddev z·C / m = 1.5 · 2 / 5 = 0.6, within 3% for 20,000 draws.
    assert float(np.std(result.step["w"])) == pytest.approx(0.6, rel=0.03)


def test_options_that_cannot_be_combined_are_refused() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="secure-aggregation cannot be combined"):
        DefenceConfig(clip_norm=1.0, secure_aggregation=True, aggregation="median")
    with pytest.raises(ValueError, match="dp-noise-multiplier > 0 cannot be combined"):
        DefenceConfig(
            clip_norm=1.0, dp_noise_multiplier=1.0, aggregation="trimmed-mean"
        )
    with pytest.raises(ValueError, match="needs clip-norm > 0"):
        DefenceConfig(clip_norm=0.0, aggregation="mean", secure_aggregation=True)
