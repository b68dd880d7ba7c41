"""A small run written into a round store, with every number chosen by hand.

Four merchants over three rounds, then evaluations before training (round 0) and
after round 2:

| round | m-de-1  | m-fr-1  | m-gb-1                 | m-it-1              |
|-------|---------|---------|------------------------|---------------------|
| 1     | replied | replied | replied                | replied             |
| 2     | replied | replied | rejected (NaN delta)   | failed (timeout)    |
| 3     | replied | -       | replied                | failed (file gone)  |

min_merchants is 3, so round 3 (two replies) is below it.
"""

from __future__ import annotations

from pathlib import Path

from server.store import MerchantOutcome, RoundRecord, RoundStore, store_path

# Flower node ids are random unsigned 64-bit integers: two lie above SQLite's signed
# INTEGER range, one is the largest possible and none fits a JavaScript number exactly.
NODE_IDS = {
    "m-de-1": 4_213_370_911_209_937_411,
    "m-fr-1": 9_801_152_634_005_127_788,
    "m-gb-1": 13_074_411_239_961_862_533,
    "m-it-1": 18_446_744_073_709_551_615,
}
REJECTED_MERCHANT = "m-gb-1"
REJECTED_REASON = "delta: 3 non-finite values in item_embedding.weight"
TIMEOUT_REASON = "no reply within round-timeout 600 s"
MISSING_FILE_REASON = "ClientApp raised FileNotFoundError: /data/it.parquet"
RUN_INFO: dict[str, str | int | float] = {
    "run_id": "example",
    "status": "running",
    "num_rounds": 5,
    "min_merchants": 3,
    "started_at": 1_700_000_000.0,
}
EVALUATIONS = {
    0: {"ndcg@10": 0.20, "hr@10": 0.40},
    # Spreads and settings are stored beside the metrics, as the ServerApp does.
    2: {
        "ndcg@10": 0.31,
        "hr@10": 0.55,
        "ndcg@10-alone": 0.25,
        "ndcg@10-std": 0.01,
        "adapt-steps": 20.0,
    },
}


def replied(merchant_id: str, loss_after: float) -> MerchantOutcome:
    return MerchantOutcome(
        merchant_id=merchant_id,
        node_id=NODE_IDS[merchant_id],
        status="replied",
        num_examples=100,
        loss_before=0.7,
        loss_after=loss_after,
        delta_norm=0.1,
        bytes_received=1000,
    )


def example_rounds() -> list[RoundRecord]:
    """The three rounds of the table above."""
    start = 1_700_000_000.0
    return [
        RoundRecord(
            round=1,
            started_at=start,
            ended_at=start + 10.0,
            sampled=4,
            replied=4,
            failed=0,
            rejected=0,
            loss_before=0.70,
            loss_after=0.60,
            delta_norm_mean=0.10,
            delta_norm_max=0.20,
            update_norm=0.08,
            meta_lr=1.0,
            bytes_sent=4000,
            bytes_received=4000,
            merchants=(
                replied("m-de-1", 0.6),
                replied("m-fr-1", 0.6),
                replied("m-gb-1", 0.6),
                replied("m-it-1", 0.6),
            ),
        ),
        RoundRecord(
            round=2,
            started_at=start + 10.0,
            ended_at=start + 25.0,
            sampled=4,
            replied=2,
            failed=1,
            rejected=1,
            loss_before=0.65,
            loss_after=0.50,
            delta_norm_mean=0.12,
            delta_norm_max=0.30,
            update_norm=0.09,
            meta_lr=0.9,
            bytes_sent=4000,
            bytes_received=3000,
            merchants=(
                replied("m-de-1", 0.5),
                replied("m-fr-1", 0.5),
                MerchantOutcome(
                    merchant_id=REJECTED_MERCHANT,
                    node_id=NODE_IDS[REJECTED_MERCHANT],
                    status="rejected",
                    reason=REJECTED_REASON,
                    num_examples=100,
                    bytes_received=1000,
                ),
                MerchantOutcome(
                    merchant_id="m-it-1",
                    node_id=NODE_IDS["m-it-1"],
                    status="failed",
                    reason=TIMEOUT_REASON,
                ),
            ),
        ),
        RoundRecord(
            round=3,
            started_at=start + 25.0,
            ended_at=start + 37.0,
            sampled=3,
            replied=2,
            failed=1,
            rejected=0,
            loss_before=0.60,
            loss_after=0.45,
            delta_norm_mean=0.11,
            delta_norm_max=0.15,
            update_norm=0.07,
            meta_lr=0.8,
            bytes_sent=3000,
            bytes_received=2000,
            merchants=(
                replied("m-de-1", 0.45),
                replied("m-gb-1", 0.45),
                MerchantOutcome(
                    merchant_id="m-it-1",
                    node_id=NODE_IDS["m-it-1"],
                    status="failed",
                    reason=MISSING_FILE_REASON,
                ),
            ),
        ),
    ]


def next_round(previous: int, start: float = 1_700_000_100.0) -> RoundRecord:
    """A clean round after ``previous``: everyone replied."""
    return RoundRecord(
        round=previous + 1,
        started_at=start,
        ended_at=start + 9.0,
        sampled=3,
        replied=3,
        failed=0,
        rejected=0,
        loss_before=0.55,
        loss_after=0.41,
        delta_norm_mean=0.09,
        delta_norm_max=0.13,
        update_norm=0.06,
        meta_lr=0.7,
        bytes_sent=3000,
        bytes_received=3000,
        merchants=(
            replied("m-de-1", 0.41),
            replied("m-fr-1", 0.41),
            replied("m-gb-1", 0.41),
        ),
    )


def write_example_run(run_dir: Path) -> Path:
    """Fill ``run_dir``'s round store with the example run; returns the store's path."""
    path = store_path(run_dir)
    with RoundStore(path) as store:
        store.set_run_info(**RUN_INFO)
        for record in example_rounds():
            store.record_round(record)
        for round_number, metrics in EVALUATIONS.items():
            store.record_evaluation(round_number, metrics)
    return path
