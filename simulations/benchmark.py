"""The cold-start benchmark: does federated Reptile beat what a new merchant could do?

    python -m simulations.benchmark --data ../shared/data/xmarket --format xmarket \\
        --leave-one-market-out --shots all,3,1 --seeds 3 \\
        --out docs/benchmark.json --report docs/benchmark

Every arm is scored on the same splits, negatives and users (the XMarket / FOREC
protocol of ``common.protocol``): the target market's users' latest items ranked
against 99 sampled negatives (NDCG@10, HR@10) and against the whole catalogue
(``ndcg@10-full``). Every tuned arm chooses its hyperparameters on validation items
only, with the same number of configurations (``SEARCH_BUDGET``). Federated arms train
over the source markets, each split into ``--merchants-per-market`` merchants, through
Flower's simulation engine (``--engine flower``, the default) or the in-process engine
(``--engine inprocess``), which computes the same θ for the same seed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from common import baselines
from common.adapt import MerchantData, score_held_out
from common.algorithms import train_pooled
from common.config import (
    AdaptConfig,
    DataConfig,
    DefenceConfig,
    MetaConfig,
    ModelConfig,
    RunConfig,
)
from common.data import TableColumns, load_interactions
from common.evaluation import Budget, adapted_parameters
from common.federation import source_merchants
from common.metrics import (
    bootstrap_ci,
    full_catalogue_ranks,
    hit_rate,
    ndcg,
    paired_comparison,
    rank_of_positive,
)
from common.model import init_parameters
from common.protocol import MarketSplit, split_markets, truncate_shots

logger = logging.getLogger("simulations.benchmark")

ARMS = (
    "popularity",
    "itemknn",
    "neumf-local",
    "local",
    "fedavg",
    "fedavg-finetune",
    "fomaml",
    "reptile",
    "pooled",
    "pooled-itemknn",
)
PRIVATE_ARMS = ARMS[:-2]
FEDERATED = {
    "fedavg": "fedavg",
    "fedavg-finetune": "fedavg",
    "fomaml": "fomaml",
    "reptile": "reptile",
}
METRICS = ("ndcg@10", "hr@10", "ndcg@10-full")

# Every tuned arm may try this many configurations on validation items.
SEARCH_BUDGET = 4
# Adaptation budgets a merchant starting from a federated θ may choose from.
ADAPT_GRID = (
    Budget(20, 0.001, 256),
    Budget(50, 0.003, 256),
    Budget(100, 0.003, 256),
    Budget(300, 0.003, 256),
)
# A merchant starting from scratch needs longer; same number of choices.
LOCAL_GRID = (
    Budget(100, 0.003, 256),
    Budget(300, 0.003, 256),
    Budget(300, 0.01, 256),
    Budget(1000, 0.003, 256),
)
# Adaptation steps at which the report's steps plot is drawn.
STEPS_CURVE = (0, 10, 30, 100, 300)


@dataclass(frozen=True)
class Settings:
    """The federated training every federated arm gets (fixed, not tuned on test)."""

    model: ModelConfig
    adapt: AdaptConfig
    rounds: int
    merchants_per_market: int
    meta_lr: float = 1.0
    meta_lr_final: float = 0.1
    search_budget: int = SEARCH_BUDGET
    neumf_epochs: int = 25


FULL = Settings(
    model=ModelConfig(embedding_dim=32, num_buckets=32768, max_history=50),
    adapt=AdaptConfig(inner_steps=50, inner_lr=0.003, batch_size=256),
    rounds=10,
    merchants_per_market=2,
)
QUICK = Settings(
    model=ModelConfig(embedding_dim=16, num_buckets=8192, max_history=30),
    adapt=AdaptConfig(inner_steps=20, inner_lr=0.003, batch_size=128),
    rounds=2,
    merchants_per_market=1,
    search_budget=2,
    neumf_epochs=3,
)


@dataclass
class ArmScores:
    """Per-user test metrics of one arm on one target, shots and seed."""

    ndcg: np.ndarray
    hr: np.ndarray
    ndcg_full: np.ndarray

    def metric(self, name: str) -> np.ndarray:
        """The per-user array of ``name`` (one of METRICS)."""
        return {"ndcg@10": self.ndcg, "hr@10": self.hr, "ndcg@10-full": self.ndcg_full}[
            name
        ]


def scores_from_catalogue(
    catalogue_scores: np.ndarray, split: MarketSplit
) -> ArmScores:
    """Protocol metrics from ``(U, C)`` scores of the split's catalogue."""
    candidates = np.concatenate(
        [split.test_item[:, None], split.test_negatives], axis=1
    )
    picked = np.take_along_axis(catalogue_scores, candidates, axis=1)
    ranks = rank_of_positive(picked[:, 0], picked[:, 1:])
    full = full_catalogue_ranks(catalogue_scores, split.test_item, split.support)
    return ArmScores(ndcg(ranks), hit_rate(ranks), ndcg(full))


def valid_ndcg(catalogue_scores: np.ndarray, split: MarketSplit) -> float:
    """Validation NDCG@10 (the only number hyperparameters are chosen on)."""
    candidates = np.concatenate(
        [split.valid_item[:, None], split.valid_negatives], axis=1
    )
    picked = np.take_along_axis(catalogue_scores, candidates, axis=1)
    return float(ndcg(rank_of_positive(picked[:, 0], picked[:, 1:])).mean())


def model_scores(
    parameters: dict[str, np.ndarray],
    data: MerchantData,
    split: MarketSplit,
    model: ModelConfig,
) -> np.ndarray:
    """``(U, C)`` scores of the project's model over the target's catalogue."""
    scores = score_held_out(parameters, data, split, model, "test", full_catalogue=True)
    assert scores.catalogue is not None
    return scores.catalogue


def tuned_adaptation(
    start: dict[str, np.ndarray],
    data: MerchantData,
    split: MarketSplit,
    model: ModelConfig,
    grid: Sequence[Budget],
    seed: int,
    search_budget: int = SEARCH_BUDGET,
) -> tuple[Budget, dict[str, np.ndarray]]:
    """Adapt ``start`` with every budget of ``grid``; keep the best on validation."""
    best: tuple[float, Budget, dict[str, np.ndarray]] | None = None
    for budget in grid[:search_budget]:
        parameters = adapted_parameters(start, data, model, budget, seed)
        score = valid_ndcg(model_scores(parameters, data, split, model), split)
        if best is None or score > best[0]:
            best = (score, budget, parameters)
    assert best is not None
    return best[1], best[2]


# ---------------------------------------------------------------------------------
# Federated training
# ---------------------------------------------------------------------------------


def run_config_for(
    settings: Settings, data: DataConfig, algorithm: str, seed: int
) -> RunConfig:
    """The run configuration of one federated training."""
    final = 1.0 if algorithm == "fedavg" else settings.meta_lr_final
    return RunConfig(
        model=settings.model,
        adapt=settings.adapt,
        meta=MetaConfig(
            num_rounds=settings.rounds,
            algorithm=algorithm,
            meta_lr=settings.meta_lr,
            meta_lr_final=final,
            min_train_merchants=1,
        ),
        data=replace(data, seed=seed),
        # The textbook algorithms: plain weighted mean, no clipping. The defences are
        # measured on their own by simulations.attacks.
        defence=DefenceConfig(clip_norm=0.0, aggregation="mean"),
        seed=seed,
    )


def train_federated(
    engine: str,
    config: RunConfig,
    codec: str = "float32",
    progress: Callable[[str], None] | None = None,
) -> dict[str, np.ndarray]:
    """θ after federated training over the source merchants, on ``engine``."""
    merchants = source_merchants(config.data)
    if engine == "inprocess":
        from simulations.inprocess import run_inprocess

        def on_round(server_round: int, _: dict[str, np.ndarray]) -> None:
            if progress is not None:
                progress(
                    f"{config.meta.algorithm} round {server_round}/"
                    f"{config.meta.num_rounds}"
                )

        return run_inprocess(
            config, merchants, codec=codec, on_round=on_round
        ).parameters

    from server.checkpoint import load_checkpoint
    from simulations.simulate import run_flower

    run_dir = Path(tempfile.mkdtemp(prefix="merchant-meta-benchmark-"))
    run_config: dict[str, str | int | float | bool] = {
        "run-dir": str(run_dir),
        "seed": config.seed,
        "data-format": config.data.data_format,
        "data-path": config.data.data_path,
        "source-markets": ",".join(config.data.source_markets),
        "target-markets": "",
        "merchants-per-market": config.data.merchants_per_market,
        "user-col": config.data.user_col,
        "item-col": config.data.item_col,
        "time-col": config.data.time_col,
        "value-col": config.data.value_col,
        "market-col": config.data.market_col,
        "implicit": config.data.implicit,
        "num-rounds": config.meta.num_rounds,
        "algorithm": config.meta.algorithm,
        "meta-lr": config.meta.meta_lr,
        "meta-lr-final": config.meta.meta_lr_final,
        "min-train-merchants": 1,
        "inner-steps": config.adapt.inner_steps,
        "inner-lr": config.adapt.inner_lr,
        "batch-size": config.adapt.batch_size,
        "embedding-dim": config.model.embedding_dim,
        "num-buckets": config.model.num_buckets,
        "max-history": config.model.max_history,
        "recency": config.model.recency,
        "server-eval": False,
        "clip-norm": config.defence.clip_norm,
        "aggregation": config.defence.aggregation,
        "codec": codec,
    }
    code = run_flower(run_config, len(merchants))
    checkpoint = load_checkpoint(run_dir)
    if (
        code != 0
        or checkpoint is None
        or checkpoint.server_round != config.meta.num_rounds
    ):
        raise RuntimeError(
            f"benchmark: the Flower simulation in {run_dir} did not finish "
            f"(exit {code}); rerun with --engine inprocess or see its log"
        )
    return checkpoint.parameters


# ---------------------------------------------------------------------------------
# One target
# ---------------------------------------------------------------------------------


@dataclass
class TargetResult:
    """Per-user scores of every arm, keyed by (arm, shots), one entry per seed."""

    target: str
    scores: dict[tuple[str, str], list[ArmScores]]
    chosen: dict[tuple[str, str], list[str]]
    steps_curve: dict[str, list[float]]


def run_target(
    target: str,
    sources: Sequence[str],
    splits: dict[str, MarketSplit],
    data: DataConfig,
    settings: Settings,
    arms: Sequence[str],
    shots_list: Sequence[str],
    seeds: int,
    engine: str,
    codec: str,
    progress: Callable[[str, int], None],
) -> TargetResult:
    """Every arm on one target market, for every shots setting and seed."""
    model = settings.model
    result = TargetResult(target, {}, {}, {})
    fed_data = replace(data, source_markets=tuple(sources), target_markets=(target,))
    others = [splits[m] for m in sources]

    def status(label: str) -> None:
        progress(f"{target} seed {seed}: {label}", 0)

    def add(arm: str, shots: str, scores: ArmScores, chosen: str = "") -> None:
        result.scores.setdefault((arm, shots), []).append(scores)
        result.chosen.setdefault((arm, shots), []).append(chosen)
        progress(f"{target} {arm} shots={shots}", 1)

    for seed in range(seeds):
        torch.manual_seed(seed)
        thetas = {
            algorithm: train_federated(
                engine,
                run_config_for(settings, fed_data, algorithm, seed),
                codec,
                status,
            )
            for algorithm in sorted({FEDERATED[a] for a in arms if a in FEDERATED})
        }
        for shots in shots_list:
            split = truncate_shots(
                splits[target], None if shots == "all" else int(shots)
            )
            merchant = MerchantData.from_split(split, model)

            if "popularity" in arms:
                add(
                    "popularity",
                    shots,
                    scores_from_catalogue(
                        baselines.PopularityScorer().score(split), split
                    ),
                )
            if "itemknn" in arms:
                params = baselines.tune(
                    baselines.ItemKNNScorer,
                    baselines.ITEMKNN_GRID,
                    split,
                    settings.search_budget,
                    seed,
                )
                add(
                    "itemknn",
                    shots,
                    scores_from_catalogue(
                        baselines.ItemKNNScorer(**params).score(split), split
                    ),
                    str(params),
                )
            if "pooled-itemknn" in arms:

                def pooled_factory(**kwargs: Any) -> baselines.PooledItemKNNScorer:
                    return baselines.PooledItemKNNScorer(others, **kwargs)

                params = baselines.tune(
                    pooled_factory,
                    baselines.ITEMKNN_GRID,
                    split,
                    settings.search_budget,
                    seed,
                )
                add(
                    "pooled-itemknn",
                    shots,
                    scores_from_catalogue(pooled_factory(**params).score(split), split),
                    str(params),
                )
            if "neumf-local" in arms:
                scorer = baselines.NeuMFScorer(
                    epochs=settings.neumf_epochs, seed=seed, threads=1
                )
                add(
                    "neumf-local",
                    shots,
                    scores_from_catalogue(scorer.score(split), split),
                    "published configuration",
                )
            if "local" in arms:
                budget, parameters = tuned_adaptation(
                    init_parameters(model, seed),
                    merchant,
                    split,
                    model,
                    LOCAL_GRID,
                    seed,
                    settings.search_budget,
                )
                add(
                    "local",
                    shots,
                    scores_from_catalogue(
                        model_scores(parameters, merchant, split, model), split
                    ),
                    f"{budget.steps} steps, lr {budget.lr}",
                )
            if "fedavg" in arms:
                add(
                    "fedavg",
                    shots,
                    scores_from_catalogue(
                        model_scores(thetas["fedavg"], merchant, split, model), split
                    ),
                    "no adaptation",
                )
            for arm in ("fedavg-finetune", "fomaml", "reptile"):
                if arm not in arms:
                    continue
                start = thetas[FEDERATED[arm]]
                budget, parameters = tuned_adaptation(
                    start,
                    merchant,
                    split,
                    model,
                    ADAPT_GRID,
                    seed,
                    settings.search_budget,
                )
                add(
                    arm,
                    shots,
                    scores_from_catalogue(
                        model_scores(parameters, merchant, split, model), split
                    ),
                    f"{budget.steps} steps, lr {budget.lr}",
                )
                if seed == 0 and shots == shots_list[0]:
                    result.steps_curve[arm] = [
                        float(
                            ndcg(
                                rank_of_positive(
                                    *_picked(
                                        adapted_parameters(
                                            start,
                                            merchant,
                                            model,
                                            Budget(steps, budget.lr, budget.batch_size),
                                            seed,
                                        ),
                                        merchant,
                                        split,
                                        model,
                                    )
                                )
                            ).mean()
                        )
                        for steps in STEPS_CURVE
                    ]
            if "local" in arms and seed == 0 and shots == shots_list[0]:
                start = init_parameters(model, seed)
                result.steps_curve["local"] = [
                    float(
                        ndcg(
                            rank_of_positive(
                                *_picked(
                                    adapted_parameters(
                                        start,
                                        merchant,
                                        model,
                                        Budget(steps, 0.003, 256),
                                        seed,
                                    ),
                                    merchant,
                                    split,
                                    model,
                                )
                            )
                        ).mean()
                    )
                    for steps in STEPS_CURVE
                ]
            if "pooled" in arms:
                pooled_sources = [
                    MerchantData.from_split(m.split, model)
                    for m in source_merchants(fed_data)
                ]
                steps = (
                    settings.rounds * settings.adapt.inner_steps * len(pooled_sources)
                )
                parameters = train_pooled(
                    init_parameters(model, seed),
                    [*pooled_sources, merchant],
                    model,
                    replace(settings.adapt, inner_steps=steps),
                    seed,
                )
                add(
                    "pooled",
                    shots,
                    scores_from_catalogue(
                        model_scores(parameters, merchant, split, model), split
                    ),
                    f"{steps} central steps",
                )
    return result


def _picked(
    parameters: dict[str, np.ndarray],
    data: MerchantData,
    split: MarketSplit,
    model: ModelConfig,
) -> tuple[np.ndarray, np.ndarray]:
    scores = score_held_out(parameters, data, split, model, "test")
    return scores.positive, scores.negatives


# ---------------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------------


def summarise(results: Sequence[TargetResult]) -> dict[str, list[dict[str, object]]]:
    """The flat ``results`` and paired ``comparisons`` lists of the JSON contract."""
    rows: list[dict[str, object]] = []
    comparisons: list[dict[str, object]] = []
    for target_result in results:
        per_user: dict[tuple[str, str, str], np.ndarray] = {}
        for (arm, shots), runs in target_result.scores.items():
            for metric in METRICS:
                by_seed = np.stack([run.metric(metric) for run in runs])  # (S, U)
                users = by_seed.mean(axis=0)
                per_user[(arm, shots, metric)] = users
                lo, hi = bootstrap_ci(users, seed=0)
                rows.append(
                    {
                        "arm": arm,
                        "target": target_result.target,
                        "shots": shots if shots == "all" else int(shots),
                        "metric": metric,
                        "mean": float(users.mean()),
                        "ci95": [lo, hi],
                        "seeds": [float(v) for v in by_seed.mean(axis=1)],
                    }
                )
        for (arm, shots, metric), users in per_user.items():
            if arm == "reptile" or ("reptile", shots, metric) not in per_user:
                continue
            paired = paired_comparison(
                per_user[("reptile", shots, metric)], users, seed=0
            )
            comparisons.append(
                {
                    "target": target_result.target,
                    "shots": shots if shots == "all" else int(shots),
                    "metric": metric,
                    "arm": arm,
                    "difference": paired.difference,
                    "ci95": list(paired.ci95),
                    "p": paired.p,
                }
            )
    return {"results": rows, "comparisons": comparisons}


def print_table(
    summary: dict[str, list[dict[str, object]]], metric: str = "ndcg@10"
) -> str:
    """A plain-text table: arms down, (target, shots) across, for ``metric``."""
    rows = [r for r in summary["results"] if r["metric"] == metric]
    columns = sorted(
        {(str(r["target"]), str(r["shots"])) for r in rows},
        key=lambda c: (c[1] != "all", c[1], c[0]),
    )
    arms = [a for a in ARMS if any(r["arm"] == a for r in rows)]
    value = {
        (str(r["arm"]), str(r["target"]), str(r["shots"])): float(str(r["mean"]))
        for r in rows
    }
    header = f"{metric:<16}" + "".join(f"{t + '/' + s:>10}" for t, s in columns)
    lines = [header, "-" * len(header)]
    for arm in arms:
        cells = "".join(
            f"{value[(arm, t, s)]:>10.4f}" if (arm, t, s) in value else f"{'':>10}"
            for t, s in columns
        )
        lines.append(f"{arm:<16}{cells}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see DESIGN.md for the contract)."""
    parser = argparse.ArgumentParser(
        description="Cold-start benchmark of merchant-meta"
    )
    parser.add_argument(
        "--data", required=True, help="XMarket directory or a CSV/Parquet log"
    )
    parser.add_argument("--format", required=True, choices=["xmarket", "table"])
    parser.add_argument("--user-col", default="user")
    parser.add_argument("--item-col", default="item")
    parser.add_argument("--time-col", default="time")
    parser.add_argument("--value-col", default=None)
    parser.add_argument("--market-col", default=None)
    parser.add_argument(
        "--implicit", action="store_true", help="a row with value > 0 is a purchase"
    )
    parser.add_argument("--sources", default="", help="source markets, comma separated")
    parser.add_argument("--targets", default="", help="target markets, comma separated")
    parser.add_argument(
        "--leave-one-market-out",
        action="store_true",
        help="each market in turn as the target",
    )
    parser.add_argument(
        "--shots", default="all", help="comma separated: all and/or numbers"
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--merchants-per-market", type=int, default=None)
    parser.add_argument("--engine", default="flower", choices=["flower", "inprocess"])
    parser.add_argument("--codec", default="float32")
    parser.add_argument("--out", default=None, help="JSON results")
    parser.add_argument(
        "--report", default=None, help="directory for the Markdown report and plots"
    )
    parser.add_argument("--quick", action="store_true", help="a reduced run for CI")
    parser.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="JSON",
        help="combine the JSON of runs over disjoint targets (run in parallel) into "
        "--out and --report, and run nothing",
    )
    return parser.parse_args(argv)


def merge_documents(paths: Sequence[str]) -> dict[str, object]:
    """One benchmark document from several over disjoint targets."""
    documents = [json.loads(Path(path).read_text()) for path in paths]
    merged: dict[str, object] = {
        "command": " ; ".join(d["command"] for d in documents),
        "seconds": max(d["seconds"] for d in documents),
        "settings": documents[0]["settings"],
        "chosen": [c for d in documents for c in d["chosen"]],
        "steps_curve": {k: v for d in documents for k, v in d["steps_curve"].items()},
        "results": [r for d in documents for r in d["results"]],
        "comparisons": [c for d in documents for c in d["comparisons"]],
    }
    return merged


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the table; write the JSON and the report."""
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    logger.setLevel(logging.INFO)
    args = parse_args(argv)
    if args.merge:
        document = merge_documents(args.merge)
        write_outputs(document, args.out, args.report)
        merged = {"results": document["results"]}
        for metric in METRICS:
            print(print_table(merged, metric))  # type: ignore[arg-type]
            print()
        return 0
    torch.set_num_threads(1)
    settings = QUICK if args.quick else FULL
    if args.merchants_per_market is not None:
        settings = replace(settings, merchants_per_market=args.merchants_per_market)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise SystemExit(f"benchmark: unknown arms {unknown}; expected some of {ARMS}")
    shots_list = [s.strip() for s in args.shots.split(",") if s.strip()]
    for shots in shots_list:
        if shots != "all" and not (shots.isdigit() and int(shots) > 0):
            raise SystemExit(
                f"benchmark: --shots takes 'all' or positive numbers, got {shots!r}"
            )

    started = time.monotonic()
    columns = TableColumns(
        args.user_col, args.item_col, args.time_col, args.value_col, args.market_col
    )
    frame = load_interactions(
        args.data, args.format, columns=columns, implicit=args.implicit
    )
    splits = split_markets(frame)
    markets = sorted(splits)
    targets = [t for t in args.targets.split(",") if t] or (
        markets if args.leave_one_market_out else []
    )
    if not targets:
        raise SystemExit("benchmark: name --targets or give --leave-one-market-out")
    missing = [m for m in [*targets, *args.sources.split(",")] if m and m not in splits]
    if missing:
        raise SystemExit(
            f"benchmark: markets {missing} not in {args.data}; found {markets}"
        )
    if args.quick:
        targets = targets[:1]
    data = DataConfig(
        data_format=args.format,
        data_path=str(Path(args.data).resolve()),
        merchants_per_market=settings.merchants_per_market,
        user_col=args.user_col,
        item_col=args.item_col,
        time_col=args.time_col,
        value_col=args.value_col or "",
        market_col=args.market_col or "",
        implicit=args.implicit,
    )
    plan = []
    for target in targets:
        sources = [m for m in args.sources.split(",") if m] or [
            m for m in markets if m != target
        ]
        if args.quick:
            sources = sources[:2]
        plan.append((target, sources))
    total = len(plan) * args.seeds * len(shots_list) * len(arms)
    logger.info(
        "benchmark: %d targets, arms %s, shots %s, %d seeds, engine %s",
        len(plan),
        ",".join(arms),
        ",".join(shots_list),
        args.seeds,
        args.engine,
    )
    results = []
    with tqdm(total=total, desc="benchmark", unit="arm", file=sys.stderr) as bar:

        def progress(label: str, done: int) -> None:
            bar.set_postfix_str(label)
            bar.update(done)

        for target, sources in plan:
            results.append(
                run_target(
                    target,
                    sources,
                    splits,
                    data,
                    settings,
                    arms,
                    shots_list,
                    args.seeds,
                    args.engine,
                    args.codec,
                    progress,
                )
            )
    summary = summarise(results)
    elapsed = time.monotonic() - started
    for metric in METRICS:
        print(print_table(summary, metric))
        print()
    print(f"benchmark: {elapsed:.0f}s")

    document = {
        "command": " ".join(
            [
                "python -m simulations.benchmark",
                *(argv if argv is not None else sys.argv[1:]),
            ]
        ),
        "seconds": elapsed,
        "settings": {
            "rounds": settings.rounds,
            "inner_steps": settings.adapt.inner_steps,
            "inner_lr": settings.adapt.inner_lr,
            "batch_size": settings.adapt.batch_size,
            "embedding_dim": settings.model.embedding_dim,
            "num_buckets": settings.model.num_buckets,
            "merchants_per_market": settings.merchants_per_market,
            "engine": args.engine,
            "codec": args.codec,
            "search_budget": settings.search_budget,
        },
        "chosen": [
            {"target": r.target, "arm": arm, "shots": shots, "chosen": chosen}
            for r in results
            for (arm, shots), chosen in r.chosen.items()
        ],
        "steps_curve": {
            r.target: {"steps": list(STEPS_CURVE), **r.steps_curve} for r in results
        },
        **summary,
    }
    write_outputs(document, args.out, args.report)
    return 0


def write_outputs(
    document: dict[str, object], out: str | None, report: str | None
) -> None:
    """Write the JSON document and the Markdown report, where asked."""
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(document, indent=1))
        logger.info("benchmark: results written to %s", out)
    if report:
        from simulations.benchmark_report import write_benchmark_report

        path = write_benchmark_report(document, Path(report))
        logger.info("benchmark: report written to %s", path)


if __name__ == "__main__":
    sys.exit(main())
