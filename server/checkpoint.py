"""The server's checkpoint: θ and the last completed round, written atomically.

A checkpoint is one ``.npz`` file. It is written to a temporary file in the same
directory, flushed to disk, and renamed over the previous one (``os.replace`` is atomic
on POSIX), so a crash at any point leaves either the old or the new checkpoint, never a
partial one.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.files import write_npz_atomic

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.npz"
_META_KEY = "__meta__"


@dataclass(frozen=True)
class Checkpoint:
    """θ after ``server_round`` completed rounds, with free-form run facts."""

    server_round: int
    parameters: dict[str, np.ndarray]
    meta: dict[str, object]


def save_checkpoint(run_dir: str | Path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` atomically as ``RUN_DIR/checkpoint.npz``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = {**checkpoint.meta, "server_round": checkpoint.server_round}
    arrays = {
        **checkpoint.parameters,
        _META_KEY: np.frombuffer(json.dumps(meta).encode(), np.uint8),
    }
    target = run_dir / CHECKPOINT_NAME
    # A save killed mid-write leaves its temporary file: one writer per run
    # directory, so any left now is stale.
    for stale in run_dir.glob(".checkpoint-*.npz"):
        stale.unlink(missing_ok=True)
    write_npz_atomic(target, arrays, prefix=".checkpoint-")
    directory = os.open(run_dir, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)
    logger.debug("checkpoint: round %d saved to %s", checkpoint.server_round, target)
    return target


def load_checkpoint(run_dir: str | Path) -> Checkpoint | None:
    """The checkpoint in ``run_dir``, or None when there is none yet."""
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.exists():
        return None
    # An empty, truncated or bit-flipped file fails in numpy or in zipfile, and a
    # plain .npy loads as one array (no context manager): all are unreadable.
    try:
        with np.load(path, allow_pickle=False) as content:
            arrays = {name: content[name] for name in content.files}
    except (OSError, ValueError, EOFError, TypeError, zipfile.BadZipFile) as error:
        raise ValueError(f"checkpoint {path} cannot be read: {error}") from error
    if _META_KEY not in arrays:
        raise ValueError(f"checkpoint {path} has no {_META_KEY} entry")
    try:
        meta = json.loads(arrays.pop(_META_KEY).tobytes().decode())
        server_round = int(meta.pop("server_round"))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(
            f"checkpoint {path}: {_META_KEY} should be a JSON object with a "
            f"server_round: {error!r}"
        ) from error
    return Checkpoint(server_round, arrays, meta)
