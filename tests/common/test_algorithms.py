"""Central training of the pooled reference (``common.algorithms.train_pooled``)."""

from __future__ import annotations

import numpy as np

from common import synthetic
from common.adapt import MerchantData
from common.algorithms import train_pooled
from common.config import AdaptConfig, ModelConfig
from common.model import ITEM_TABLES, init_parameters
from common.protocol import leave_one_out

MODEL = ModelConfig(embedding_dim=8, num_buckets=2048, max_history=20)


def _datasets() -> list[MerchantData]:
    merchants = synthetic.source_merchants(seed=0, num_merchants=2)
    return [
        MerchantData.from_split(leave_one_out(m.interactions, m.market, seed=0), MODEL)
        for m in merchants
    ]


def test_pooled_training_moves_only_rows_some_catalogue_hashes_to() -> None:
    # Prepare
    datasets = _datasets()
    theta = init_parameters(MODEL, seed=0)
    config = AdaptConfig(inner_steps=30, inner_lr=0.01, batch_size=32)
    used = np.unique(np.concatenate([d.catalogue.ravel() for d in datasets]))
    unused = np.setdiff1d(np.arange(MODEL.num_buckets), used)

    # Execute
    trained = train_pooled(theta, datasets, MODEL, config, seed=0, snapshots=[0, 10])

    # Assert: snapshots as asked, untouched rows bitwise θ's, the others trained.
    assert sorted(trained) == [0, 10, 30]
    for name in theta:
        np.testing.assert_array_equal(trained[0][name], theta[name])
    assert unused.size > 0
    for name in ITEM_TABLES:
        np.testing.assert_array_equal(trained[30][name][unused], theta[name][unused])
        assert not np.array_equal(trained[30][name][used], theta[name][used])
    assert not np.array_equal(
        trained[10]["target_items.weight"], trained[30]["target_items.weight"]
    )
