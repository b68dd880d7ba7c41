"""The merchant's train reply: the delta and a few scalars, nothing about customers."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    RecordDict,
)
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.task_identity import TaskIdentity

from client.app import train
from client.data import load_merchant
from common import synthetic
from common.adapt import adapt, round_seed
from common.config import from_run_config
from common.model import init_parameters
from common.reptile import compute_delta

REPO = Path(__file__).resolve().parents[2]
NODE_ID = 42
SERVER_ROUND = 3


@pytest.fixture
def context() -> Context:
    """Node 0 of a simulated federation of 4, with the app's own run config."""
    with (REPO / "pyproject.toml").open("rb") as file:
        run_config = tomllib.load(file)["tool"]["flwr"]["app"]["config"]
    return Context(
        run_id=1,
        node_id=NODE_ID,
        node_config={"partition-id": 0, "num-partitions": 4},
        state=RecordDict(),
        run_config=run_config,
    )


@pytest.fixture
def theta(context: Context) -> dict[str, np.ndarray]:
    return init_parameters(from_run_config(context.run_config).model, seed=0)


@pytest.fixture
def reply(
    context: Context, theta: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> Message:
    """The ClientApp's reply to a train message built here as the server would."""
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    message = Message(
        RecordDict(
            {
                "theta": ArrayRecord(
                    array_dict={k: Array(v) for k, v in theta.items()}
                ),
                "config": ConfigRecord(
                    {"server-round": SERVER_ROUND, "codec": "float32", "seed": 0}
                ),
            }
        ),
        dst_node_id=NODE_ID,
        message_type=MessageType.TRAIN,
    )
    return train(message, context)


def _wire_bytes(message: Message) -> bytes:
    """Every object of the message as Flower serialises it to send it."""
    objects = get_all_nested_objects(message).values()
    return b"".join(obj.deflate() for obj in objects)


def test_the_reply_holds_one_delta_one_metric_record_and_the_merchant_id(
    reply: Message,
) -> None:
    # Assert
    assert not reply.has_error()
    assert reply.metadata.src_node_id == NODE_ID
    content = reply.content
    assert set(content) == {"delta", "metrics", "merchant"}
    assert list(content.array_records) == ["delta"]
    assert list(content.metric_records) == ["metrics"]
    assert {k: dict(v) for k, v in content.config_records.items()} == {
        "merchant": {"merchant-id": "merchant-000"}
    }


def test_the_delta_arrays_are_named_shaped_and_typed_like_theta(
    reply: Message, theta: dict[str, np.ndarray]
) -> None:
    # Execute
    delta = {k: v.numpy() for k, v in reply.content.array_records["delta"].items()}

    # Assert
    assert list(delta) == list(theta)
    for name, array in theta.items():
        assert delta[name].shape == array.shape, name
        assert delta[name].dtype == array.dtype == np.float32, name


def test_the_reply_carries_the_delta_of_the_inner_loop_not_the_weights(
    reply: Message, context: Context, theta: dict[str, np.ndarray]
) -> None:
    # Prepare: the same inner loop, run here with the merchant's round seed.
    config = from_run_config(context.run_config)
    merchant = load_merchant(context, config)
    seed = round_seed(config.seed, SERVER_ROUND, "merchant-000")
    adapted = adapt(theta, merchant.data, config.model, config.adapt, seed).parameters

    # Execute
    delta = {k: v.numpy() for k, v in reply.content.array_records["delta"].items()}

    # Assert: Δ = θ_adapted − θ, and zero on every row no item of the merchant uses.
    expected = compute_delta(theta, adapted)
    for name in theta:
        np.testing.assert_array_equal(delta[name], expected[name])
    rows = np.ones(config.model.num_buckets, bool)
    rows[merchant.data.catalogue.ravel()] = False
    assert rows.sum() > 0
    assert np.all(delta["target_items.weight"][rows] == 0.0)
    assert np.abs(delta["target_items.weight"]).max() > 0


def test_the_metrics_are_scalar_numbers_only(reply: Message, context: Context) -> None:
    # Prepare
    merchant = load_merchant(context, from_run_config(context.run_config))

    # Execute
    metrics: dict[str, Any] = dict(reply.content.metric_records["metrics"])

    # Assert
    assert set(metrics) == {"num-examples", "loss-before", "loss-after", "delta-norm"}
    for key, value in metrics.items():
        assert isinstance(value, int | float) and not isinstance(value, bool), key
        assert math.isfinite(value), key
    assert metrics["num-examples"] == merchant.data.num_examples > 0
    assert metrics["loss-after"] < metrics["loss-before"]


def test_no_customer_or_product_of_the_merchant_is_in_the_serialised_reply(
    reply: Message,
) -> None:
    # Prepare: the merchant's own log, straight from the synthetic world.
    log = synthetic.source_merchants(seed=0, num_merchants=4)[0].interactions
    users = sorted(set(log["user"]))
    products = sorted(set(log["item"]))
    arrays = reply.content.array_records["delta"]

    # Execute
    wire = _wire_bytes(reply)

    # Assert: the bytes hold the whole reply (arrays and strings are searchable)...
    assert len(wire) >= sum(array.numpy().nbytes for array in arrays.values())
    assert b"merchant-000" in wire and b"loss-before" in wire
    # ...and not one of the merchant's customer ids or product ids.
    assert len(users) == 60 and len(products) > 100
    leaked = [
        identifier
        for identifier in [*users, *products]
        if identifier.encode("utf-8") in wire
    ]
    assert leaked == []
