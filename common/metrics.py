"""Ranking metrics of the XMarket / FOREC protocol and the statistics around them.

Each held-out item is ranked against sampled negatives (He et al., "Neural
Collaborative Filtering", WWW 2017; 99 negatives per item in Bonab et al.,
"Cross-Market Product Recommendation", CIKM 2021) and scored by HR@10 and NDCG@10.
Sampled metrics can mis-order models (Krichene and Rendle, "On Sampled Metrics for
Item Recommendation", KDD 2020), so :func:`full_catalogue_ranks` also ranks the
item against the whole market catalogue.

Every metric here is per user, so that confidence intervals and paired comparisons
resample users (Efron and Tibshirani, "An Introduction to the Bootstrap", 1993).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Most resampled values held in memory at once by the bootstraps.
_MAX_RESAMPLED_VALUES = 1 << 22


@dataclass(frozen=True)
class PairedResult:
    """Mean per-user difference a − b, its 95% bootstrap interval and a p-value."""

    difference: float
    ci95: tuple[float, float]
    p: float


def rank_of_positive(
    positive_scores: np.ndarray, negative_scores: np.ndarray
) -> np.ndarray:
    """(U,) 0-based rank of each user's held-out item among its negatives.

    rank = the number of negatives scoring at least as high: a tie counts against
    the held-out item, so a model scoring everything alike gets the worst rank, not
    the best.
    """
    positive = _scores(positive_scores, "positive_scores")
    negative = _scores(negative_scores, "negative_scores")
    if positive.ndim != 1 or negative.ndim != 2 or len(negative) != len(positive):
        raise ValueError(
            "rank: expected positive_scores (U,) and negative_scores (U, N), got "
            f"{positive.shape} and {negative.shape}"
        )
    return (negative >= positive[:, None]).sum(axis=1).astype(np.int64)


def hit_rate(ranks: np.ndarray, k: int = 10) -> np.ndarray:
    """(U,) 1.0 where the held-out item is in the top ``k``, else 0.0 (HR@k)."""
    ranks = _ranks(ranks)
    return (ranks < k).astype(np.float64)


def ndcg(ranks: np.ndarray, k: int = 10) -> np.ndarray:
    """(U,) NDCG@k with one relevant item: 1 / log2(rank + 2) in the top k, else 0."""
    ranks = _ranks(ranks)
    gain = 1.0 / np.log2(ranks.astype(np.float64) + 2.0)
    return np.where(ranks < k, gain, 0.0)


def full_catalogue_ranks(
    scores: np.ndarray, target: np.ndarray, exclude: Sequence[np.ndarray]
) -> np.ndarray:
    """(U,) 0-based rank of each target among all catalogue items but the excluded.

    scores: (U, C) a score for every item of the catalogue.
    target: (U,) the held-out item code of each user.
    exclude: per user, item codes left out of the ranking (the user's training
        items); the target itself is never counted against itself.
    Ties count against the target, as in :func:`rank_of_positive`.
    """
    scores = _scores(scores, "scores")
    target = np.asarray(target, dtype=np.int64)
    if (
        scores.ndim != 2
        or target.shape != (len(scores),)
        or len(exclude) != len(target)
    ):
        raise ValueError(
            "rank: expected scores (U, C), target (U,) and U exclusion lists, got "
            f"{scores.shape}, {target.shape} and {len(exclude)} lists"
        )
    users, num_items = scores.shape
    if users and (target.min() < 0 or target.max() >= num_items):
        raise ValueError(f"rank: target item codes must lie in [0, {num_items})")
    rows = np.arange(users)

    # Items scoring at least as high as the target, minus the target and exclusions.
    above = scores >= scores[rows, target][:, None]
    above[rows, target] = False
    lengths = np.fromiter(
        (len(items) for items in exclude), dtype=np.int64, count=users
    )
    if lengths.sum():
        columns = np.concatenate(
            [np.asarray(items, dtype=np.int64) for items in exclude]
        )
        above[rows.repeat(lengths), columns] = False
    return above.sum(axis=1).astype(np.int64)


def bootstrap_ci(
    per_user: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over users.

    Users are resampled with replacement ``n_boot`` times; the interval is the
    central ``level`` of the resampled means.
    """
    values = _finite(per_user, "per_user")
    if values.ndim != 1 or values.size == 0:
        raise ValueError(
            f"bootstrap: expected a non-empty (U,) array, got {values.shape}"
        )
    if n_boot < 1 or not 0.0 < level < 1.0:
        raise ValueError(
            f"bootstrap: expected n_boot >= 1 and 0 < level < 1, got {n_boot}, {level}"
        )
    means = _resampled_means(values, n_boot, np.random.default_rng(seed))
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def paired_comparison(
    a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0
) -> PairedResult:
    """Compare two arms scored on the same users: mean of a − b, 95% CI and p.

    The p-value is a two-sided paired bootstrap test (Efron and Tibshirani 1993,
    §16.4): the per-user differences are centred on zero to impose the null
    hypothesis "no mean difference", resampled over users, and p is the share of
    resampled means at least as far from zero as the observed one, (count + 1) /
    (n_boot + 1), so p >= 1 / (n_boot + 1). The bootstrap rather than Wilcoxon's
    signed-rank test because it tests the very quantity reported (the mean, with
    the interval from the same resamples) and assumes no symmetry: per-user NDCG
    differences are mostly exact zeros (both arms miss the top 10) and skewed, and
    Wilcoxon's test would then speak of a median shift rather than the mean.
    """
    first = _finite(a, "a")
    second = _finite(b, "b")
    if first.shape != second.shape or first.ndim != 1 or first.size == 0:
        raise ValueError(
            "paired: expected two non-empty (U,) arrays over the same users, got "
            f"{first.shape} and {second.shape}"
        )
    if n_boot < 1:
        raise ValueError(f"paired: expected n_boot >= 1, got {n_boot}")
    differences = first - second
    observed = float(differences.mean())
    means = _resampled_means(differences, n_boot, np.random.default_rng(seed))

    # The centred resamples are means - observed: the same draws serve CI and test.
    low, high = np.quantile(means, [0.025, 0.975])
    extreme = int((np.abs(means - observed) >= abs(observed)).sum())
    p = (extreme + 1) / (n_boot + 1)
    return PairedResult(difference=observed, ci95=(float(low), float(high)), p=p)


def _resampled_means(
    values: np.ndarray, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """(n_boot,) means of ``values`` resampled with replacement, chunk by chunk."""
    size = len(values)
    per_chunk = max(1, _MAX_RESAMPLED_VALUES // size)
    means = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, per_chunk):
        count = min(per_chunk, n_boot - start)
        index = rng.integers(0, size, size=(count, size))
        means[start : start + count] = values[index].mean(axis=1)
    return means


def _scores(values: np.ndarray, name: str) -> np.ndarray:
    """Scores as float64, refusing NaN: it compares false, so it would rank first.

    Infinities are allowed: a model may mask items with -inf.
    """
    array = np.asarray(values, dtype=np.float64)
    if np.isnan(array).any():
        raise ValueError(
            f"metrics: {name} holds {int(np.isnan(array).sum())} NaN value(s)"
        )
    return array


def _finite(values: np.ndarray, name: str) -> np.ndarray:
    """``values`` as float64, refusing NaN and infinity (they have no mean)."""
    array = np.asarray(values, dtype=np.float64)
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise ValueError(f"metrics: {name} holds {bad} NaN or infinite value(s)")
    return array


def _ranks(ranks: np.ndarray) -> np.ndarray:
    array = np.asarray(ranks)
    if array.size and (array.min() < 0 or not np.issubdtype(array.dtype, np.integer)):
        raise ValueError(
            f"metrics: ranks must be integers >= 0, got dtype {array.dtype}, "
            f"min {array.min()}"
        )
    return array.astype(np.int64)
