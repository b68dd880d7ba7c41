"""Delta codecs: exact round trips, error bounds of the lossy ones, and rejections."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from common import codecs

# float32 rounding of the decoder's product q · scale, relative to max|x|.
FLOAT32_ROUNDING = 2.0**-24


def _delta() -> dict[str, np.ndarray]:
    """A small delta shaped like the model's: two tables, a bias, a dense matrix."""
    table = np.zeros((6, 2), np.float32)
    table[1] = [0.5, -0.25]
    table[4] = [0.0, 1.0]
    bias = np.zeros((6, 1), np.float32)
    bias[4] = [0.125]
    return {
        "items.weight": table,
        "bias.weight": bias,
        "transform.weight": np.array([[1.0, -2.0], [0.5, 0.75]], np.float32),
        "transform.bias": np.array([0.0, 3.0], np.float32),
    }


def _shapes(delta: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(array.shape) for name, array in delta.items()}


# ---------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["float32", "row-sparse"])
def test_lossless_codecs_give_back_the_delta_exactly(codec: str) -> None:
    # Prepare
    delta = _delta()

    # Execute
    decoded = codecs.round_trip(delta, codec)

    # Assert
    assert set(decoded) == set(delta)
    for name, array in delta.items():
        assert decoded[name].dtype == np.float32
        np.testing.assert_array_equal(decoded[name], array)


def test_row_sparse_sends_only_the_touched_rows_of_a_table() -> None:
    # Prepare: rows 1 and 4 of the table are non-zero, row 4 of the bias; the 2x2
    # transform has no zero row, and 1-D tensors always go dense.
    delta = _delta()

    # Execute
    encoded = codecs.encode(delta, "row-sparse")

    # Assert
    np.testing.assert_array_equal(encoded["items.weight:rows"], [1, 4])
    assert encoded["items.weight:rows"].dtype == np.uint8
    np.testing.assert_array_equal(encoded["items.weight"], [[0.5, -0.25], [0.0, 1.0]])
    np.testing.assert_array_equal(encoded["bias.weight:rows"], [4])
    np.testing.assert_array_equal(encoded["bias.weight"], [[0.125]])
    assert "transform.weight:rows" not in encoded
    assert "transform.bias:rows" not in encoded
    assert encoded["transform.weight"].shape == (2, 2)


def test_int8_quantises_to_the_nearest_step_of_the_tensor_scale() -> None:
    # Prepare: max|x| = 2.54, so scale = 2.54 / 127 = 0.02;
    #   2.54 / 0.02 = 127, -1.0 / 0.02 = -50, 0.026 / 0.02 = 1.3 -> 1 (x̂ = 0.02).
    delta = {"w": np.array([2.54, -1.0, 0.026], np.float32)}

    # Execute
    encoded = codecs.encode(delta, "int8")
    decoded = codecs.decode(encoded, "int8", {"w": (3,)})

    # Assert
    np.testing.assert_array_equal(encoded["w"], np.array([127, -50, 1], np.int8))
    np.testing.assert_allclose(encoded["w:scale"], [0.02], rtol=1e-6)
    np.testing.assert_allclose(decoded["w"], [2.54, -1.0, 0.02], rtol=0, atol=1e-6)


def test_int8_of_an_all_zero_tensor_is_zero_with_scale_zero() -> None:
    # Prepare
    delta = {"w": np.zeros((3, 2), np.float32)}

    # Execute
    encoded = codecs.encode(delta, "int8")
    decoded = codecs.decode(encoded, "int8", {"w": (3, 2)})

    # Assert
    assert encoded["w:scale"][0] == 0.0
    np.testing.assert_array_equal(decoded["w"], np.zeros((3, 2), np.float32))


def test_row_sparse_of_an_untouched_table_sends_no_rows() -> None:
    # Prepare
    delta = {"w": np.zeros((300, 4), np.float32)}

    # Execute
    encoded = codecs.encode(delta, "row-sparse-int8")
    decoded = codecs.decode(encoded, "row-sparse-int8", {"w": (300, 4)})

    # Assert: 300 rows need uint16 indices; none is sent.
    assert encoded["w:rows"].dtype == np.uint16
    assert encoded["w"].shape == (0, 4)
    np.testing.assert_array_equal(decoded["w"], np.zeros((300, 4), np.float32))


def test_int8_payload_is_a_quarter_of_float32_plus_one_scale_per_tensor() -> None:
    # Prepare: 1000 + 10 values; float32 = 4040 bytes, int8 = 1010 + 2 · 4 bytes.
    delta = {
        "a": np.full((100, 10), 0.5, np.float32),
        "b": np.ones(10, np.float32),
    }

    # Execute
    dense = codecs.payload_bytes(codecs.encode(delta, "float32"))
    quantised = codecs.payload_bytes(codecs.encode(delta, "int8"))

    # Assert
    assert dense == 4040
    assert quantised == 1018


# ---------------------------------------------------------------------------
# Error bounds of the lossy codecs (properties)
# ---------------------------------------------------------------------------

_tables = hnp.arrays(
    dtype=np.float32,
    shape=hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=12),
    elements=st.floats(-50.0, 50.0, width=32),
)


@settings(max_examples=200, deadline=None)
@given(values=_tables, codec=st.sampled_from(["int8", "row-sparse-int8"]))
def test_int8_error_is_at_most_half_a_step(values: np.ndarray, codec: str) -> None:
    # Prepare
    scale = float(np.max(np.abs(values))) / 127

    # Execute
    decoded = codecs.round_trip({"w": values}, codec)["w"]

    # Assert: |x - x̂| <= scale / 2, up to float32 rounding of q · scale; a scale
    # below the normal float32 range is held only to one subnormal step.
    subnormal = float(np.finfo(np.float32).smallest_subnormal)
    bound = scale / 2 + FLOAT32_ROUNDING * 127 * scale + subnormal / 2
    error = np.abs(decoded.astype(np.float64) - values.astype(np.float64))
    assert float(error.max()) <= bound
    assert np.all(decoded[values == 0] == 0)  # zero stays exactly zero


@settings(max_examples=200, deadline=None)
@given(values=_tables)
def test_float16_error_is_at_most_half_an_ulp(values: np.ndarray) -> None:
    # Execute
    decoded = codecs.round_trip({"w": values}, "float16")["w"]

    # Assert: relative 2⁻¹¹ for normal float16 values, absolute 2⁻²⁵ below them.
    bound = np.maximum(np.abs(values.astype(np.float64)) * 2.0**-11, 2.0**-25)
    error = np.abs(decoded.astype(np.float64) - values.astype(np.float64))
    assert np.all(error <= bound)


@settings(max_examples=100, deadline=None)
@given(
    values=hnp.arrays(
        dtype=np.float32,
        shape=st.tuples(st.integers(1, 40), st.integers(1, 4)),
        elements=st.sampled_from([0.0, 0.0, 0.0, 1.5, -0.25, 7.0]),
    )
)
def test_row_sparse_is_lossless_on_any_table(values: np.ndarray) -> None:
    # Execute
    decoded = codecs.round_trip({"w": values}, "row-sparse")["w"]

    # Assert
    np.testing.assert_array_equal(decoded, values)


# ---------------------------------------------------------------------------
# Encoding refuses what it cannot send faithfully
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("codec", codecs.CODECS)
def test_encode_refuses_a_delta_with_nan(codec: str) -> None:
    delta = {"w": np.array([1.0, np.nan], np.float32)}
    with pytest.raises(ValueError, match="'w' holds NaN or Inf"):
        codecs.encode(delta, codec)


def test_encode_refuses_a_delta_beyond_float16_range() -> None:
    delta = {"w": np.array([1.0, 70000.0], np.float32)}
    with pytest.raises(ValueError, match="exceeds float16's range"):
        codecs.encode(delta, "float16")


def test_an_unknown_codec_is_named_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown codec 'zip'.*row-sparse-int8"):
        codecs.encode(_delta(), "zip")


# ---------------------------------------------------------------------------
# Decoding rejects malformed payloads with a clear reason
# ---------------------------------------------------------------------------


def _sparse_payload() -> dict[str, np.ndarray]:
    return codecs.encode(_delta(), "row-sparse-int8")


def _with(changes: dict[str, np.ndarray | None]) -> dict[str, np.ndarray]:
    """The valid row-sparse-int8 payload with arrays replaced (None removes one)."""
    payload = _sparse_payload()
    for name, value in changes.items():
        if value is None:
            payload.pop(name)
        else:
            payload[name] = value
    return payload


MALFORMED = {
    "missing table": (
        _with({"items.weight": None, "items.weight:rows": None}),
        r"missing \['items.weight'\]",
    ),
    "missing scale": (
        _with({"items.weight:scale": None}),
        "missing.*items.weight:scale",
    ),
    "extra array": (
        {**_sparse_payload(), "secret": np.zeros(3, np.int8)},
        r"extra \['secret'\]",
    ),
    "rows on a 1-D tensor": (
        {**_sparse_payload(), "transform.bias:rows": np.array([0], np.uint8)},
        r"extra \['transform.bias:rows'\]",
    ),
    "float values under int8": (
        _with({"items.weight": np.zeros((2, 2), np.float32)}),
        "'items.weight': dtype float32, expected int8",
    ),
    "rows out of range": (
        _with({"items.weight:rows": np.array([1, 6], np.uint8)}),
        r"'items.weight:rows': row indices must lie in \[0, 6\), got \[1, 6\]",
    ),
    "negative row": (
        _with({"items.weight:rows": np.array([-1, 4], np.int64)}),
        r"must lie in \[0, 6\), got \[-1, 4\]",
    ),
    "repeated row": (
        _with({"items.weight:rows": np.array([4, 4], np.uint8)}),
        "'items.weight:rows': row indices must be sorted and unique",
    ),
    "unsorted rows": (
        _with({"items.weight:rows": np.array([4, 1], np.uint8)}),
        "sorted and unique",
    ),
    "float rows": (
        _with({"items.weight:rows": np.array([1.0, 4.0], np.float32)}),
        "'items.weight:rows': dtype float32, expected an integer type",
    ),
    "2-D rows": (
        _with({"items.weight:rows": np.array([[1, 4]], np.uint8)}),
        r"'items.weight:rows': shape \(1, 2\), expected one dimension",
    ),
    "fewer rows than values": (
        _with({"items.weight:rows": np.array([1], np.uint8)}),
        r"'items.weight': shape \(2, 2\), expected \(1, 2\)",
    ),
    "wrong row width": (
        _with({"items.weight": np.zeros((2, 3), np.int8)}),
        r"'items.weight': shape \(2, 3\), expected \(2, 2\)",
    ),
    "nan scale": (
        _with({"items.weight:scale": np.array([np.nan], np.float32)}),
        "'items.weight:scale': scale must be finite and >= 0, got nan",
    ),
    "infinite scale": (
        _with({"items.weight:scale": np.array([np.inf], np.float32)}),
        "scale must be finite",
    ),
    "negative scale": (
        _with({"items.weight:scale": np.array([-0.5], np.float32)}),
        "scale must be finite and >= 0, got -0.5",
    ),
    "two scales": (
        _with({"items.weight:scale": np.array([0.1, 0.2], np.float32)}),
        r"dtype float32 shape \(2,\), expected float32 of shape \(1,\)",
    ),
    "float64 scale": (
        _with({"items.weight:scale": np.array([0.1], np.float64)}),
        "dtype float64 shape",
    ),
    "int8 value -128": (
        _with({"items.weight": np.array([[-128, 0], [0, 1]], np.int8)}),
        r"int8 values must lie in \[-127, 127\], got -128",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_decode_rejects_a_malformed_sparse_int8_payload(case: str) -> None:
    # Prepare
    payload, reason = MALFORMED[case]

    # Execute / Assert
    with pytest.raises(ValueError, match=reason):
        codecs.decode(payload, "row-sparse-int8", _shapes(_delta()))


def test_the_valid_payload_of_the_malformed_cases_decodes() -> None:
    # The rejections above come from the one change each makes, not from the base.
    decoded = codecs.decode(_sparse_payload(), "row-sparse-int8", _shapes(_delta()))
    assert set(decoded) == set(_delta())


@pytest.mark.parametrize(
    ("codec", "payload", "reason"),
    [
        (
            "float32",
            {"w": np.array([1.0, np.inf], np.float32)},
            "'w' holds NaN or Inf",
        ),
        (
            "float16",
            {"w": np.array([1.0, np.nan], np.float16)},
            "'w' holds NaN or Inf",
        ),
        (
            "float32",
            {"w": np.array([1.0, 2.0], np.float16)},
            "'w': dtype float16, expected float32",
        ),
        (
            "float32",
            {"w": np.zeros(3, np.float32)},
            r"'w': shape \(3,\), expected \(2,\)",
        ),
        (
            "float32",
            {"w": np.zeros(2, np.float32), "w:rows": np.array([0], np.uint8)},
            r"extra \['w:rows'\]",
        ),
        (
            "int8",
            {"w": np.zeros(2, np.int8)},
            r"missing \['w:scale'\]",
        ),
    ],
)
def test_decode_rejects_dense_payloads_that_do_not_fit(
    codec: str, payload: dict[str, np.ndarray], reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        codecs.decode(payload, codec, {"w": (2,)})


def test_decode_with_an_unknown_codec_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown codec 'gzip'"):
        codecs.decode({"w": np.zeros(2, np.float32)}, "gzip", {"w": (2,)})
