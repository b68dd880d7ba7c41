"""The XMarket / FOREC evaluation protocol: leave-one-out splits and sampled negatives.

Per market and user (Bonab et al., "Cross-Market Product Recommendation", CIKM 2021,
and its FOREC code; the leave-one-out scheme with sampled negatives is that of He et
al., "Neural Collaborative Filtering", WWW 2017):

1. keep one interaction per (user, item), the latest;
2. order each user's items by time, equal times by their order in the file;
3. the latest item is the test item, the one before it the validation item, the
   rest are support (training) data;
4. rank each held-out item against 99 items of the market the user never
   interacted with, drawn with a fixed seed, separately for validation and test.

Sampled metrics can order models differently from full-catalogue ones (Krichene and
Rendle, "On Sampled Metrics for Item Recommendation", KDD 2020), so
:mod:`common.metrics` also ranks against the whole catalogue.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from common.data import DataError, require_interactions

logger = logging.getLogger(__name__)

# Independent random streams derived from (seed, market), one per purpose.
_VALID_STREAM = 0
_TEST_STREAM = 1
_USERS_STREAM = 2

# Users with fewer free items than this many times num_negatives, or for whom
# fewer than this fraction of the catalogue is free, are drawn exactly rather
# than by rejection (where rejection would need too many draws).
_EXACT_BELOW_FREE_MULTIPLE = 2
_EXACT_BELOW_FREE_FRACTION = 0.25
# Most candidate draws held in memory at once by the rejection sampler.
_MAX_DRAWS_PER_CHUNK = 1 << 22


@dataclass(frozen=True, eq=False)
class MarketSplit:
    """One market's users, split by the leave-one-out protocol.

    Item codes index ``item_ids``, the market's catalogue; user ``u`` is row ``u``
    of every per-user field. Arrays are shared between a split and its subsets and
    truncations: treat them as read-only.

    item_ids: (C,) item ids (str, object array), sorted; index = item code.
    user_ids: (U,) user ids (str, object array).
    support: U arrays of int64 item codes in time order, oldest first.
    valid_item, test_item: (U,) int64 held-out item codes.
    valid_negatives, test_negatives: (U, N) int64 item codes the user never
        interacted with, distinct within a row.
    """

    market: str
    item_ids: np.ndarray
    user_ids: np.ndarray
    support: list[np.ndarray]
    valid_item: np.ndarray
    test_item: np.ndarray
    valid_negatives: np.ndarray
    test_negatives: np.ndarray

    def __post_init__(self) -> None:
        users = len(self.user_ids)
        per_user = {
            "support": len(self.support),
            "valid_item": len(self.valid_item),
            "test_item": len(self.test_item),
            "valid_negatives": len(self.valid_negatives),
            "test_negatives": len(self.test_negatives),
        }
        wrong = {name: size for name, size in per_user.items() if size != users}
        if wrong:
            raise ValueError(
                f"split: {self.market}: expected {users} rows (one per user) in every "
                f"per-user field, got {wrong}"
            )
        if self.valid_negatives.shape != self.test_negatives.shape:
            raise ValueError(
                f"split: {self.market}: validation and test negatives differ in shape: "
                f"{self.valid_negatives.shape} vs {self.test_negatives.shape}"
            )

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def num_negatives(self) -> int:
        return int(self.test_negatives.shape[1]) if self.test_negatives.ndim == 2 else 0

    @property
    def num_support_interactions(self) -> int:
        return sum(len(items) for items in self.support)

    def subset(self, user_index: np.ndarray) -> MarketSplit:
        """The same market and catalogue restricted to the users at ``user_index``."""
        index = np.asarray(user_index, dtype=np.int64)
        if index.ndim != 1 or (
            index.size and (index.min() < 0 or index.max() >= self.num_users)
        ):
            raise ValueError(
                f"split: {self.market}: expected a 1-d index into {self.num_users} "
                f"users, got shape {index.shape}"
                + (f", range {index.min()}..{index.max()}" if index.size else "")
            )
        return replace(
            self,
            user_ids=self.user_ids[index],
            support=[self.support[user] for user in index],
            valid_item=self.valid_item[index],
            test_item=self.test_item[index],
            valid_negatives=self.valid_negatives[index],
            test_negatives=self.test_negatives[index],
        )


def leave_one_out(
    interactions: pd.DataFrame,
    market: str,
    num_negatives: int = 99,
    seed: int = 0,
    min_interactions: int = 3,
) -> MarketSplit:
    """Split one market of ``interactions`` (columns of :mod:`common.data`).

    num_negatives: items drawn per user and held-out item, 99 as in the XMarket
        paper.
    seed: with the market name, fixes the negatives (the same in every process).
    min_interactions: users with fewer distinct items are left out; 3 leaves at
        least one support item beside the validation and test items.
    """
    if min_interactions < 2:
        raise ValueError(
            f"split: min_interactions must be >= 2 (a validation and a test item), "
            f"got {min_interactions}"
        )
    if num_negatives < 0 or seed < 0:
        raise ValueError(
            f"split: num_negatives and seed must be >= 0, got {num_negatives}, {seed}"
        )
    require_interactions(interactions, f"split: {market}")
    rows = interactions.loc[(interactions["market"] == market).to_numpy()]
    if rows.empty:
        present = ", ".join(sorted(map(str, interactions["market"].unique())))
        raise DataError(
            f"split: no interactions for market {market!r}; markets present: {present}"
        )

    # Codes: the catalogue is every item of the market, sorted by id.
    user_code, user_ids = pd.factorize(rows["user"].to_numpy(dtype=object), sort=True)
    item_code, item_ids = pd.factorize(rows["item"].to_numpy(dtype=object), sort=True)
    num_items = len(item_ids)
    time = rows["time"].to_numpy(dtype=np.int64)
    order = rows["order"].to_numpy(dtype=np.int64)

    # Sort by user, then time, then file order; lexsort is stable, so rows equal
    # in all three keep their position in the frame.
    by_time = np.lexsort((order, time, user_code))
    user_code, item_code = user_code[by_time], item_code[by_time]

    # Keep the latest row of each (user, item): the last one in this order.
    pair = user_code.astype(np.int64) * num_items + item_code
    _, last_from_end = np.unique(pair[::-1], return_index=True)
    latest = np.sort(len(pair) - 1 - last_from_end)
    user_code, item_code = user_code[latest], item_code[latest]

    # Leave out users with too few distinct items.
    counts = np.bincount(user_code, minlength=len(user_ids))
    kept_users = np.flatnonzero(counts >= min_interactions)
    dropped_users = len(user_ids) - len(kept_users)
    if len(kept_users) == 0:
        raise DataError(
            f"split: {market}: no user has at least {min_interactions} distinct items "
            f"(of {len(user_ids):,} users)"
        )
    kept_rows = counts[user_code] >= min_interactions
    new_code = np.full(len(user_ids), -1, dtype=np.int64)
    new_code[kept_users] = np.arange(len(kept_users))
    user_code, item_code = new_code[user_code[kept_rows]], item_code[kept_rows]
    counts = counts[kept_users]
    user_ids = np.asarray(user_ids, dtype=object)[kept_users]

    # Latest -> test, the one before -> validation, the rest -> support.
    ends = np.cumsum(counts)
    test_item = item_code[ends - 1].astype(np.int64)
    valid_item = item_code[ends - 2].astype(np.int64)
    starts = ends - counts
    support_flat = item_code.astype(np.int64)
    support = [
        support_flat[start : end - 2] for start, end in zip(starts, ends, strict=True)
    ]

    # Negatives: never-interacted items of this market, one draw for each purpose.
    free = num_items - counts
    short = np.flatnonzero(free < num_negatives)
    if short.size:
        user = int(short[0])
        raise DataError(
            f"split: {market}: {short.size:,} user(s) have fewer than {num_negatives} "
            f"items they never interacted with, e.g. user {user_ids[user]!r} with "
            f"{counts[user]} of the {num_items:,} items of the catalogue; lower "
            "num_negatives"
        )
    interacted = np.sort(np.arange(len(counts)).repeat(counts) * num_items + item_code)
    valid_negatives = _sample_negatives(
        _rng(seed, market, _VALID_STREAM), interacted, counts, num_items, num_negatives
    )
    test_negatives = _sample_negatives(
        _rng(seed, market, _TEST_STREAM), interacted, counts, num_items, num_negatives
    )

    split = MarketSplit(
        market=market,
        item_ids=np.asarray(item_ids, dtype=object),
        user_ids=user_ids,
        support=support,
        valid_item=valid_item,
        test_item=test_item,
        valid_negatives=valid_negatives,
        test_negatives=test_negatives,
    )
    logger.info(
        "split: %s: %s users, %s items, %s support interactions; left out %s users "
        "with fewer than %s distinct items",
        market,
        f"{split.num_users:,}",
        f"{split.num_items:,}",
        f"{split.num_support_interactions:,}",
        f"{dropped_users:,}",
        min_interactions,
    )
    return split


def split_markets(
    interactions: pd.DataFrame,
    num_negatives: int = 99,
    seed: int = 0,
    min_interactions: int = 3,
) -> dict[str, MarketSplit]:
    """:func:`leave_one_out` for every market of ``interactions``, by market name."""
    require_interactions(interactions, "split")
    markets = sorted(map(str, interactions["market"].unique()))
    return {
        market: leave_one_out(
            interactions, market, num_negatives, seed, min_interactions
        )
        for market in markets
    }


def truncate_shots(split: MarketSplit, shots: int | str | None) -> MarketSplit:
    """Keep each user's ``shots`` latest support items: the cold-start setting.

    ``None`` or ``"all"`` keeps everything. Held-out items and negatives are kept, so
    every truncation is scored on the same candidates.
    """
    if shots is None or shots == "all":
        return split
    if isinstance(shots, bool) or not isinstance(shots, int | np.integer) or shots < 0:
        raise ValueError(f"shots: expected None, 'all' or an int >= 0, got {shots!r}")
    keep = int(shots)
    return replace(
        split, support=[items[max(0, len(items) - keep) :] for items in split.support]
    )


def split_users(split: MarketSplit, parts: int, seed: int) -> list[MarketSplit]:
    """Divide the users at random into ``parts`` silos of near-equal size.

    Each silo keeps the market's catalogue and its users' negatives: several
    merchants selling in one market. Users keep their order within a silo.
    """
    if parts < 1 or parts > split.num_users:
        raise ValueError(
            f"split: {split.market}: expected 1 to {split.num_users} parts (one user "
            f"at least in each), got {parts}"
        )
    if seed < 0:
        raise ValueError(f"split: seed must be >= 0, got {seed}")
    shuffled = _rng(seed, split.market, _USERS_STREAM).permutation(split.num_users)
    return [split.subset(np.sort(part)) for part in np.array_split(shuffled, parts)]


def _rng(seed: int, market: str, stream: int) -> np.random.Generator:
    """A generator fixed by (seed, market, stream), the same in every process.

    The market name enters as its UTF-8 bytes, preceded by their count so that no
    two names give the same entropy (Python's ``hash`` of a str changes per process).
    """
    name = market.encode("utf-8")
    entropy = [seed, len(name), *name]
    return np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(stream,)))


def _sample_negatives(
    rng: np.random.Generator,
    interacted: np.ndarray,
    counts: np.ndarray,
    num_items: int,
    num_negatives: int,
) -> np.ndarray:
    """(U, N) distinct item codes per user, uniformly among items not interacted.

    interacted: sorted keys ``user * num_items + item`` of every interaction.
    Most users are drawn together by rejection: uniform draws, minus items the
    user had and repeats, first N kept (the first N distinct values of a uniform
    sequence are a uniform N-subset). Users with few free items are drawn exactly.
    """
    num_users = len(counts)
    negatives = np.empty((num_users, num_negatives), dtype=np.int64)
    if num_negatives == 0:
        return negatives
    free = num_items - counts
    exact = (free < _EXACT_BELOW_FREE_MULTIPLE * num_negatives) | (
        free < _EXACT_BELOW_FREE_FRACTION * num_items
    )

    # Exact: a choice without replacement among the user's free items.
    user_starts = np.concatenate(([0], np.cumsum(counts)))
    for user in np.flatnonzero(exact):
        had = interacted[user_starts[user] : user_starts[user + 1]] - user * num_items
        pool = np.setdiff1d(np.arange(num_items), had, assume_unique=True)
        negatives[user] = rng.choice(pool, size=num_negatives, replace=False)

    # Rejection: enough draws that nearly every user is done in one pass. N distinct
    # of F free items take about F·ln(F / (F − N)) draws that hit a free item, a
    # fraction F / C of all draws.
    pending = np.flatnonzero(~exact)
    if pending.size == 0:
        return negatives
    least_free = float(free[pending].min())
    needed = least_free * np.log(least_free / (least_free - num_negatives))
    draws = int(np.ceil(1.3 * needed * num_items / least_free)) + 8
    while pending.size:
        chunk = pending[: max(1, _MAX_DRAWS_PER_CHUNK // draws)]
        candidates = rng.integers(0, num_items, size=(len(chunk), draws))

        # Reject items the user interacted with.
        keys = chunk[:, None] * num_items + candidates
        at = np.minimum(np.searchsorted(interacted, keys), len(interacted) - 1)
        usable = interacted[at] != keys

        # Reject repeats of an earlier draw in the same row.
        by_value = np.argsort(candidates, axis=1, kind="stable")
        sorted_values = np.take_along_axis(candidates, by_value, axis=1)
        repeat_sorted = np.zeros_like(usable)
        repeat_sorted[:, 1:] = sorted_values[:, 1:] == sorted_values[:, :-1]
        repeat = np.empty_like(usable)
        np.put_along_axis(repeat, by_value, repeat_sorted, axis=1)
        usable &= ~repeat

        # The first N usable draws of each row that has enough.
        done = usable.sum(axis=1) >= num_negatives
        first = np.argsort(~usable, axis=1, kind="stable")[:, :num_negatives]
        negatives[chunk[done]] = np.take_along_axis(candidates, first, axis=1)[done]
        pending = np.concatenate((chunk[~done], pending[len(chunk) :]))
    return negatives
