"""The embedded default data: a seeded synthetic cross-market federation.

A world of products with latent features is shared by several national markets. Each
market sells an overlapping part of the catalogue and has its own tastes: a mixture of
taste clusters with market-specific weights, and market-specific item popularity.
Established merchants have a few dozen customers each with around ten purchases; new
merchants (held out, never federated) have customers with only a handful.

What a new merchant cannot learn from its own few interactions, and what a good
meta-initialisation can give it, is the item geometry: which products are bought
together. That is shared across markets, so meta-learning has something to learn.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd

MARKETS = ("north", "south", "east")


@dataclass(frozen=True)
class SyntheticWorld:
    """The hidden truth behind the synthetic federation (seeded)."""

    item_ids: np.ndarray  # (I,) product ids
    item_factors: np.ndarray  # (I, F)
    popularity: np.ndarray  # (I,) global log-popularity
    market_items: dict[str, np.ndarray]  # market -> item indices it sells
    market_popularity: dict[str, np.ndarray]  # market -> (I,) market-specific shift
    cluster_centres: np.ndarray  # (K, F)
    market_clusters: dict[str, np.ndarray]  # market -> (K,) mixture weights


@dataclass(frozen=True)
class SyntheticMerchant:
    """One merchant: its id, its market and its interaction log."""

    merchant_id: str
    market: str
    interactions: pd.DataFrame


def make_world(
    seed: int,
    num_items: int = 1000,
    num_factors: int = 8,
    num_clusters: int = 8,
    items_per_market: int = 500,
) -> SyntheticWorld:
    """Draw the products, the markets' catalogues and the taste clusters."""
    rng = np.random.default_rng([seed, 7919])
    factors = rng.normal(size=(num_items, num_factors)) / np.sqrt(num_factors)
    market_items = {
        market: np.sort(rng.choice(num_items, size=items_per_market, replace=False))
        for market in MARKETS
    }
    return SyntheticWorld(
        item_ids=np.array([f"P{index:05d}" for index in range(num_items)]),
        item_factors=factors,
        popularity=rng.normal(scale=0.6, size=num_items),
        market_items=market_items,
        market_popularity={m: rng.normal(scale=0.4, size=num_items) for m in MARKETS},
        cluster_centres=rng.normal(scale=1.6, size=(num_clusters, num_factors)),
        market_clusters={m: rng.dirichlet(np.full(num_clusters, 0.5)) for m in MARKETS},
    )


def _merchant_log(
    world: SyntheticWorld,
    market: str,
    merchant_id: str,
    num_users: int,
    interactions_per_user: tuple[int, int],
    rng: np.random.Generator,
    taste_temperature: float = 0.35,
) -> pd.DataFrame:
    """Customers of one merchant: taste drawn from the market's clusters, purchases
    drawn without replacement from the market's catalogue by taste and popularity."""
    items = world.market_items[market]
    clusters = rng.choice(
        len(world.cluster_centres), size=num_users, p=world.market_clusters[market]
    )
    tastes = world.cluster_centres[clusters] + rng.normal(
        scale=0.5, size=(num_users, world.item_factors.shape[1])
    )
    base = world.popularity[items] + world.market_popularity[market][items]
    affinity = tastes @ world.item_factors[items].T / taste_temperature + base  # (U, C)

    rows: list[tuple[str, str, int]] = []
    low, high = interactions_per_user
    for user in range(num_users):
        count = int(rng.integers(low, high + 1))
        # Gumbel top-k: sampling without replacement proportional to exp(affinity).
        keys = affinity[user] + rng.gumbel(size=len(items))
        chosen = items[np.argsort(-keys)[:count]]
        times = np.sort(rng.integers(0, 1000, size=count))
        user_id = f"{merchant_id}-u{user:04d}"
        rows.extend(
            (user_id, world.item_ids[i], int(t))
            for i, t in zip(chosen, times, strict=True)
        )
    frame = pd.DataFrame(rows, columns=["user", "item", "time"])
    frame.insert(0, "market", market)
    frame["time"] = frame["time"].astype(np.int64)
    frame["value"] = 1.0
    frame["order"] = np.arange(len(frame), dtype=np.int64)
    return frame


@functools.lru_cache(maxsize=2)
def _shared_world(seed: int) -> SyntheticWorld:
    """The world of ``seed``, drawn once per process (treat it as read-only)."""
    return make_world(seed)


def source_merchant(
    seed: int,
    index: int,
    users_per_merchant: int = 60,
    interactions_per_user: tuple[int, int] = (8, 16),
) -> SyntheticMerchant:
    """Established merchant ``index``, built alone.

    Its random stream depends only on ``(seed, index)``, so a simulated node builds
    its own merchant without materialising the whole federation (which, at ten
    thousand merchants, would cost every worker process gigabytes and minutes).
    """
    if index < 0:
        raise ValueError(f"source_merchant: index must be >= 0, got {index}")
    market = MARKETS[index % len(MARKETS)]
    rng = np.random.default_rng([seed, 1, index])
    merchant_id = f"merchant-{index:03d}"
    log = _merchant_log(
        _shared_world(seed),
        market,
        merchant_id,
        users_per_merchant,
        interactions_per_user,
        rng,
    )
    return SyntheticMerchant(merchant_id, market, log)


def source_merchants(
    seed: int,
    num_merchants: int,
    users_per_merchant: int = 60,
    interactions_per_user: tuple[int, int] = (8, 16),
) -> list[SyntheticMerchant]:
    """The established merchants that federate, spread round-robin over the markets."""
    return [
        source_merchant(seed, index, users_per_merchant, interactions_per_user)
        for index in range(num_merchants)
    ]


def new_merchants(
    seed: int,
    per_market: int = 1,
    users_per_merchant: int = 120,
    interactions_per_user: tuple[int, int] = (5, 6),
) -> list[SyntheticMerchant]:
    """Held-out merchants just entering a market: few customers, few purchases each.

    With 5 to 6 purchases per customer and leave-one-out, each customer keeps 3 or 4
    support interactions.
    """
    world = make_world(seed)
    merchants = []
    for market_index, market in enumerate(MARKETS):
        for index in range(per_market):
            rng = np.random.default_rng([seed, 2, market_index, index])
            merchant_id = f"new-{market}-{index}"
            log = _merchant_log(
                world,
                market,
                merchant_id,
                users_per_merchant,
                interactions_per_user,
                rng,
            )
            merchants.append(SyntheticMerchant(merchant_id, market, log))
    return merchants
