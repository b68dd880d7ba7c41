"""Writing arrays to disk so that a crash never leaves a half-written file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np


def write_npz_atomic(
    path: Path, arrays: Mapping[str, np.ndarray], prefix: str = ".tmp-"
) -> None:
    """Save ``arrays`` as ``path`` (``.npz``): written to a temporary file in the
    same directory, flushed to disk, then renamed into place (``os.replace`` is
    atomic on POSIX), so readers see the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".npz")
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **arrays)  # type: ignore[arg-type]
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
