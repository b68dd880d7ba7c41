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
import hashlib
import json
import logging
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, replace
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
from common.evaluation import Budget, adapted_budgets
from common.federation import source_merchants
from common.files import write_text_atomic
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
# Adaptation budgets a merchant starting from a federated θ may choose from. The
# last three move the item vectors slowly and learn the market's own item popularity
# (the biases) thirty times faster; the last then trusts the taste term half as much
# against that popularity (with one interaction per customer the support data cannot
# say how far to trust it).
ADAPT_GRID = (
    Budget(300, 0.003, 256),
    Budget(100, 0.001, 256, bias_lr=0.03),
    Budget(300, 0.001, 256, bias_lr=0.03),
    Budget(300, 0.001, 256, bias_lr=0.03, taste_scale=0.5),
)
# A merchant starting from scratch needs longer; same number of choices, two of them
# with the same fast popularity step and one with the same halved trust.
LOCAL_GRID = (
    Budget(300, 0.003, 256),
    Budget(1000, 0.003, 256),
    Budget(300, 0.003, 256, bias_lr=0.03),
    Budget(300, 0.003, 256, bias_lr=0.03, taste_scale=0.5),
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
    # Reptile's and first-order MAML's outer step, annealed linearly. Above 1 it
    # extrapolates the merchants' mean delta: θ carries more of the sources'
    # co-occurrence after the same rounds (chosen on validation items).
    meta_lr: float = 3.0
    meta_lr_final: float = 0.3
    search_budget: int = SEARCH_BUDGET
    neumf_epochs: int = 25


FULL = Settings(
    model=ModelConfig(embedding_dim=32, num_buckets=32768, max_history=50),
    adapt=AdaptConfig(inner_steps=20, inner_lr=0.01, batch_size=256),
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
    chosen = grid[:search_budget]
    for budget, parameters in adapted_budgets(start, data, model, chosen, seed).items():
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
    """The run configuration of one federated training: the meta-learners take
    the settings' annealed outer step, FedAvg its textbook step of 1."""
    fedavg = algorithm == "fedavg"
    return RunConfig(
        model=settings.model,
        adapt=settings.adapt,
        meta=MetaConfig(
            num_rounds=settings.rounds,
            algorithm=algorithm,
            meta_lr=1.0 if fedavg else settings.meta_lr,
            meta_lr_final=1.0 if fedavg else settings.meta_lr_final,
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


@dataclass(frozen=True)
class Job:
    """One unit of the benchmark: every arm on one target for one seed."""

    target: str
    sources: tuple[str, ...]
    seed: int


def run_job(
    job: Job,
    splits: dict[str, MarketSplit],
    data: DataConfig,
    settings: Settings,
    arms: Sequence[str],
    shots_list: Sequence[str],
    engine: str,
    codec: str,
    progress: Callable[[str, int], None],
) -> TargetResult:
    """Every arm on one target market for one seed, for every shots setting."""
    model = settings.model
    target, sources, seed = job.target, job.sources, job.seed
    result = TargetResult(target, {}, {}, {})
    fed_data = replace(data, source_markets=tuple(sources), target_markets=(target,))
    others = [splits[m] for m in sources]

    def status(label: str) -> None:
        progress(f"{target} seed {seed}: {label}", 0)

    def add(arm: str, shots: str, scores: ArmScores, chosen: str = "") -> None:
        result.scores.setdefault((arm, shots), []).append(scores)
        result.chosen.setdefault((arm, shots), []).append(chosen)
        progress(f"{target} seed {seed}: {arm} shots={shots}", 1)

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
        split = truncate_shots(splits[target], None if shots == "all" else int(shots))
        merchant = MerchantData.from_split(split, model)

        if "popularity" in arms:
            add(
                "popularity",
                shots,
                scores_from_catalogue(baselines.PopularityScorer().score(split), split),
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
                budget.describe(),
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
                budget.describe(),
            )
            if seed == 0 and shots == shots_list[0]:
                result.steps_curve[arm] = steps_curve(
                    start, merchant, split, model, budget, seed
                )
        if "local" in arms and seed == 0 and shots == shots_list[0]:
            result.steps_curve["local"] = steps_curve(
                init_parameters(model, seed),
                merchant,
                split,
                model,
                Budget(0, 0.003, 256),
                seed,
            )
        if "pooled" in arms:
            # Central training on the sources and the target's support, as long as
            # the federated training's total steps at most; the length is chosen
            # on validation items from the search budget's checkpoints of one run.
            pooled_sources = [
                MerchantData.from_split(m.split, model)
                for m in source_merchants(fed_data)
            ]
            longest = settings.rounds * settings.adapt.inner_steps * len(pooled_sources)
            lengths = [
                longest >> halvings
                for halvings in reversed(range(settings.search_budget))
            ]
            trained = train_pooled(
                init_parameters(model, seed),
                [*pooled_sources, merchant],
                model,
                replace(settings.adapt, inner_steps=longest),
                seed,
                snapshots=lengths,
            )
            steps = max(
                lengths,
                key=lambda n: valid_ndcg(
                    model_scores(trained[n], merchant, split, model), split
                ),
            )
            add(
                "pooled",
                shots,
                scores_from_catalogue(
                    model_scores(trained[steps], merchant, split, model), split
                ),
                f"{steps} central steps",
            )
    return result


def combine(results: Sequence[TargetResult]) -> list[TargetResult]:
    """One result per target holding every seed's scores, in job order."""
    merged: dict[str, TargetResult] = {}
    for result in results:
        into = merged.setdefault(result.target, TargetResult(result.target, {}, {}, {}))
        for key, runs in result.scores.items():
            into.scores.setdefault(key, []).extend(runs)
        for key, chosen in result.chosen.items():
            into.chosen.setdefault(key, []).extend(chosen)
        into.steps_curve.update(result.steps_curve)  # only seed 0 draws the curves
    return list(merged.values())


def result_to_json(result: TargetResult) -> dict[str, Any]:
    """A finished job as plain JSON (kept on disk so a rerun can skip it)."""
    return {
        "target": result.target,
        "scores": {
            f"{arm}|{shots}": [
                {
                    "ndcg": s.ndcg.tolist(),
                    "hr": s.hr.tolist(),
                    "full": s.ndcg_full.tolist(),
                }
                for s in runs
            ]
            for (arm, shots), runs in result.scores.items()
        },
        "chosen": {f"{a}|{s}": c for (a, s), c in result.chosen.items()},
        "steps_curve": result.steps_curve,
    }


def result_from_json(document: dict[str, Any]) -> TargetResult:
    """The inverse of :func:`result_to_json`."""

    def key(text: str) -> tuple[str, str]:
        arm, shots = text.split("|")
        return arm, shots

    return TargetResult(
        target=document["target"],
        scores={
            key(k): [
                ArmScores(np.array(r["ndcg"]), np.array(r["hr"]), np.array(r["full"]))
                for r in runs
            ]
            for k, runs in document["scores"].items()
        },
        chosen={key(k): list(v) for k, v in document["chosen"].items()},
        steps_curve=document["steps_curve"],
    )


@dataclass(frozen=True)
class Plan:
    """What every job shares: the data, the settings, the arms and shots."""

    splits: dict[str, MarketSplit]
    data: DataConfig
    settings: Settings
    arms: tuple[str, ...]
    shots_list: tuple[str, ...]
    engine: str
    codec: str

    def job_key(self, job: Job) -> str:
        """A digest of everything that decides a job's result."""
        text = json.dumps(
            [
                asdict(job),
                repr(self.settings),
                repr(replace(self.data, data_path=Path(self.data.data_path).name)),
                self.arms,
                self.shots_list,
                self.engine,
                self.codec,
            ]
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _job_in_worker(plan: Plan, job: Job, queue: Any) -> TargetResult:
    """Run one job in a worker process, reporting progress through ``queue``."""
    torch.set_num_threads(1)

    def progress(label: str, done: int) -> None:
        queue.put((label, done))

    return run_job(
        job,
        plan.splits,
        plan.data,
        plan.settings,
        plan.arms,
        plan.shots_list,
        plan.engine,
        plan.codec,
        progress,
    )


def run_jobs(
    plan: Plan,
    jobs: Sequence[Job],
    workers: int,
    parts: Path | None,
    progress: Callable[[str, int], None],
) -> list[TargetResult]:
    """Run ``jobs`` on ``workers`` processes; keep each finished job under ``parts``.

    A job whose part is already there (same data, settings, arms and shots) is read
    back instead of run again, so an interrupted benchmark resumes where it stopped.
    """
    done: dict[Job, TargetResult] = {}
    if parts is not None:
        parts.mkdir(parents=True, exist_ok=True)
        for job in jobs:
            path = parts / f"{job.target}-seed{job.seed}-{plan.job_key(job)}.json"
            if path.exists():
                done[job] = result_from_json(json.loads(path.read_text()))
                progress(f"{job.target} seed {job.seed}: read back from {path}", 0)
                progress("", len(plan.arms) * len(plan.shots_list))

    def keep(job: Job, result: TargetResult) -> None:
        done[job] = result
        if parts is not None:
            path = parts / f"{job.target}-seed{job.seed}-{plan.job_key(job)}.json"
            write_text_atomic(path, json.dumps(result_to_json(result)))

    # Largest targets first, so that no worker is left with a long job at the end.
    pending = sorted(
        (job for job in jobs if job not in done),
        key=lambda job: -plan.splits[job.target].num_users,
    )
    if workers <= 1 or len(pending) <= 1:
        for job in pending:
            keep(
                job,
                run_job(
                    job,
                    plan.splits,
                    plan.data,
                    plan.settings,
                    plan.arms,
                    plan.shots_list,
                    plan.engine,
                    plan.codec,
                    progress,
                ),
            )
        return combine([done[job] for job in jobs])

    context = multiprocessing.get_context("spawn")
    with (
        context.Manager() as manager,
        ProcessPoolExecutor(min(workers, len(pending)), mp_context=context) as pool,
    ):
        queue = manager.Queue()
        futures = {
            pool.submit(_job_in_worker, plan, job, queue): job for job in pending
        }
        remaining = set(futures)
        while remaining:
            finished, remaining = wait(remaining, timeout=0.5)
            while not queue.empty():
                progress(*queue.get())
            for future in finished:
                keep(futures[future], future.result())
    return combine([done[job] for job in jobs])


def steps_curve(
    start: dict[str, np.ndarray],
    data: MerchantData,
    split: MarketSplit,
    model: ModelConfig,
    chosen: Budget,
    seed: int,
) -> list[float]:
    """Test NDCG@10 after each of ``STEPS_CURVE`` adaptation steps at the step sizes
    of ``chosen`` (for the plot)."""
    budgets = [replace(chosen, steps=steps) for steps in STEPS_CURVE]
    adapted = adapted_budgets(start, data, model, budgets, seed)
    return [
        float(ndcg(rank_of_positive(*_picked(adapted[b], data, split, model))).mean())
        for b in budgets
    ]


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


def private_arms_ahead(summary: dict[str, list[dict[str, object]]]) -> list[str]:
    """``target/shots: arm +difference`` wherever a private arm's mean NDCG@10 is
    above reptile's."""
    means = {
        (str(r["arm"]), str(r["target"]), str(r["shots"])): float(str(r["mean"]))
        for r in summary["results"]
        if r["metric"] == "ndcg@10"
    }
    ahead = []
    for arm, target, shots in sorted(means, key=lambda k: (k[1], k[2])):
        rivals = {
            a: v
            for (a, t, s), v in means.items()
            if (t, s) == (target, shots) and a in PRIVATE_ARMS and a != "reptile"
        }
        if arm != "reptile" or not rivals:
            continue
        best = max(rivals, key=lambda a: rivals[a])
        if rivals[best] > means[(arm, target, shots)]:
            difference = rivals[best] - means[(arm, target, shots)]
            ahead.append(f"{target}/{shots}: {best} +{difference:.4f}")
    return ahead


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
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="jobs (target, seed) run at once in separate processes (default: one "
        "per core with --engine inprocess, 1 with flower)",
    )
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
    if args.quick:  # the target with the fewest users: the quickest to score
        targets = [min(targets, key=lambda market: splits[market].num_users)]
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
    jobs: list[Job] = []
    for target in targets:
        sources = [m for m in args.sources.split(",") if m] or [
            m for m in markets if m != target
        ]
        if args.quick:
            sources = sources[:2]
        jobs.extend(Job(target, tuple(sources), seed) for seed in range(args.seeds))
    plan = Plan(
        splits, data, settings, tuple(arms), tuple(shots_list), args.engine, args.codec
    )
    workers = args.workers
    if workers is None:  # Flower's simulations each start their own SuperLink
        workers = 1 if args.engine == "flower" else (os.cpu_count() or 1)
    parts = Path(f"{args.out}.parts") if args.out else None
    total = len(jobs) * len(shots_list) * len(arms)
    logger.info(
        "benchmark: %d targets x %d seeds on %d workers, arms %s, shots %s, engine %s",
        len(targets),
        args.seeds,
        workers,
        ",".join(arms),
        ",".join(shots_list),
        args.engine,
    )
    with tqdm(total=total, desc="benchmark", unit="arm", file=sys.stderr) as bar:

        def progress(label: str, done: int) -> None:
            if label:
                bar.set_postfix_str(label)
            bar.update(done)

        results = run_jobs(plan, jobs, workers, parts, progress)
    summary = summarise(results)
    elapsed = time.monotonic() - started
    for metric in METRICS:
        print(print_table(summary, metric))
        print()
    print(f"benchmark: {elapsed:.0f}s")
    behind = private_arms_ahead(summary)
    if behind:
        logger.warning(
            "benchmark: reptile is not the best private arm (NDCG@10): %s",
            "; ".join(behind),
        )

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
