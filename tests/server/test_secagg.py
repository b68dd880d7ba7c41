"""SecAgg+ rounds give the plain path's θ within the quantisation error.

Both paths run the merchants' real ClientApp (``client.app.app``) on a grid that
delivers each message to it in this process, so Flower's SecAgg+ workflow and mod run
unchanged (key agreement, Shamir shares, masks, quantisation) without the simulation
engine's start-up cost.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any
from uuid import uuid4

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from client.app import app as client_app
from common.config import DefenceConfig, MetaConfig, from_run_config
from common.model import init_parameters
from server.secagg import QUANTISATION_RANGE, SecureReptile
from server.strategy import Reptile

NUM_MERCHANTS = 3
CLIP_NORM = 5.0
RUN_CONFIG: dict[str, Any] = {
    "embedding-dim": 8,
    "num-buckets": 64,
    "max-history": 10,
    "inner-steps": 3,
    "num-rounds": 2,
    "meta-lr": 1.0,
    "meta-lr-final": 1.0,
    "weighting": "uniform",
    "clip-norm": CLIP_NORM,
    "aggregation": "mean",
    "seed": 0,
}


@pytest.fixture(autouse=True)
def _server_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages take their run and node from the process identity, which Flower sets
    when it starts a ServerApp; here it is set by hand."""
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)


class LocalGrid(Grid):
    """A grid that hands each message to the ClientApp of its node, in process."""

    def __init__(self, run_config: dict[str, Any]) -> None:
        self.contexts = {
            node_id: Context(
                run_id=1,
                node_id=node_id,
                node_config={"partition-id": index, "num-partitions": NUM_MERCHANTS},
                state=RecordDict(),
                run_config=run_config,
            )
            for index, node_id in enumerate(range(101, 101 + NUM_MERCHANTS))
        }

    def set_run(self, run: Any) -> None:
        """Unused: there is one run."""

    @property
    def run(self) -> Any:
        """Unused: there is one run."""
        raise NotImplementedError

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        """Unused by the strategies."""
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        """The merchants' node ids."""
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Unused: send_and_receive delivers directly."""
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Unused: send_and_receive delivers directly."""
        raise NotImplementedError

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Each message through its node's ClientApp, in order.

        Each node gets its own copy, as over the network: the workflow sends one
        content object to every node, and the SecAgg+ mod edits what it receives.
        """
        replies = []
        for message in messages:
            delivered = copy.deepcopy(message)
            delivered.metadata.__dict__["_message_id"] = str(uuid4())
            node = delivered.metadata.dst_node_id
            replies.append(copy.deepcopy(client_app(delivered, self.contexts[node])))
        return replies


def _theta_record(theta: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(value) for name, value in theta.items()})


def test_a_secagg_round_gives_the_plain_theta_within_the_quantisation_error() -> None:
    # Prepare: the same θ, merchants and seeds for both paths.
    config = from_run_config(RUN_CONFIG)
    theta = init_parameters(config.model, config.seed)
    secure_config = DefenceConfig(
        clip_norm=CLIP_NORM, aggregation="mean", secure_aggregation=True
    )
    context = Context(
        1, 0, {}, RecordDict(), {**RUN_CONFIG, "secure-aggregation": True}
    )

    # Execute: one plain round, one SecAgg+ round.
    plain = Reptile(config.meta, seed=config.seed, defence=config.defence)
    grid = LocalGrid(RUN_CONFIG)
    messages = plain.configure_train(1, _theta_record(theta), ConfigRecord(), grid)
    plain_record, _ = plain.aggregate_train(1, grid.send_and_receive(messages))
    secure = SecureReptile(config.meta, secure_config, context, seed=config.seed)
    secure_record = secure.train_round(
        LocalGrid({**RUN_CONFIG, "secure-aggregation": True}),
        1,
        _theta_record(theta),
        ConfigRecord(),
    )

    # Assert: each merchant's value is rounded stochastically to one of 2²² levels
    # over [−C, C], so the mean of the deltas is off by less than one level, 2C/2²²,
    # and θ by meta_lr (= 1) times that.
    assert plain_record is not None and secure_record is not None
    level = 2 * CLIP_NORM / QUANTISATION_RANGE
    largest = 0.0
    for name in theta:
        plain_theta = plain_record[name].numpy()
        secure_theta = secure_record[name].numpy()
        assert not np.array_equal(plain_theta, theta[name])  # the round moved θ
        largest = max(largest, float(np.max(np.abs(plain_theta - secure_theta))))
    assert largest < level + 1e-6  # float32 rounding of θ itself
    assert secure.last_round is not None
    assert secure.last_round.count("replied") == NUM_MERCHANTS
    assert secure.last_round.weighted("loss_after") == pytest.approx(
        plain.last_round.weighted("loss_after") if plain.last_round else None
    )


def test_secure_path_refuses_to_run_without_the_option() -> None:
    # Prepare
    config = from_run_config(RUN_CONFIG)
    context = Context(1, 0, {}, RecordDict(), RUN_CONFIG)

    # Execute / Assert
    with pytest.raises(ValueError, match="secure-aggregation = true"):
        SecureReptile(MetaConfig(), config.defence, context)
