"""Who the merchants of a simulated federation are, and what data each one holds.

A simulation has *source* merchants, which federate, and *new* merchants, which never
send anything: they receive θ, adapt on their support data and are scored on their
held-out items. With the synthetic data both kinds come from one seeded world; with
real data each source market is divided into ``merchants_per_market`` silos of users,
and each target market is one new merchant.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import pandas as pd

from common import synthetic
from common.config import DataConfig
from common.data import TableColumns, load_interactions
from common.protocol import MarketSplit, leave_one_out, split_users

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Merchant:
    """One merchant's evaluation split (support and held-out items)."""

    merchant_id: str
    market: str
    split: MarketSplit


@functools.lru_cache(maxsize=4)
def _read(
    path: str, data_format: str, columns: TableColumns, implicit: bool
) -> pd.DataFrame:
    return load_interactions(path, data_format, columns=columns, implicit=implicit)


def _real_interactions(config: DataConfig) -> pd.DataFrame:
    """The interactions a real-data federation reads (cached per process)."""
    columns = TableColumns(
        config.user_col,
        config.item_col,
        config.time_col,
        config.value_col or None,
        config.market_col or None,
    )
    return _read(config.data_path, config.data_format, columns, config.implicit)


def _markets(config: DataConfig) -> tuple[list[str], list[str]]:
    """Source and target markets of a real-data federation."""
    frame = _real_interactions(config)
    available = sorted(frame["market"].unique())
    missing = [
        m
        for m in (*config.source_markets, *config.target_markets)
        if m not in available
    ]
    if missing:
        raise ValueError(
            f"markets {missing} are not in {config.data_path}; found {available}"
        )
    targets = list(config.target_markets)
    sources = list(config.source_markets) or [m for m in available if m not in targets]
    return sources, targets


@functools.lru_cache(maxsize=8)
def source_merchants(
    config: DataConfig, num_merchants: int | None = None
) -> list[Merchant]:
    """The merchants that federate, in partition order.

    Synthetic data has exactly ``num_merchants`` merchants (the number of simulated
    nodes); real data has ``merchants_per_market`` per source market, and
    ``num_merchants``, when given, must match.
    """
    if config.data_format == "synthetic":
        if num_merchants is None:
            raise ValueError("source_merchants: synthetic data needs num_merchants")
        return [
            Merchant(
                m.merchant_id,
                m.market,
                leave_one_out(m.interactions, m.market, seed=config.seed),
            )
            for m in synthetic.source_merchants(config.seed, num_merchants)
        ]
    frame = _real_interactions(config)
    sources, _ = _markets(config)
    merchants: list[Merchant] = []
    for market in sources:
        split = leave_one_out(
            frame[frame["market"] == market], market, seed=config.seed
        )
        parts = split_users(split, config.merchants_per_market, seed=config.seed)
        merchants.extend(
            Merchant(f"{market}-{index}", market, part)
            for index, part in enumerate(parts)
        )
    if num_merchants is not None and num_merchants != len(merchants):
        raise ValueError(
            f"the federation has {len(merchants)} source merchants "
            f"({len(sources)} markets x {config.merchants_per_market} per market) but "
            f"the simulation runs {num_merchants} nodes: set num-supernodes to "
            f"{len(merchants)}"
        )
    return merchants


def source_merchant(config: DataConfig, index: int, num_merchants: int) -> Merchant:
    """Source merchant ``index`` of a federation of ``num_merchants``.

    A simulated node needs only its own merchant: synthetic merchants are built alone
    (the same as ``source_merchants(config, num_merchants)[index]``), so a federation
    of ten thousand costs each worker process one merchant at a time. Real data is
    split as a whole once per process and indexed.
    """
    if not 0 <= index < num_merchants:
        raise ValueError(
            f"partition-id {index} is outside the {num_merchants} merchants"
        )
    if config.data_format == "synthetic":
        merchant = synthetic.source_merchant(config.seed, index)
        return Merchant(
            merchant.merchant_id,
            merchant.market,
            leave_one_out(merchant.interactions, merchant.market, seed=config.seed),
        )
    return source_merchants(config, num_merchants)[index]


@functools.lru_cache(maxsize=8)
def new_merchants(config: DataConfig) -> list[Merchant]:
    """The held-out new merchants scored during and after a run."""
    if config.data_format == "synthetic":
        return [
            Merchant(
                m.merchant_id,
                m.market,
                leave_one_out(m.interactions, m.market, seed=config.seed),
            )
            for m in synthetic.new_merchants(config.seed)
        ]
    frame = _real_interactions(config)
    _, targets = _markets(config)
    return [
        Merchant(
            market,
            market,
            leave_one_out(frame[frame["market"] == market], market, seed=config.seed),
        )
        for market in targets
    ]
