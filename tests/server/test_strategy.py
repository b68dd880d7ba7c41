"""The Reptile strategy: merchants sampled, malformed replies left out, θ by hand."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any, cast

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from common.config import DefenceConfig, MetaConfig
from server.strategy import Reptile

# Round 2 of 3 with meta_lr annealed from 1.0 to 0.0: meta_lr = 0.5.
META = MetaConfig(
    num_rounds=3,
    meta_lr=1.0,
    meta_lr_final=0.0,
    weighting="examples",
    min_train_merchants=2,
)
ROUND = 2
TOLERANCE = 1e-6
# The textbook Reptile step: a weighted mean of the deltas, no clipping.
PLAIN = DefenceConfig(clip_norm=0.0, aggregation="mean")

# Two valid merchants, 1 and 3 support interactions:
#   w: (1·[0.5, -1] + 3·[1.5, 3]) / 4 = [1.25, 2];  θ' = [1, 2] + 0.5·[1.25, 2]
#      = [1.625, 3]
#   b: (1·2 + 3·(-2)) / 4 = -1;                      θ' = 0 + 0.5·(-1) = -0.5
VALID: dict[str, tuple[dict[str, Any], int]] = {
    "m-valid-a": ({"w": [0.5, -1.0], "b": [[2.0]]}, 1),
    "m-valid-b": ({"w": [1.5, 3.0], "b": [[-2.0]]}, 3),
}
EXPECTED: dict[str, Any] = {"w": [1.625, 3.0], "b": [[-0.5]]}


class FakeGrid:
    """The one Grid method configure_train uses."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)


@pytest.fixture(autouse=True)
def _server_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages take their run and node from the process identity, which Flower sets
    when it starts a ServerApp; here it is set by hand."""
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_run_id", 7)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)


def _reptile(meta: MetaConfig) -> Reptile:
    return Reptile(meta, seed=0, defence=PLAIN)


def _theta() -> ArrayRecord:
    return ArrayRecord(
        array_dict={
            "w": Array(np.array([1.0, 2.0], np.float32)),
            "b": Array(np.zeros((1, 1), np.float32)),
        }
    )


def _arrays(values: dict[str, object], dtype: type = np.float32) -> ArrayRecord:
    return ArrayRecord(
        array_dict={name: Array(np.array(v, dtype)) for name, v in values.items()}
    )


def _metrics(num_examples: float = 1000, **changes: float) -> MetricRecord:
    values: dict[str, float] = {
        "num-examples": num_examples,
        "loss-before": 2.0,
        "loss-after": 1.5,
        **changes,
    }
    return MetricRecord(values)  # type: ignore[arg-type]


def _content(
    merchant_id: str,
    delta: ArrayRecord | None = None,
    metrics: MetricRecord | None = None,
    **extra: ArrayRecord | MetricRecord,
) -> RecordDict:
    """A reply's records; the default delta is large so that a malformed reply that
    slipped into the mean would move θ far from the hand-computed value."""
    records: dict[str, ArrayRecord | MetricRecord | ConfigRecord] = {
        "delta": delta
        if delta is not None
        else _arrays({"w": [100, 100], "b": [[100]]}),
        "metrics": metrics if metrics is not None else _metrics(),
        "merchant": ConfigRecord({"merchant-id": merchant_id}),
        **extra,
    }
    return RecordDict({k: v for k, v in records.items() if v is not None})


def _without(content: RecordDict, key: str) -> RecordDict:
    return RecordDict({k: v for k, v in content.items() if k != key})


def _valid(merchant_id: str) -> RecordDict:
    delta, num_examples = VALID[merchant_id]
    return _content(merchant_id, _arrays(delta), _metrics(num_examples))


# A malformed reply: what the merchant sends (records, or an Error), the status it
# must end with, and words its reason must hold.
Case = tuple[Callable[[str], RecordDict | Error], str, tuple[str, ...]]
MALFORMED: dict[str, Case] = {
    "missing-array": (
        lambda m: _content(m, _arrays({"w": [1, 1]})),
        "rejected",
        ("missing ['b']",),
    ),
    "extra-array": (
        lambda m: _content(m, _arrays({"w": [1, 1], "b": [[1]], "extra": [1]})),
        "rejected",
        ("extra ['extra']",),
    ),
    "wrong-shape": (
        lambda m: _content(m, _arrays({"w": [1, 1, 1], "b": [[1]]})),
        "rejected",
        ("'w'", "shape (3,)", "expected (2,)"),
    ),
    "float64": (
        lambda m: _content(m, _arrays({"w": [1, 1], "b": [[1]]}, np.float64)),
        "rejected",
        ("float64", "expected float32"),
    ),
    "int": (
        lambda m: _content(m, _arrays({"w": [1, 1], "b": [[1]]}, np.int64)),
        "rejected",
        ("int64", "expected float32"),
    ),
    "nan": (
        lambda m: _content(m, _arrays({"w": [float("nan"), 1], "b": [[1]]})),
        "rejected",
        ("'w'", "NaN or Inf"),
    ),
    "inf": (
        lambda m: _content(m, _arrays({"w": [1, 1], "b": [[float("-inf")]]})),
        "rejected",
        ("'b'", "NaN or Inf"),
    ),
    "missing-metric": (
        lambda m: _content(m, metrics=MetricRecord({"num-examples": 5})),
        "rejected",
        ("missing", "'loss-before'", "'loss-after'"),
    ),
    "no-metric-record": (
        lambda m: _without(_content(m), "metrics"),
        "rejected",
        ("MetricRecord", "'metrics'"),
    ),
    "non-finite-metric": (
        lambda m: _content(m, metrics=_metrics(**{"loss-before": float("inf")})),
        "rejected",
        ("'loss-before'", "not a finite number"),
    ),
    "nan-metric": (
        lambda m: _content(m, metrics=_metrics(**{"loss-after": float("nan")})),
        "rejected",
        ("'loss-after'", "not a finite number"),
    ),
    "list-metric": (
        # A list where a number belongs: deliberately outside the declared type.
        lambda m: _content(
            m,
            metrics=_metrics(**{"loss-after": [1.0, 2.0]}),  # type: ignore[arg-type]
        ),
        "rejected",
        ("'loss-after'", "not a finite number"),
    ),
    "zero-examples": (
        lambda m: _content(m, metrics=_metrics(0)),
        "rejected",
        ("num-examples", "> 0", "got 0"),
    ),
    "fractional-examples": (
        lambda m: _content(m, metrics=_metrics(0.5)),
        "rejected",
        ("num-examples", "whole number", "0.5"),
    ),
    "two-array-records": (
        lambda m: _content(m, theta=_arrays({"w": [1, 1], "b": [[1]]})),
        "rejected",
        ("one ArrayRecord", "'delta'", "'theta'"),
    ),
    "error-reply": (
        lambda m: Error(code=3, reason=f"{m}: ClientApp raised MemoryError"),
        "failed",
        ("MemoryError",),
    ),
}


def _round(
    strategy: Reptile, senders: list[Callable[[], RecordDict | Error]]
) -> tuple[list[Message], list[Message]]:
    """Configure a round on one node per sender and build each node's reply."""
    grid = FakeGrid([100 + index for index in range(len(senders))])
    messages = list(
        strategy.configure_train(ROUND, _theta(), ConfigRecord(), cast(Grid, grid))
    )
    replies = []
    for message, send in zip(messages, senders, strict=True):
        sent = send()
        if isinstance(sent, Error):
            replies.append(Message(sent, reply_to=message))
        else:
            replies.append(Message(sent, reply_to=message))
    return messages, replies


def _numpy(record: ArrayRecord | None) -> dict[str, np.ndarray]:
    assert record is not None
    return {name: array.numpy() for name, array in record.items()}


def _assert_theta_is_the_valid_merchants_update(record: ArrayRecord | None) -> None:
    theta = _numpy(record)
    assert set(theta) == {"w", "b"}
    for name, expected in EXPECTED.items():
        np.testing.assert_allclose(theta[name], expected, rtol=0, atol=TOLERANCE)
        assert theta[name].dtype == np.float32


def _valid_senders() -> list[Callable[[], RecordDict | Error]]:
    return [functools.partial(_valid, merchant_id) for merchant_id in VALID]


# ---------------------------------------------------------------------------
# configure_train
# ---------------------------------------------------------------------------


def test_configure_train_sends_theta_and_the_round_to_every_merchant() -> None:
    # Prepare
    strategy = _reptile(META)

    # Execute
    messages = list(
        strategy.configure_train(
            ROUND, _theta(), ConfigRecord({"seed": 3}), cast(Grid, FakeGrid([5, 6, 7]))
        )
    )

    # Assert
    assert sorted(m.metadata.dst_node_id for m in messages) == [5, 6, 7]
    for message in messages:
        assert message.metadata.message_type == MessageType.TRAIN
        content = message.content
        assert dict(content.config_records["config"]) == {
            "seed": 3,
            "server-round": ROUND,
            "codec": "float32",
        }
        sent = _numpy(content.array_records["theta"])
        np.testing.assert_array_equal(sent["w"], [1.0, 2.0])
    assert strategy.last_round is not None
    assert strategy.last_round.sampled == 3


def test_configure_train_samples_a_seeded_fraction_of_at_least_the_minimum() -> None:
    # Prepare: 10 merchants, fraction 0.3 -> 3; 4 merchants, fraction 0.3 -> 1,
    # raised to the minimum of 2.
    meta = MetaConfig(fraction_train=0.3, min_train_merchants=2)

    def sample(seed: int, server_round: int, nodes: int) -> list[int]:
        messages = Reptile(meta, seed=seed).configure_train(
            server_round,
            _theta(),
            ConfigRecord(),
            cast(Grid, FakeGrid(list(range(nodes)))),
        )
        return sorted(m.metadata.dst_node_id for m in messages)

    # Execute
    first, again = sample(0, 1, 10), sample(0, 1, 10)
    rounds = [sample(0, server_round, 10) for server_round in range(1, 9)]

    # Assert
    assert len(first) == 3 and len(set(first)) == 3
    assert first == again
    assert len({tuple(r) for r in rounds}) > 1  # merchants change between rounds
    assert len(sample(0, 1, 4)) == 2


# ---------------------------------------------------------------------------
# aggregate_train
# ---------------------------------------------------------------------------


def test_valid_replies_give_the_hand_computed_reptile_step() -> None:
    # Prepare
    strategy = _reptile(META)
    _, replies = _round(strategy, _valid_senders())

    # Execute
    theta, metrics = strategy.aggregate_train(ROUND, replies)

    # Assert
    _assert_theta_is_the_valid_merchants_update(theta)
    assert metrics is not None and metrics["num-merchants"] == 2
    assert strategy.last_round is not None
    assert strategy.last_round.meta_lr == pytest.approx(0.5, abs=1e-12)
    assert [o.status for o in strategy.last_round.outcomes] == ["replied"] * 2


def test_uniform_weighting_weighs_every_merchant_alike() -> None:
    # Prepare: w: ([0.5, -1] + [1.5, 3]) / 2 = [1, 1] -> [1, 2] + 0.5·[1, 1]
    #          b: (2 - 2) / 2 = 0 -> 0
    meta = MetaConfig(num_rounds=3, meta_lr=1.0, meta_lr_final=0.0, weighting="uniform")
    strategy = _reptile(meta)
    _, replies = _round(strategy, _valid_senders())

    # Execute
    theta = _numpy(strategy.aggregate_train(ROUND, replies)[0])

    # Assert
    np.testing.assert_allclose(theta["w"], [1.5, 2.5], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(theta["b"], [[0.0]], rtol=0, atol=TOLERANCE)


def test_the_order_replies_arrive_in_does_not_change_theta() -> None:
    # Prepare
    strategy = _reptile(META)
    _, replies = _round(strategy, _valid_senders())

    # Execute
    forward = _numpy(strategy.aggregate_train(ROUND, replies)[0])
    backward = _numpy(strategy.aggregate_train(ROUND, replies[::-1])[0])

    # Assert: bit for bit.
    for name in forward:
        np.testing.assert_array_equal(forward[name], backward[name])


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_reply_is_left_out_and_the_round_completes(
    case: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: two valid merchants and one malformed reply.
    make, status, words = MALFORMED[case]
    merchant_id = f"m-bad-{case}"
    strategy = _reptile(META)
    messages, replies = _round(strategy, [*_valid_senders(), lambda: make(merchant_id)])
    bad_node = replies[-1].metadata.src_node_id
    caplog.set_level(logging.WARNING, logger="server.strategy")

    # Execute
    theta, _ = strategy.aggregate_train(ROUND, replies)

    # Assert: θ is the update of the two valid merchants alone.
    _assert_theta_is_the_valid_merchants_update(theta)
    assert strategy.last_round is not None
    outcomes = strategy.last_round.outcomes
    assert sorted(o.status for o in outcomes) == sorted(["replied"] * 2 + [status])
    (bad,) = [o for o in outcomes if o.status != "replied"]
    assert bad.node_id == bad_node == messages[-1].metadata.dst_node_id
    for word in words:
        assert word in bad.reason, (word, bad.reason)

    # Assert: a WARNING names the merchant (by node when the reply is an error).
    named = merchant_id if status == "rejected" else f"node-{bad_node}"
    assert bad.merchant_id == named
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(named in w and words[0] in w for w in warnings), warnings


def test_every_kind_of_malformed_reply_at_once_leaves_only_the_valid_ones() -> None:
    # Prepare: all malformed replies in one round, the valid ones among them.
    strategy = _reptile(META)
    senders: list[Callable[[], RecordDict | Error]] = [
        functools.partial(MALFORMED[case][0], f"m-bad-{case}") for case in MALFORMED
    ]
    senders[3:3] = _valid_senders()

    # Execute
    _, replies = _round(strategy, senders)
    theta, _ = strategy.aggregate_train(ROUND, replies)

    # Assert
    _assert_theta_is_the_valid_merchants_update(theta)
    assert strategy.last_round is not None
    summary = strategy.last_round
    assert summary.count("replied") == 2
    assert summary.count("rejected") == len(MALFORMED) - 1
    assert summary.count("failed") == 1
    assert {o.merchant_id for o in summary.outcomes if o.status == "replied"} == set(
        VALID
    )


def test_fewer_valid_replies_than_the_minimum_leave_theta_unchanged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Prepare: the minimum is 2; one valid reply and one with a NaN delta.
    strategy = _reptile(META)
    make_nan = MALFORMED["nan"][0]
    _, replies = _round(
        strategy, [lambda: _valid("m-valid-a"), lambda: make_nan("m-bad-nan")]
    )
    caplog.set_level(logging.WARNING, logger="server.strategy")

    # Execute
    theta, metrics = strategy.aggregate_train(ROUND, replies)

    # Assert: no new θ, so the server keeps the θ it has.
    assert theta is None and metrics is None
    assert strategy.last_round is not None
    assert strategy.last_round.count("replied") == 1
    assert strategy.last_round.count("rejected") == 1
    assert any("fewer than the minimum 2" in r.getMessage() for r in caplog.records)


def test_a_sampled_merchant_that_never_replied_counts_as_failed() -> None:
    # Prepare: three merchants sampled, two replies before the timeout.
    strategy = _reptile(META)
    _, replies = _round(strategy, [*_valid_senders(), lambda: _valid("m-valid-a")])

    # Execute
    theta, _ = strategy.aggregate_train(ROUND, replies[:2])

    # Assert
    _assert_theta_is_the_valid_merchants_update(theta)
    assert strategy.last_round is not None
    (missing,) = [o for o in strategy.last_round.outcomes if o.status == "failed"]
    assert "no reply" in missing.reason


@pytest.mark.parametrize(("meta_lr", "noise", "warned"), [(3.0, 1.0, True),
                         (1.0, 1.0, False), (3.0, 0.0, False)])  # fmt: skip
def test_the_summary_warns_when_the_outer_step_amplifies_dp_noise(
    meta_lr: float, noise: float, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare
    caplog.set_level(logging.WARNING, logger="server.strategy")
    defence = DefenceConfig(
        clip_norm=1.0, aggregation="mean", dp_noise_multiplier=noise, dp_delta=1e-5
    )
    strategy = Reptile(replace(META, meta_lr=meta_lr), defence=defence)

    # Execute
    strategy.summary()

    # Assert
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("multiplies the DP noise" in w for w in warnings) == warned
