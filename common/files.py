"""Writing files so that a crash never leaves a half-written one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np


def _write_atomic(
    path: Path, write: Callable[[BinaryIO], object], prefix: str, suffix: str
) -> None:
    """Write ``path`` through ``write``: into a temporary file in the same directory,
    flushed to disk, then renamed into place (``os.replace`` is atomic on POSIX), so
    readers see the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=suffix)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_npz_atomic(
    path: Path, arrays: Mapping[str, np.ndarray], prefix: str = ".tmp-"
) -> None:
    """Save ``arrays`` as ``path`` (``.npz``) atomically."""
    _write_atomic(path, lambda file: np.savez(file, **arrays), prefix, ".npz")  # type: ignore[arg-type]


def write_text_atomic(path: Path, text: str, prefix: str = ".tmp-") -> None:
    """Write ``text`` (UTF-8) as ``path`` atomically."""
    _write_atomic(path, lambda file: file.write(text.encode("utf-8")), prefix, ".part")
