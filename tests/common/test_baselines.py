"""Baselines of the cold-start benchmark, on tiny splits scored by hand."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from common.baselines import (
    ItemKNNScorer,
    NeuMFScorer,
    PooledItemKNNScorer,
    PopularityScorer,
    _Positives,
    held_out_ranks,
    interaction_matrix,
    tune,
)
from common.protocol import MarketSplit

# Scores carry a popularity tie-break of at most 1e-9 on top of the kNN sums.
KNN_TOLERANCE = 1e-8


def make_split(
    item_ids: list[str],
    support: list[list[int]],
    valid_item: list[int] | None = None,
    test_item: list[int] | None = None,
    valid_negatives: list[list[int]] | None = None,
    test_negatives: list[list[int]] | None = None,
    market: str = "aa",
) -> MarketSplit:
    """A split built by hand; held-out items and negatives default to item 0."""
    users = len(support)
    test_negatives = test_negatives or [[0]] * users
    valid_negatives = valid_negatives or [[0] * len(test_negatives[0])] * users
    return MarketSplit(
        market=market,
        item_ids=np.array(item_ids, dtype=object),
        user_ids=np.array([f"{market}-u{user}" for user in range(users)], dtype=object),
        support=[np.array(items, dtype=np.int64) for items in support],
        valid_item=np.array(valid_item or [0] * users, dtype=np.int64),
        test_item=np.array(test_item or [0] * users, dtype=np.int64),
        valid_negatives=np.array(valid_negatives, dtype=np.int64),
        test_negatives=np.array(test_negatives, dtype=np.int64),
    )


# Four items, four users. Users of each item: a {0, 1, 3}, b {0, 1, 2}, c {1, 2},
# d {3}. Co-occurrences: a-b 2, a-c 1, a-d 1, b-c 2, b-d 0, c-d 0. Cosines:
# a-b 2/3, a-c 1/√6, a-d 1/√3, b-c 2/√6.
FOUR_ITEMS = ["a", "b", "c", "d"]
FOUR_USERS = [[0, 1], [0, 1, 2], [1, 2], [3, 0]]


# ---------------------------------------------------------------------------
# Popularity
# ---------------------------------------------------------------------------


def test_popularity_orders_by_support_count_ties_by_item_code() -> None:
    # Prepare: counts a 3, b 3, c 2, d 1 -> order a (tie with b, lower code), b, c, d.
    split = make_split(FOUR_ITEMS, FOUR_USERS)

    # Execute
    scores = PopularityScorer().score(split)

    # Assert: distinct scores C/C ... 1/C in that order, the same for every user.
    assert scores.shape == (4, 4)
    np.testing.assert_allclose(scores, np.tile([1.0, 0.75, 0.5, 0.25], (4, 1)))


def test_popularity_tied_counts_never_tie_the_held_out_item() -> None:
    # Prepare: every item has one interaction; the held-out item b (code 1) has
    # the negatives c and d, which it beats by code.
    split = make_split(
        ["a", "b", "c", "d"],
        [[0], [1], [2], [3]],
        test_item=[1, 1, 1, 1],
        test_negatives=[[2, 3]] * 4,
    )

    # Execute
    ranks = held_out_ranks(PopularityScorer().score(split), split, "test")

    # Assert
    assert ranks.tolist() == [0, 0, 0, 0]


def test_scorers_refuse_an_unknown_held_out_set() -> None:
    split = make_split(FOUR_ITEMS, FOUR_USERS)
    with pytest.raises(ValueError, match=r"which must be 'valid' or 'test'"):
        PopularityScorer().score(split, "train")


# ---------------------------------------------------------------------------
# Item kNN
# ---------------------------------------------------------------------------


def plain_cosine(**overrides: Any) -> ItemKNNScorer:
    """Item kNN with the plain cosine and no extra: what the hand sums assume."""
    params: dict[str, Any] = {
        "neighbours": None,
        "shrink": 0.0,
        "alpha": 0.5,
        "recency": 1.0,
        "popularity_weight": 0.0,
    }
    params.update(overrides)
    return ItemKNNScorer(**params)


def test_itemknn_scores_are_sums_of_cosines_over_the_support() -> None:
    # Prepare: user 0 holds a and b.
    split = make_split(FOUR_ITEMS, FOUR_USERS)

    # Execute
    scores = plain_cosine().score(split)

    # Assert: a: cos(a, b); b: cos(b, a); c: cos(c, a) + cos(c, b); d: cos(d, a).
    expected = [2 / 3, 2 / 3, 1 / math.sqrt(6) + 2 / math.sqrt(6), 1 / math.sqrt(3)]
    np.testing.assert_allclose(scores[0], expected, rtol=0, atol=KNN_TOLERANCE)


def test_itemknn_shrinkage_divides_by_the_norms_plus_shrink() -> None:
    # Prepare
    split = make_split(FOUR_ITEMS, FOUR_USERS)

    # Execute
    scores = plain_cosine(shrink=1.0).score(split)

    # Assert: user 3 holds d and a; item b: co(b, a) / (√(3·3) + 1) + co(b, d) = 2/4.
    assert scores[3, 1] == pytest.approx(0.5, abs=KNN_TOLERANCE)


def test_itemknn_keeps_only_each_history_items_nearest_candidates() -> None:
    # Prepare: with one neighbour, a keeps b (2/3 beats 1/√3 and 1/√6) and b
    # keeps c (2/√6 beats 2/3).
    split = make_split(FOUR_ITEMS, FOUR_USERS)

    # Execute
    scores = plain_cosine(neighbours=1).score(split)

    # Assert: user 0 (a, b) reaches b through a and c through b only.
    expected = [0.0, 2 / 3, 2 / math.sqrt(6), 0.0]
    np.testing.assert_allclose(scores[0], expected, rtol=0, atol=KNN_TOLERANCE)


def test_itemknn_recency_weighs_older_support_items_less() -> None:
    # Prepare: user 1 holds a, b, c (oldest first): weights 0.25, 0.5, 1.
    split = make_split(FOUR_ITEMS, FOUR_USERS)

    # Execute
    scores = plain_cosine(recency=0.5).score(split)

    # Assert: d is reached through a only.
    assert scores[1, 3] == pytest.approx(0.25 / math.sqrt(3), abs=KNN_TOLERANCE)


def test_itemknn_normalise_scales_each_history_items_row_to_one() -> None:
    # Prepare: a's similarities: b 2/3, c 1/√6, d 1/√3.
    split = make_split(FOUR_ITEMS, FOUR_USERS)
    total = 2 / 3 + 1 / math.sqrt(6) + 1 / math.sqrt(3)

    # Execute
    scores = plain_cosine(normalise=True).score(split)

    # Assert: user 3 holds d and a; d's only neighbour is a, so b comes through a.
    assert scores[3, 1] == pytest.approx((2 / 3) / total, abs=KNN_TOLERANCE)


def test_itemknn_orders_unrelated_items_by_popularity() -> None:
    # Prepare: user 4 holds only d, whose sole neighbour is a; b (3 users) and
    # c (2 users) are unrelated to d.
    split = make_split(FOUR_ITEMS, [*FOUR_USERS, [3]])

    # Execute
    scores = plain_cosine().score(split)

    # Assert: a through d (users {0, 1, 3} and {3, 4}); then b above c, both
    # above zero by the tie-break only.
    assert scores[4, 0] == pytest.approx(1 / math.sqrt(6), abs=KNN_TOLERANCE)
    assert scores[4, 1] > scores[4, 2] > 0.0
    assert scores[4, 1] < KNN_TOLERANCE


def test_itemknn_popularity_blend_adds_the_scaled_count() -> None:
    # Prepare: counts a 3, b 3, c 2, d 1; the blend adds weight · count / 3.
    split = make_split(FOUR_ITEMS, FOUR_USERS)
    plain = plain_cosine().score(split)

    # Execute
    blended = plain_cosine(popularity_weight=0.3).score(split)

    # Assert
    np.testing.assert_allclose(
        blended - plain, np.tile([0.3, 0.3, 0.2, 0.1], (4, 1)), atol=1e-12
    )


def test_itemknn_refuses_bad_hyperparameters() -> None:
    with pytest.raises(ValueError, match=r"neighbours >= 1 or None, got 0"):
        ItemKNNScorer(neighbours=0)
    with pytest.raises(ValueError, match=r"recency in \(0, 1\], got 0.0"):
        ItemKNNScorer(recency=0.0)


def test_interaction_matrix_weighs_by_recency_and_counts_repeats_once() -> None:
    # Prepare: user 0 holds c, a, c (the latest c wins), user 1 nothing.
    support = [np.array([2, 0, 2]), np.array([], dtype=np.int64)]

    # Execute
    matrix = interaction_matrix(support, 3, recency=0.5).toarray()

    # Assert: a is second latest (0.5^1), c latest (0.5^0).
    np.testing.assert_allclose(matrix, [[0.5, 0.0, 1.0], [0.0, 0.0, 0.0]])


# ---------------------------------------------------------------------------
# Pooled item kNN
# ---------------------------------------------------------------------------


def pooled_case() -> tuple[MarketSplit, MarketSplit]:
    """A target where only another market links its user's item to the held-out one.

    Target aa: user 0 holds p1 and is tested on p3 against p2 and p4; within aa,
    p1 co-occurs with nothing, and p2 and p4 are more popular than p3 (never
    bought). Market bb (other item codes, and an item p9 aa does not sell) has two
    users holding p1 and p3 together.
    """
    target = make_split(
        ["p1", "p2", "p3", "p4"],
        [[0], [1], [1, 3]],
        test_item=[2, 0, 0],
        test_negatives=[[1, 3], [2, 3], [2, 3]],
    )
    other = make_split(["p1", "p3", "p9"], [[0, 1], [1, 0], [2, 0]], market="bb")
    return target, other


def test_pooled_itemknn_uses_another_markets_co_occurrences() -> None:
    # Prepare
    target, other = pooled_case()
    local = plain_cosine()
    pooled = PooledItemKNNScorer(
        [other], neighbours=None, shrink=0.0, alpha=0.5, recency=1.0,
        popularity_weight=0.0,
    )  # fmt: skip

    # Execute
    local_ranks = held_out_ranks(local.score(target), target, "test")
    pooled_scores = pooled.score(target)
    pooled_ranks = held_out_ranks(pooled_scores, target, "test")

    # Assert: alone, p3 ties at zero and loses on popularity to both negatives;
    # pooled, p1 (users: aa-0, bb-0, bb-1, bb-2) and p3 (bb-0, bb-1) share 2 users:
    # cos = 2 / √(4 · 2).
    assert local_ranks[0] == 2
    assert pooled_ranks[0] == 0
    assert pooled_scores[0, 2] == pytest.approx(2 / math.sqrt(8), abs=KNN_TOLERANCE)


def test_pooled_itemknn_refuses_the_target_among_the_others() -> None:
    target, other = pooled_case()
    with pytest.raises(ValueError, match=r"must not include the target 'aa'"):
        PooledItemKNNScorer([other, target]).score(target)


# ---------------------------------------------------------------------------
# NeuMF
# ---------------------------------------------------------------------------


def two_taste_split() -> MarketSplit:
    """24 users, 12 items: even users buy from items 0-5, odd users from 6-11."""
    rng = np.random.default_rng(7)
    support = [
        sorted(rng.choice(6, size=4, replace=False) + (6 if user % 2 else 0))
        for user in range(24)
    ]
    return make_split([f"i{item:02d}" for item in range(12)], support)


def small_neumf(seed: int = 0) -> NeuMFScorer:
    return NeuMFScorer(epochs=8, batch_size=32, seed=seed, threads=1)


def test_neumf_training_lowers_the_loss_of_every_stage() -> None:
    # Prepare
    split = two_taste_split()
    scorer = small_neumf()

    # Execute
    scores = scorer.score(split, "valid")

    # Assert
    assert scores.shape == (24, 12)
    assert np.isfinite(scores).all()
    for stage in ("gmf", "mlp", "neumf"):
        losses = scorer.losses[stage]
        assert len(losses) == 8
        assert losses[-1] < losses[0], stage
    # NeuMF starts from the trained GMF and MLP: its first epoch beats GMF's.
    assert scorer.losses["neumf"][0] < scorer.losses["gmf"][0]


def test_neumf_catalogue_scores_equal_the_model_on_each_pair() -> None:
    # Prepare: a trained model; the catalogue path splits the first MLP layer.
    split = two_taste_split()
    scorer = small_neumf()
    model = scorer.fit(split).eval()
    users = torch.arange(24).repeat_interleave(12)
    items = torch.arange(12).repeat(24)

    # Execute
    with torch.no_grad():
        pairwise = model(users, items).reshape(24, 12)
        catalogue = model.catalogue_logits(torch.arange(24))

    # Assert
    torch.testing.assert_close(catalogue, pairwise, rtol=1e-5, atol=1e-5)


def test_neumf_is_seeded_and_leaves_the_global_generator_alone() -> None:
    # Prepare
    split = two_taste_split()
    torch.manual_seed(123)
    expected_draw = torch.rand(1)
    torch.manual_seed(123)

    # Execute
    first = small_neumf(seed=3).score(split)
    draw_after = torch.rand(1)
    second = small_neumf(seed=3).score(split)
    other_seed = small_neumf(seed=4).score(split)

    # Assert
    assert torch.equal(draw_after, expected_draw)
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other_seed)


def test_neumf_negatives_avoid_the_users_support() -> None:
    # Prepare: user 0 holds 3 of 4 items, so its only possible negative is item 3.
    split = make_split(["a", "b", "c", "d"], [[0, 1, 2], [3]])
    positives = _Positives.of(split)

    # Execute
    users, items, labels = positives.with_negatives(4, np.random.default_rng(0))

    # Assert: 4 positives, then 4 negatives per positive.
    assert labels.tolist() == [1.0] * 4 + [0.0] * 16
    negatives_of_user_0 = items[4:][users[4:] == 0]
    assert negatives_of_user_0.tolist() == [3] * 12
    assert 3 not in items[4:][users[4:] == 1].tolist()


def test_neumf_refuses_a_tower_that_does_not_fit_the_embeddings() -> None:
    with pytest.raises(ValueError, match=r"must start at 2 \* dim = 16"):
        NeuMFScorer(dim=8, layers=(32, 8))


# ---------------------------------------------------------------------------
# Tuning
# ---------------------------------------------------------------------------


class RecordingScorer:
    """Ranks the validation item first when x == 2, the test item first when x == 3.

    Records which held-out set every call asked for.
    """

    calls: ClassVar[list[tuple[int, str]]] = []

    def __init__(self, x: int, y: str = "-") -> None:
        self.x = x

    def score(self, split: MarketSplit, which: str = "test") -> np.ndarray:
        RecordingScorer.calls.append((self.x, which))
        scores = np.zeros((split.num_users, split.num_items))
        rows = np.arange(split.num_users)
        if self.x == 2:
            scores[rows, split.valid_item] = 1.0
        if self.x == 3:
            scores[rows, split.test_item] = 1.0
        return scores


def tuning_split() -> MarketSplit:
    return make_split(
        ["a", "b", "c", "d"],
        [[0], [0]],
        valid_item=[1, 1],
        test_item=[2, 2],
        valid_negatives=[[0, 3], [0, 3]],
        test_negatives=[[0, 3], [0, 3]],
    )


def test_tune_picks_the_best_validation_configuration_never_scoring_test() -> None:
    # Prepare
    RecordingScorer.calls = []

    # Execute
    chosen = tune(RecordingScorer, {"x": [1, 2, 3]}, tuning_split(), budget=10)

    # Assert: x = 3 would win on test, x = 2 wins on validation.
    assert chosen == {"x": 2}
    assert RecordingScorer.calls == [(1, "valid"), (2, "valid"), (3, "valid")]


def test_tune_scores_budget_configurations_including_the_first() -> None:
    # Prepare: 3 x 4 = 12 configurations, a budget of 3.
    RecordingScorer.calls = []
    grid: dict[str, list[Any]] = {"x": [1, 2, 3], "y": ["p", "q", "r", "s"]}

    # Execute
    tune(RecordingScorer, grid, tuning_split(), budget=3, seed=5)
    with_budget_three = RecordingScorer.calls
    RecordingScorer.calls = []
    with_budget_one = tune(RecordingScorer, grid, tuning_split(), budget=1)
    with_budget_one_calls = RecordingScorer.calls
    RecordingScorer.calls = []
    whole_grid = tune(RecordingScorer, grid, tuning_split(), budget=12)

    # Assert: three calls starting with the defaults; a budget of one scores the
    # defaults only; a budget covering the grid scores it all, and the first
    # configuration with x = 2 wins.
    assert len(with_budget_three) == 3
    assert with_budget_three[0] == (1, "valid")
    assert with_budget_one_calls == [(1, "valid")]
    assert with_budget_one == {"x": 1, "y": "p"}
    assert len(RecordingScorer.calls) == 12
    assert whole_grid == {"x": 2, "y": "p"}


def test_tune_refuses_an_empty_budget_or_value_list() -> None:
    with pytest.raises(ValueError, match=r"budget must be >= 1"):
        tune(RecordingScorer, {"x": [1]}, tuning_split(), budget=0)
    with pytest.raises(ValueError, match=r"no value for x"):
        tune(RecordingScorer, {"x": []}, tuning_split(), budget=2)


def test_held_out_ranks_refuses_scores_of_the_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"expected scores of shape \(2, 4\)"):
        held_out_ranks(np.zeros((2, 3)), tuning_split(), "test")
