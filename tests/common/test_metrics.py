"""Ranking metrics and statistics, against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.metrics import (
    bootstrap_ci,
    full_catalogue_ranks,
    hit_rate,
    ndcg,
    paired_comparison,
    rank_of_positive,
)


def test_rank_of_positive_counts_ties_against_the_positive() -> None:
    # Prepare: user 0 ties one negative (0.5) and loses to one (0.7): rank 2;
    # user 1 beats all: rank 0; user 2 ties two negatives: rank 2.
    positive = np.array([0.5, 0.9, 0.1])
    negative = np.array([[0.1, 0.5, 0.7], [0.1, 0.2, 0.3], [0.1, 0.1, 0.0]])

    # Execute
    ranks = rank_of_positive(positive, negative)

    # Assert
    assert ranks.tolist() == [2, 0, 2]
    assert ranks.dtype == np.int64


def test_rank_of_positive_constant_scores_get_the_worst_rank() -> None:
    # Prepare: a model that scores everything alike learned nothing.
    positive = np.zeros(2)
    negative = np.zeros((2, 99))

    # Execute
    ranks = rank_of_positive(positive, negative)

    # Assert
    assert ranks.tolist() == [99, 99]


def test_rank_of_positive_refuses_nan_and_bad_shapes() -> None:
    # Execute / Assert: NaN compares false and would rank first.
    with pytest.raises(ValueError, match=r"positive_scores holds 1 NaN"):
        rank_of_positive(np.array([np.nan]), np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"expected positive_scores \(U,\)"):
        rank_of_positive(np.zeros(2), np.zeros((3, 4)))


def test_hit_rate_and_ndcg_by_hand() -> None:
    # Prepare
    ranks = np.array([0, 1, 9, 10, 50])

    # Execute
    hits = hit_rate(ranks, k=10)
    gains = ndcg(ranks, k=10)

    # Assert: NDCG = 1 / log2(rank + 2) inside the top 10.
    assert hits.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]
    np.testing.assert_allclose(
        gains, [1.0, 1.0 / math.log2(3), 1.0 / math.log2(11), 0.0, 0.0], rtol=1e-12
    )


def test_ndcg_cutoff_follows_k() -> None:
    # Execute / Assert: rank 4 is inside the top 5 and outside the top 4.
    assert ndcg(np.array([4]), k=5)[0] == pytest.approx(1.0 / math.log2(6), rel=1e-12)
    assert ndcg(np.array([4]), k=4)[0] == 0.0


def test_full_catalogue_ranks_leave_out_training_items() -> None:
    # Prepare: user 0: target item 3 (0.6); items 0, 1, 2 score higher, but 0 and 1
    # are training items: rank 1. User 1: target item 1 (0.5); item 2 ties and
    # item 4 is higher: rank 2.
    scores = np.array(
        [
            [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
            [0.1, 0.5, 0.5, 0.2, 0.9, 0.0],
        ]
    )
    target = np.array([3, 1])
    exclude = [np.array([0, 1]), np.array([], dtype=np.int64)]

    # Execute
    ranks = full_catalogue_ranks(scores, target, exclude)

    # Assert
    assert ranks.tolist() == [1, 2]
    np.testing.assert_allclose(
        ndcg(ranks), [1.0 / math.log2(3), 1.0 / math.log2(4)], rtol=1e-12
    )


def test_full_catalogue_ranks_without_exclusion_and_target_excluded() -> None:
    # Prepare: the same user 0, nothing excluded (rank 3), or only the target
    # itself in the exclusion list (still rank 3: it never counts against itself).
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4]])

    # Execute
    plain = full_catalogue_ranks(scores, np.array([3]), [np.array([], dtype=np.int64)])
    self_excluded = full_catalogue_ranks(scores, np.array([3]), [np.array([3])])

    # Assert
    assert plain.tolist() == [3]
    assert self_excluded.tolist() == [3]


def test_bootstrap_ci_contains_the_mean_and_is_reproducible() -> None:
    # Prepare: 200 users, half hits, half misses: mean 0.5.
    per_user = np.array([1.0, 0.0] * 100)

    # Execute
    low, high = bootstrap_ci(per_user, n_boot=1000, seed=0)
    again = bootstrap_ci(per_user, n_boot=1000, seed=0)

    # Assert: the standard error is sqrt(0.25 / 200) ≈ 0.035, so the 95% interval
    # spans about ± 0.07; allow 0.05 to 0.09 on each side.
    assert low < 0.5 < high
    assert 0.05 < 0.5 - low < 0.09
    assert 0.05 < high - 0.5 < 0.09
    assert again == (low, high)


def test_bootstrap_ci_of_a_constant_is_that_constant() -> None:
    # Execute
    low, high = bootstrap_ci(np.full(30, 0.25), n_boot=200)

    # Assert
    assert low == pytest.approx(0.25, abs=1e-12)
    assert high == pytest.approx(0.25, abs=1e-12)


def test_paired_comparison_detects_a_clear_difference() -> None:
    # Prepare: a beats b by exactly 0.3 plus noise that averages to zero.
    rng = np.random.default_rng(0)
    b = rng.uniform(0.0, 0.5, size=400)
    noise = rng.normal(0.0, 0.1, size=200)
    a = b + 0.3 + np.concatenate([noise, -noise])

    # Execute
    result = paired_comparison(a, b, n_boot=2000, seed=0)

    # Assert: mean difference 0.3; no resample as extreme as it under the null,
    # so p is its floor 1 / 2001.
    assert result.difference == pytest.approx(0.3, abs=1e-12)
    assert result.ci95[0] < 0.3 < result.ci95[1]
    assert result.ci95[0] > 0.0
    assert result.p == pytest.approx(1 / 2001, rel=1e-12)


def test_paired_comparison_of_identical_arms_finds_nothing() -> None:
    # Prepare
    a = np.random.default_rng(1).uniform(size=100)

    # Execute
    result = paired_comparison(a, a.copy())

    # Assert
    assert result.difference == 0.0
    assert result.ci95 == (0.0, 0.0)
    assert result.p == 1.0


def test_paired_comparison_of_noise_is_not_significant() -> None:
    # Prepare: differences of +1 and -1 for alternating users: mean exactly 0.
    b = np.zeros(100)
    a = np.array([1.0, -1.0] * 50)

    # Execute
    result = paired_comparison(a, b, n_boot=500, seed=3)

    # Assert: every resampled mean is at least as far from 0 as the observed 0.
    assert result.difference == 0.0
    assert result.p == 1.0
    assert result.ci95[0] < 0.0 < result.ci95[1]


def test_paired_comparison_refuses_unpaired_arrays() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=r"paired: expected two non-empty \(U,\)"):
        paired_comparison(np.zeros(3), np.zeros(4))
