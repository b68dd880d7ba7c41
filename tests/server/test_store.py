"""The round store: round trips, replacement, merging, aggregates, crash safety."""

from __future__ import annotations

import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import pytest

from server.store import MerchantOutcome, RoundRecord, RoundStore, store_path
from tests.server.round_store_examples import (
    EVALUATIONS,
    MISSING_FILE_REASON,
    NODE_IDS,
    REJECTED_REASON,
    example_rounds,
    next_round,
    write_example_run,
)

REPO = Path(__file__).resolve().parents[2]
TRAINING_FIELDS = [f.name for f in fields(RoundRecord) if f.name != "merchants"]


def test_rounds_read_back_as_recorded(tmp_path: Path) -> None:
    # Prepare
    path = write_example_run(tmp_path)

    # Execute
    with RoundStore.open_read_only(path) as store:
        rounds = store.rounds()

    # Assert: round 0 holds only its evaluation; rounds 1-3 every field as written.
    assert [row["round"] for row in rounds] == [0, 1, 2, 3]
    assert rounds[0]["evaluation"] == EVALUATIONS[0]
    assert all(rounds[0][name] is None for name in TRAINING_FIELDS if name != "round")
    for row, record in zip(rounds[1:], example_rounds(), strict=True):
        assert {name: row[name] for name in TRAINING_FIELDS} == {
            name: getattr(record, name) for name in TRAINING_FIELDS
        }
    assert rounds[1]["evaluation"] == {}
    assert rounds[2]["evaluation"] == EVALUATIONS[2]


def test_merchant_outcomes_read_back_in_order(tmp_path: Path) -> None:
    # Prepare
    path = write_example_run(tmp_path)

    # Execute
    with RoundStore.open_read_only(path) as store:
        outcomes = store.round_merchants(2)

    # Assert
    assert outcomes == [asdict(outcome) for outcome in example_rounds()[1].merchants]


def test_recording_a_round_again_replaces_it(tmp_path: Path) -> None:
    # Prepare: round 2 again, as a resumed run would record it: all four replied.
    path = write_example_run(tmp_path)
    first = example_rounds()[0]
    again = replace(
        first, round=2, loss_after=0.55, merchants=first.merchants, replied=4
    )

    # Execute
    with RoundStore(path) as store:
        store.record_round(again)
        rounds = store.rounds()
        merchants = {row["merchant_id"]: row for row in store.merchants()}
        outcomes = store.round_merchants(2)

    # Assert: still one round 2, with the new values; its old outcomes are gone.
    assert [row["round"] for row in rounds] == [0, 1, 2, 3]
    assert rounds[2]["loss_after"] == pytest.approx(0.55, abs=1e-12)
    assert rounds[2]["replied"] == 4
    assert rounds[2]["evaluation"] == EVALUATIONS[2]  # evaluations are kept
    assert [row["status"] for row in outcomes] == ["replied"] * 4
    assert merchants["m-gb-1"]["sampled"] == 3
    assert merchants["m-gb-1"]["rejected"] == 0
    assert merchants["m-gb-1"]["last_error"] == ""


def test_evaluations_merge_per_metric(tmp_path: Path) -> None:
    # Prepare
    path = write_example_run(tmp_path)

    # Execute: one metric replaced, one added; and an evaluation ahead of training.
    with RoundStore(path) as store:
        store.record_evaluation(2, {"ndcg@10": 0.33, "ndcg@10-full": 0.05})
        store.record_evaluation(4, {"ndcg@10": 0.35})
        rounds = {row["round"]: row for row in store.rounds()}
        last_round = store.last_round()

    # Assert
    assert rounds[2]["evaluation"] == {
        "adapt-steps": 20.0,
        "hr@10": 0.55,
        "ndcg@10": 0.33,
        "ndcg@10-alone": 0.25,
        "ndcg@10-full": 0.05,
        "ndcg@10-std": 0.01,
    }
    assert rounds[4]["evaluation"] == {"ndcg@10": 0.35}
    assert rounds[4]["started_at"] is None
    assert last_round == 3  # an evaluation alone is not a trained round


def test_merchants_aggregate_participation_and_last_error(tmp_path: Path) -> None:
    # Prepare
    path = write_example_run(tmp_path)

    # Execute
    with RoundStore.open_read_only(path) as store:
        merchants = store.merchants()

    # Assert: counted by hand from the table in round_store_examples.
    assert merchants == [
        {
            "merchant_id": "m-de-1",
            "node_id": NODE_IDS["m-de-1"],
            "sampled": 3,
            "replied": 3,
            "failed": 0,
            "rejected": 0,
            "last_round": 3,
            "last_status": "replied",
            "last_error": "",
            "last_error_round": None,
        },
        {
            "merchant_id": "m-fr-1",
            "node_id": NODE_IDS["m-fr-1"],
            "sampled": 2,
            "replied": 2,
            "failed": 0,
            "rejected": 0,
            "last_round": 2,
            "last_status": "replied",
            "last_error": "",
            "last_error_round": None,
        },
        {
            "merchant_id": "m-gb-1",
            "node_id": NODE_IDS["m-gb-1"],
            "sampled": 3,
            "replied": 2,
            "failed": 0,
            "rejected": 1,
            "last_round": 3,
            "last_status": "replied",
            "last_error": REJECTED_REASON,
            "last_error_round": 2,
        },
        {
            "merchant_id": "m-it-1",
            "node_id": NODE_IDS["m-it-1"],
            "sampled": 3,
            "replied": 1,
            "failed": 2,
            "rejected": 0,
            "last_round": 3,
            "last_status": "failed",
            "last_error": MISSING_FILE_REASON,
            "last_error_round": 3,
        },
    ]


def test_run_info_is_text_and_updates_per_key(tmp_path: Path) -> None:
    # Prepare
    with RoundStore(store_path(tmp_path)) as store:
        store.set_run_info(status="running", num_rounds=5, min_merchants=3)

        # Execute
        store.set_run_info(status="finished")
        info = store.run_info()

    # Assert
    assert info == {"status": "finished", "num_rounds": "5", "min_merchants": "3"}


def test_last_round_is_zero_on_an_empty_store(tmp_path: Path) -> None:
    with RoundStore(store_path(tmp_path)) as store:
        assert store.last_round() == 0
        assert store.rounds() == []
        assert store.merchants() == []


def test_nan_loss_reads_back_as_none(tmp_path: Path) -> None:
    # Prepare
    record = replace(example_rounds()[0], loss_after=float("nan"))

    # Execute
    with RoundStore(store_path(tmp_path)) as store:
        store.record_round(record)
        row = store.rounds()[0]

    # Assert
    assert row["loss_after"] is None
    assert row["loss_before"] == pytest.approx(0.70, abs=1e-12)


def test_discard_after_forgets_later_rounds(tmp_path: Path) -> None:
    # Prepare
    path = write_example_run(tmp_path)

    # Execute
    with RoundStore(path) as store:
        discarded = store.discard_after(1)
        rounds = store.rounds()
        merchant_rounds = {
            row["merchant_id"]: row["sampled"] for row in store.merchants()
        }

    # Assert: rounds 2, 3 and round 2's evaluation are gone; round 0 and 1 stay.
    assert discarded == 2
    assert [row["round"] for row in rounds] == [0, 1]
    assert merchant_rounds == {"m-de-1": 1, "m-fr-1": 1, "m-gb-1": 1, "m-it-1": 1}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"round": 0}, "round must be >= 1, got 0"),
        ({"failed": -1}, "round 1: failed must be >= 0, got -1"),
        (
            {"merchants": (MerchantOutcome("m-x", 1, "lost"),)},
            "merchant 'm-x': status expected one of replied, failed, rejected, "
            "got 'lost'",
        ),
    ],
)
def test_invalid_records_are_refused_with_the_field_named(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    # Prepare
    record = replace(example_rounds()[0], **change)  # type: ignore[arg-type]

    with RoundStore(store_path(tmp_path)) as store:
        # Execute / Assert
        with pytest.raises(ValueError, match=message):
            store.record_round(record)
        assert store.rounds() == []


def test_invalid_run_status_is_refused(tmp_path: Path) -> None:
    with (
        RoundStore(store_path(tmp_path)) as store,
        pytest.raises(ValueError, match="expected one of running, finished, failed"),
    ):
        store.set_run_info(status="done")


def test_reopening_keeps_rounds_and_crash_safe_settings(tmp_path: Path) -> None:
    # Prepare
    path = write_example_run(tmp_path)

    # Execute
    with RoundStore(path) as store:
        store.record_round(next_round(3))
        last_round = store.last_round()
        connection = store._connection
        journal_mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
        synchronous = connection.execute("PRAGMA synchronous").fetchone()[0]

    # Assert
    assert last_round == 4
    assert journal_mode == "wal"
    assert synchronous == 2  # FULL


def test_read_only_store_sees_new_rounds_and_cannot_write(tmp_path: Path) -> None:
    # Prepare: the monitor opens first, the server writes afterwards.
    path = write_example_run(tmp_path)
    reader = RoundStore.open_read_only(path)

    # Execute
    with RoundStore(path) as writer:
        writer.record_round(next_round(3))
    last_round = reader.last_round()

    # Assert
    assert last_round == 4
    with pytest.raises(PermissionError, match="opened read-only"):
        reader.record_round(next_round(4))
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader._connection.execute("DELETE FROM rounds")
    reader.close()


def test_read_only_open_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no-run[/\\]rounds\.sqlite"):
        RoundStore.open_read_only(store_path(tmp_path / "no-run"))


def test_a_file_that_is_not_a_store_is_refused(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "rounds.sqlite"
    path.write_text("userId itemId rate date\n")

    # Execute / Assert
    with pytest.raises(ValueError, match="not an SQLite database"):
        RoundStore(path)


# A writer that records rounds as fast as it can, each with many merchant outcomes so
# that most of its time is spent inside a transaction, and says which round it has
# committed after each one.
_WRITER = """
import sys
from server.store import MerchantOutcome, RoundRecord, RoundStore

store = RoundStore(sys.argv[1])
merchants = tuple(
    MerchantOutcome(f"m-{i}", i, "replied", num_examples=10, loss_after=0.5)
    for i in range(MERCHANTS)
)
for number in range(1, 100_000):
    store.record_round(RoundRecord(
        round=number, started_at=0.0, ended_at=1.0, sampled=MERCHANTS,
        replied=MERCHANTS, failed=0, rejected=0, loss_before=0.7, loss_after=0.5,
        delta_norm_mean=0.1, delta_norm_max=0.2, update_norm=0.1, meta_lr=1.0,
        bytes_sent=0, bytes_received=0, merchants=merchants,
    ))
    print(number, flush=True)
"""
MERCHANTS = 200
COMMITTED_BEFORE_KILL = 25
WAIT_SECONDS = 120.0  # a bound on a hung child, not a measurement


def test_a_writer_killed_mid_run_leaves_every_committed_round(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "run" / "rounds.sqlite"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),
    }
    code = _WRITER.replace("MERCHANTS", str(MERCHANTS))
    writer = subprocess.Popen(
        [sys.executable, "-c", code, str(path)],
        stdout=subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    assert writer.stdout is not None

    # Execute: once enough rounds are committed, SIGKILL the writer half a round's
    # time after its last commit, so that it dies inside the next round's transaction.
    committed = 0
    first_commit = time.monotonic()
    deadline = first_commit + WAIT_SECONDS
    try:
        while committed < COMMITTED_BEFORE_KILL:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([writer.stdout], [], [], max(remaining, 0))
            assert ready, f"writer committed {committed} rounds in {WAIT_SECONDS} s"
            line = writer.stdout.readline()
            assert line, f"writer exited with {writer.wait()} after round {committed}"
            committed = int(line)
            if committed == 1:
                first_commit = time.monotonic()
        round_seconds = (time.monotonic() - first_commit) / (committed - 1)
        time.sleep(round_seconds / 2)
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=WAIT_SECONDS)
        writer.stdout.close()

    # Assert: the killed writer's store opens read-only (as the monitor would) and
    # read-write (as a resumed server would); every round is whole.
    with RoundStore.open_read_only(path) as store:
        read_only_last = store.last_round()
    with RoundStore(path) as store:
        integrity = store._connection.execute("PRAGMA integrity_check").fetchall()
        rounds = store.rounds()
        per_round = store._connection.execute(
            "SELECT round, COUNT(*) FROM merchant_outcomes GROUP BY round"
            " ORDER BY round"
        ).fetchall()
        store.record_round(next_round(len(rounds)))
        after_resume = store.last_round()
    assert writer.returncode == -signal.SIGKILL
    assert integrity == [("ok",)]
    assert read_only_last >= committed
    assert [row["round"] for row in rounds] == list(range(1, len(rounds) + 1))
    assert per_round == [(row["round"], MERCHANTS) for row in rounds]
    assert after_resume == len(rounds) + 1
