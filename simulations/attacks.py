"""The attack benchmark: one hostile merchant of eight, with and without each defence.

    python -m simulations.attacks [--quick] [--out attacks.json] [--no-flower]

Eight synthetic source merchants federate; one of them (``merchant-000``) is hostile
and, every round, sends instead of its honest delta:

| attack | what the hostile merchant sends |
|---|---|
| ``sign-flip`` | −Δ, pulling θ away from where the others push it |
| ``scale-100`` | 100·Δ |
| ``nan-inf`` | Δ with a NaN and an Inf in it |
| ``noise`` | Gaussian noise, 1 per coordinate, in place of Δ |
| ``promotion`` | Δ plus a boost of one product's bias (see below) |

The promotion raises one product's bias, the part of its score every customer shares,
by enough to lift it ``PROMOTION_LOGITS`` after the mean of 8 merchants (scaled by
8 / meta_lr: the model replacement of Bagdasaryan et al. 2020, "How To Backdoor
Federated Learning", arXiv 1807.00459). The product is sold by every new merchant
and shown to as few of their customers as possible in the clean run
(``promoted_item``).

Each attack runs under each defence (``none``: the Reptile weighted mean, nothing else;
``clip``, ``median``, ``trimmed-mean`` alone; ``default``: the run-config defaults) on
the same data and seeds, in the in-process engine. The held-out new merchants then
adapt θ as in every evaluation, and two numbers are reported relative to the clean run
(no attack, no defence): NDCG@10 of their test items against sampled negatives, and
the promoted product's exposure, the share of their customers whose top 10 over the
whole catalogue (without the customer's own items) holds it, relative to the clean
run's or, when that is smaller, to a randomly ranked product's (``chance_exposure``).

Replies holding NaN or Inf are rejected by the server's reply validation in every
configuration (it is not an option), so ``nan-inf`` shows that check at work.

One attacked run also goes through Flower's simulation engine, with a ClientApp that
wraps the merchants' real one and tampers with ``merchant-000``'s reply, and its θ is
compared with the in-process engine's: the strategy's path does the same thing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from common.adapt import MerchantData, adapt, score_held_out
from common.config import AdaptConfig, DataConfig, DefenceConfig, MetaConfig, RunConfig
from common.federation import new_merchants, source_merchants
from common.metrics import ndcg, rank_of_positive
from common.model import item_buckets
from common.protocol import MarketSplit
from simulations.inprocess import Tamper, run_inprocess

logger = logging.getLogger("simulations.attacks")

ROOT = Path(__file__).resolve().parents[1]
NUM_MERCHANTS = 8
HOSTILE = "merchant-000"
ATTACKS = ("none", "sign-flip", "scale-100", "nan-inf", "noise", "promotion")
# The boost a promotion asks of the *aggregated* θ, in logits of the item's score.
PROMOTION_LOGITS = 10.0


# ---------------------------------------------------------------------------
# The attacks: pure functions (round, merchant, θ, honest delta) -> sent delta
# ---------------------------------------------------------------------------
def sign_flip(delta: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """−Δ."""
    return {name: -array for name, array in delta.items()}


def scale(delta: dict[str, np.ndarray], factor: float) -> dict[str, np.ndarray]:
    """factor · Δ."""
    return {name: np.float32(factor) * array for name, array in delta.items()}


def nan_inf(delta: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Δ with its first value NaN and its last value Inf (in the first array)."""
    poisoned = {name: array.copy() for name, array in delta.items()}
    first = poisoned[sorted(poisoned)[0]].reshape(-1)
    first[0], first[-1] = np.nan, np.inf
    return poisoned


def noise(
    delta: dict[str, np.ndarray], rng: np.random.Generator, stddev: float = 1.0
) -> dict[str, np.ndarray]:
    """Gaussian noise shaped like Δ, in place of it."""
    return {
        name: rng.normal(0.0, stddev, size=array.shape).astype(np.float32)
        for name, array in delta.items()
    }


def promotion_boost(
    theta: dict[str, np.ndarray],
    rows: np.ndarray,
    logits: float,
    amplification: float,
) -> dict[str, np.ndarray]:
    """A delta that raises one product's score by ``logits`` for every customer once
    averaged with weight 1 / ``amplification``.

    The score is u·p + b, with b the sum of the product's two hashed bias rows
    (``common.model``): each row gets amplification · logits / 2.
    """
    boost = {name: np.zeros_like(array) for name, array in theta.items()}
    boost["item_bias.weight"][rows, 0] += amplification * logits / len(rows)
    return boost


@dataclass(frozen=True)
class Attack:
    """A hostile merchant's behaviour, as the in-process engine's ``tamper`` hook."""

    name: str
    config: RunConfig
    promoted_rows: np.ndarray
    amplification: float

    def __call__(
        self,
        server_round: int,
        merchant_id: str,
        theta: dict[str, np.ndarray],
        delta: dict[str, np.ndarray],
    ) -> dict[str, np.ndarray]:
        """The delta merchant ``merchant_id`` sends in ``server_round``."""
        if merchant_id != HOSTILE or self.name == "none":
            return delta
        if self.name == "sign-flip":
            return sign_flip(delta)
        if self.name == "scale-100":
            return scale(delta, 100.0)
        if self.name == "nan-inf":
            return nan_inf(delta)
        if self.name == "noise":
            rng = np.random.default_rng([self.config.seed, server_round, 404])
            return noise(delta, rng)
        if self.name == "promotion":
            boost = promotion_boost(
                theta, self.promoted_rows, PROMOTION_LOGITS, self.amplification
            )
            return {name: delta[name] + boost[name] for name in delta}
        raise ValueError(f"unknown attack {self.name!r}; expected one of {ATTACKS}")


# ---------------------------------------------------------------------------
# Scoring the new merchants: NDCG@10 and the promoted item's exposure
# ---------------------------------------------------------------------------
def top_k_exposure(
    scores: np.ndarray, item: int, exclude: Sequence[np.ndarray], k: int = 10
) -> np.ndarray:
    """(U,) whether ``item`` is in each user's top ``k`` of the catalogue.

    ``scores`` (U, C); each user's own items (``exclude``) are not recommended to
    them. A user who already has the item cannot be shown it: False.
    """
    scores = np.array(scores, dtype=np.float64)
    for user, items in enumerate(exclude):
        scores[user, items] = -np.inf
    item_scores = scores[:, item]
    higher = (scores > item_scores[:, None]).sum(axis=1)
    return np.isfinite(item_scores) & (higher < k)


@dataclass(frozen=True)
class Evaluation:
    """Cold-start scores of a θ on the new merchants."""

    ndcg: float
    exposure: float


def evaluate(
    theta: dict[str, np.ndarray],
    merchants: Sequence[tuple[MarketSplit, MerchantData]],
    config: RunConfig,
    promoted: str,
) -> Evaluation:
    """Adapt θ on each new merchant's support data; score test items and exposure."""
    evaluation = config.evaluation
    budget = AdaptConfig(
        evaluation.adapt_steps, evaluation.adapt_lr, config.adapt.batch_size
    )
    ndcgs, exposed = [], []
    for index, (split, data) in enumerate(merchants):
        if not all(np.isfinite(a).all() for a in theta.values()):
            ndcgs.append(np.zeros(split.num_users))
            exposed.append(np.ones(split.num_users, dtype=bool))
            continue
        adapted = adapt(theta, data, config.model, budget, seed=index).parameters
        scores = score_held_out(
            adapted, data, split, config.model, "test", full_catalogue=True
        )
        ranks = rank_of_positive(scores.positive, scores.negatives)
        ndcgs.append(ndcg(ranks, 10))
        codes = np.flatnonzero(split.item_ids == promoted)
        assert scores.catalogue is not None
        if len(codes) == 0:
            exposed.append(np.zeros(split.num_users, dtype=bool))
        else:
            exposed.append(
                top_k_exposure(scores.catalogue, int(codes[0]), split.support)
            )
    return Evaluation(
        float(np.concatenate(ndcgs).mean()), float(np.concatenate(exposed).mean())
    )


# ---------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------
def benchmark_config(quick: bool, seed: int = 0) -> RunConfig:
    """The federation every run shares: pyproject's defaults, fewer rounds."""
    return RunConfig(
        meta=MetaConfig(num_rounds=3 if quick else 8),
        adapt=AdaptConfig(inner_steps=10 if quick else 20),
        data=DataConfig(seed=seed),
        seed=seed,
    )


def defences(default: DefenceConfig) -> dict[str, DefenceConfig]:
    """Each defence alone, none, and the defaults. ``clip`` uses the default bound."""
    bound = default.clip_norm if default.clip_norm > 0 else 60.0
    return {
        "none": DefenceConfig(clip_norm=0.0, aggregation="mean"),
        "clip": DefenceConfig(clip_norm=bound, aggregation="mean"),
        "median": DefenceConfig(clip_norm=0.0, aggregation="median"),
        "trimmed-mean": DefenceConfig(
            clip_norm=0.0,
            aggregation="trimmed-mean",
            trim_fraction=default.trim_fraction,
        ),
        "default": default,
    }


def item_ranks(
    theta: dict[str, np.ndarray],
    merchants: Sequence[tuple[MarketSplit, MerchantData]],
    config: RunConfig,
) -> dict[str, tuple[float, float]]:
    """Exposure and mean rank (0 = top) of every product all new merchants sell, over
    their customers, after adaptation; a customer's own items are not ranked."""
    shared = set(merchants[0][0].item_ids)
    for split, _ in merchants[1:]:
        shared &= set(split.item_ids)
    budget = AdaptConfig(
        config.evaluation.adapt_steps,
        config.evaluation.adapt_lr,
        config.adapt.batch_size,
    )
    totals = dict.fromkeys(sorted(shared), 0.0)
    shown = dict.fromkeys(sorted(shared), 0)
    users = 0
    for index, (split, data) in enumerate(merchants):
        adapted = adapt(theta, data, config.model, budget, seed=index).parameters
        scores = score_held_out(
            adapted, data, split, config.model, "test", full_catalogue=True
        )
        assert scores.catalogue is not None
        catalogue = np.array(scores.catalogue, dtype=np.float64)
        for user, items in enumerate(split.support):
            catalogue[user, items] = -np.inf
        ranks = (-catalogue).argsort(axis=1).argsort(axis=1)  # (U, C) rank of item
        for item in totals:
            code = int(np.flatnonzero(split.item_ids == item)[0])
            totals[item] += float(ranks[:, code].sum())
            shown[item] += int((ranks[:, code] < 10).sum())
        users += split.num_users
    return {item: (shown[item] / users, totals[item] / users) for item in totals}


def chance_exposure(splits: Sequence[MarketSplit], k: int = 10) -> float:
    """The exposure of a product ranked at random: k / catalogue size, averaged over
    the customers. Exposure is reported relative to the clean run's, or to this when
    the clean one is smaller: a product nobody is shown in the clean run would
    otherwise make one or two customers' top 10 look like a doubling."""
    users = sum(split.num_users for split in splits)
    return sum(split.num_users * k / len(split.item_ids) for split in splits) / users


def promoted_item(ranks: dict[str, tuple[float, float]]) -> str:
    """The product to promote: one that the fewest customers are shown in the clean
    run, and among those the one whose mean rank is nearest the median: an ordinary
    product, not one at the bottom of everyone's list."""
    median = float(np.median([rank for _, rank in ranks.values()]))
    return min(
        ranks,
        key=lambda item: (ranks[item][0], abs(ranks[item][1] - median), item),
    )


@dataclass(frozen=True)
class Task:
    """One (attack, defence) run."""

    attack: str
    defence: str
    defence_config: DefenceConfig
    config: RunConfig
    promoted: str


def _run(task: Task) -> tuple[str, str, Evaluation, dict[str, np.ndarray]]:
    torch.set_num_threads(1)
    config = replace(task.config, defence=task.defence_config)
    sources = source_merchants(config.data, NUM_MERCHANTS)
    targets = [
        (m.split, MerchantData.from_split(m.split, config.model))
        for m in new_merchants(config.data)
    ]
    attack = Attack(
        task.attack,
        config,
        item_buckets([task.promoted], config.model.num_buckets)[0],
        amplification=NUM_MERCHANTS / config.meta.meta_lr,
    )
    started = time.monotonic()
    result = run_inprocess(config, sources, tamper=attack)
    scores = evaluate(result.parameters, targets, config, task.promoted)
    logger.info(
        "run: %s under %s: ndcg@10 %.4f, exposure %.4f, %.0fs",
        task.attack,
        task.defence,
        scores.ndcg,
        scores.exposure,
        time.monotonic() - started,
    )
    return task.attack, task.defence, scores, result.parameters


def run_benchmark(
    config: RunConfig, default: DefenceConfig, workers: int = 2
) -> tuple[
    list[dict[str, Any]], dict[str, Any], dict[tuple[str, str], dict[str, np.ndarray]]
]:
    """Every (attack, defence) pair; rows relative to the clean undefended run."""
    options = defences(default)
    targets = [
        (m.split, MerchantData.from_split(m.split, config.model))
        for m in new_merchants(config.data)
    ]

    # The clean run first: it decides which product the promotion pushes.
    _, _, _, clean_theta = _run(Task("none", "none", options["none"], config, ""))
    promoted = promoted_item(item_ranks(clean_theta, targets, config))
    clean = evaluate(clean_theta, targets, config, promoted)
    tasks = [
        Task(attack, name, defence, config, promoted)
        for attack in ATTACKS
        for name, defence in options.items()
        if (attack, name) != ("none", "none")
    ]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        outcomes = list(pool.map(_run, tasks))
    scores = {("none", "none"): clean, **{(a, d): s for a, d, s, _ in outcomes}}
    thetas = {("none", "none"): clean_theta, **{(a, d): t for a, d, _, t in outcomes}}
    floor = chance_exposure([split for split, _ in targets])
    rows = [
        {
            "attack": attack,
            "defence": defence,
            "ndcg@10-relative": s.ndcg / clean.ndcg,
            "exposure-relative": s.exposure / max(clean.exposure, floor),
            "ndcg@10": s.ndcg,
            "exposure": s.exposure,
        }
        for (attack, defence), s in scores.items()
    ]
    facts = {
        "promoted-item": promoted,
        "clean-ndcg@10": clean.ndcg,
        "clean-exposure": clean.exposure,
        "exposure-floor": floor,
    }
    return rows, facts, thetas


# ---------------------------------------------------------------------------
# The same attack through Flower
# ---------------------------------------------------------------------------
def flower_check(
    config: RunConfig, attack: str, defence: DefenceConfig, promoted: str
) -> dict[str, Any]:
    """Run ``attack`` under ``defence`` through ``flwr run`` with a tampering ClientApp;
    return θ's largest difference from the in-process engine's θ."""
    from server.checkpoint import load_checkpoint
    from simulations.simulate import flower_environment, render, stop_local_superlink

    work = Path(tempfile.mkdtemp(prefix="merchant-meta-attack-"))
    app_dir = work / "app"
    app_dir.mkdir()
    for package in ("common", "server", "client", "simulations"):
        shutil.copytree(
            ROOT / package,
            app_dir / package,
            ignore=shutil.ignore_patterns("__pycache__", "static"),
        )
    pyproject = (ROOT / "pyproject.toml").read_text()
    pyproject = pyproject.replace(
        'clientapp = "client.app:app"', 'clientapp = "simulations.attacks:hostile_app"'
    )
    pyproject = pyproject.replace(
        "[tool.flwr.app.config]\n",
        '[tool.flwr.app.config]\nattack = "none"\npromoted-item = ""\n',
    )
    (app_dir / "pyproject.toml").write_text(pyproject)
    run_dir = work / "run"
    run_config: dict[str, str | int | float | bool] = {
        "run-dir": str(run_dir),
        "seed": config.seed,
        "num-rounds": config.meta.num_rounds,
        "inner-steps": config.adapt.inner_steps,
        "server-eval": False,
        "attack": attack,
        "promoted-item": promoted,
        "clip-norm": defence.clip_norm,
        "aggregation": defence.aggregation,
        "trim-fraction": defence.trim_fraction,
    }
    overrides = " ".join(f"{k}={render(v)}" for k, v in run_config.items())
    env = flower_environment(work / "flwr-home")
    started = time.monotonic()
    import subprocess

    try:
        completed = subprocess.run(
            [
                str(Path(sys.executable).with_name("flwr")),
                "run",
                str(app_dir),
                "--stream",
                "--run-config",
                overrides,
                "--federation-config",
                f"num-supernodes={NUM_MERCHANTS} client-resources-num-cpus=1",
            ],
            env=env,
            cwd=app_dir,
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
    finally:
        stop_local_superlink(env)
    checkpoint = load_checkpoint(run_dir)
    if completed.returncode != 0 or checkpoint is None:
        tail = (completed.stdout + completed.stderr)[-3000:]
        raise RuntimeError(
            f"flower check: flwr run failed ({completed.returncode}):\n{tail}"
        )
    seconds = time.monotonic() - started

    # The same run in process.
    local = replace(config, defence=defence)
    sources = source_merchants(local.data, NUM_MERCHANTS)
    tamper: Tamper = Attack(
        attack,
        local,
        item_buckets([promoted], local.model.num_buckets)[0],
        amplification=NUM_MERCHANTS / local.meta.meta_lr,
    )
    inprocess = run_inprocess(local, sources, tamper=tamper).parameters
    difference = max(
        float(np.max(np.abs(checkpoint.parameters[k] - inprocess[k])))
        for k in inprocess
    )
    shutil.rmtree(work, ignore_errors=True)
    return {
        "attack": attack,
        "defence": (
            f"clip-norm {defence.clip_norm:g}, {defence.aggregation}"
            f" (trim-fraction {defence.trim_fraction:g})"
        ),
        "rounds": config.meta.num_rounds,
        "max-abs-difference": difference,
        "seconds": seconds,
    }


# The merchants' real ClientApp, with merchant-000's train reply tampered with.
hostile_app = ClientApp()


@hostile_app.train()
def hostile_train(msg: Message, context: Context) -> Message:
    """The honest train reply, then the run config's ``attack`` on merchant-000's."""
    from client.app import train
    from common.config import from_run_config

    reply = train(msg, context)
    name = str(context.run_config.get("attack", "none"))
    merchant_id = str(reply.content.config_records["merchant"]["merchant-id"])
    if name == "none" or merchant_id != HOSTILE:
        return reply
    config = from_run_config(context.run_config)
    promoted = str(context.run_config.get("promoted-item", ""))
    sent = msg.content.config_records.get("config", ConfigRecord())
    server_round = int(sent.get("server-round", 0))  # type: ignore[arg-type]
    theta = {k: v.numpy() for k, v in msg.content.array_records["theta"].items()}
    delta = {k: v.numpy() for k, v in reply.content.array_records["delta"].items()}
    attack = Attack(
        name,
        config,
        item_buckets([promoted], config.model.num_buckets)[0],
        amplification=NUM_MERCHANTS / config.meta.meta_lr,
    )
    tampered = attack(server_round, merchant_id, theta, delta)
    reply.content.array_records["delta"] = ArrayRecord(
        {k: Array(np.asarray(v, np.float32)) for k, v in tampered.items()}
    )
    return reply


@hostile_app.evaluate()
def hostile_evaluate(msg: Message, context: Context) -> Message:
    """The merchants' own evaluation."""
    from client.app import evaluate as honest_evaluate

    return honest_evaluate(msg, context)


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------
def table(rows: list[dict[str, Any]]) -> str:
    """The results as a fixed-width table."""
    lines = [
        f"{'attack':<11} {'defence':<13} {'ndcg@10':>8} {'rel':>6} "
        f"{'exposure':>9} {'rel':>6}"
    ]
    for row in rows:
        lines.append(
            f"{row['attack']:<11} {row['defence']:<13} {row['ndcg@10']:>8.4f} "
            f"{row['ndcg@10-relative']:>6.3f} {row['exposure']:>9.4f} "
            f"{row['exposure-relative']:>6.2f}"
        )
    return "\n".join(lines)


def targets_held(rows: list[dict[str, Any]]) -> list[str]:
    """The attacks for which the default defences miss a target, with the reason."""
    misses = []
    for row in rows:
        if row["defence"] != "default" or row["attack"] == "none":
            continue
        if row["ndcg@10-relative"] < 0.95:
            misses.append(
                f"{row['attack']}: ndcg@10 {row['ndcg@10-relative']:.3f} < 0.95"
            )
        if row["exposure-relative"] > 2.0:
            misses.append(
                f"{row['attack']}: exposure {row['exposure-relative']:.2f} > 2"
            )
    return misses


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds, 10 inner steps")
    parser.add_argument("--out", default="", help="write the results as JSON here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--no-flower", action="store_true", help="skip the run through Flower"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the table; write JSON."""
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    args = parse_args(argv)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    config = benchmark_config(args.quick, args.seed)
    default = DefenceConfig()
    started = time.monotonic()
    rows, facts, _ = run_benchmark(config, default, args.workers)
    print(table(rows), flush=True)
    misses = targets_held(rows)
    print(
        "attacks: default defences "
        + ("hold every target" if not misses else "miss: " + "; ".join(misses)),
        flush=True,
    )
    report: dict[str, Any] = {
        "results": [
            {
                k: row[k]
                for k in (
                    "attack",
                    "defence",
                    "ndcg@10-relative",
                    "exposure-relative",
                    "ndcg@10",
                    "exposure",
                )
            }
            for row in rows
        ],
        **facts,
        "default-defence": {
            "clip-norm": default.clip_norm,
            "aggregation": default.aggregation,
            "trim-fraction": default.trim_fraction,
        },
        "rounds": config.meta.num_rounds,
        "inner-steps": config.adapt.inner_steps,
        "merchants": NUM_MERCHANTS,
        "seed": args.seed,
        "targets-missed": misses,
    }
    if not args.no_flower:
        check_config = benchmark_config(quick=True, seed=args.seed)
        check = flower_check(
            replace(check_config, meta=replace(check_config.meta, num_rounds=2)),
            "scale-100",
            default,
            facts["promoted-item"],
        )
        print(
            f"attacks: through Flower, scale-100 under the defaults: θ within "
            f"{check['max-abs-difference']:.2e} of the in-process engine "
            f"({check['seconds']:.0f}s)",
            flush=True,
        )
        report["flower-check"] = check
    report["seconds"] = time.monotonic() - started
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"attacks: wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
