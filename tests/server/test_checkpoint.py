"""The server's checkpoint: round trip, resume, crash safety, clear errors."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import time
import tomllib
import zipfile
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from common.config import ModelConfig
from common.model import init_parameters
from server import app as server_app
from server.checkpoint import (
    CHECKPOINT_NAME,
    Checkpoint,
    load_checkpoint,
    save_checkpoint,
)

REPO = Path(__file__).resolve().parents[2]
KILLS = 30


def _checkpoint(server_round: int, size: int = 8) -> Checkpoint:
    """A checkpoint whose every value is its round, so a mix of two shows."""
    return Checkpoint(
        server_round,
        {
            "a": np.full((size, 1024), server_round, np.float32),
            "b": np.full((3,), server_round, np.float32),
        },
        {"codec": "float32", "note": f"round {server_round}"},
    )


def _round_of(checkpoint: Checkpoint) -> int:
    """The round a loaded checkpoint holds, after checking it is not a mix."""
    server_round = checkpoint.server_round
    assert checkpoint.meta == {"codec": "float32", "note": f"round {server_round}"}
    assert set(checkpoint.parameters) == {"a", "b"}
    for array in checkpoint.parameters.values():
        assert array.dtype == np.float32
        assert np.all(array == server_round)
    return server_round


# ---------------------------------------------------------------------------
# Round trip
# ---------------------------------------------------------------------------


def test_a_saved_checkpoint_loads_back_unchanged(tmp_path: Path) -> None:
    # Prepare: arrays of several shapes and dtypes, and free-form facts.
    parameters: dict[str, np.ndarray] = {
        "history_items.weight": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
        "user_transform.bias": np.array([-1.5, 2.25], np.float32),
        "scalar": np.array(3.0, np.float64),
    }
    meta: dict[str, object] = {
        "codec": "float32",
        "sampled": [1, 2, 3],
        "note": "ünïcode",
    }

    # Execute
    path = save_checkpoint(tmp_path, Checkpoint(7, parameters, meta))
    loaded = load_checkpoint(tmp_path)

    # Assert
    assert path == tmp_path / CHECKPOINT_NAME
    assert loaded is not None
    assert loaded.server_round == 7
    assert loaded.meta == meta
    assert set(loaded.parameters) == set(parameters)
    for name, array in parameters.items():
        np.testing.assert_array_equal(loaded.parameters[name], array)
        assert loaded.parameters[name].dtype == array.dtype
        assert loaded.parameters[name].shape == array.shape


def test_a_new_checkpoint_replaces_the_old_and_leaves_no_temporary_file(
    tmp_path: Path,
) -> None:
    # Execute
    save_checkpoint(tmp_path, _checkpoint(1))
    save_checkpoint(tmp_path, _checkpoint(2))

    # Assert
    loaded = load_checkpoint(tmp_path)
    assert loaded is not None and _round_of(loaded) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]


def test_a_run_directory_without_checkpoint_loads_none(tmp_path: Path) -> None:
    assert load_checkpoint(tmp_path / "new-run") is None


# ---------------------------------------------------------------------------
# Resume: the ServerApp's round loop on a fake Grid
# ---------------------------------------------------------------------------

MODEL = ModelConfig(embedding_dim=2, num_buckets=4, max_history=5)
DELTA = 0.25  # every merchant's delta, in every array


class ReplyingGrid:
    """A Grid whose merchants answer every train message with the same delta."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids
        self.rounds: list[int] = []
        self.theta_sent: list[dict[str, np.ndarray]] = []

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)

    def send_and_receive(
        self, messages: Any, *, timeout: float | None = None
    ) -> list[Message]:
        replies = []
        for message in messages:
            content = message.content
            self.rounds.append(int(content.config_records["config"]["server-round"]))
            theta = {k: v.numpy() for k, v in content.array_records["theta"].items()}
            self.theta_sent.append(theta)
            delta = {k: Array(np.full_like(v, DELTA)) for k, v in theta.items()}
            reply = RecordDict(
                {
                    "delta": ArrayRecord(array_dict=delta),
                    "metrics": MetricRecord(
                        {"num-examples": 10, "loss-before": 2.0, "loss-after": 1.0}
                    ),
                    "merchant": ConfigRecord(
                        {"merchant-id": f"merchant-{message.metadata.dst_node_id}"}
                    ),
                }
            )
            replies.append(Message(reply, reply_to=message))
        return replies


@pytest.fixture
def run_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The app's run config with a tiny model, meta_lr 1, no server-side scoring."""
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_run_id", 5)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    with (REPO / "pyproject.toml").open("rb") as file:
        config = tomllib.load(file)["tool"]["flwr"]["app"]["config"]
    return {
        **config,
        "num-rounds": 3,
        "run-dir": str(tmp_path / "run"),
        "server-eval": False,
        "meta-lr": 1.0,
        "meta-lr-final": 1.0,
        "embedding-dim": MODEL.embedding_dim,
        "num-buckets": MODEL.num_buckets,
        "max-history": MODEL.max_history,
        "min-train-merchants": 2,
        "fraction-train": 1.0,
        "seed": 0,
    }


def _run_server(run_config: dict[str, Any]) -> ReplyingGrid:
    grid = ReplyingGrid([1, 2])
    context = Context(
        run_id=5, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )
    server_app.main(cast(Grid, grid), context)
    return grid


def test_a_run_resumes_at_the_round_after_its_checkpoint(
    run_config: dict[str, Any],
) -> None:
    # Prepare: round 2 of 3 completed, with a θ no fresh start would draw.
    theta_2 = init_parameters(MODEL, seed=99)
    save_checkpoint(run_config["run-dir"], Checkpoint(2, theta_2, {}))

    # Execute
    grid = _run_server(run_config)

    # Assert: only round 3 is run, from the checkpoint's θ, and saved as round 3:
    #   θ_3 = θ_2 + 1.0 · mean(0.25, 0.25) = θ_2 + 0.25
    assert grid.rounds == [3, 3]
    for sent in grid.theta_sent:
        for name, array in theta_2.items():
            np.testing.assert_array_equal(sent[name], array)
    final = load_checkpoint(run_config["run-dir"])
    assert final is not None and final.server_round == 3
    for name, array in theta_2.items():
        np.testing.assert_allclose(
            final.parameters[name], array + DELTA, rtol=0, atol=1e-6
        )


def test_a_run_without_checkpoint_starts_at_round_one_from_the_seeded_theta(
    run_config: dict[str, Any],
) -> None:
    # Prepare: θ_0 = the seeded initialisation; three rounds of +0.25 each.
    theta_0 = init_parameters(MODEL, seed=0)

    # Execute
    grid = _run_server(run_config)

    # Assert
    assert grid.rounds == [1, 1, 2, 2, 3, 3]
    for name, array in theta_0.items():
        np.testing.assert_array_equal(grid.theta_sent[0][name], array)
    final = load_checkpoint(run_config["run-dir"])
    assert final is not None and final.server_round == 3
    for name, array in theta_0.items():
        np.testing.assert_allclose(
            final.parameters[name], array + 3 * DELTA, rtol=0, atol=1e-6
        )


def test_a_finished_run_restarted_runs_no_round(run_config: dict[str, Any]) -> None:
    # Prepare
    theta_3 = init_parameters(MODEL, seed=99)
    save_checkpoint(run_config["run-dir"], Checkpoint(3, theta_3, {}))

    # Execute
    grid = _run_server(run_config)

    # Assert
    assert grid.rounds == []
    final = load_checkpoint(run_config["run-dir"])
    assert final is not None and final.server_round == 3


# ---------------------------------------------------------------------------
# Crash safety: SIGKILL in the middle of saving
# ---------------------------------------------------------------------------


def _save_until_killed(run_dir: str, started: Any) -> None:
    """Child process: save rounds 1 and 2 in turn until killed."""
    first, second = _checkpoint(1, size=256), _checkpoint(2, size=256)
    started.set()
    while True:
        save_checkpoint(run_dir, first)
        save_checkpoint(run_dir, second)


def test_a_save_killed_at_any_moment_leaves_no_unloadable_checkpoint(
    tmp_path: Path,
) -> None:
    # Prepare: every second trial starts with a checkpoint already on disk; the
    # child then keeps writing the rounds 1 and 2 (1 MB each) over it.
    context = multiprocessing.get_context("fork")
    moments = random.Random(0)
    seen: list[str] = []

    for trial in range(KILLS):
        run_dir = tmp_path / f"trial-{trial}"
        had_checkpoint = trial % 2 == 1
        if had_checkpoint:
            save_checkpoint(run_dir, _checkpoint(1, size=256))
        run_dir.mkdir(exist_ok=True)
        started = context.Event()
        child = context.Process(target=_save_until_killed, args=(str(run_dir), started))

        # Execute: kill the child at a random moment of its saving.
        child.start()
        assert started.wait(timeout=60), "the saving process did not start"
        started.clear()
        time.sleep(moments.uniform(0.0, 0.06))
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join()

        # Assert: absent (only if there was none before), or a whole checkpoint.
        assert child.exitcode == -signal.SIGKILL
        loaded = load_checkpoint(run_dir)
        if loaded is None:
            assert not had_checkpoint, f"trial {trial}: the old checkpoint vanished"
            seen.append("absent")
        else:
            seen.append(f"round {_round_of(loaded)}")
    assert set(seen) <= {"absent", "round 1", "round 2"}


# ---------------------------------------------------------------------------
# Unreadable checkpoints
# ---------------------------------------------------------------------------


def _npz_bytes(tmp_path: Path, arrays: dict[str, np.ndarray]) -> bytes:
    path = tmp_path / "made.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path.read_bytes()


def _corrupt(kind: str, good: bytes, tmp_path: Path) -> bytes:
    if kind == "garbage":
        return b"this is not a checkpoint\n" * 10
    if kind == "empty":
        return b""
    if kind == "truncated":
        return good[: len(good) // 2]
    if kind == "flipped-byte":  # inside the first array's data: a CRC mismatch
        middle = 400
        return good[:middle] + bytes([good[middle] ^ 0xFF]) + good[middle + 1 :]
    if kind == "npy-not-npz":
        path = tmp_path / "made.npy"
        np.save(path, np.zeros(3, np.float32))
        return path.read_bytes()
    if kind == "no-meta":
        return _npz_bytes(tmp_path, {"w": np.zeros(3, np.float32)})
    if kind == "meta-not-json":
        return _npz_bytes(tmp_path, {"__meta__": np.frombuffer(b"{round", np.uint8)})
    if kind == "meta-without-round":
        meta = json.dumps({"codec": "float32"}).encode()
        return _npz_bytes(tmp_path, {"__meta__": np.frombuffer(meta, np.uint8)})
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "garbage",
        "empty",
        "truncated",
        "flipped-byte",
        "npy-not-npz",
        "no-meta",
        "meta-not-json",
        "meta-without-round",
    ],
)
def test_a_corrupt_checkpoint_gives_a_clear_value_error(
    kind: str, tmp_path: Path
) -> None:
    # Prepare
    run_dir = tmp_path / "run"
    path = save_checkpoint(run_dir, _checkpoint(4))
    good = path.read_bytes()
    assert zipfile.is_zipfile(path)
    path.write_bytes(_corrupt(kind, good, tmp_path))

    # Execute / Assert: a ValueError that names the file.
    with pytest.raises(ValueError, match="checkpoint") as error:
        load_checkpoint(run_dir)
    assert str(path) in str(error.value)
