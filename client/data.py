"""Which data this merchant holds, read once per process.

Simulation: the node's ``partition-id`` picks one source merchant of the federation the
run config describes. Deployment: the node config names the merchant's own file
(``data-path``, ``data-format``, ``merchant-id``).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from flwr.app import Context

from common.adapt import MerchantData
from common.config import DataConfig, ModelConfig, RunConfig
from common.data import load_interactions
from common.federation import source_merchants
from common.protocol import MarketSplit, leave_one_out

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalMerchant:
    """This node's merchant: its id, its split and its prepared support data."""

    merchant_id: str
    split: MarketSplit
    data: MerchantData


@functools.lru_cache(maxsize=4)
def _simulated(
    data: DataConfig, model: ModelConfig, partition_id: int, num_partitions: int
) -> LocalMerchant:
    merchants = source_merchants(data, num_partitions)
    if not 0 <= partition_id < len(merchants):
        raise ValueError(
            f"partition-id {partition_id} is outside the {len(merchants)} merchants"
        )
    merchant = merchants[partition_id]
    return LocalMerchant(
        merchant.merchant_id,
        merchant.split,
        MerchantData.from_split(merchant.split, model),
    )


@functools.lru_cache(maxsize=4)
def _deployed(
    merchant_id: str, path: str, data_format: str, model: ModelConfig, seed: int
) -> LocalMerchant:
    frame = load_interactions(path, data_format)
    split = leave_one_out(frame, merchant_id, seed=seed)
    return LocalMerchant(merchant_id, split, MerchantData.from_split(split, model))


def load_merchant(context: Context, config: RunConfig) -> LocalMerchant:
    """This node's merchant, from its node config (deployment) or partition id."""
    node = context.node_config
    if "data-path" in node:
        merchant_id = str(node.get("merchant-id", f"node-{context.node_id}"))
        data_format = str(node.get("data-format", "table"))
        return _deployed(
            merchant_id, str(node["data-path"]), data_format, config.model, config.seed
        )
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
