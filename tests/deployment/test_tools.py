"""A merchant's adapt and recommend: model config from the checkpoint, valid top-N."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from client import tools
from common.config import ModelConfig
from common.data import TableColumns
from common.model import init_parameters, item_buckets

MODEL = ModelConfig(embedding_dim=4, num_buckets=64, max_history=3)


def _frame(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["user", "item", "time"])
    frame.insert(0, "market", "shop")
    frame["value"] = 1.0
    frame["order"] = np.arange(len(frame), dtype=np.int64)
    return frame


def _checkpoint(path: Path, model: ModelConfig, meta: dict) -> Path:
    arrays = init_parameters(model, seed=0)
    encoded = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, **arrays, __meta__=encoded)  # type: ignore[arg-type]
    return path


def _bias_only(model: ModelConfig, bias: np.ndarray) -> tools.Parameters:
    """Parameters whose score of an item is its bias: zero vectors, given biases."""
    arrays = {k: np.zeros_like(v) for k, v in init_parameters(model, 0).items()}
    arrays["item_bias.weight"] = bias.reshape(-1, 1).astype(np.float32)
    return tools.Parameters(arrays, model, {})


def test_serving_split_keeps_every_item_latest_first_seen_last() -> None:
    # Prepare: a bought x, then y, then x again; b bought z once.
    frame = _frame([("a", "x", 1), ("a", "y", 2), ("b", "z", 5), ("a", "x", 3)])

    # Execute
    split = tools.serving_split(frame, None, "test")

    # Assert: catalogue sorted x, y, z; a's items by latest time y (2), x (3).
    assert list(split.item_ids) == ["x", "y", "z"]
    assert list(split.user_ids) == ["a", "b"]
    assert [list(items) for items in split.support] == [[1, 0], [2]]
    assert split.num_negatives == 0


def test_recommend_ranks_by_score_and_leaves_out_what_the_customer_has() -> None:
    # Prepare: ten items; scores are the item biases, so the ranking is known.
    items = [f"item-{k}" for k in range(10)]
    rows = [("a", "item-9", 1), ("a", "item-3", 2), ("b", "item-0", 1)]
    split = tools.serving_split(_frame(rows + [("c", i, 0) for i in items]), None, "t")
    buckets = item_buckets(np.array(split.item_ids), MODEL.num_buckets)
    bias = np.zeros(MODEL.num_buckets)
    # Item k's first bucket row gets k: an item's score is the sum of its two rows'
    # biases, whole numbers, so equal scores are exact ties (broken by item code).
    for code in range(len(buckets)):
        bias[buckets[code, 0]] += code
    scores = bias[buckets[:, 0]] + bias[buckets[:, 1]]
    parameters = _bias_only(MODEL, bias)

    # Execute
    result = tools.recommend(parameters, split, n=3)

    # Assert: the three best items each customer does not have, best first.
    by_user = dict(zip(result.user_ids, result.items, strict=True))
    for user, owned in (("a", {"item-9", "item-3"}), ("b", {"item-0"})):
        expected = [
            split.item_ids[c]
            for c in np.argsort(-scores, kind="stable")
            if split.item_ids[c] not in owned
        ][:3]
        assert [split.item_ids[c] for c in by_user[user]] == expected
    # c has every item: nothing left to recommend.
    assert len(by_user["c"]) == 0


def test_adapt_lowers_the_loss_and_round_trips_through_a_file(tmp_path: Path) -> None:
    # Prepare: a checkpoint that stores its run config, and a merchant's log.
    from common.synthetic import new_merchants

    model = ModelConfig(embedding_dim=8, num_buckets=256, max_history=10)
    run_config = {"embedding-dim": 8, "num-buckets": 256, "max-history": 10}
    run_config |= {"adapt-steps": 30, "adapt-lr": 0.01}
    checkpoint = _checkpoint(
        tmp_path / "checkpoint.npz",
        model,
        {"server_round": 4, "run-config": run_config},
    )
    log = new_merchants(0)[0].interactions
    theta = tools.load_parameters(checkpoint)
    split = tools.serving_split(log, None, "newcomer")

    # Execute
    budget = tools.adapt_budget(theta.meta)
    adapted = tools.adapt_merchant(theta, split, budget, seed=0)
    saved = tools.load_parameters(
        tools.save_parameters(tmp_path / "model.npz", adapted)
    )

    # Assert: the run's shape and budget were used, the loss fell, the file holds
    # the same model.
    assert theta.model == model
    assert (budget.inner_steps, budget.inner_lr) == (30, 0.01)
    assert adapted.meta["loss-after"] < adapted.meta["loss-before"]
    assert adapted.meta["from-round"] == 4
    assert saved.model == model
    for name, array in adapted.arrays.items():
        np.testing.assert_array_equal(saved.arrays[name], array)


def test_a_checkpoint_without_run_config_falls_back_to_the_shapes_of_theta(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = ModelConfig(embedding_dim=6, num_buckets=128)
    path = _checkpoint(tmp_path / "old.npz", model, {"server_round": 1})
    caplog.set_level(logging.WARNING, logger="client.tools")

    loaded = tools.load_parameters(path)

    assert loaded.model == ModelConfig(embedding_dim=6, num_buckets=128, max_history=50)
    assert any("stores no model config" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("content", "words"),
    [(b"not a zip", "cannot read it"), (None, "no such file")],
)
def test_an_unusable_model_file_is_named(
    tmp_path: Path, content: bytes | None, words: str
) -> None:
    path = tmp_path / "model.npz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(tools.ToolError, match=words) as raised:
        tools.load_parameters(path)
    assert str(path) in str(raised.value)


def test_the_commands_write_csv_and_json_lists(tmp_path: Path) -> None:
    # Prepare: a checkpoint, a new merchant's log, the two commands as mounted.
    from common.synthetic import new_merchants

    model = ModelConfig(embedding_dim=8, num_buckets=256, max_history=10)
    run_config = {"embedding-dim": 8, "num-buckets": 256, "max-history": 10}
    checkpoint = _checkpoint(
        tmp_path / "c.npz", model, {"server_round": 2, "run-config": run_config}
    )
    log = new_merchants(0)[1].interactions[["user", "item", "time"]]
    data = tmp_path / "orders.csv"
    log.to_csv(data, index=False)
    app = typer.Typer()
    app.command("adapt")(tools.adapt_command)
    app.command("recommend")(tools.recommend_command)
    runner = CliRunner()
    model_path, csv_path, json_path = (
        tmp_path / "m.npz",
        tmp_path / "r.csv",
        tmp_path / "r.json",
    )

    # Execute
    recommend = ["recommend", "--model", str(model_path), "--data", str(data)]
    adapt = ["adapt", "--checkpoint", str(checkpoint), "--data", str(data)]
    adapted = runner.invoke(app, [*adapt, "--out", str(model_path), "--steps", "3"])
    as_csv = runner.invoke(app, [*recommend, "-n", "5", "--out", str(csv_path)])
    as_json = runner.invoke(app, [*recommend, "-n", "5", "--out", str(json_path)])
    bad = runner.invoke(app, [*recommend, "--out", str(tmp_path / "r.txt")])

    # Assert: both files hold the same five new items per customer.
    assert (adapted.exit_code, as_csv.exit_code, as_json.exit_code) == (0, 0, 0)
    assert bad.exit_code == 2 and ".csv or .json" in bad.output
    lists = pd.read_csv(csv_path, dtype={"user": str, "item": str})
    listed = json.loads(json_path.read_text())["users"]
    owned = log.groupby("user")["item"].apply(set)
    assert len(listed) == len(owned) == lists["user"].nunique()
    for entry in listed:
        rows = lists.loc[lists["user"] == entry["user"]]
        assert list(rows["item"]) == entry["items"]
        assert len(set(entry["items"])) == 5
        assert not set(entry["items"]) & owned[entry["user"]]
        assert entry["scores"] == sorted(entry["scores"], reverse=True)


def _adapt_cli(tmp_path: Path) -> tuple[typer.Typer, list[str], Path]:
    """The adapt command, the start of its arguments (a small checkpoint and one
    synthetic merchant's orders), and the checkpoint's path."""
    from common.synthetic import new_merchants

    model = ModelConfig(embedding_dim=8, num_buckets=256, max_history=10)
    run_config = {"embedding-dim": 8, "num-buckets": 256, "max-history": 10}
    checkpoint = _checkpoint(
        tmp_path / "c.npz", model, {"server_round": 2, "run-config": run_config}
    )
    data = tmp_path / "orders.csv"
    new_merchants(0)[1].interactions[["user", "item", "time"]].to_csv(data, index=False)
    app = typer.Typer()
    app.command("adapt")(tools.adapt_command)
    app.command("recommend")(tools.recommend_command)
    base = ["adapt", "--checkpoint", str(checkpoint), "--data", str(data)]
    return app, base, checkpoint


def test_adapt_learns_item_popularity_at_its_own_step_size(tmp_path: Path) -> None:
    # Prepare: Adam's first step moves each coordinate by its learning rate.
    app, base, checkpoint = _adapt_cli(tmp_path)
    out = tmp_path / "m.npz"

    # Execute
    one_step = ["--steps", "1", "--lr", "0.00001", "--bias-lr", "0.05"]
    adapted = CliRunner().invoke(app, [*base, "--out", str(out), *one_step])
    refused = CliRunner().invoke(
        app, [*base, "--out", str(tmp_path / "x.npz"), "--bias-lr", "0"]
    )

    # Assert
    assert adapted.exit_code == 0, adapted.output
    start, model_file = tools.load_parameters(checkpoint), tools.load_parameters(out)
    moved = {
        k: np.abs(model_file.arrays[k] - start.arrays[k]).max() for k in start.arrays
    }
    np.testing.assert_allclose(moved["item_bias.weight"], 0.05, rtol=1e-3)
    np.testing.assert_allclose(moved["target_items.weight"], 1e-5, rtol=1e-2)
    assert model_file.meta["bias-lr"] == 0.05
    assert refused.exit_code == 2 and "bias_lr" in refused.output


def test_adapt_scales_the_taste_term_it_was_asked_to(tmp_path: Path) -> None:
    # Prepare
    app, base, _ = _adapt_cli(tmp_path)
    base += ["--steps", "3"]

    # Execute: the same adaptation, once as it is and once trusting taste half as much
    runs = {}
    for scale in ("1", "0.5"):
        out = tmp_path / f"m-{scale}.npz"
        result = CliRunner().invoke(
            app, [*base, "--out", str(out), "--taste-scale", scale]
        )
        assert result.exit_code == 0, result.output
        runs[scale] = tools.load_parameters(out)
    refused = CliRunner().invoke(
        app, [*base, "--out", str(tmp_path / "x.npz"), "--taste-scale", "0"]
    )

    # Assert: W and c halved, everything else the same
    plain, halved = runs["1"].arrays, runs["0.5"].arrays
    for name in plain:
        factor = np.float32(0.5) if name.startswith("user_transform") else 1
        np.testing.assert_array_equal(halved[name], plain[name] * factor)
    assert runs["0.5"].meta["taste-scale"] == 0.5
    assert refused.exit_code == 2 and "taste scale" in refused.output


def test_read_merchant_names_the_file_of_a_bad_log(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text("user,item\nu1,P1\n")
    with pytest.raises(tools.ToolError, match=r"orders\.csv"):
        tools.read_merchant(path, "table", columns=TableColumns())
