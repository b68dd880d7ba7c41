"""Delta codecs: how a merchant's delta is written into the reply and read back.

A codec maps the delta's named float32 arrays to the named arrays that travel in the
Flower message, and back. Every byte a merchant uploads costs, and a delta is mostly
zeros and small numbers, so it can travel in far fewer bytes than θ itself:

``float32``
    the delta as it is (the default, lossless).
``float16``
    each value rounded to half precision: relative error at most 2⁻¹¹ for values of
    magnitude at least 2⁻¹⁴ (and absolute error at most 2⁻²⁵ below). Encoding refuses
    a delta beyond float16's range (65504) rather than send infinities.
``int8``
    each tensor quantised symmetrically with one scale, ``scale = max|x| / 127``, and
    rounded to the nearest step: ``q = round(x / scale)`` in [-127, 127], ``x̂ = q ·
    scale``. The error of every value is at most ``scale / 2`` (up to float32
    rounding of the product, below 2⁻²⁴ · max|x|). Sent as the int8 array ``NAME``
    and the float32 ``NAME:scale`` of shape (1,).
``row-sparse``
    a table (rank 2 or more) whose rows are not all touched is sent as its non-zero
    rows only: the values ``NAME`` of shape (k, ...) and their sorted row indices
    ``NAME:rows`` (the smallest unsigned type that holds them). Lossless. A merchant
    adapts only the item-table rows its own catalogue hashes to (Adam leaves a row
    whose gradient was always zero exactly where it was), so most rows of the item
    tables are zero in its delta. Tensors whose rows are all non-zero go dense.
``row-sparse-int8``
    both: the non-zero rows, quantised to int8 with one scale per tensor.

Quantising with one scale per tensor and rounding to nearest follows the linear
quantisation of Jacob et al., "Quantization and Training of Neural Networks for
Efficient Integer-Arithmetic-Only Inference" (CVPR 2018), in its symmetric form.

Decoding validates everything a broken or hostile merchant could get wrong (names,
dtypes, shapes, row indices out of range or repeated, non-finite scales or values)
and raises a ValueError naming the array, what was expected and what came; the
server turns that into a rejected reply.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

CODECS = ("float32", "float16", "int8", "row-sparse", "row-sparse-int8")
ROWS_SUFFIX = ":rows"
SCALE_SUFFIX = ":scale"
INT8_LEVELS = 127  # symmetric: -127..127, so that 0 is exact and -x̂(x) = x̂(-x)
FLOAT16_MAX = float(np.finfo(np.float16).max)


def check_codec(codec: str) -> None:
    """Raise a ValueError naming the known codecs when ``codec`` is not one."""
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; expected one of {CODECS}")


def _is_sparse(codec: str) -> bool:
    return codec.startswith("row-sparse")


def _is_quantised(codec: str) -> bool:
    return codec.endswith("int8")


def _value_dtype(codec: str) -> type[np.generic]:
    if _is_quantised(codec):
        return np.int8
    return np.float16 if codec == "float16" else np.float32


def index_dtype(num_rows: int) -> type[np.unsignedinteger]:
    """The smallest unsigned integer type that holds every row index of a table."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if num_rows - 1 <= np.iinfo(dtype).max:
            return dtype
    return np.uint64


def int8_scale(array: np.ndarray) -> np.float32:
    """The per-tensor scale ``max|x| / 127`` (0 for an all-zero tensor).

    Rounded up to a float32 that is at least that: a peak below 127 times the
    smallest normal float32 gives a subnormal scale, which float32 holds only to the
    nearest subnormal step, and rounding it down would clip the peak (or, below one
    step, send zeros).
    """
    peak = float(np.max(np.abs(array))) if array.size else 0.0
    scale = np.float32(peak / INT8_LEVELS)
    if float(scale) * INT8_LEVELS < peak:
        scale = np.nextafter(scale, np.float32(np.inf))
    return np.float32(scale)


def quantise(array: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """``(q, scale)`` with ``q = round(x / scale)``: int8 in [-127, 127].

    The division uses the float32 scale that is sent, so the decoder's ``q · scale``
    is the nearest step to ``x``.
    """
    scale = int8_scale(array)
    if scale == 0:
        return np.zeros(array.shape, dtype=np.int8), scale
    steps = np.rint(np.asarray(array, dtype=np.float64) / np.float64(scale))
    return np.clip(steps, -INT8_LEVELS, INT8_LEVELS).astype(np.int8), scale


def _nonzero_rows(array: np.ndarray) -> np.ndarray:
    """Indices of the rows (first axis) holding any non-zero value."""
    return np.flatnonzero(np.any(array.reshape(array.shape[0], -1) != 0, axis=1))


def encode(
    delta: Mapping[str, np.ndarray], codec: str = "float32"
) -> dict[str, np.ndarray]:
    """The arrays to send for ``delta``; a ValueError when it cannot be encoded."""
    check_codec(codec)
    arrays: dict[str, np.ndarray] = {}
    for name, raw in delta.items():
        array = np.asarray(raw, dtype=np.float32)
        if not np.isfinite(array).all():
            raise ValueError(f"encode: delta {name!r} holds NaN or Inf")

        # Row-sparse: keep the touched rows of a table when some rows are untouched.
        if _is_sparse(codec) and array.ndim >= 2:
            rows = _nonzero_rows(array)
            if len(rows) < array.shape[0]:
                arrays[name + ROWS_SUFFIX] = rows.astype(index_dtype(array.shape[0]))
                array = array[rows]

        # Values: as they are, halved, or quantised with one scale per tensor.
        if _is_quantised(codec):
            arrays[name], scale = quantise(array)
            arrays[name + SCALE_SUFFIX] = np.array([scale], dtype=np.float32)
        elif codec == "float16":
            if array.size and float(np.max(np.abs(array))) > FLOAT16_MAX:
                raise ValueError(
                    f"encode: delta {name!r} exceeds float16's range "
                    f"(max |x| {float(np.max(np.abs(array))):.4g} > {FLOAT16_MAX:g})"
                )
            arrays[name] = array.astype(np.float16)
        else:
            arrays[name] = array
    return arrays


def _check_names(
    arrays: Mapping[str, np.ndarray],
    codec: str,
    shapes: Mapping[str, tuple[int, ...]],
) -> None:
    """Every expected array is there, and nothing else."""
    required = set(shapes)
    if _is_quantised(codec):
        required |= {name + SCALE_SUFFIX for name in shapes}
    optional = set()
    if _is_sparse(codec):
        optional = {
            name + ROWS_SUFFIX for name, shape in shapes.items() if len(shape) > 1
        }
    missing = sorted(required - set(arrays))
    extra = sorted(set(arrays) - required - optional)
    if missing or extra:
        raise ValueError(
            f"delta arrays differ from the model under codec {codec!r}: "
            f"missing {missing}, extra {extra}"
        )


def _check_rows(name: str, rows: np.ndarray, num_rows: int) -> np.ndarray:
    """Row indices as int64, after checking them: 1-D integers, in range, sorted
    and unique."""
    label = name + ROWS_SUFFIX
    if not np.issubdtype(rows.dtype, np.integer):
        raise ValueError(
            f"delta {label!r}: dtype {rows.dtype}, expected an integer type"
        )
    if rows.ndim != 1:
        raise ValueError(f"delta {label!r}: shape {rows.shape}, expected one dimension")
    if rows.size and (int(rows.min()) < 0 or int(rows.max()) >= num_rows):
        raise ValueError(
            f"delta {label!r}: row indices must lie in [0, {num_rows}), "
            f"got [{int(rows.min())}, {int(rows.max())}]"
        )
    indices = rows.astype(np.int64)
    if np.any(np.diff(indices) <= 0):
        raise ValueError(f"delta {label!r}: row indices must be sorted and unique")
    return indices


def _check_scale(name: str, scale: np.ndarray) -> np.float32:
    """The per-tensor scale, after checking it: one finite float32 >= 0."""
    label = name + SCALE_SUFFIX
    if scale.dtype != np.float32 or scale.shape != (1,):
        raise ValueError(
            f"delta {label!r}: dtype {scale.dtype} shape {scale.shape}, "
            "expected float32 of shape (1,)"
        )
    value = scale[0]
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"delta {label!r}: scale must be finite and >= 0, got {value}")
    return np.float32(value)


def decode(
    arrays: Mapping[str, np.ndarray],
    codec: str,
    shapes: Mapping[str, tuple[int, ...]],
) -> dict[str, np.ndarray]:
    """The float32 delta encoded in ``arrays``; a ValueError when they do not fit
    ``shapes`` under ``codec``.

    Every check a hostile or broken merchant could fail is made here, at the boundary:
    missing or extra names, wrong shapes or dtypes, row indices out of range or
    repeated, int8 values outside [-127, 127], non-finite scales or values.
    """
    check_codec(codec)
    _check_names(arrays, codec, shapes)
    expected_dtype = np.dtype(_value_dtype(codec))
    delta: dict[str, np.ndarray] = {}
    for name, raw_shape in shapes.items():
        shape = tuple(raw_shape)
        values = arrays[name]
        if values.dtype != expected_dtype:
            raise ValueError(
                f"delta {name!r}: dtype {values.dtype}, expected {expected_dtype} "
                f"under codec {codec!r}"
            )

        # Which rows the values fill: all of them, or the listed ones.
        rows = None
        if name + ROWS_SUFFIX in arrays:
            rows = _check_rows(name, arrays[name + ROWS_SUFFIX], shape[0])
            expected_shape = (len(rows), *shape[1:])
        else:
            expected_shape = shape
        if tuple(values.shape) != expected_shape:
            raise ValueError(
                f"delta {name!r}: shape {tuple(values.shape)}, "
                f"expected {expected_shape}"
            )

        # Values back to float32.
        if _is_quantised(codec):
            if values.size and int(np.min(values)) < -INT8_LEVELS:
                raise ValueError(
                    f"delta {name!r}: int8 values must lie in "
                    f"[-{INT8_LEVELS}, {INT8_LEVELS}], got {int(np.min(values))}"
                )
            scale = _check_scale(name, arrays[name + SCALE_SUFFIX])
            dense_values = values.astype(np.float32) * scale
        else:
            dense_values = values.astype(np.float32)
            if not np.isfinite(dense_values).all():
                raise ValueError(f"delta {name!r} holds NaN or Inf")

        if rows is None:
            delta[name] = dense_values
        else:
            delta[name] = np.zeros(shape, dtype=np.float32)
            delta[name][rows] = dense_values
    return delta


def round_trip(
    delta: Mapping[str, np.ndarray], codec: str = "float32"
) -> dict[str, np.ndarray]:
    """What the server aggregates when a merchant sends ``delta`` with ``codec``.

    In-process engines and benchmarks call this to give every codec's quality cost
    on the same splits without a framework in between.
    """
    shapes = {name: tuple(np.shape(array)) for name, array in delta.items()}
    return decode(encode(delta, codec), codec, shapes)


def payload_bytes(arrays: Mapping[str, np.ndarray]) -> int:
    """Bytes of the arrays' values alone: a lower bound of what travels (the message
    adds names, dtypes, shapes and framing)."""
    return sum(int(np.asarray(array).nbytes) for array in arrays.values())
