"""Which data this merchant holds, read once per process.

Simulation: the node's ``partition-id`` picks one source merchant of the federation the
run config describes. Deployment: the node config names the merchant's own file
(``data-path``, ``data-format``, ``merchant-id``, optionally ``market``, ``cache-dir``
and the table's ``user-col``, ``item-col``, ``time-col``, ``value-col``,
``market-col``); each message runs in a fresh process, so the parsed data comes from
the merchant's disk cache (``client.cache``), rebuilt when the file changes.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from flwr.app import Context

from client import cache
from common.adapt import MerchantData
from common.config import DataConfig, ModelConfig, RunConfig
from common.data import TableColumns
from common.federation import source_merchant
from common.protocol import MarketSplit

logger = logging.getLogger(__name__)


class MerchantDataError(ValueError):
    """A merchant's data cannot be used; the message starts with the merchant id."""


@dataclass(frozen=True)
class LocalMerchant:
    """This node's merchant: its id, its split and its prepared support data."""

    merchant_id: str
    split: MarketSplit
    data: MerchantData


# A simulation worker serves any node: keep the merchants it has prepared (about
# 150 KiB each on the synthetic data) so that a merchant sampled again is not rebuilt.
@functools.lru_cache(maxsize=256)
def _simulated(
    data: DataConfig, model: ModelConfig, partition_id: int, num_partitions: int
) -> LocalMerchant:
    merchant = source_merchant(data, partition_id, num_partitions)
    return LocalMerchant(
        merchant.merchant_id,
        merchant.split,
        MerchantData.from_split(merchant.split, model),
    )


def _deployed(
    merchant_id: str, node: Mapping[str, object], model: ModelConfig, seed: int
) -> LocalMerchant:
    source = cache.Source(
        path=str(node["data-path"]),
        data_format=str(node.get("data-format", "table")),
        market=str(node["market"]) if "market" in node else None,
        columns=TableColumns(
            user=str(node.get("user-col", "user")),
            item=str(node.get("item-col", "item")),
            time=str(node.get("time-col", "time")),
            value=str(node["value-col"]) if "value-col" in node else None,
            market=str(node["market-col"]) if "market-col" in node else None,
        ),
    )
    cache_dir = str(node.get("cache-dir", "")) or None
    prepared = cache.load_prepared(source, model, seed, cache_dir)
    return LocalMerchant(merchant_id, prepared.split, prepared.data)


def load_merchant(context: Context, config: RunConfig) -> LocalMerchant:
    """This node's merchant, from its node config (deployment) or partition id."""
    node = context.node_config
    if "data-path" in node:
        merchant_id = str(node.get("merchant-id", f"node-{context.node_id}"))
        try:
            return _deployed(merchant_id, node, config.model, config.seed)
        except (OSError, ValueError) as error:  # DataError is a ValueError
            # The reply's error reaches the server's log: say which merchant it is.
            raise MerchantDataError(f"merchant {merchant_id}: {error}") from error
    if "partition-id" not in node:
        raise ValueError(
            "node config has neither data-path (deployment) "
            "nor partition-id (simulation)"
        )
    return _simulated(
        config.data,
        config.model,
        int(node["partition-id"]),
        int(node["num-partitions"]),
    )
