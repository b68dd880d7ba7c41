"""The ServerApp: holds θ, runs Reptile rounds, checkpoints, records, reports.

The round loop is written out here rather than taken from ``Strategy.start`` because a
federation must survive restarts: θ and the round number are checkpointed after every
round, and a run restarted on the same run directory resumes at the next round.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from common.config import RunConfig, from_run_config
from common.model import init_parameters
from server.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from server.evaluation import ColdStartEvaluator
from server.report import write_report
from server.secagg import SecureReptile
from server.store import MerchantOutcome, RoundRecord, RoundStore
from server.strategy import Reptile, RoundSummary

logger = logging.getLogger("server")

app = ServerApp()


def resolve_run_dir(config: RunConfig, run_id: int) -> Path:
    """The run directory: as configured, else ``runs/<time>-<run id>``."""
    if config.run_dir:
        return Path(config.run_dir).expanduser().resolve()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs", f"{stamp}-{run_id}").resolve()


def _record(summary: RoundSummary, started: float) -> RoundRecord:
    replied = [o for o in summary.outcomes if o.status == "replied"]
    norms = [o.delta_norm for o in replied if o.delta_norm is not None]
    return RoundRecord(
        round=summary.server_round,
        started_at=started,
        ended_at=time.time(),
        sampled=summary.sampled,
        replied=summary.count("replied"),
        failed=summary.count("failed"),
        rejected=summary.count("rejected"),
        loss_before=summary.weighted("loss_before"),
        loss_after=summary.weighted("loss_after"),
        delta_norm_mean=float(np.mean(norms)) if norms else None,
        delta_norm_max=float(np.max(norms)) if norms else None,
        update_norm=summary.update_norm,
        meta_lr=summary.meta_lr,
        bytes_sent=summary.bytes_sent,
        bytes_received=sum(o.bytes_received for o in summary.outcomes),
        clip_rate=summary.clip_rate,
        epsilon=summary.epsilon,
        merchants=tuple(
            MerchantOutcome(
                merchant_id=o.merchant_id,
                node_id=o.node_id,
                status=o.status,
                reason=o.reason,
                num_examples=o.num_examples,
                loss_before=o.loss_before,
                loss_after=o.loss_after,
                delta_norm=o.delta_norm,
                bytes_received=o.bytes_received,
            )
            for o in summary.outcomes
        ),
    )


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _wait_for_merchants(grid: Grid, minimum: int, timeout: float) -> int:
    """Wait up to ``timeout`` seconds for ``minimum`` connected merchants.

    A round sent to fewer merchants than its minimum cannot count, so after a restart
    (of the server or of merchants) the round waits for them instead of failing.
    """
    deadline = time.monotonic() + timeout
    connected = len(list(grid.get_node_ids()))
    if connected < minimum:
        logger.info("wait: %d merchants connected, waiting for %d", connected, minimum)
    while connected < minimum and time.monotonic() < deadline:
        time.sleep(1.0)
        connected = len(list(grid.get_node_ids()))
    return connected


def _train_round(
    grid: Grid,
    strategy: Reptile | SecureReptile,
    server_round: int,
    arrays: ArrayRecord,
    train_config: ConfigRecord,
    config: RunConfig,
    retries: int,
) -> tuple[ArrayRecord | None, RoundSummary]:
    """Send θ, collect deltas, apply the Reptile step; retry a round that fell short.

    With fewer valid replies than ``min_train_merchants`` the round is sent again, at
    most ``retries`` times; if it still falls short it is recorded as failed and θ is
    left unchanged (None is returned).
    """
    meta = config.meta
    for attempt in range(1, retries + 2):
        _wait_for_merchants(grid, meta.min_train_merchants, meta.round_timeout)
        if isinstance(strategy, SecureReptile):  # four SecAgg+ exchanges, one step
            new_arrays = strategy.train_round(
                grid,
                server_round,
                arrays,
                ConfigRecord(dict(train_config)),
                timeout=meta.round_timeout,
            )
        else:
            replies = grid.send_and_receive(
                strategy.configure_train(
                    server_round, arrays, ConfigRecord(dict(train_config)), grid
                ),
                timeout=meta.round_timeout,
            )
            new_arrays, _ = strategy.aggregate_train(server_round, replies)
        summary = strategy.last_round or RoundSummary(server_round)
        if new_arrays is not None:
            return new_arrays, summary
        if attempt <= retries:
            logger.warning(
                "round %d: %d valid replies of %d needed, retrying (attempt %d of %d)",
                server_round,
                summary.count("replied"),
                meta.min_train_merchants,
                attempt + 1,
                retries + 1,
            )
    logger.warning(
        "round %d: failed after %d attempts, θ unchanged", server_round, retries + 1
    )
    return None, summary


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run (or resume) a federated Reptile training."""
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    config = from_run_config(context.run_config)
    run_dir = resolve_run_dir(config, context.run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    codec = str(context.run_config.get("codec", "float32"))
    retries = int(context.run_config.get("round-retries", 2))
    store = RoundStore(run_dir / "rounds.sqlite")

    # Start from the checkpoint of this run directory, if there is one.
    checkpoint = load_checkpoint(run_dir)
    if checkpoint is None:
        theta = init_parameters(config.model, config.seed)
        first_round = 1
    else:
        theta, first_round = checkpoint.parameters, checkpoint.server_round + 1
        logger.info(
            "resume: %s at round %d of %d", run_dir, first_round, config.meta.num_rounds
        )
    store.set_run_info(
        status="running",
        run_id=str(context.run_id),
        num_rounds=config.meta.num_rounds,
        min_merchants=config.meta.min_train_merchants,
        data=config.data.data_format,
        started_at=time.time(),
    )

    strategy: Reptile | SecureReptile
    if config.defence.secure_aggregation:
        strategy = SecureReptile(config.meta, config.defence, context, config.seed)
    else:
        strategy = Reptile(
            config.meta, codec=codec, seed=config.seed, defence=config.defence
        )
    strategy.summary()
    evaluator = ColdStartEvaluator.for_run(config, context.run_config)
    if evaluator is not None and first_round == 1:
        store.record_evaluation(0, evaluator.evaluate(theta))

    arrays = ArrayRecord(array_dict={k: Array(v) for k, v in theta.items()})
    train_config = ConfigRecord({"seed": config.seed})
    try:
        for server_round in range(first_round, config.meta.num_rounds + 1):
            started = time.time()

            # Train: send θ, collect deltas, apply the Reptile step.
            new_arrays, summary = _train_round(
                grid, strategy, server_round, arrays, train_config, config, retries
            )
            if new_arrays is not None:
                arrays = new_arrays

            # Persist before anything else can fail: the round's facts first, then θ.
            # A crash between the two leaves the round recorded but θ at the round
            # before; the resumed run repeats the round and its record replaces this
            # one, so no round is lost or counted twice.
            theta = {name: array.numpy() for name, array in arrays.items()}
            # The run config travels with θ: a merchant adapting θ later needs the
            # model's shape and the adaptation budget (client.tools).
            facts: dict[str, object] = {
                "codec": codec,
                "run-config": dict(context.run_config),
            }
            store.record_round(_record(summary, started))
            save_checkpoint(run_dir, Checkpoint(server_round, theta, facts))

            # Evaluate the held-out new merchants every few rounds and at the end.
            evaluation = ""
            if evaluator is not None and (
                server_round % config.evaluation.eval_every == 0
                or server_round == config.meta.num_rounds
            ):
                metrics = evaluator.evaluate(theta)
                store.record_evaluation(server_round, metrics)
                evaluation = f", cold-start ndcg@10 {metrics['ndcg@10']:.4f}"

            logger.info(
                "round %d/%d: merchants %d sampled / %d replied / %d rejected / "
                "%d failed, loss %s -> %s, delta norm %s, meta_lr %.3f, %.1fs%s",
                server_round,
                config.meta.num_rounds,
                summary.sampled,
                summary.count("replied"),
                summary.count("rejected"),
                summary.count("failed"),
                _fmt(summary.weighted("loss_before")),
                _fmt(summary.weighted("loss_after")),
                _fmt(summary.weighted("delta_norm")),
                summary.meta_lr,
                time.time() - started,
                evaluation,
            )
    except BaseException:
        store.set_run_info(status="failed")
        raise
    store.set_run_info(status="finished", finished_at=time.time())
    report = write_report(run_dir, store)
    logger.info("done: run directory %s, report %s", run_dir, report)
    store.close()
