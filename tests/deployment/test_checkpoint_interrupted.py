"""A checkpoint write cut short at any step leaves the previous checkpoint loadable.

The server's process can die, or its disk fill up, while it writes ``checkpoint.npz``.
Every step of the write is interrupted in turn here: after each of many byte counts
of the data, at the flush to disk, at the rename and at the directory sync. Each time
the file a restarted server would read is the previous, whole checkpoint (the random
SIGKILL of a writing process is covered in ``tests/server/test_checkpoint.py``).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from server import checkpoint as checkpoints


class InjectedError(OSError):
    """The injected failure."""


def _checkpoint(server_round: int) -> checkpoints.Checkpoint:
    """Arrays filled with the round number, so a mixed file would show."""
    arrays = {
        "history_items.weight": np.full((256, 16), server_round, np.float32),
        "target_items.weight": np.full((256, 16), server_round, np.float32),
    }
    return checkpoints.Checkpoint(server_round, arrays, {"codec": "float32"})


def _size_of_one_write(tmp_path: Path) -> int:
    path = checkpoints.save_checkpoint(tmp_path / "probe", _checkpoint(1))
    return path.stat().st_size


class _FailingFile(io.BufferedWriter):
    """A file that accepts ``budget`` bytes, then fails like a full disk."""

    def __init__(self, raw: io.FileIO, budget: int) -> None:
        super().__init__(raw)
        self.budget = budget

    def write(self, data: Any) -> int:
        size = len(memoryview(data).cast("B"))
        if size > self.budget:
            super().write(memoryview(data).cast("B")[: self.budget])
            self.budget = 0
            raise InjectedError(28, "No space left on device")
        self.budget -= size
        return super().write(data)


def _assert_previous_checkpoint_intact(run_dir: Path) -> None:
    loaded = checkpoints.load_checkpoint(run_dir)
    assert loaded is not None
    assert loaded.server_round == 1
    for array in loaded.parameters.values():
        assert np.all(array == 1.0)
    leftovers = [p.name for p in run_dir.iterdir() if p.name != "checkpoint.npz"]
    assert leftovers == []


def test_a_write_cut_after_any_byte_count_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: 24 cut points spread over the whole write, first and last byte too.
    size = _size_of_one_write(tmp_path)
    cuts = sorted({0, 1, size - 1, *np.linspace(0, size - 1, 21).astype(int)})
    real_fdopen = os.fdopen

    for cut in cuts:
        run_dir = tmp_path / f"cut-{cut}"
        checkpoints.save_checkpoint(run_dir, _checkpoint(1))

        def failing_fdopen(handle: int, mode: str = "r", *args: Any, **kw: Any) -> Any:
            if "w" not in mode:
                return real_fdopen(handle, mode, *args, **kw)
            return _FailingFile(io.FileIO(handle, "w"), budget=cut)  # noqa: B023

        # Execute: round 2's write fails after `cut` bytes.
        with monkeypatch.context() as patch:
            patch.setattr(checkpoints.os, "fdopen", failing_fdopen)
            with pytest.raises(InjectedError):
                checkpoints.save_checkpoint(run_dir, _checkpoint(2))

        # Assert
        _assert_previous_checkpoint_intact(run_dir)


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_a_failure_at_the_flush_or_the_rename_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    # Prepare
    checkpoints.save_checkpoint(tmp_path, _checkpoint(1))

    def fail(*_: Any) -> None:
        raise InjectedError(5, f"{step} failed")

    # Execute: round 2's write gets to the step, which fails.
    with monkeypatch.context() as patch:
        patch.setattr(checkpoints.os, step, fail)
        with pytest.raises(InjectedError):
            checkpoints.save_checkpoint(tmp_path, _checkpoint(2))

    # Assert
    _assert_previous_checkpoint_intact(tmp_path)


def test_a_failure_after_the_rename_leaves_the_new_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the rename has happened; only syncing the directory fails.
    checkpoints.save_checkpoint(tmp_path, _checkpoint(1))
    real_open = os.open

    def open_but_not_directories(path: Any, flags: int, *args: Any) -> int:
        if Path(path).is_dir():
            raise InjectedError(5, "directory sync failed")
        return real_open(path, flags, *args)

    # Execute
    with monkeypatch.context() as patch:
        patch.setattr(checkpoints.os, "open", open_but_not_directories)
        with pytest.raises(InjectedError):
            checkpoints.save_checkpoint(tmp_path, _checkpoint(2))

    # Assert: whole round 2, not a mix.
    loaded = checkpoints.load_checkpoint(tmp_path)
    assert loaded is not None and loaded.server_round == 2
    assert all(np.all(a == 2.0) for a in loaded.parameters.values())
