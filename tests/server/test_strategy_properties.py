"""Property: whatever merchants reply, the Reptile strategy goes on and θ stays finite.

Hypothesis generates whole rounds of replies: arrays of any name, shape and dtype, with
NaN, Inf and huge values; metrics missing, extra, negative, fractional or NaN; extra
records; error replies. Every round must aggregate without raising, and θ after it
must be finite and shaped as before, under each defence a run can be configured with.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from common.config import DefenceConfig, MetaConfig
from server.strategy import Reptile

SHAPES = {"w": (3,), "b": (2, 2)}
META = MetaConfig(num_rounds=4, meta_lr=1.0, meta_lr_final=0.5, min_train_merchants=1)
DEFENCES = {
    "mean, no bound": DefenceConfig(clip_norm=0.0, aggregation="mean"),
    "default": DefenceConfig(),
    "median": DefenceConfig(clip_norm=0.0, aggregation="median"),
    "dp": DefenceConfig(clip_norm=1.0, aggregation="mean", dp_noise_multiplier=1.0),
}

values = st.floats(allow_nan=True, allow_infinity=True, width=32) | st.sampled_from(
    [3e38, -3e38, 1e30, 0.0]
)
arrays = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64, np.float16, np.int32]),
    shape=st.sampled_from([(3,), (2, 2), (0,), (4, 1), ()]),
    elements=st.integers(-1000, 1000),
) | hnp.arrays(
    dtype=st.just(np.float32),
    shape=st.sampled_from(list(SHAPES.values())),
    elements=values,
)
deltas = st.dictionaries(st.sampled_from(["w", "b", "x", ""]), arrays, max_size=4)
numbers = st.integers(-5, 10**9) | st.floats(allow_nan=True, allow_infinity=True)
metrics = st.dictionaries(
    st.sampled_from(["num-examples", "loss-before", "loss-after", "delta-norm", "z"]),
    numbers,
    max_size=5,
)


@st.composite
def replies(draw: st.DrawFn) -> RecordDict | Error:
    """One merchant's reply: mostly well-formed records with bad values, some not."""
    if draw(st.integers(0, 9)) == 0:
        return Error(code=0, reason="the merchant raised")
    records: dict[str, Any] = {}
    if draw(st.integers(0, 9)) > 0:  # mostly a delta
        delta = draw(deltas)
        if draw(st.booleans()):  # a well-shaped delta, values anything
            delta = {
                name: draw(hnp.arrays(np.float32, shape, elements=values))
                for name, shape in SHAPES.items()
            }
        records["delta"] = ArrayRecord(
            {name: Array(np.ascontiguousarray(a)) for name, a in delta.items()}
        )
    if draw(st.integers(0, 4)) > 0:
        records["metrics"] = MetricRecord(
            {
                "num-examples": draw(st.integers(1, 10**6)),
                "loss-before": 1.0,
                "loss-after": 0.5,
                **draw(metrics),
            }
        )
    if draw(st.booleans()):
        records["merchant"] = ConfigRecord({"merchant-id": draw(st.text(max_size=5))})
    if draw(st.integers(0, 5)) == 0:
        records[draw(st.sampled_from(["extra", "delta2"]))] = draw(
            st.sampled_from([ArrayRecord(), MetricRecord({"a": 1.0})])
        )
    return RecordDict(records)


class FakeGrid:
    """The one Grid method configure_train uses."""

    def __init__(self, size: int) -> None:
        self.size = size

    def get_node_ids(self) -> list[int]:
        return list(range(100, 100 + self.size))


@contextmanager
def server_identity() -> Iterator[None]:
    """Messages take their run from the process identity Flower sets for a
    ServerApp; here it is set by hand, and restored."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = 1, 7, 0
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


@pytest.mark.parametrize("defence", DEFENCES.values(), ids=DEFENCES.keys())
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    rounds=st.lists(st.lists(replies(), min_size=1, max_size=5), min_size=1, max_size=3)
)
def test_any_replies_leave_theta_finite_and_the_run_going(
    defence: DefenceConfig, rounds: list[list[RecordDict | Error]]
) -> None:
    # Prepare
    strategy = Reptile(META, seed=0, defence=defence)
    theta = {name: np.ones(shape, np.float32) for name, shape in SHAPES.items()}

    with server_identity():
        for server_round, sent in enumerate(rounds, start=1):
            # Execute: configure a round on one node per reply, aggregate the replies.
            record = ArrayRecord({k: Array(v) for k, v in theta.items()})
            messages = list(
                strategy.configure_train(
                    server_round,
                    record,
                    ConfigRecord(),
                    cast(Grid, FakeGrid(len(sent))),
                )
            )
            answers = [
                Message(reply, reply_to=message)
                for message, reply in zip(messages, sent, strict=True)
            ]
            new_record, _ = strategy.aggregate_train(server_round, answers)

            # Assert: θ finite and shaped as before; every reply accounted for.
            if new_record is not None:
                theta = {name: new_record[name].numpy() for name in new_record}
            assert {k: v.shape for k, v in theta.items()} == SHAPES
            assert all(np.isfinite(v).all() for v in theta.values())
            assert strategy.last_round is not None
            assert len(strategy.last_round.outcomes) == len(sent)


def test_huge_finite_deltas_without_a_bound_leave_theta_unchanged() -> None:
    # Prepare: no clipping, two merchants sending 3e38 everywhere, meta_lr 1 then
    # 0.83: θ + 3e38 is finite after round 1, but 3e38 + 0.83·3e38 overflows float32.
    strategy = Reptile(META, seed=0, defence=DEFENCES["mean, no bound"])
    theta = {name: np.ones(shape, np.float32) for name, shape in SHAPES.items()}
    huge = {name: np.full(shape, 3e38, np.float32) for name, shape in SHAPES.items()}

    with server_identity():
        for server_round in (1, 2):
            # Execute
            record = ArrayRecord({k: Array(v) for k, v in theta.items()})
            messages = list(
                strategy.configure_train(
                    server_round, record, ConfigRecord(), cast(Grid, FakeGrid(2))
                )
            )
            answers = [
                Message(
                    RecordDict(
                        {
                            "delta": ArrayRecord(
                                {k: Array(v) for k, v in huge.items()}
                            ),
                            "metrics": MetricRecord(
                                {
                                    "num-examples": 5,
                                    "loss-before": 1.0,
                                    "loss-after": 0.5,
                                }
                            ),
                        }
                    ),
                    reply_to=message,
                )
                for message in messages
            ]
            new_record, _ = strategy.aggregate_train(server_round, answers)
            if new_record is not None:
                theta = {name: new_record[name].numpy() for name in new_record}

    # Assert: round 1 applied (θ = 1 + 3e38), round 2 refused; θ finite throughout.
    assert all(np.isfinite(v).all() for v in theta.values())
    np.testing.assert_allclose(theta["w"], np.full(3, 3e38, np.float32), rtol=1e-6)
