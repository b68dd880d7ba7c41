"""A merchant's parsed data, cached on the merchant's own disk.

In deployment every message starts a fresh ClientApp process, so nothing parsed in one
round survives to the next in memory. Reading an order log, splitting it by the
leave-one-out protocol (with its sampled negatives) and preparing the model's arrays
would otherwise be paid again in every round. This module keeps the result in one
``.npz`` file per source under the merchant's cache directory and rebuilds it when the
source changes.

A cache entry is keyed on everything that shapes its content: the source's resolved
path, its size, modification time (nanoseconds) and inode (for a directory, those of
every file in it), the data format, the market, the table's column names, the split
seed, the model's ``num_buckets`` and ``max_history``, and the cache layout version.
Writing a new file (even with an editor that replaces it) changes at least one of
these, so the next round reads the new data without restarting anything.

A source modified less than ``RACY_SECONDS`` before it is read is served but not
cached: a file rewritten again within the same timestamp tick (coarse on some
filesystems) with the same size could otherwise keep a stale entry (git's "racy"
index entries are the same problem).

Entries are written to a temporary file and renamed into place, so a process killed
mid-write never leaves a half-written entry; an entry that cannot be read anyway is
rebuilt, never trusted. Nothing here leaves the merchant's machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from common.adapt import MerchantData
from common.config import ModelConfig
from common.data import DataError, TableColumns, load_interactions
from common.files import write_npz_atomic
from common.protocol import MarketSplit, leave_one_out

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
RACY_SECONDS = 2.0
_META_KEY = "__meta__"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/merchant-meta``, else ``~/.cache/merchant-meta``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "merchant-meta"


@dataclass(frozen=True)
class Source:
    """Where a merchant's interactions are and how to read them.

    market: the market to split; ``None`` takes the only market of the file, and a
        file holding several markets must name one.
    """

    path: str
    data_format: str = "table"
    market: str | None = None
    columns: TableColumns = field(default_factory=TableColumns)


@dataclass(frozen=True)
class Prepared:
    """A merchant's split and model-ready support data, and where they came from."""

    split: MarketSplit
    data: MerchantData
    cache_hit: bool
    seconds: float


def fingerprint(path: str | Path) -> list[tuple[str, int, int, int]]:
    """What identifies the current content of a file, or of every file of a folder."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"cache: {root}: no such file or directory")
    files = (
        sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    )
    stamps: list[tuple[str, int, int, int]] = []
    for file in files:
        status = file.stat()
        stamps.append((str(file), status.st_size, status.st_mtime_ns, status.st_ino))
    return stamps


def cache_key(
    source: Source, model: ModelConfig, seed: int
) -> tuple[str, str, list[tuple[str, int, int, int]]]:
    """``(entry name, state digest, file stamps)``: one name per source, one digest
    per state of its files and of the settings that shape the entry."""
    resolved = str(Path(source.path).expanduser().resolve())
    files = fingerprint(resolved)
    identity = {
        "path": resolved,
        "format": source.data_format,
        "market": source.market,
        "columns": asdict(source.columns),
    }
    state = {
        **identity,
        "version": CACHE_VERSION,
        "files": files,
        "seed": seed,
        "num_buckets": model.num_buckets,
        "max_history": model.max_history,
    }
    name = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    digest = hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()
    return name[:32], digest, files


def _choose_market(source: Source, markets: list[str]) -> str:
    if source.market is not None:
        if source.market not in markets:
            raise DataError(
                f"load: {source.path}: no rows for market {source.market!r}; "
                f"markets found: {', '.join(markets)}"
            )
        return source.market
    if len(markets) != 1:
        raise DataError(
            f"load: {source.path}: holds {len(markets)} markets "
            f"({', '.join(markets)}); name one with the node config key 'market'"
        )
    return markets[0]


def build(
    source: Source, model: ModelConfig, seed: int
) -> tuple[MarketSplit, MerchantData]:
    """Read, split and prepare a merchant's data (what the cache saves)."""
    frame = load_interactions(source.path, source.data_format, columns=source.columns)
    market = _choose_market(source, sorted(map(str, frame["market"].unique())))
    split = leave_one_out(frame, market, seed=seed)
    return split, MerchantData.from_split(split, model)


# ---------------------------------------------------------------------------
# Serialising a split and its prepared data
# ---------------------------------------------------------------------------


def _to_arrays(
    split: MarketSplit, data: MerchantData, digest: str
) -> dict[str, np.ndarray]:
    lengths = np.array([len(items) for items in split.support], dtype=np.int64)
    flat = (
        np.concatenate(split.support).astype(np.int64)
        if split.support
        else np.zeros(0, np.int64)
    )
    meta = {"digest": digest, "market": split.market, "version": CACHE_VERSION}
    return {
        _META_KEY: np.frombuffer(json.dumps(meta).encode(), np.uint8),
        # Ids as fixed-width unicode: object arrays would need pickle to load.
        "item_ids": np.asarray(split.item_ids, dtype=str),
        "user_ids": np.asarray(split.user_ids, dtype=str),
        "support_lengths": lengths,
        "support_flat": flat,
        "valid_item": split.valid_item,
        "test_item": split.test_item,
        "valid_negatives": split.valid_negatives,
        "test_negatives": split.test_negatives,
        "catalogue": data.catalogue,
        "histories": data.histories,
        "example_user": data.example_user,
        "example_position": data.example_position,
    }


def _from_arrays(
    arrays: dict[str, np.ndarray],
) -> tuple[dict[str, object], MarketSplit, MerchantData]:
    meta = json.loads(arrays[_META_KEY].tobytes().decode())
    ends = np.cumsum(arrays["support_lengths"])
    flat = arrays["support_flat"]
    support = [
        flat[end - length : end]
        for end, length in zip(ends, arrays["support_lengths"], strict=True)
    ]
    split = MarketSplit(
        market=str(meta["market"]),
        item_ids=arrays["item_ids"].astype(object),
        user_ids=arrays["user_ids"].astype(object),
        support=support,
        valid_item=arrays["valid_item"],
        test_item=arrays["test_item"],
        valid_negatives=arrays["valid_negatives"],
        test_negatives=arrays["test_negatives"],
    )
    data = MerchantData(
        catalogue=arrays["catalogue"],
        histories=arrays["histories"],
        example_user=arrays["example_user"],
        example_position=arrays["example_position"],
    )
    return meta, split, data


def _read_entry(path: Path, digest: str) -> tuple[MarketSplit, MerchantData] | None:
    """The cached split if ``path`` holds the entry for ``digest``, else None."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as content:
            arrays = {name: content[name] for name in content.files}
        meta, split, data = _from_arrays(arrays)
    except Exception as error:  # any damage means: rebuild, never trust
        logger.warning("cache: %s cannot be read (%s); rebuilding it", path, error)
        return None
    if meta.get("digest") != digest:
        logger.info("cache: %s is stale (the source changed); rebuilding it", path.name)
        return None
    return split, data


def _write_entry(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write atomically: a temporary file in the same folder, renamed into place."""
    write_npz_atomic(path, arrays, prefix=".entry-")


def load_prepared(
    source: Source,
    model: ModelConfig,
    seed: int,
    cache_dir: str | Path | None = None,
) -> Prepared:
    """The merchant's split and support data: from the cache when it is current.

    cache_dir: where entries live (default :func:`default_cache_dir`). A cache that
        cannot be written (read-only disk, full disk) is reported once per call and
        the data is served anyway; it only costs the parse next time.
    """
    started = time.perf_counter()
    directory = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    name, digest, files = cache_key(source, model, seed)
    path = directory / f"{name}.npz"

    cached = _read_entry(path, digest)
    if cached is not None:
        split, data = cached
        seconds = time.perf_counter() - started
        logger.debug("cache: hit %s for %s in %.3fs", path.name, source.path, seconds)
        return Prepared(split, data, cache_hit=True, seconds=seconds)

    split, data = build(source, model, seed)
    newest = max((stamp[2] / 1e9 for stamp in files), default=0.0)
    if time.time() - newest < RACY_SECONDS:
        logger.info("cache: %s changed just now; serving it uncached", source.path)
        return Prepared(split, data, False, time.perf_counter() - started)
    try:
        _write_entry(path, _to_arrays(split, data, digest))
    except OSError as error:
        logger.warning("cache: cannot write %s (%s); serving uncached", path, error)
    seconds = time.perf_counter() - started
    logger.info(
        "cache: built %s for %s in %.3fs (%d users, %d items)",
        path.name,
        source.path,
        seconds,
        split.num_users,
        split.num_items,
    )
    return Prepared(split, data, cache_hit=False, seconds=seconds)
