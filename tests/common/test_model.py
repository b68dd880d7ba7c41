"""The hashed item-history model: stable item rows, a fixed θ, checked shapes."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest
import torch

from common.config import ModelConfig
from common.model import (
    Recommender,
    build_model,
    init_parameters,
    item_buckets,
    parameter_names,
    scale_taste,
    to_numpy,
)

SMALL = ModelConfig(embedding_dim=4, num_buckets=64, max_history=5)
ITEMS = ["P00001", "B07XJ8C8F5", "ürün-42"]


def _rows_by_hand(item: str, num_buckets: int) -> list[int]:
    """The two rows of ``item``: its 8-byte blake2b digest read as two little-endian
    unsigned 32-bit numbers, each modulo ``num_buckets``."""
    digest = hashlib.blake2b(item.encode("utf-8"), digest_size=8).digest()
    first, second = struct.unpack("<II", digest)
    return [first % num_buckets, second % num_buckets]


# ---------------------------------------------------------------------------
# Item rows
# ---------------------------------------------------------------------------


def test_item_buckets_are_the_blake2b_rows_worked_out_here() -> None:
    # Prepare: rows from the digest alone, so they are the same in every process
    # (Python's own str hash is salted per process and would not be).
    expected = [_rows_by_hand(item, 4096) for item in ITEMS]

    # Execute
    rows = item_buckets(ITEMS, 4096)

    # Assert
    assert rows.dtype == np.int64
    assert rows.shape == (3, 2)
    assert rows.tolist() == expected


def test_item_buckets_depend_on_the_id_alone() -> None:
    # Prepare: the same product among different neighbours, and as a number.
    alone = item_buckets(["P00001"], 64)

    # Execute
    among_others = item_buckets(["X", "P00001", "Y"], 64)
    as_numbers = item_buckets(np.array([17, 4]), 64)

    # Assert
    assert among_others[1].tolist() == alone[0].tolist()
    assert as_numbers.tolist() == [_rows_by_hand("17", 64), _rows_by_hand("4", 64)]
    assert ((among_others >= 0) & (among_others < 64)).all()


def test_item_buckets_reject_a_non_positive_bucket_count() -> None:
    with pytest.raises(ValueError, match="num_buckets must be > 0, got 0"):
        item_buckets(["P00001"], 0)


# ---------------------------------------------------------------------------
# θ
# ---------------------------------------------------------------------------


def test_theta_holds_item_tables_and_the_user_transform_only() -> None:
    # Prepare: 64 rows of width 4 per item table, a 4x4 transform and its bias.
    expected = {
        "history_items.weight": (64, 4),
        "target_items.weight": (64, 4),
        "item_bias.weight": (64, 1),
        "user_transform.weight": (4, 4),
        "user_transform.bias": (4,),
    }

    # Execute
    theta = init_parameters(SMALL, seed=0)

    # Assert
    assert {name: array.shape for name, array in theta.items()} == expected
    assert parameter_names(SMALL) == list(theta)
    assert all(array.dtype == np.float32 for array in theta.values())


def test_init_parameters_is_seeded() -> None:
    # Execute
    first, again, other = (init_parameters(SMALL, seed) for seed in (3, 3, 4))

    # Assert
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    assert not np.array_equal(
        first["history_items.weight"], other["history_items.weight"]
    )


def test_build_model_holds_the_given_parameters() -> None:
    # Prepare
    theta = init_parameters(SMALL, seed=1)

    # Execute
    model = build_model(SMALL, theta)

    # Assert
    for name, array in to_numpy(model).items():
        np.testing.assert_array_equal(array, theta[name])


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda p: {**p, "item_bias.weight": np.zeros((64, 2), np.float32)}, "(64, 2)"),
        (lambda p: {**p, "user_transform.bias": np.zeros(5, np.float32)}, "(5,)"),
        (lambda p: {k: v for k, v in p.items() if k != "target_items.weight"}, ""),
        (lambda p: {**p, "user_bias.weight": np.zeros((9, 1), np.float32)}, "user_"),
    ],
    ids=["wrong-table-width", "wrong-bias-length", "missing-array", "extra-array"],
)
def test_build_model_rejects_parameters_that_do_not_fit(change, named: str) -> None:
    # Prepare
    parameters = change(init_parameters(SMALL, seed=0))

    # Execute / Assert: the error shows what was expected and what came.
    with pytest.raises(ValueError, match="parameters do not fit the model") as error:
        build_model(SMALL, parameters)
    assert "expected" in str(error.value)
    assert named in str(error.value)


# ---------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------


def _tiny_model() -> Recommender:
    """One-dimensional model with two rows, set by hand:
    Q = [1, 2], P = [1, -1], b = [0.25, 0], W = 2, c = 0.5."""
    config = ModelConfig(embedding_dim=1, num_buckets=2, max_history=2, recency=0.5)
    return build_model(
        config,
        {
            "history_items.weight": np.array([[1.0], [2.0]], np.float32),
            "target_items.weight": np.array([[1.0], [-1.0]], np.float32),
            "item_bias.weight": np.array([[0.25], [0.0]], np.float32),
            "user_transform.weight": np.array([[2.0]], np.float32),
            "user_transform.bias": np.array([0.5], np.float32),
        },
    )


def test_scores_match_the_hand_computed_formula() -> None:
    # Prepare: history items with rows (0, 1) and (1, 1):
    #   q = Q0 + Q1 = 3 and Q1 + Q1 = 4; the older item weighs recency¹ = 0.5:
    #   mean (0.5·3 + 4) / 1.5 = 11/3; u = 2·11/3 + 0.5 = 47/6
    #   candidate rows (0, 0): p = 2, bias 0.5 -> 47/3 + 0.5 = 97/6
    #   candidate rows (1, 0): p = 0, bias 0.25 -> 0.25
    #   the second history item masked: the first is the latest (weight 1):
    #   mean 3, u = 6.5 -> 13.5 and 0.25
    model = _tiny_model()
    history = torch.tensor([[[0, 1], [1, 1]], [[0, 1], [1, 1]]])
    mask = torch.tensor([[True, True], [True, False]])
    catalogue = torch.tensor([[0, 0], [1, 0]])

    # Execute
    with torch.no_grad():
        shared = model(history, mask, catalogue)  # (2 users, 2 items)
        per_user = model(history, mask, catalogue.expand(2, 2, 2))

    # Assert
    expected = [[97 / 6, 0.25], [13.5, 0.25]]
    # float32: 97/6 is held to about 1e-6 of its value.
    np.testing.assert_allclose(shared.numpy(), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(per_user.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_a_user_with_no_history_gets_the_learned_average_taste() -> None:
    # Prepare: nothing in the history: u = c = 0.5; candidate (0, 0): 0.5·2 + 0.5
    model = _tiny_model()
    history = torch.tensor([[[0, 1], [1, 1]]])
    mask = torch.tensor([[False, False]])

    # Execute
    with torch.no_grad():
        scores = model(history, mask, torch.tensor([[0, 0]]))

    # Assert
    np.testing.assert_allclose(scores.numpy(), [[1.5]], rtol=0, atol=1e-6)


def test_a_taste_scale_multiplies_the_user_item_term_and_keeps_the_biases() -> None:
    # Prepare: the hand-computed scores above, with u · p halved:
    #   user 1, candidate (0, 0): 0.5 · 47/3 + 0.5 = 25/3; candidate (1, 0): 0.25
    #   user 2, candidate (0, 0): 0.5 · 13 + 0.5 = 7; candidate (1, 0): 0.25
    tiny = _tiny_model()
    parameters = scale_taste(to_numpy(tiny), 0.5)
    model = build_model(tiny.config, parameters)
    history = torch.tensor([[[0, 1], [1, 1]], [[0, 1], [1, 1]]])
    mask = torch.tensor([[True, True], [True, False]])

    # Execute
    with torch.no_grad():
        scores = model(history, mask, torch.tensor([[0, 0], [1, 0]]))

    # Assert
    expected = [[25 / 3, 0.25], [7.0, 0.25]]
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-6, atol=1e-6)
    assert all(parameters[k].dtype == np.float32 for k in parameters)


def test_a_taste_scale_of_one_is_the_parameters_themselves() -> None:
    parameters = init_parameters(SMALL, seed=0)
    assert scale_taste(parameters, 1.0) is parameters


@pytest.mark.parametrize("scale", [0.0, -0.5, float("nan"), float("inf")])
def test_a_taste_scale_must_be_a_finite_positive_number(scale: float) -> None:
    with pytest.raises(ValueError, match="taste scale"):
        scale_taste(init_parameters(SMALL, seed=0), scale)
