"""The synthetic federation: seeded, overlapping markets, thin new merchants."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from common import synthetic


def _per_user(merchant: synthetic.SyntheticMerchant) -> pd.Series:
    return merchant.interactions.groupby("user").size()


def test_the_same_seed_gives_the_same_federation() -> None:
    # Execute
    first = synthetic.source_merchants(seed=4, num_merchants=3)
    again = synthetic.source_merchants(seed=4, num_merchants=3)
    new_first, new_again = synthetic.new_merchants(4), synthetic.new_merchants(4)

    # Assert
    for one, other in zip([*first, *new_first], [*again, *new_again], strict=True):
        assert (one.merchant_id, one.market) == (other.merchant_id, other.market)
        pd.testing.assert_frame_equal(one.interactions, other.interactions)


def test_another_seed_gives_another_federation() -> None:
    # Execute
    first = synthetic.source_merchants(seed=4, num_merchants=1)[0].interactions
    other = synthetic.source_merchants(seed=5, num_merchants=1)[0].interactions

    # Assert: same columns, different purchases.
    assert list(first.columns) == list(other.columns)
    assert not (
        len(first) == len(other)
        and (first["item"].to_numpy() == other["item"].to_numpy()).all()
    )


def test_merchants_are_spread_round_robin_over_the_markets() -> None:
    # Execute
    merchants = synthetic.source_merchants(seed=0, num_merchants=5)

    # Assert: markets north, south, east, north, south; each log in its market.
    assert [m.market for m in merchants] == ["north", "south", "east", "north", "south"]
    assert [m.merchant_id for m in merchants] == [f"merchant-00{i}" for i in range(5)]
    for merchant in merchants:
        assert set(merchant.interactions["market"]) == {merchant.market}


def test_markets_sell_overlapping_but_different_catalogues() -> None:
    # Prepare: 500 of 1000 products per market, drawn independently: two markets
    # share about 500 · 500 / 1000 = 250 products.
    world = synthetic.make_world(seed=0)

    # Execute
    shared = {
        (a, b): len(np.intersect1d(world.market_items[a], world.market_items[b]))
        for a, b in itertools.combinations(synthetic.MARKETS, 2)
    }

    # Assert
    for pair, count in shared.items():
        assert 150 < count < 350, (pair, count)


def test_merchants_of_different_markets_sell_some_of_the_same_products() -> None:
    # Prepare
    merchants = synthetic.source_merchants(seed=0, num_merchants=3)

    # Execute
    items = [set(m.interactions["item"]) for m in merchants]

    # Assert: a product bought in one market is bought in another too; that is what
    # links the markets through the shared item rows.
    for one, other in itertools.combinations(items, 2):
        assert len(one & other) > 20
        assert one != other


def test_new_merchants_have_few_interactions_per_customer() -> None:
    # Execute
    sources = synthetic.source_merchants(seed=0, num_merchants=3)
    new = synthetic.new_merchants(seed=0)

    # Assert: 5 or 6 purchases per new customer against 8 to 16 per established one.
    assert sorted(m.market for m in new) == sorted(synthetic.MARKETS)
    for merchant in new:
        counts = _per_user(merchant)
        assert counts.between(5, 6).all(), merchant.merchant_id
    for merchant in sources:
        counts = _per_user(merchant)
        assert counts.between(8, 16).all(), merchant.merchant_id


def test_a_customer_buys_a_product_at_most_once_and_belongs_to_one_merchant() -> None:
    # Execute
    merchants = [
        *synthetic.source_merchants(seed=0, num_merchants=3),
        *synthetic.new_merchants(seed=0),
    ]

    # Assert
    users = [set(m.interactions["user"]) for m in merchants]
    for one, other in itertools.combinations(users, 2):
        assert not one & other
    for merchant in merchants:
        assert not merchant.interactions.duplicated(["user", "item"]).any()
