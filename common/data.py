"""Interaction readers: every source becomes one tidy frame, or a clear error.

Every reader returns a :class:`pandas.DataFrame` with exactly these columns:

========  =========  =========================================================
column    dtype      meaning
========  =========  =========================================================
market    str        the national market (country, storefront) of the event
user      str        the customer id, as text
item      str        the product id, as text (an ASIN in XMarket)
time      int64      when: dates and datetimes as nanoseconds since the Unix
                     epoch, UTC (``pd.to_datetime(frame["time"])`` reads them
                     back); numeric timestamps as given, in their own unit
value     float64    a star rating or a quantity; 1.0 when the source has none
order     int64      the row's 0-based position among the data rows of its
                     source file, so equal times can be broken by file order
========  =========  =========================================================

A file that cannot be used raises :class:`DataError` naming the file, the column
or line, what was expected and what came. Rows that can be recognised as junk in a
real order log (missing ids, cancellations, duplicates, unparsable times) are
dropped on purpose by :func:`read_table`, which says so in one INFO line per file.
"""

from __future__ import annotations

import csv
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pandas.api.extensions import ExtensionArray

logger = logging.getLogger(__name__)

ArrayLike: TypeAlias = np.ndarray | ExtensionArray

INTERACTION_COLUMNS: tuple[str, ...] = (
    "market",
    "user",
    "item",
    "time",
    "value",
    "order",
)

XMARKET_COLUMNS: tuple[str, ...] = ("userId", "itemId", "rate", "date")
XMARKET_SUFFIX = "_5core.txt"
_XMARKET_DATE_FORMAT = "%Y-%m-%d"

# Suffixes read_table understands, longest first so ".csv.gz" wins over ".gz".
_CSV_SUFFIXES: tuple[str, ...] = (".csv.gz", ".csv.bz2", ".csv.zip", ".csv")
_TSV_SUFFIXES: tuple[str, ...] = (".tsv.gz", ".tsv")
_PARQUET_SUFFIXES: tuple[str, ...] = (".parquet", ".pq")

# A decimal number, as text ("17", "-3.5", "1.7e9").
_NUMBER = r"^\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*$"
# An id written as a float ("123.0", "-7.00") is the integer id "123", "-7".
_INTEGRAL_FLOAT_ID = r"^([+-]?\d+)\.0*$"


class DataError(ValueError):
    """An input that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class TableColumns:
    """Names of the columns of an order or rating log, as written in its header.

    user, item, time: required. value: a rating or a quantity; ``None`` when the log
    has none (every row then counts as one interaction of value 1.0). market: the
    column naming each row's market or country, when one file holds several.
    """

    user: str = "user"
    item: str = "item"
    time: str = "time"
    value: str | None = None
    market: str | None = None


# ---------------------------------------------------------------------------
# XMarket
# ---------------------------------------------------------------------------


def xmarket_market_name(path: str | Path) -> str:
    """The market of an XMarket file: ``ca`` for ``ca_5core.txt``.

    A file not named ``<market>_5core.txt`` is taken as one market named by its stem.
    """
    name = Path(path).name
    if name.endswith(XMARKET_SUFFIX):
        return name[: -len(XMARKET_SUFFIX)]
    return Path(path).stem


def read_xmarket(path: str | Path) -> pd.DataFrame:
    """Read one ``<market>_5core.txt`` file of the XMarket release.

    The format (space separated, header ``userId itemId rate date``, dates as
    YYYY-MM-DD) is that of the processed files released with Bonab et al.,
    "Cross-Market Product Recommendation", CIKM 2021. The release is already
    cleaned, so anything odd here means a damaged file: every problem is an error
    naming the line, nothing is dropped quietly. Blank lines are skipped.
    """
    path = Path(path)
    header = _xmarket_header(path)

    # Read every field as text so the line of a bad value can be named.
    try:
        raw = pd.read_csv(
            path,
            sep=r"\s+",
            dtype=str,
            na_filter=False,
            skip_blank_lines=False,
            quoting=csv.QUOTE_NONE,
            encoding="utf-8-sig",
        )
    except pd.errors.ParserError as error:
        raise DataError(
            f"xmarket: {path}: expected {len(header)} space-separated fields per line "
            f"like the header ({' '.join(header)}); {_parser_detail(error)}"
        ) from error
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"xmarket: {path}: cannot read the file: {error}") from error

    # Data row i is line i + 2 of the file (line 1 is the header).
    fields = raw.loc[:, list(XMARKET_COLUMNS)]
    empty = (fields == "").to_numpy()
    blank = empty.all(axis=1)
    short = empty.any(axis=1) & ~blank
    if short.any():
        row = int(np.flatnonzero(short)[0])
        raise DataError(
            f"xmarket: {path}: line {row + 2}: expected {len(header)} fields "
            f"({' '.join(header)}), got fewer: {_line_text(raw.iloc[row])!r}"
        )
    fields = fields.loc[np.asarray(~blank, dtype=bool)]
    if fields.empty:
        raise DataError(
            f"xmarket: {path}: expected at least one data row after the header, "
            "got none"
        )
    line = fields.index.to_numpy() + 2

    # Ratings: finite numbers.
    rate = pd.to_numeric(fields["rate"], errors="coerce").to_numpy(dtype=np.float64)
    bad_rate = ~np.isfinite(rate)
    if bad_rate.any():
        at = int(np.flatnonzero(bad_rate)[0])
        raise DataError(
            f"xmarket: {path}: line {line[at]}, column rate: expected a number, "
            f"got {fields['rate'].iloc[at]!r}"
        )

    # Dates: YYYY-MM-DD, stored as nanoseconds since the epoch.
    dates = pd.to_datetime(
        fields["date"], format=_XMARKET_DATE_FORMAT, errors="coerce", utc=True
    )
    bad_date = ~_within_ns_range(dates)
    if bad_date.any():
        at = int(np.flatnonzero(bad_date)[0])
        raise DataError(
            f"xmarket: {path}: line {line[at]}, column date: expected a date "
            f"YYYY-MM-DD, got {fields['date'].iloc[at]!r}"
        )
    time = _datetime_ns(dates)

    market = xmarket_market_name(path)
    frame = _interaction_frame(
        market=np.full(len(fields), market, dtype=object),
        user=fields["userId"].array,
        item=fields["itemId"].array,
        time=time,
        value=rate,
        order=line - 2,
    )
    logger.info(
        "read: %s: %s rows, %s users, %s items (market %s)",
        path.name,
        f"{len(frame):,}",
        f"{frame['user'].nunique():,}",
        f"{frame['item'].nunique():,}",
        market,
    )
    return frame


def read_xmarket_dir(
    path: str | Path, markets: Sequence[str] | None = None
) -> pd.DataFrame:
    """Read every ``*_5core.txt`` file of a directory, or only the named markets.

    Markets come in the order given, or sorted by name when ``markets`` is None.
    """
    path = Path(path)
    if not path.is_dir():
        raise DataError(
            f"xmarket: {path}: expected a directory of <market>{XMARKET_SUFFIX} "
            f"files, got {'a file' if path.exists() else 'no such directory'}"
        )
    found = {
        xmarket_market_name(file): file
        for file in sorted(path.glob(f"*{XMARKET_SUFFIX}"))
        if file.is_file()
    }
    if not found:
        raise DataError(
            f"xmarket: {path}: expected <market>{XMARKET_SUFFIX} files, found none"
        )

    # Named markets must all be there.
    wanted = sorted(found) if markets is None else list(dict.fromkeys(markets))
    if not wanted:
        raise DataError(f"xmarket: {path}: expected at least one market, got none")
    missing = [market for market in wanted if market not in found]
    if missing:
        raise DataError(
            f"xmarket: {path}: no file for market(s) {', '.join(missing)}; "
            f"markets found: {', '.join(sorted(found))}"
        )
    return pd.concat(
        [read_xmarket(found[market]) for market in wanted], ignore_index=True
    )


def _xmarket_header(path: Path) -> list[str]:
    """The header fields of an XMarket file, checked to hold the four columns."""
    if not path.exists():
        raise DataError(f"xmarket: {path}: no such file")
    if not path.is_file():
        raise DataError(f"xmarket: {path}: expected a file, got a directory")
    try:
        with path.open("r", encoding="utf-8-sig") as handle:
            first_line = handle.readline()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(
            f"xmarket: {path}: cannot read the file as UTF-8 text: {error}"
        ) from error
    header = first_line.split()
    if not header:
        raise DataError(
            f"xmarket: {path}: line 1: expected the header "
            f"{' '.join(XMARKET_COLUMNS)!r}, got an empty file or line"
        )
    missing = [column for column in XMARKET_COLUMNS if column not in header]
    if missing:
        raise DataError(
            f"xmarket: {path}: line 1: header lacks column(s) {', '.join(missing)}; "
            f"expected {' '.join(XMARKET_COLUMNS)!r}, got {first_line.strip()[:200]!r}"
        )
    return header


# ---------------------------------------------------------------------------
# Order and rating logs (CSV, TSV, Parquet)
# ---------------------------------------------------------------------------


def read_table(
    path: str | Path,
    columns: TableColumns,
    market: str | None = None,
    implicit: bool = False,
) -> pd.DataFrame:
    """Read a CSV, TSV or Parquet order or rating log, dropping junk rows on purpose.

    market: the market of every row when the log has no market column; else the
        file name without suffix.
    implicit: the value column holds quantities, and only a row with a quantity
        above zero is a purchase (cancellations and returns carry zero or negative
        quantities). Otherwise the value is a rating, kept as it is.

    Ids are compared as text: integers and integer-valued floats are the same id
    (``123``, ``123.0`` and ``"123"`` are ``"123"``), surrounding spaces are
    removed, and other text is kept as written (``"00123"`` stays itself). Times
    may be datetimes, date or datetime strings (UTC when no zone is given; formats
    the first value does not fix are parsed one by one, month first when
    ambiguous) or numeric timestamps; a column is numeric when most of its values
    are numbers. Numeric times with a fraction are rounded down, so rows within
    one unit keep file order.

    Each row is dropped for the first reason that applies, in this order: missing
    user, missing item, missing market, missing or unparsable time, missing or
    unparsable value, non-positive value (``implicit`` only), duplicate of an
    earlier kept row (same market, user, item, time and value). One INFO line
    per file gives the counts.
    """
    path = Path(path)
    read = _table_reader(path)
    wanted = [
        name
        for name in (columns.user, columns.item, columns.time, columns.value)
        if name is not None
    ]
    if columns.market is not None:
        wanted.append(columns.market)
    wanted = list(dict.fromkeys(wanted))
    raw = read(path, wanted)
    total = len(raw)
    if total == 0:
        raise DataError(
            f"table: {path}: expected at least one data row after the header, got none"
        )

    # Each reason marks only rows not dropped for an earlier one.
    dropped: dict[str, int] = {}
    keep = np.ones(total, dtype=bool)

    def drop(reason: str, bad: np.ndarray) -> None:
        newly = bad & keep
        count = int(newly.sum())
        if count:
            dropped[reason] = dropped.get(reason, 0) + count
            keep[newly] = False

    user, missing_user = _normalise_ids(raw[columns.user])
    drop(f"missing {_label(columns.user, 'user')}", missing_user)
    item, missing_item = _normalise_ids(raw[columns.item])
    drop(f"missing {_label(columns.item, 'item')}", missing_item)

    if columns.market is not None:
        markets, missing_market = _normalise_ids(raw[columns.market])
        drop(f"missing {_label(columns.market, 'market')}", missing_market)
    else:
        name = market if market is not None else _table_stem(path)
        markets = np.full(total, name, dtype=object)

    time, missing_time, bad_time = _parse_times(raw[columns.time])
    drop(f"missing {_label(columns.time, 'time')}", missing_time)
    drop(f"unparsable {_label(columns.time, 'time')}", bad_time)

    if columns.value is not None:
        value, missing_value, bad_value = _parse_values(raw[columns.value])
        role = _label(columns.value, "quantity" if implicit else "rating")
        drop(f"missing {role}", missing_value)
        drop(f"unparsable {role}", bad_value)
        if implicit:
            drop(f"non-positive {role}", ~(value > 0))
    else:
        value = np.ones(total, dtype=np.float64)

    frame = _interaction_frame(
        market=markets[keep],
        user=user[keep],
        item=item[keep],
        time=time[keep],
        value=value[keep],
        order=np.flatnonzero(keep),
    )

    # Exact repeats of a kept row (a double-submitted order line) count once.
    duplicate = frame.duplicated(subset=["market", "user", "item", "time", "value"])
    if duplicate.any():
        dropped["duplicate"] = int(duplicate.sum())
        frame = frame.loc[~duplicate.to_numpy()].reset_index(drop=True)

    summary = ", ".join(f"{count:,} {reason}" for reason, count in dropped.items())
    if frame.empty:
        raise DataError(
            f"table: {path}: expected at least one usable row, got none of "
            f"{total:,}: dropped {summary}"
        )
    logger.info(
        "read: %s: kept %s of %s rows; dropped %s",
        path.name,
        f"{len(frame):,}",
        f"{total:,}",
        summary or "nothing",
    )
    return frame


def load_interactions(
    path: str | Path,
    data_format: str,
    columns: TableColumns | None = None,
    markets: Sequence[str] | None = None,
    implicit: bool = False,
) -> pd.DataFrame:
    """Read interactions in ``data_format`` (``xmarket`` or ``table``).

    xmarket: ``path`` is a directory of ``<market>_5core.txt`` files or one such
        file. table: ``path`` is one CSV/TSV/Parquet log read with ``columns``
        (default :class:`TableColumns`). ``markets``, when given, keeps only those
        markets; a named market absent from the data is an error.
    """
    path = Path(path)
    if data_format == "xmarket":
        if path.is_dir():
            return read_xmarket_dir(path, markets)
        frame = read_xmarket(path)
    elif data_format == "table":
        frame = read_table(path, columns or TableColumns(), implicit=implicit)
    else:
        raise DataError(
            f"load: {path}: expected data format 'xmarket' or 'table', "
            f"got {data_format!r}"
        )
    if markets is None:
        return frame

    # Keep the named markets.
    wanted = list(dict.fromkeys(markets))
    present = set(frame["market"].unique())
    missing = [market for market in wanted if market not in present]
    if missing:
        raise DataError(
            f"load: {path}: no rows for market(s) {', '.join(missing)}; "
            f"markets found: {', '.join(sorted(present))}"
        )
    return frame.loc[frame["market"].isin(wanted).to_numpy()].reset_index(drop=True)


def require_interactions(frame: pd.DataFrame, source: str) -> None:
    """Raise DataError unless ``frame`` has the interaction columns of this module."""
    missing = [column for column in INTERACTION_COLUMNS if column not in frame.columns]
    if missing:
        present = ", ".join(map(str, frame.columns))
        raise DataError(
            f"{source}: interactions lack column(s) {', '.join(missing)}; expected "
            f"{', '.join(INTERACTION_COLUMNS)}, got {present}"
        )


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _interaction_frame(
    *,
    market: ArrayLike,
    user: ArrayLike,
    item: ArrayLike,
    time: ArrayLike,
    value: ArrayLike,
    order: ArrayLike,
) -> pd.DataFrame:
    """The output frame of every reader, with the documented column dtypes.

    Arrays, not Series, come in: a Series would be aligned on its index.
    """
    return pd.DataFrame(
        {
            "market": pd.Series(market, dtype=str),
            "user": pd.Series(user, dtype=str),
            "item": pd.Series(item, dtype=str),
            "time": pd.Series(time, dtype=np.int64),
            "value": pd.Series(value, dtype=np.float64),
            "order": pd.Series(order, dtype=np.int64),
        }
    )


_ColumnReader: TypeAlias = Callable[[Path, list[str]], pd.DataFrame]


def _table_reader(path: Path) -> _ColumnReader:
    """A function reading the named columns of ``path``, chosen by its suffix."""
    if not path.exists():
        raise DataError(f"table: {path}: no such file")
    if not path.is_file():
        raise DataError(f"table: {path}: expected a file, got a directory")
    name = path.name.lower()
    if name.endswith(_PARQUET_SUFFIXES):
        return _read_parquet_columns
    if name.endswith(_CSV_SUFFIXES):
        return lambda path, wanted: _read_csv_columns(path, wanted, ",")
    if name.endswith(_TSV_SUFFIXES):
        return lambda path, wanted: _read_csv_columns(path, wanted, "\t")
    raise DataError(
        f"table: {path}: expected a file ending in "
        f"{', '.join(_CSV_SUFFIXES + _TSV_SUFFIXES + _PARQUET_SUFFIXES)}, "
        f"got {path.name!r}"
    )


def _read_csv_columns(path: Path, wanted: list[str], sep: str) -> pd.DataFrame:
    """The named columns of a delimited text file, every value as text or NaN."""
    try:
        present = [
            str(c) for c in pd.read_csv(path, sep=sep, nrows=0, encoding="utf-8-sig")
        ]
        _require_columns(path, wanted, present)
        return pd.read_csv(
            path, sep=sep, usecols=wanted, dtype=str, encoding="utf-8-sig"
        )
    except pd.errors.EmptyDataError as error:
        raise DataError(
            f"table: {path}: expected a header line naming the columns "
            f"{', '.join(wanted)}, got an empty file"
        ) from error
    except pd.errors.ParserError as error:
        raise DataError(
            f"table: {path}: cannot parse as {'CSV' if sep == ',' else 'TSV'}: "
            f"{_parser_detail(error)}"
        ) from error
    except (OSError, UnicodeDecodeError, EOFError) as error:
        raise DataError(f"table: {path}: cannot read the file: {error}") from error


def _read_parquet_columns(path: Path, wanted: list[str]) -> pd.DataFrame:
    """The named columns of a Parquet file, with their stored types."""
    try:
        present = pq.read_schema(path).names
        _require_columns(path, wanted, present)
        frame = pq.read_table(path, columns=wanted).to_pandas()
    except (OSError, pa.ArrowException) as error:
        raise DataError(f"table: {path}: cannot read as Parquet: {error}") from error

    # Categorical columns (as pandas stores them) are read as their plain values.
    for name in frame.columns:
        if isinstance(frame[name].dtype, pd.CategoricalDtype):
            frame[name] = frame[name].astype(object)
    return frame


def _require_columns(path: Path, wanted: list[str], present: list[str]) -> None:
    missing = [name for name in wanted if name not in present]
    if missing:
        raise DataError(
            f"table: {path}: no column {', '.join(map(repr, missing))}; "
            f"columns present: {', '.join(map(repr, present))}"
        )


def _normalise_ids(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Ids as text (object array) and a mask of missing ids.

    Integer-valued floats lose their fraction so that ``123`` read from one file
    and ``123.0`` from a column with gaps (which pandas stores as floats) are one id.
    """
    missing = column.isna().to_numpy()
    text = column.astype(str).str.strip()
    text = text.str.replace(_INTEGRAL_FLOAT_ID, r"\1", regex=True)
    values = text.to_numpy(dtype=object, na_value="")
    return values, missing | (values == "")


def _parse_times(column: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Times as int64, a mask of missing ones and a mask of unparsable ones."""
    missing = column.isna().to_numpy()
    dtype = column.dtype
    if isinstance(dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(dtype):
        dates = pd.to_datetime(column, utc=True)
        bad = ~_within_ns_range(dates) & ~missing
        return _datetime_ns(dates.where(~bad)), missing, bad
    if pd.api.types.is_bool_dtype(dtype):
        return np.zeros(len(column), dtype=np.int64), missing, ~missing
    if pd.api.types.is_integer_dtype(dtype):
        time = column.to_numpy(dtype=np.int64, na_value=0)
        return time, missing, np.zeros(len(column), dtype=bool)

    # Floats, or text holding numbers when most of its values are numbers (a
    # regular expression decides: to_numeric is slow on text that fails).
    looks_numeric = column.astype(str).str.contains(_NUMBER, regex=True, na=False)
    if pd.api.types.is_float_dtype(dtype) or 2 * int(looks_numeric.sum()) > int(
        (~missing).sum()
    ):
        numbers = pd.to_numeric(column, errors="coerce")
        if pd.api.types.is_integer_dtype(numbers.dtype):
            time = numbers.to_numpy(dtype=np.int64, na_value=0)
            return time, missing, numbers.isna().to_numpy() & ~missing
        floats = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
        # int64 holds about ±9.22e18; 9.2e18 is exact in float64 and inside.
        usable = np.isfinite(floats) & (np.abs(floats) < 9.2e18)
        time = np.zeros(len(floats), dtype=np.int64)
        time[usable] = np.floor(floats[usable]).astype(np.int64)
        return time, missing, ~usable & ~missing

    # Date or datetime strings: the format of the first value, then one by one.
    text = column.astype(str).str.strip()
    with warnings.catch_warnings():
        # The per-value fallback below is deliberate; its warning is noise.
        warnings.simplefilter("ignore", UserWarning)
        dates = pd.to_datetime(text, errors="coerce", utc=True)
        retry = dates.isna().to_numpy() & ~missing
        if retry.any():
            dates.loc[retry] = pd.to_datetime(
                text.loc[retry], errors="coerce", utc=True, format="mixed"
            )
    bad = (dates.isna().to_numpy() | ~_within_ns_range(dates)) & ~missing
    return _datetime_ns(dates.where(~bad)), missing, bad


def _within_ns_range(dates: pd.Series) -> np.ndarray:
    """Which UTC datetimes fit int64 nanoseconds (years 1677 to 2262)."""
    low = pd.Timestamp.min.tz_localize("UTC")
    high = pd.Timestamp.max.tz_localize("UTC")
    return ((dates >= low) & (dates <= high)).to_numpy(dtype=bool, na_value=False)


def _datetime_ns(dates: pd.Series) -> np.ndarray:
    """UTC datetimes as int64 nanoseconds since the epoch (0 where missing)."""
    naive = dates.dt.tz_convert("UTC").dt.tz_localize(None)
    values = naive.to_numpy(dtype="datetime64[ns]")
    return np.where(np.isnat(values), np.datetime64(0, "ns"), values).view(np.int64)


def _parse_values(column: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Values as float64, a mask of missing ones and a mask of unparsable ones."""
    missing = column.isna().to_numpy()
    numbers = pd.to_numeric(column, errors="coerce")
    values = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    return values, missing, ~np.isfinite(values) & ~missing


def _label(column: str, role: str) -> str:
    """How a drop reason names a column: the role, and the header name if it differs."""
    return role if column == role else f"{role} ({column})"


def _table_stem(path: Path) -> str:
    """The file name without any of the known table suffixes."""
    name = path.name
    for suffix in _CSV_SUFFIXES + _TSV_SUFFIXES + _PARQUET_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _parser_detail(error: Exception) -> str:
    """The useful part of a pandas parser error ("Expected 4 fields in line 7 ...")."""
    text = str(error).strip()
    return text.split("C error: ", 1)[-1]


def _line_text(row: pd.Series) -> str:
    return " ".join(str(field) for field in row if field != "")
