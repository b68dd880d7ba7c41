"""Delta codecs: how a merchant's delta is written into the reply and read back.

A codec maps the delta's named float32 arrays to the named arrays that travel in the
Flower message, and back. ``float32`` sends the delta as it is.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

CODECS = ("float32",)


def check_codec(codec: str) -> None:
    """Raise a ValueError naming the known codecs when ``codec`` is not one."""
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; expected one of {CODECS}")


def encode(
    delta: Mapping[str, np.ndarray], codec: str = "float32"
) -> dict[str, np.ndarray]:
    """The arrays to send for ``delta``."""
    check_codec(codec)
    return {name: np.asarray(array, dtype=np.float32) for name, array in delta.items()}


def decode(
    arrays: Mapping[str, np.ndarray],
    codec: str,
    shapes: Mapping[str, tuple[int, ...]],
) -> dict[str, np.ndarray]:
    """The delta encoded in ``arrays``; a ValueError when they do not fit ``shapes``.

    Every check a hostile or broken merchant could fail is made here, at the boundary:
    missing or extra names, wrong shapes or dtypes.
    """
    check_codec(codec)
    missing = sorted(set(shapes) - set(arrays))
    extra = sorted(set(arrays) - set(shapes))
    if missing or extra:
        raise ValueError(
            f"delta arrays differ from the model: missing {missing}, extra {extra}"
        )
    delta = {}
    for name, shape in shapes.items():
        array = arrays[name]
        if array.dtype != np.float32:
            raise ValueError(f"delta {name!r}: dtype {array.dtype}, expected float32")
        if tuple(array.shape) != tuple(shape):
            raise ValueError(
                f"delta {name!r}: shape {tuple(array.shape)}, expected {tuple(shape)}"
            )
        delta[name] = array
    return delta
