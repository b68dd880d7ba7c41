"""The merchant's disk cache: a fresh parse's content, rebuilt when the data change."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from client import cache
from common.config import ModelConfig
from common.data import DataError, TableColumns

MODEL = ModelConfig(embedding_dim=8, num_buckets=512, max_history=20)


def _write_log(path: Path, users: int, items_each: int = 6, offset: int = 0) -> None:
    """``users`` customers with ``items_each`` distinct items out of 150 products."""
    rows = [
        (f"u{user + offset}", f"P{(user * 7 + k) % 150:03d}", k)
        for user in range(users)
        for k in range(items_each)
    ]
    frame = pd.DataFrame(rows, columns=["user", "item", "time"])
    frame.to_csv(path, index=False, mode="a" if offset else "w", header=not offset)


def _assert_same(a: cache.Prepared, b: cache.Prepared) -> None:
    assert list(a.split.item_ids) == list(b.split.item_ids)
    assert list(a.split.user_ids) == list(b.split.user_ids)
    assert all(
        np.array_equal(x, y)
        for x, y in zip(a.split.support, b.split.support, strict=True)
    )
    for name in ("valid_item", "test_item", "valid_negatives", "test_negatives"):
        assert np.array_equal(getattr(a.split, name), getattr(b.split, name)), name
    for name in ("catalogue", "histories", "example_user", "example_position"):
        assert np.array_equal(getattr(a.data, name), getattr(b.data, name)), name


def _age(path: Path, seconds: float = 60.0) -> None:
    """Date a file back, as a log written before the round started would be."""
    stamp = time.time() - seconds
    os.utime(path, (stamp, stamp))


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    path = tmp_path / "shop.csv"
    _write_log(path, users=20)
    _age(path)
    return path


def test_a_second_load_is_a_hit_with_the_same_content(
    log_file: Path, tmp_path: Path
) -> None:
    # Execute
    source = cache.Source(str(log_file))
    first = cache.load_prepared(source, MODEL, seed=0, cache_dir=tmp_path / "c")
    second = cache.load_prepared(source, MODEL, seed=0, cache_dir=tmp_path / "c")

    # Assert: built once, then read back identical to a fresh parse; 20 users with
    # 6 items each keep 6 - 2 = 4 support interactions each.
    assert (first.cache_hit, second.cache_hit) == (False, True)
    _assert_same(first, second)
    split, data = cache.build(source, MODEL, seed=0)
    _assert_same(second, cache.Prepared(split, data, False, 0.0))
    assert second.data.num_examples == 20 * 4
    assert len(list((tmp_path / "c").iterdir())) == 1


def test_new_rows_in_the_file_are_picked_up(log_file: Path, tmp_path: Path) -> None:
    # Prepare: a cached entry of 20 customers.
    source = cache.Source(str(log_file))
    cache.load_prepared(source, MODEL, seed=0, cache_dir=tmp_path / "c")

    # Execute: five more customers arrive in the same file.
    _write_log(log_file, users=5, offset=100)
    after = cache.load_prepared(source, MODEL, seed=0, cache_dir=tmp_path / "c")

    # Assert: rebuilt with 25 customers, and still one entry for this source.
    assert after.cache_hit is False
    assert after.split.num_users == 25
    assert after.data.num_examples == 25 * 4
    assert len(list((tmp_path / "c").iterdir())) == 1


def test_a_rewrite_with_the_same_size_is_picked_up(
    log_file: Path, tmp_path: Path
) -> None:
    # Prepare: the same bytes with one product id changed keep the file's size.
    source = cache.Source(str(log_file))
    cache.load_prepared(source, MODEL, seed=0, cache_dir=tmp_path / "c")
    text = log_file.read_text()
    edited = text.replace("P000", "P999", 1)
    assert len(edited) == len(text)

    # Execute
    log_file.write_text(edited)
    after = cache.load_prepared(source, MODEL, seed=0, cache_dir=tmp_path / "c")

    # Assert
    assert after.cache_hit is False
    assert "P999" in set(after.split.item_ids)


def test_a_file_changed_just_now_is_served_fresh_but_not_cached(
    tmp_path: Path,
) -> None:
    # Prepare: a log written this instant (its timestamp could still repeat).
    path = tmp_path / "fresh.csv"
    _write_log(path, users=20)

    # Execute
    source = cache.Source(str(path))
    first = cache.load_prepared(source, MODEL, seed=0, cache_dir=tmp_path / "c")
    _age(path)
    second = cache.load_prepared(source, MODEL, seed=0, cache_dir=tmp_path / "c")
    third = cache.load_prepared(source, MODEL, seed=0, cache_dir=tmp_path / "c")

    # Assert: not cached while racy; cached once the file has aged.
    assert (first.cache_hit, second.cache_hit, third.cache_hit) == (False, False, True)
    assert first.split.num_users == third.split.num_users == 20


def test_a_different_model_shape_or_seed_is_a_different_entry(
    log_file: Path, tmp_path: Path
) -> None:
    source = cache.Source(str(log_file))
    cache.load_prepared(source, MODEL, seed=0, cache_dir=tmp_path / "c")
    other_model = ModelConfig(embedding_dim=8, num_buckets=1024, max_history=20)

    wider = cache.load_prepared(source, other_model, seed=0, cache_dir=tmp_path / "c")
    reseeded = cache.load_prepared(source, MODEL, seed=1, cache_dir=tmp_path / "c")

    assert (wider.cache_hit, reseeded.cache_hit) == (False, False)
    assert wider.data.catalogue.max() >= 0 and wider.data.catalogue.max() < 1024


def test_a_damaged_entry_is_rebuilt_not_trusted(
    log_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: a good entry, then garbage in its place.
    source = cache.Source(str(log_file))
    good = cache.load_prepared(source, MODEL, seed=0, cache_dir=tmp_path / "c")
    (entry,) = (tmp_path / "c").iterdir()
    entry.write_bytes(b"not an npz" * 10)
    caplog.set_level(logging.WARNING, logger="client.cache")

    # Execute
    again = cache.load_prepared(source, MODEL, seed=0, cache_dir=tmp_path / "c")

    # Assert
    assert again.cache_hit is False
    _assert_same(good, again)
    assert any("cannot be read" in r.getMessage() for r in caplog.records)
    assert cache.load_prepared(source, MODEL, 0, tmp_path / "c").cache_hit is True


def test_a_write_that_fails_midway_leaves_no_entry_and_serves_the_data(
    log_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the disk fills up after the first kilobyte of the entry.
    real_savez = np.savez

    def savez_then_fail(file: object, **arrays: np.ndarray) -> None:
        real_savez(file, **arrays)
        file.truncate(1024)  # type: ignore[attr-defined]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache.np, "savez", savez_then_fail)
    source = cache.Source(str(log_file))

    # Execute
    served = cache.load_prepared(source, MODEL, seed=0, cache_dir=tmp_path / "c")

    # Assert: the data were served, nothing half-written stays behind.
    assert served.split.num_users == 20
    assert list((tmp_path / "c").iterdir()) == []


def test_a_file_with_several_markets_needs_one_named(tmp_path: Path) -> None:
    # Prepare: two markets in one log.
    path = tmp_path / "two.csv"
    rows = [
        (market, f"{market}-u{u}", f"P{u * 5 + k:03d}", k)
        for market in ("de", "fr")
        for u in range(25)
        for k in range(5)
    ]
    pd.DataFrame(rows, columns=["country", "user", "item", "time"]).to_csv(
        path, index=False
    )
    columns = TableColumns(market="country")

    # Execute / Assert
    with pytest.raises(DataError, match="holds 2 markets"):
        cache.load_prepared(
            cache.Source(str(path), columns=columns), MODEL, 0, tmp_path
        )
    chosen = cache.load_prepared(
        cache.Source(str(path), market="fr", columns=columns), MODEL, 0, tmp_path / "c"
    )
    assert chosen.split.market == "fr"
    assert set(chosen.split.user_ids) == {f"fr-u{u}" for u in range(25)}


def test_the_default_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere/cache")
    assert cache.default_cache_dir() == Path("/somewhere/cache/merchant-meta")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", "/home/shop")
    assert cache.default_cache_dir() == Path(os.path.expanduser("~")) / ".cache" / (
        "merchant-meta"
    )
