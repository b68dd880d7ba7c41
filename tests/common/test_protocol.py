"""Leave-one-out splits and negatives, checked against splits worked out by hand."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.data import DataError, read_xmarket, read_xmarket_dir
from common.protocol import (
    MarketSplit,
    leave_one_out,
    split_markets,
    split_users,
    truncate_shots,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
HAND_LOG = FIXTURES / "xmarket" / "aa_5core.txt"
REPO = Path(__file__).resolve().parents[2]
REAL_XMARKET = REPO.parent / "shared/data/xmarket"

# The catalogue of aa_5core.txt, sorted: item code = position.
CATALOGUE = list("ABCDEFGHIJKL")
CODE = {item: code for code, item in enumerate(CATALOGUE)}


def _codes(items: str) -> list[int]:
    return [CODE[item] for item in items]


def _interacted(split: MarketSplit, user: int) -> set[int]:
    """Every item of a user, in any split."""
    return {
        *split.support[user].tolist(),
        int(split.valid_item[user]),
        int(split.test_item[user]),
    }


def _synthetic_log(
    num_users: int, num_items: int, per_user: int, seed: int
) -> pd.DataFrame:
    """A one-market log where each user has ``per_user`` distinct random items."""
    rng = np.random.default_rng(seed)
    items = np.concatenate(
        [rng.choice(num_items, size=per_user, replace=False) for _ in range(num_users)]
    )
    size = num_users * per_user
    return pd.DataFrame(
        {
            "market": ["zz"] * size,
            "user": [f"user{user}" for user in np.arange(num_users).repeat(per_user)],
            "item": [f"item{item:04d}" for item in items],
            "time": np.tile(np.arange(per_user, dtype=np.int64), num_users),
            "value": np.ones(size),
            "order": np.arange(size, dtype=np.int64),
        }
    )


# ---------------------------------------------------------------------------
# The hand-built log
# ---------------------------------------------------------------------------


def test_leave_one_out_gives_the_hand_computed_split() -> None:
    # Prepare: aa_5core.txt, worked out by hand:
    #   u1: A 01-01, B 01-02, C 01-03 (line 4), D 01-03 (line 5): equal dates in
    #       file order, so C is validation and D test.
    #   u2: C 01-01, D 01-02, E 01-04, B 01-05; the other B (01-03) is older and
    #       dropped, so B is the test item.
    #   u3: E 01-15, G 02-01 (line 12), F 02-01 (line 13); the F of line 11 has
    #       the same date but comes earlier in the file, so F is the test item.
    #   u4: H, I only (H twice): two distinct items, left out.
    #   u5: J, K, L, A.
    interactions = read_xmarket(HAND_LOG)

    # Execute
    split = leave_one_out(interactions, "aa", num_negatives=5, seed=0)

    # Assert
    assert split.item_ids.tolist() == CATALOGUE
    assert split.user_ids.tolist() == ["u1", "u2", "u3", "u5"]
    assert [items.tolist() for items in split.support] == [
        _codes("AB"),
        _codes("CD"),
        _codes("E"),
        _codes("JK"),
    ]
    assert split.valid_item.tolist() == _codes("CEGL")
    assert split.test_item.tolist() == _codes("DBFA")
    assert split.num_users == 4
    assert split.num_items == 12
    assert split.num_support_interactions == 7
    assert split.num_negatives == 5


def test_equal_times_follow_the_order_column_not_the_frame_position() -> None:
    # Prepare: the same log with its rows in reverse; the order column still
    # holds each row's position in the file.
    interactions = read_xmarket(HAND_LOG)
    reversed_rows = interactions.iloc[::-1].reset_index(drop=True)

    # Execute
    split = leave_one_out(reversed_rows, "aa", num_negatives=5, seed=0)

    # Assert: as in the file order (u1 test D, u3 test F).
    assert split.valid_item.tolist() == _codes("CEGL")
    assert split.test_item.tolist() == _codes("DBFA")


def test_leave_one_out_logs_the_users_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Prepare
    caplog.set_level(logging.INFO, logger="common.protocol")
    interactions = read_xmarket(HAND_LOG)

    # Execute
    leave_one_out(interactions, "aa", num_negatives=5)

    # Assert: u4 is the one user with fewer than 3 distinct items.
    messages = [record.getMessage() for record in caplog.records]
    assert any(
        "split: aa: 4 users" in message and "left out 1 users" in message
        for message in messages
    ), messages


def test_min_interactions_two_keeps_the_user_with_two_items() -> None:
    # Prepare
    interactions = read_xmarket(HAND_LOG)

    # Execute
    split = leave_one_out(interactions, "aa", num_negatives=5, min_interactions=2)

    # Assert: u4 (I 03-02, H 03-03) with empty support.
    u4 = split.user_ids.tolist().index("u4")
    assert split.support[u4].tolist() == []
    assert split.valid_item[u4] == CODE["I"]
    assert split.test_item[u4] == CODE["H"]


def test_negatives_avoid_every_interacted_item_and_are_distinct() -> None:
    # Prepare: 8 free items for u1, u2, u5 and 9 for u3; draw 8.
    interactions = read_xmarket(HAND_LOG)

    # Execute
    split = leave_one_out(interactions, "aa", num_negatives=8, seed=3)

    # Assert
    for user in range(split.num_users):
        had = _interacted(split, user)
        for negatives in (split.valid_negatives[user], split.test_negatives[user]):
            assert len(set(negatives.tolist())) == 8
            assert not had & set(negatives.tolist())
            assert negatives.min() >= 0 and negatives.max() < 12
    # u1 has exactly 8 free items: all of them.
    assert set(split.test_negatives[0].tolist()) == set(range(12)) - set(_codes("ABCD"))


def test_negatives_are_reproducible_and_change_with_the_seed() -> None:
    # Prepare
    interactions = read_xmarket(HAND_LOG)

    # Execute
    first = leave_one_out(interactions, "aa", num_negatives=5, seed=0)
    again = leave_one_out(interactions, "aa", num_negatives=5, seed=0)
    other = leave_one_out(interactions, "aa", num_negatives=5, seed=1)

    # Assert
    np.testing.assert_array_equal(first.valid_negatives, again.valid_negatives)
    np.testing.assert_array_equal(first.test_negatives, again.test_negatives)
    assert not np.array_equal(first.test_negatives, other.test_negatives)
    # Validation and test draw separately.
    assert not np.array_equal(first.valid_negatives, first.test_negatives)


def test_negatives_are_the_same_in_another_python_process() -> None:
    # Prepare: a child process with a fixed, different string-hash seed.
    code = (
        "from common.data import read_xmarket\n"
        "from common.protocol import leave_one_out\n"
        f"split = leave_one_out(read_xmarket({str(HAND_LOG)!r}), 'aa', 5, seed=7)\n"
        "print(split.test_negatives.tolist(), split.valid_negatives.tolist())\n"
    )
    environment = {**os.environ, "PYTHONHASHSEED": "12345"}

    # Execute
    child = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )
    split = leave_one_out(read_xmarket(HAND_LOG), "aa", 5, seed=7)

    # Assert
    expected = f"{split.test_negatives.tolist()} {split.valid_negatives.tolist()}"
    assert child.stdout.strip() == expected


def test_too_few_free_items_is_an_error_naming_the_user() -> None:
    # Prepare: u1, u2 and u5 have only 8 items they never touched.
    interactions = read_xmarket(HAND_LOG)

    # Execute / Assert
    with pytest.raises(
        DataError, match=r"aa: 3 user\(s\) have fewer than 9 .* user 'u1' with 4 of"
    ):
        leave_one_out(interactions, "aa", num_negatives=9)


def test_unknown_market_is_an_error_listing_markets() -> None:
    # Prepare
    interactions = read_xmarket(HAND_LOG)

    # Execute / Assert
    with pytest.raises(DataError, match=r"market 'zz'; markets present: aa"):
        leave_one_out(interactions, "zz")


def test_split_markets_splits_each_market_on_its_own() -> None:
    # Prepare: market aa, and a copy of it under the name cc.
    log = read_xmarket(HAND_LOG)
    interactions = pd.concat([log, log.assign(market="cc")], ignore_index=True)

    # Execute
    splits = split_markets(interactions, num_negatives=5, seed=0)

    # Assert: the same split; negatives seeded by market, so they differ.
    assert list(splits) == ["aa", "cc"]
    assert splits["cc"].market == "cc"
    assert splits["cc"].test_item.tolist() == _codes("DBFA")
    assert not np.array_equal(splits["aa"].test_negatives, splits["cc"].test_negatives)


def test_rejection_sampler_on_a_larger_catalogue() -> None:
    # Prepare: 300 items, 3 000 users of 10 items each; 20 negatives are drawn
    # from at least 290 free items, the vectorised path.
    interactions = _synthetic_log(num_users=3_000, num_items=300, per_user=10, seed=1)

    # Execute
    split = leave_one_out(interactions, "zz", num_negatives=20, seed=0)

    # Assert: distinct, never interacted.
    negatives = split.test_negatives
    assert negatives.shape == (3_000, 20)
    assert (
        np.sort(negatives, axis=1)[:, 1:] != np.sort(negatives, axis=1)[:, :-1]
    ).all()
    for user in range(split.num_users):
        assert not _interacted(split, user) & set(negatives[user].tolist())

    # Assert: near uniform over items. Each item is drawn about 3 000 · 20 / 300 ·
    # (1 - 10/300) ≈ 193 times, standard deviation about 14; 5 deviations allowed.
    counts = np.bincount(negatives.ravel(), minlength=300)
    expected = 3_000 * 20 / 300 * (1 - 10 / 300)
    assert np.abs(counts - expected).max() < 5 * np.sqrt(expected)


# ---------------------------------------------------------------------------
# Shots and silos
# ---------------------------------------------------------------------------


def test_truncate_shots_keeps_the_latest_support_items() -> None:
    # Prepare
    split = leave_one_out(read_xmarket(HAND_LOG), "aa", num_negatives=5)

    # Execute
    one = truncate_shots(split, 1)
    none = truncate_shots(split, 0)
    many = truncate_shots(split, 5)

    # Assert: supports were AB, CD, E, JK.
    assert [items.tolist() for items in one.support] == [
        _codes("B"),
        _codes("D"),
        _codes("E"),
        _codes("K"),
    ]
    assert [items.tolist() for items in none.support] == [[], [], [], []]
    assert [items.tolist() for items in many.support] == [
        items.tolist() for items in split.support
    ]
    # Held-out items and negatives are untouched.
    np.testing.assert_array_equal(one.test_item, split.test_item)
    np.testing.assert_array_equal(one.test_negatives, split.test_negatives)
    np.testing.assert_array_equal(one.valid_negatives, split.valid_negatives)


def test_truncate_shots_all_keeps_everything_and_rejects_bad_values() -> None:
    # Prepare
    split = leave_one_out(read_xmarket(HAND_LOG), "aa", num_negatives=5)

    # Execute / Assert
    assert truncate_shots(split, None) is split
    assert truncate_shots(split, "all") is split
    with pytest.raises(ValueError, match=r"shots: expected None, 'all' or an int"):
        truncate_shots(split, -1)
    with pytest.raises(ValueError, match=r"shots: expected"):
        truncate_shots(split, "three")


def test_split_users_partitions_users_over_the_same_candidates() -> None:
    # Prepare
    interactions = _synthetic_log(num_users=50, num_items=300, per_user=5, seed=2)
    split = leave_one_out(interactions, "zz", num_negatives=10, seed=0)

    # Execute
    silos = split_users(split, parts=3, seed=0)
    again = split_users(split, parts=3, seed=0)
    other = split_users(split, parts=3, seed=1)

    # Assert: sizes 17, 17, 16; together every user once; the same catalogue and,
    # per user, the same held-out items and negatives.
    assert [silo.num_users for silo in silos] == [17, 17, 16]
    users = np.concatenate([silo.user_ids for silo in silos])
    assert sorted(users.tolist()) == sorted(split.user_ids.tolist())
    position = {user: index for index, user in enumerate(split.user_ids.tolist())}
    for silo in silos:
        assert silo.item_ids is split.item_ids
        rows = np.array([position[user] for user in silo.user_ids.tolist()])
        np.testing.assert_array_equal(silo.test_item, split.test_item[rows])
        np.testing.assert_array_equal(silo.test_negatives, split.test_negatives[rows])
        np.testing.assert_array_equal(silo.valid_negatives, split.valid_negatives[rows])
        assert [items.tolist() for items in silo.support] == [
            split.support[row].tolist() for row in rows
        ]
    # A fixed seed fixes the silos; another seed gives others.
    assert [silo.user_ids.tolist() for silo in silos] == [
        silo.user_ids.tolist() for silo in again
    ]
    assert [silo.user_ids.tolist() for silo in silos] != [
        silo.user_ids.tolist() for silo in other
    ]


def test_split_users_rejects_more_parts_than_users() -> None:
    # Prepare
    split = leave_one_out(read_xmarket(HAND_LOG), "aa", num_negatives=5)

    # Execute / Assert
    with pytest.raises(ValueError, match=r"expected 1 to 4 parts"):
        split_users(split, parts=5, seed=0)


# ---------------------------------------------------------------------------
# Real data
# ---------------------------------------------------------------------------


def test_split_of_real_mexico_market_is_consistent() -> None:
    # Prepare: the shared data set must be present; a missing one is a failure.
    assert REAL_XMARKET.is_dir(), f"XMarket data missing: expected {REAL_XMARKET}"
    interactions = read_xmarket_dir(REAL_XMARKET, markets=["mx"])

    # Execute
    split = leave_one_out(interactions, "mx")

    # Assert: the catalogue of the release notes; every kept user's items are
    # its distinct items in the file, counted here independently with pandas.
    distinct = interactions.groupby("user")["item"].nunique()
    assert split.num_items == 1_645
    assert split.num_users == int((distinct >= 3).sum())
    for user, user_id in enumerate(split.user_ids.tolist()):
        assert len(split.support[user]) + 2 == distinct[user_id]
        had = _interacted(split, user)
        assert len(had) == distinct[user_id]
        assert not had & set(split.test_negatives[user].tolist())
        assert not had & set(split.valid_negatives[user].tolist())
