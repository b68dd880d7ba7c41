"""A merchant's own use of the federation's result: adapt θ, then recommend.

    merchant-meta adapt --checkpoint RUN_DIR/checkpoint.npz --data orders.csv \\
        --format table --out model.npz
    merchant-meta recommend --model model.npz --data orders.csv -n 10 --out recs.csv

Neither command talks to Flower or to anyone else: a merchant who never took part in a
round (a new merchant entering a market) runs both on its own machine with the
checkpoint file the operator published and its own interaction log. ``adapt`` takes θ
and runs the new-merchant adaptation budget (Adam steps on the merchant's
interactions, as in the cold-start evaluation); ``recommend`` scores every item of the
merchant's catalogue for every customer and writes the top N, leaving out items the
customer already has.

For serving, every interaction is support: nothing is held out, unlike the evaluation
protocol, which holds out each customer's two latest items to score them.

The model's shape (``embedding-dim``, ``num-buckets``, ``max-history``) and the
adaptation budget (``adapt-steps``, ``adapt-lr``, ``batch-size``) come from the run
config stored in the checkpoint; a checkpoint without it falls back to the table shapes
of θ and the defaults of ``common.config``, with a warning.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import torch
import typer

from common.adapt import MerchantData, adapt
from common.config import AdaptConfig, ModelConfig, from_run_config
from common.data import DataError, TableColumns, load_interactions
from common.files import write_npz_atomic
from common.model import PAD, build_model, scale_taste
from common.protocol import MarketSplit

logger = logging.getLogger(__name__)

_META_KEY = "__meta__"
MODEL_KIND = "merchant-meta/adapted-model"


class ToolError(ValueError):
    """An input of ``adapt`` or ``recommend`` that cannot be used."""


# ---------------------------------------------------------------------------
# Parameter files (a checkpoint, or an adapted model)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Parameters:
    """θ or an adapted model, the model's shape, and free-form facts."""

    arrays: dict[str, np.ndarray]
    model: ModelConfig
    meta: dict[str, Any]


def _model_from_shapes(arrays: dict[str, np.ndarray], path: Path) -> ModelConfig:
    """The table shapes of θ give the embedding width and the number of buckets."""
    table = arrays.get("history_items.weight")
    if table is None or table.ndim != 2:
        raise ToolError(
            f"{path}: expected an array 'history_items.weight' of shape "
            f"(num_buckets, embedding_dim), got {sorted(arrays)}"
        )
    defaults = ModelConfig()
    logger.warning(
        "load: %s stores no model config; using the shapes of θ and max_history %d",
        path,
        defaults.max_history,
    )
    return ModelConfig(
        embedding_dim=int(table.shape[1]),
        num_buckets=int(table.shape[0]),
        max_history=defaults.max_history,
    )


def load_parameters(path: str | Path) -> Parameters:
    """Read a server checkpoint or an adapted model (``.npz`` with a JSON meta)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ToolError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as content:
            arrays = {name: content[name] for name in content.files}
        meta = json.loads(arrays.pop(_META_KEY).tobytes().decode())
    except Exception as error:  # numpy, zipfile and json all raise their own
        raise ToolError(
            f"{path}: expected a checkpoint or model .npz with a {_META_KEY} entry, "
            f"cannot read it: {error}"
        ) from error
    if "model" in meta:
        model = ModelConfig(**meta["model"])
    elif "run-config" in meta:
        model = from_run_config(meta["run-config"]).model
    else:
        model = _model_from_shapes(arrays, path)
    try:
        build_model(model, arrays)
    except ValueError as error:
        raise ToolError(f"{path}: {error}") from error
    return Parameters(arrays, model, meta)


def save_parameters(path: str | Path, parameters: Parameters) -> Path:
    """Write atomically (a temporary file renamed into place)."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {**parameters.meta, "model": asdict(parameters.model)}
    arrays = {
        **parameters.arrays,
        _META_KEY: np.frombuffer(json.dumps(meta).encode(), np.uint8),
    }
    write_npz_atomic(path, arrays, prefix=".model-")
    return path


# ---------------------------------------------------------------------------
# A merchant's data for serving: every interaction is support
# ---------------------------------------------------------------------------


def serving_split(frame: pd.DataFrame, market: str | None, source: str) -> MarketSplit:
    """Each customer's items, latest interaction per item, oldest first; nothing held
    out (held-out fields are -1 and there are no negatives)."""
    markets = sorted(map(str, frame["market"].unique()))
    if market is None:
        if len(markets) != 1:
            raise ToolError(
                f"{source}: holds {len(markets)} markets ({', '.join(markets)}); "
                "name one with --market"
            )
        market = markets[0]
    elif market not in markets:
        raise ToolError(
            f"{source}: no rows for market {market!r}; found {', '.join(markets)}"
        )
    rows = frame.loc[(frame["market"] == market).to_numpy()]
    item_code, item_ids = pd.factorize(rows["item"].to_numpy(dtype=object), sort=True)
    user_code, user_ids = pd.factorize(rows["user"].to_numpy(dtype=object), sort=True)

    # By customer, then time, then file order; keep each (customer, item)'s latest.
    order = np.lexsort((rows["order"].to_numpy(), rows["time"].to_numpy(), user_code))
    user_code, item_code = user_code[order], item_code[order]
    pair = user_code.astype(np.int64) * len(item_ids) + item_code
    _, last_from_end = np.unique(pair[::-1], return_index=True)
    latest = np.sort(len(pair) - 1 - last_from_end)
    user_code, item_code = user_code[latest], item_code[latest]
    starts = np.searchsorted(user_code, np.arange(len(user_ids)))
    support = np.split(item_code.astype(np.int64), starts[1:])
    users = len(user_ids)
    return MarketSplit(
        market=market,
        item_ids=np.asarray(item_ids, dtype=object),
        user_ids=np.asarray(user_ids, dtype=object),
        support=support,
        valid_item=np.full(users, -1, dtype=np.int64),
        test_item=np.full(users, -1, dtype=np.int64),
        valid_negatives=np.zeros((users, 0), dtype=np.int64),
        test_negatives=np.zeros((users, 0), dtype=np.int64),
    )


def read_merchant(
    path: str | Path,
    data_format: str,
    market: str | None = None,
    columns: TableColumns | None = None,
) -> MarketSplit:
    """A merchant's interaction log as a serving split, or a ToolError naming it."""
    try:
        frame = load_interactions(path, data_format, columns=columns)
    except DataError as error:
        raise ToolError(str(error)) from error
    split = serving_split(frame, market, str(path))
    logger.info(
        "read: %s: %d customers, %d items, %d interactions (market %s)",
        path,
        split.num_users,
        split.num_items,
        split.num_support_interactions,
        split.market,
    )
    return split


# ---------------------------------------------------------------------------
# adapt and recommend
# ---------------------------------------------------------------------------


def adapt_budget(meta: dict[str, Any]) -> AdaptConfig:
    """The new-merchant budget the run was evaluated with, else the defaults."""
    config = from_run_config(meta.get("run-config", {}))
    return AdaptConfig(
        inner_steps=config.evaluation.adapt_steps,
        inner_lr=config.evaluation.adapt_lr,
        batch_size=config.adapt.batch_size,
    )


def adapt_merchant(
    theta: Parameters,
    split: MarketSplit,
    budget: AdaptConfig,
    seed: int,
    taste_scale: float = 1.0,
) -> Parameters:
    """θ adapted on every interaction of the merchant, its taste term then scaled by
    ``taste_scale`` (see :func:`common.model.scale_taste`)."""
    data = MerchantData.from_split(split, theta.model)
    if data.num_examples == 0:
        raise ToolError(f"adapt: market {split.market}: no interactions to adapt on")
    result = adapt(theta.arrays, data, theta.model, budget, seed)
    arrays = scale_taste(result.parameters, taste_scale)
    logger.info(
        "adapt: %d steps at lr %g (item popularity at %g) on %d interactions, "
        "loss %.4f -> %.4f, taste scaled by %g",
        budget.inner_steps,
        budget.inner_lr,
        budget.bias_lr if budget.bias_lr is not None else budget.inner_lr,
        result.num_examples,
        result.loss_before,
        result.loss_after,
        taste_scale,
    )
    meta = {
        "kind": MODEL_KIND,
        "market": split.market,
        "from-round": theta.meta.get("server_round"),
        "steps": budget.inner_steps,
        "lr": budget.inner_lr,
        "bias-lr": budget.bias_lr,
        "taste-scale": taste_scale,
        "seed": seed,
        "loss-before": result.loss_before,
        "loss-after": result.loss_after,
        "num-examples": result.num_examples,
    }
    return Parameters(arrays, theta.model, meta)


@dataclass(frozen=True)
class Recommendations:
    """Top-N items per customer: ``items[u]`` codes into ``item_ids``, best first."""

    user_ids: np.ndarray
    item_ids: np.ndarray
    items: list[np.ndarray]
    scores: list[np.ndarray]


def recommend(
    parameters: Parameters, split: MarketSplit, n: int, batch: int = 1024
) -> Recommendations:
    """Score the catalogue for every customer, drop what they have, keep the top ``n``.

    The customer's taste comes from their latest ``max_history`` items (as in
    training), but every item they ever had is left out of their list.
    """
    if n < 1:
        raise ToolError(f"recommend: -n must be >= 1, got {n}")
    data = MerchantData.from_split(split, parameters.model)
    model = build_model(parameters.model, parameters.arrays).eval()
    catalogue = torch.from_numpy(data.catalogue)
    with torch.no_grad():
        item_vectors, item_bias = model.item_vectors(catalogue)  # (C, d), (C,)
    items: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    for start in range(0, split.num_users, batch):
        histories = torch.from_numpy(data.histories[start : start + batch])
        with torch.no_grad():
            users = model.user_vectors(
                catalogue[histories.clamp(min=0)], histories != PAD
            )
            block = (users @ item_vectors.T + item_bias).numpy()  # (B, C)
        for row, user in enumerate(range(start, start + len(block))):
            user_scores = block[row].astype(np.float64)
            user_scores[split.support[user]] = -np.inf  # what the customer has
            free = int(np.isfinite(user_scores).sum())
            # Best first; equal scores by item code, so the list is repeatable.
            order = np.lexsort((np.arange(len(user_scores)), -user_scores))
            top = order[: min(n, free)]
            items.append(top.astype(np.int64))
            scores.append(user_scores[top])
    return Recommendations(split.user_ids, split.item_ids, items, scores)


def write_recommendations(path: str | Path, result: Recommendations) -> Path:
    """CSV (user, rank, item, score) or JSON, chosen by the suffix of ``path``."""
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise ToolError(f"recommend: --out must end in .csv or .json, got {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = zip(result.user_ids, result.items, result.scores, strict=True)
    with path.open("w", newline="", encoding="utf-8") as file:
        if suffix == ".csv":
            writer = csv.writer(file)
            writer.writerow(["user", "rank", "item", "score"])
            for user, codes, values in rows:
                for rank, (code, score) in enumerate(zip(codes, values, strict=True)):
                    writer.writerow(
                        [user, rank + 1, result.item_ids[code], f"{score:.6g}"]
                    )
        else:
            users = [
                {
                    "user": str(user),
                    "items": [str(result.item_ids[code]) for code in codes],
                    "scores": [round(float(score), 6) for score in values],
                }
                for user, codes, values in rows
            ]
            json.dump({"users": users}, file, indent=1)
    return path


# ---------------------------------------------------------------------------
# Commands (registered by server.cli)
# ---------------------------------------------------------------------------

FormatOption = Annotated[
    str, typer.Option("--format", help="xmarket (a <market>_5core.txt file) | table")
]
MarketOption = Annotated[
    str | None, typer.Option(help="The market to use when the file holds several.")
]
UserColumn = Annotated[str, typer.Option(help="Table: the customer id column.")]
ItemColumn = Annotated[str, typer.Option(help="Table: the product id column.")]
TimeColumn = Annotated[str, typer.Option(help="Table: the time column.")]
MarketColumn = Annotated[
    str | None, typer.Option(help="Table: the market column, if the log has one.")
]


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )


def _columns(user: str, item: str, time: str, market: str | None) -> TableColumns:
    return TableColumns(user=user, item=item, time=time, market=market)


def adapt_command(
    checkpoint: Annotated[
        Path, typer.Option(help="The federation's checkpoint (RUN_DIR/checkpoint.npz).")
    ],
    data: Annotated[Path, typer.Option(help="The merchant's interaction log.")],
    out: Annotated[Path, typer.Option(help="Where to write the adapted model.")],
    data_format: FormatOption = "table",
    market: MarketOption = None,
    steps: Annotated[
        int | None, typer.Option(help="Adam steps (default: the run's adapt-steps).")
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help="Learning rate (default: the run's adapt-lr).")
    ] = None,
    bias_lr: Annotated[
        float | None,
        typer.Option(
            help="Learning rate of the items' popularity terms alone (default: "
            "--lr). A few interactions per customer say more about what sells in "
            "this market than about which products go together: e.g. --lr 0.001 "
            "--bias-lr 0.03 --steps 300."
        ),
    ] = None,
    taste_scale: Annotated[
        float,
        typer.Option(
            help="After adapting, multiply the customers' taste term (not the "
            "items' popularity) by this. Below 1 trusts the federation's "
            "co-occurrence less. With one interaction per customer the data "
            "cannot tell; the benchmark chose 0.5 on every market's validation items."
        ),
    ] = 1.0,
    seed: Annotated[int, typer.Option(help="Seeds the minibatches.")] = 0,
    user_col: UserColumn = "user",
    item_col: ItemColumn = "item",
    time_col: TimeColumn = "time",
    market_col: MarketColumn = None,
) -> None:
    """Adapt the federation's θ to this merchant's data; write the merchant's model."""
    _logging()
    try:
        theta = load_parameters(checkpoint)
        budget = adapt_budget(theta.meta)
        budget = AdaptConfig(
            inner_steps=steps if steps is not None else budget.inner_steps,
            inner_lr=lr if lr is not None else budget.inner_lr,
            batch_size=budget.batch_size,
            bias_lr=bias_lr,
        )
        columns = _columns(user_col, item_col, time_col, market_col)
        split = read_merchant(data, data_format, market, columns)
        adapted = adapt_merchant(theta, split, budget, seed, taste_scale)
    except (ToolError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from error
    save_parameters(out, adapted)
    typer.echo(
        f"adapt: {split.num_users} customers, {split.num_items} items; "
        f"loss {adapted.meta['loss-before']:.4f} -> {adapted.meta['loss-after']:.4f}; "
        f"wrote {out}"
    )


def recommend_command(
    model: Annotated[
        Path, typer.Option(help="An adapted model (or a checkpoint, unadapted).")
    ],
    data: Annotated[Path, typer.Option(help="The merchant's interaction log.")],
    out: Annotated[Path, typer.Option(help="recs.csv or recs.json")],
    n: Annotated[int, typer.Option("-n", "--top", help="Items per customer.")] = 10,
    data_format: FormatOption = "table",
    market: MarketOption = None,
    user_col: UserColumn = "user",
    item_col: ItemColumn = "item",
    time_col: TimeColumn = "time",
    market_col: MarketColumn = None,
) -> None:
    """Write the top-N items per customer, leaving out items the customer has."""
    _logging()
    try:
        parameters = load_parameters(model)
        columns = _columns(user_col, item_col, time_col, market_col)
        split = read_merchant(data, data_format, market, columns)
        result = recommend(parameters, split, n)
        write_recommendations(out, result)
    except (ToolError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from error
    short = sum(1 for items in result.items if len(items) < n)
    typer.echo(
        f"recommend: top {n} for {len(result.items)} customers written to {out}"
        + (f"; {short} customers have fewer items left to recommend" if short else "")
    )
