"""The round store: what happened in each round, kept in SQLite in the run directory.

The ServerApp writes one :class:`RoundRecord` as each round completes, and the
operator's monitor (``merchant-meta monitor`` / ``status``) reads the same file while
the run goes on. The file is ``RUN_DIR/rounds.sqlite``.

Why SQLite, and why these settings:

- WAL journal: a reader (the monitor) never blocks the writer (the ServerApp), and a
  writer killed mid-transaction leaves the last committed rounds intact; the next open
  rolls the unfinished transaction back.
- One transaction per round (the round and all its merchant outcomes), so a round is
  either stored whole or not at all.
- ``synchronous=FULL``: every committed round survives a power loss, not only a crash
  of the process. It costs one fsync per round, nothing next to a round's training.
- Recording a round replaces whatever the store held for that round number, so a run
  resumed from a checkpoint re-records the rounds it repeats instead of counting them
  twice.

NaN floats are stored as NULL (SQLite has no NaN), so a diverged loss reads back as
``None``; infinities are kept.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from types import TracebackType
from typing import Any, Self

logger = logging.getLogger(__name__)

STORE_FILENAME = "rounds.sqlite"
SCHEMA_VERSION = 1
MERCHANT_STATUSES = ("replied", "failed", "rejected")
RUN_STATUSES = ("running", "finished", "failed")

# How long a connection waits for another one's lock (a checkpoint, the writer's
# transaction) before giving up, in milliseconds.
BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS run_info (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY,
    started_at REAL NOT NULL,
    ended_at REAL NOT NULL,
    sampled INTEGER NOT NULL,
    replied INTEGER NOT NULL,
    failed INTEGER NOT NULL,
    rejected INTEGER NOT NULL,
    loss_before REAL,
    loss_after REAL,
    delta_norm_mean REAL,
    delta_norm_max REAL,
    update_norm REAL,
    meta_lr REAL NOT NULL,
    bytes_sent INTEGER NOT NULL,
    bytes_received INTEGER NOT NULL,
    clip_rate REAL,
    epsilon REAL
);
CREATE TABLE IF NOT EXISTS merchant_outcomes (
    round INTEGER NOT NULL,
    merchant_id TEXT NOT NULL,
    node_id TEXT NOT NULL,  -- Flower's are unsigned 64-bit, INTEGER is signed
    status TEXT NOT NULL CHECK (status IN ('replied', 'failed', 'rejected')),
    reason TEXT NOT NULL,
    num_examples INTEGER NOT NULL,
    loss_before REAL,
    loss_after REAL,
    delta_norm REAL,
    bytes_received INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS merchant_outcomes_round ON merchant_outcomes (round);
CREATE INDEX IF NOT EXISTS merchant_outcomes_merchant
    ON merchant_outcomes (merchant_id, round);
CREATE TABLE IF NOT EXISTS evaluations (
    round INTEGER NOT NULL,
    metric TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (round, metric)
);
"""


@dataclass(frozen=True)
class MerchantOutcome:
    """What one sampled merchant did in one round."""

    merchant_id: str  # from the merchant's reply (node_config), else "node-<id>"
    node_id: int
    status: str  # "replied" | "failed" | "rejected"
    reason: str = ""  # why failed / rejected
    num_examples: int = 0
    loss_before: float | None = None
    loss_after: float | None = None
    delta_norm: float | None = None
    bytes_received: int = 0


@dataclass(frozen=True)
class RoundRecord:
    """One completed round of Reptile, as the ServerApp saw it."""

    round: int
    started_at: float  # unix seconds
    ended_at: float
    sampled: int
    replied: int  # valid replies aggregated
    failed: int  # error replies / timeouts
    rejected: int  # replies that failed validation
    loss_before: float | None  # weighted mean over valid replies
    loss_after: float | None
    delta_norm_mean: float | None
    delta_norm_max: float | None
    update_norm: float | None  # norm of the aggregated step applied to theta
    meta_lr: float
    bytes_sent: int
    bytes_received: int
    clip_rate: float | None = None  # share of deltas clipped (privacy options)
    epsilon: float | None = None  # DP epsilon after this round, if DP is on
    merchants: tuple[MerchantOutcome, ...] = ()


_ROUND_COLUMNS = tuple(f.name for f in fields(RoundRecord) if f.name != "merchants")
_OUTCOME_COLUMNS = ("round", *(f.name for f in fields(MerchantOutcome)))


def store_path(run_dir: str | Path) -> Path:
    """The round store's file inside a run directory."""
    return Path(run_dir) / STORE_FILENAME


class RoundStore:
    """Rounds, merchant outcomes, evaluations and run facts of one run.

    Open it once in the ServerApp and call :meth:`record_round` as each round ends;
    open it with :meth:`open_read_only` anywhere else (the monitor), also while the
    ServerApp writes. Not shared between threads: open one per thread.
    """

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        if read_only:
            if not self.path.is_file():
                raise FileNotFoundError(
                    f"round store {self.path}: no such file; expected the "
                    f"{STORE_FILENAME} a run writes in its run directory"
                )
            # mode=ro: the monitor can never write, even by mistake.
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            self._connection = sqlite3.connect(uri, uri=True, isolation_level=None)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._connection = sqlite3.connect(self.path, isolation_level=None)
        self._connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        try:
            self._check_or_create_schema()
        except Exception:
            self._connection.close()
            raise

    @classmethod
    def open_read_only(cls, path: str | Path) -> Self:
        """Open an existing store for reading; safe while another process writes it."""
        return cls(path, read_only=True)

    def _check_or_create_schema(self) -> None:
        try:
            version = self._connection.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as error:
            raise ValueError(
                f"round store {self.path}: not an SQLite database ({error})"
            ) from error
        if self.read_only:
            if version != SCHEMA_VERSION:
                raise ValueError(
                    f"round store {self.path}: schema version {version}, expected "
                    f"{SCHEMA_VERSION} (is this file a round store?)"
                )
            return

        # WAL persists in the file; setting it again on reopen is a no-op.
        self._connection.execute("PRAGMA journal_mode = WAL")
        self._connection.execute("PRAGMA synchronous = FULL")
        if version not in (0, SCHEMA_VERSION):
            raise ValueError(
                f"round store {self.path}: schema version {version}, expected "
                f"{SCHEMA_VERSION}; written by another version of merchant-meta"
            )
        with self._transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._connection.execute(statement)
            self._connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed whole, or rolled back whole."""
        if self.read_only:
            raise PermissionError(f"round store {self.path}: opened read-only")
        self._connection.execute("BEGIN IMMEDIATE")
        try:
            yield self._connection
        except BaseException:
            self._connection.execute("ROLLBACK")
            raise
        self._connection.execute("COMMIT")

    # -- writing ------------------------------------------------------------------

    def set_run_info(self, **info: str | int | float) -> None:
        """Set facts about the run (status, num_rounds, min_merchants, run_id, ...).

        Values are stored as text; keys not given keep their value.
        """
        if "status" in info and info["status"] not in RUN_STATUSES:
            raise ValueError(
                f"run info status: expected one of {', '.join(RUN_STATUSES)}, "
                f"got {info['status']!r}"
            )
        with self._transaction() as connection:
            connection.executemany(
                "INSERT INTO run_info (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [(key, str(value)) for key, value in info.items()],
            )

    def record_round(self, record: RoundRecord) -> None:
        """Store one round and its merchant outcomes, replacing that round if stored."""
        _validate_round(record)
        round_values = tuple(getattr(record, name) for name in _ROUND_COLUMNS)
        outcome_values = [
            _outcome_row(record.round, outcome) for outcome in record.merchants
        ]
        with self._transaction() as connection:
            connection.execute("DELETE FROM rounds WHERE round = ?", (record.round,))
            connection.execute(
                "DELETE FROM merchant_outcomes WHERE round = ?", (record.round,)
            )
            connection.execute(
                f"INSERT INTO rounds ({', '.join(_ROUND_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(_ROUND_COLUMNS))})",
                round_values,
            )
            connection.executemany(
                f"INSERT INTO merchant_outcomes ({', '.join(_OUTCOME_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(_OUTCOME_COLUMNS))})",
                outcome_values,
            )
        logger.debug(
            "store: recorded round %s (%s merchant outcomes)",
            record.round,
            len(record.merchants),
        )

    def record_evaluation(self, round: int, metrics: Mapping[str, float]) -> None:
        """Merge evaluation metrics into a round (round 0: before any training).

        A metric already stored for that round is replaced; others are kept, so the
        cold-start evaluation and, say, a privacy accountant can report separately.
        """
        if round < 0:
            raise ValueError(f"evaluation round: expected >= 0, got {round}")
        with self._transaction() as connection:
            connection.executemany(
                "INSERT INTO evaluations (round, metric, value) VALUES (?, ?, ?) "
                "ON CONFLICT (round, metric) DO UPDATE SET value = excluded.value",
                [(round, name, float(value)) for name, value in metrics.items()],
            )

    def discard_after(self, round: int) -> int:
        """Forget rounds and evaluations after ``round``; returns how many rounds.

        A run resumed from a checkpoint older than the store's last round calls this
        so the abandoned rounds do not sit beside the ones it trains again.
        """
        with self._transaction() as connection:
            discarded = connection.execute(
                "DELETE FROM rounds WHERE round > ?", (round,)
            ).rowcount
            connection.execute(
                "DELETE FROM merchant_outcomes WHERE round > ?", (round,)
            )
            connection.execute("DELETE FROM evaluations WHERE round > ?", (round,))
        if discarded:
            logger.info("store: discarded %s rounds after round %s", discarded, round)
        return discarded

    # -- reading ------------------------------------------------------------------

    def run_info(self) -> dict[str, str]:
        """The run's facts as text, as given to :meth:`set_run_info`."""
        rows = self._connection.execute("SELECT key, value FROM run_info ORDER BY key")
        return dict(rows.fetchall())

    def rounds(self) -> list[dict[str, Any]]:
        """One dict per round, in order, with its evaluation metrics under "evaluation".

        A round that has only an evaluation (round 0, or a round whose training record
        is not written yet) has ``None`` for every training field.
        """
        with self._snapshot() as connection:
            training = {
                row[0]: dict(zip(_ROUND_COLUMNS, row, strict=True))
                for row in connection.execute(
                    f"SELECT {', '.join(_ROUND_COLUMNS)} FROM rounds"
                )
            }
            evaluations: dict[int, dict[str, float | None]] = {}
            for round_number, metric, value in connection.execute(
                "SELECT round, metric, value FROM evaluations ORDER BY metric"
            ):
                evaluations.setdefault(round_number, {})[metric] = value
        result = []
        for round_number in sorted(training.keys() | evaluations.keys()):
            row = training.get(round_number) or dict.fromkeys(_ROUND_COLUMNS)
            row["round"] = round_number
            row["evaluation"] = evaluations.get(round_number, {})
            result.append(row)
        return result

    def round_merchants(self, round: int) -> list[dict[str, Any]]:
        """The merchant outcomes of one round, in the order they were recorded."""
        rows = self._connection.execute(
            f"SELECT {', '.join(_OUTCOME_COLUMNS[1:])} FROM merchant_outcomes "
            "WHERE round = ? ORDER BY rowid",
            (round,),
        )
        return [
            _with_int_node_id(dict(zip(_OUTCOME_COLUMNS[1:], row, strict=True)))
            for row in rows
        ]

    def merchants(self) -> list[dict[str, Any]]:
        """Participation of each merchant over the run, sorted by merchant id.

        Per merchant: ``sampled``, ``replied``, ``failed``, ``rejected`` (round counts),
        ``last_round`` and ``last_status`` (the latest round it was sampled in),
        ``last_error`` and ``last_error_round`` (its latest failed or rejected round,
        "" and None if it never had one), and its latest ``node_id``.
        """
        rows = self._connection.execute(
            """
            WITH latest AS (
                SELECT merchant_id, round, status, node_id, ROW_NUMBER() OVER (
                    PARTITION BY merchant_id ORDER BY round DESC, rowid DESC
                ) AS recency
                FROM merchant_outcomes
            ),
            latest_error AS (
                SELECT merchant_id, round, reason, ROW_NUMBER() OVER (
                    PARTITION BY merchant_id ORDER BY round DESC, rowid DESC
                ) AS recency
                FROM merchant_outcomes WHERE status != 'replied'
            ),
            counts AS (
                SELECT merchant_id,
                    COUNT(*) AS sampled,
                    SUM(status = 'replied') AS replied,
                    SUM(status = 'failed') AS failed,
                    SUM(status = 'rejected') AS rejected
                FROM merchant_outcomes GROUP BY merchant_id
            )
            SELECT counts.merchant_id, latest.node_id, counts.sampled, counts.replied,
                counts.failed, counts.rejected, latest.round, latest.status,
                COALESCE(latest_error.reason, ''), latest_error.round
            FROM counts
            JOIN latest ON latest.merchant_id = counts.merchant_id
                AND latest.recency = 1
            LEFT JOIN latest_error ON latest_error.merchant_id = counts.merchant_id
                AND latest_error.recency = 1
            ORDER BY counts.merchant_id
            """
        )
        names = (
            "merchant_id",
            "node_id",
            "sampled",
            "replied",
            "failed",
            "rejected",
            "last_round",
            "last_status",
            "last_error",
            "last_error_round",
        )
        return [_with_int_node_id(dict(zip(names, row, strict=True))) for row in rows]

    def last_round(self) -> int:
        """The highest training round recorded; 0 if none."""
        row = self._connection.execute("SELECT MAX(round) FROM rounds").fetchone()
        return int(row[0]) if row[0] is not None else 0

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """Several reads that see one committed state, even while the writer goes on."""
        self._connection.execute("BEGIN")
        try:
            yield self._connection
        finally:
            self._connection.execute("COMMIT")

    # -- lifetime -----------------------------------------------------------------

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _outcome_row(round_number: int, outcome: MerchantOutcome) -> tuple[Any, ...]:
    """The merchant_outcomes row of one outcome, in _OUTCOME_COLUMNS order."""
    values = {f.name: getattr(outcome, f.name) for f in fields(outcome)}
    # Flower node ids are unsigned 64-bit: too large for SQLite's signed INTEGER.
    values["node_id"] = str(outcome.node_id)
    return (round_number, *values.values())


def _with_int_node_id(row: dict[str, Any]) -> dict[str, Any]:
    """Node ids are stored as text (see the schema); hand them back as ints."""
    row["node_id"] = int(row["node_id"])
    return row


def _validate_round(record: RoundRecord) -> None:
    """Refuse a record that could not have come from a round, naming the field."""
    if record.round < 1:
        raise ValueError(f"round record: round must be >= 1, got {record.round}")
    for name in ("sampled", "replied", "failed", "rejected"):
        count = getattr(record, name)
        if count < 0:
            raise ValueError(f"round {record.round}: {name} must be >= 0, got {count}")
    for outcome in record.merchants:
        if outcome.status not in MERCHANT_STATUSES:
            raise ValueError(
                f"round {record.round}, merchant {outcome.merchant_id!r}: status "
                f"expected one of {', '.join(MERCHANT_STATUSES)}, "
                f"got {outcome.status!r}"
            )
