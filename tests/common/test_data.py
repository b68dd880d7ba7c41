"""Interaction readers: exact output on hand-built files, errors naming the input."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.data import (
    INTERACTION_COLUMNS,
    DataError,
    TableColumns,
    load_interactions,
    read_table,
    read_xmarket,
    read_xmarket_dir,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
XMARKET = FIXTURES / "xmarket"
XMARKET_BAD = FIXTURES / "xmarket_bad"
ORDERS = FIXTURES / "orders_messy.csv"
REAL_XMARKET = Path(__file__).resolve().parents[2].parent / "shared/data/xmarket"

ORDER_COLUMNS = TableColumns(
    user="CustomerID",
    item="StockCode",
    time="InvoiceDate",
    value="Quantity",
    market="Country",
)


def _ns(text: str) -> int:
    """Nanoseconds since the epoch of a UTC date or datetime string."""
    return int(pd.Timestamp(text, tz="UTC").value)


def _assert_interaction_dtypes(frame: pd.DataFrame) -> None:
    assert tuple(frame.columns) == INTERACTION_COLUMNS
    for column in ("market", "user", "item"):
        assert pd.api.types.is_string_dtype(frame[column].dtype), column
    assert frame["time"].dtype == np.int64
    assert frame["value"].dtype == np.float64
    assert frame["order"].dtype == np.int64


# ---------------------------------------------------------------------------
# XMarket
# ---------------------------------------------------------------------------


def test_read_xmarket_gives_every_row_with_documented_columns() -> None:
    # Execute
    frame = read_xmarket(XMARKET / "bb_5core.txt")

    # Assert: three rows as written, dates as ns since the epoch, file order kept.
    _assert_interaction_dtypes(frame)
    assert frame["market"].tolist() == ["bb", "bb", "bb"]
    assert frame["user"].tolist() == ["v1", "v1", "v2"]
    assert frame["item"].tolist() == ["A", "M", "N"]
    assert frame["time"].tolist() == [
        _ns("2021-06-01"),
        _ns("2021-06-02"),
        _ns("2021-06-03"),
    ]
    assert frame["value"].tolist() == [5.0, 4.0, 3.0]
    assert frame["order"].tolist() == [0, 1, 2]


def test_read_xmarket_time_reads_back_as_the_date() -> None:
    # Execute
    frame = read_xmarket(XMARKET / "bb_5core.txt")

    # Assert: pd.to_datetime undoes the encoding.
    assert pd.to_datetime(frame["time"]).iloc[0] == pd.Timestamp("2021-06-01")


def test_read_xmarket_dir_reads_all_markets_in_name_order() -> None:
    # Execute
    frame = read_xmarket_dir(XMARKET)

    # Assert: 20 rows of aa then 3 of bb; order restarts per file.
    assert frame["market"].value_counts().to_dict() == {"aa": 20, "bb": 3}
    assert frame["market"].iloc[0] == "aa"
    assert frame["order"].iloc[20] == 0


def test_read_xmarket_dir_reads_only_named_markets() -> None:
    # Execute
    frame = read_xmarket_dir(XMARKET, markets=["bb"])

    # Assert
    assert set(frame["market"]) == {"bb"}
    assert len(frame) == 3


def test_read_xmarket_dir_names_found_markets_when_one_is_missing() -> None:
    # Execute / Assert
    with pytest.raises(DataError, match=r"market\(s\) zz; markets found: aa, bb"):
        read_xmarket_dir(XMARKET, markets=["aa", "zz"])


def test_read_xmarket_missing_file_names_the_path(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "nowhere_5core.txt"

    # Execute / Assert
    with pytest.raises(DataError, match=r"nowhere_5core\.txt: no such file"):
        read_xmarket(path)


def test_read_xmarket_missing_column_names_the_column() -> None:
    # Execute / Assert: the header says "rating" where "rate" is expected.
    with pytest.raises(DataError) as caught:
        read_xmarket(XMARKET_BAD / "badheader_5core.txt")
    message = str(caught.value)
    assert "badheader_5core.txt" in message
    assert "line 1" in message
    assert "lacks column(s) rate" in message
    assert "userId itemId rating date" in message


def test_read_xmarket_header_only_is_an_error() -> None:
    # Execute / Assert
    with pytest.raises(
        DataError, match=r"headeronly_5core\.txt: expected at least one"
    ):
        read_xmarket(XMARKET_BAD / "headeronly_5core.txt")


def test_read_xmarket_short_line_names_its_line_number() -> None:
    # Execute / Assert: line 4 is "u2 C 3.0".
    with pytest.raises(DataError, match=r"shortline_5core\.txt: line 4: expected 4"):
        read_xmarket(XMARKET_BAD / "shortline_5core.txt")


def test_read_xmarket_long_line_names_its_line_number() -> None:
    # Execute / Assert: line 3 has a fifth field.
    with pytest.raises(DataError, match=r"longline_5core\.txt.*line 3, saw 5"):
        read_xmarket(XMARKET_BAD / "longline_5core.txt")


def test_read_xmarket_bad_date_names_line_and_value() -> None:
    # Execute / Assert: month 13 on line 3.
    with pytest.raises(
        DataError, match=r"baddate_5core\.txt: line 3, column date: .*'2020-13-01'"
    ):
        read_xmarket(XMARKET_BAD / "baddate_5core.txt")


def test_read_xmarket_bad_rate_names_line_and_value() -> None:
    # Execute / Assert: "five" on line 5.
    with pytest.raises(
        DataError, match=r"badrate_5core\.txt: line 5, column rate: .*'five'"
    ):
        read_xmarket(XMARKET_BAD / "badrate_5core.txt")


def test_read_xmarket_binary_garbage_is_an_error(tmp_path: Path) -> None:
    # Prepare: bytes that are not UTF-8.
    path = tmp_path / "zz_5core.txt"
    path.write_bytes(b"\xff\xfe\x00\x81garbage\x00\xc3\x28\n\x00\x01\x02\n")

    # Execute / Assert
    with pytest.raises(
        DataError, match=r"zz_5core\.txt: cannot read the file as UTF-8"
    ):
        read_xmarket(path)


def test_read_xmarket_text_garbage_is_a_header_error(tmp_path: Path) -> None:
    # Prepare: readable text, but not an XMarket file.
    path = tmp_path / "zz_5core.txt"
    path.write_text("<html><body>404 not found</body></html>\n")

    # Execute / Assert
    with pytest.raises(DataError, match=r"zz_5core\.txt: line 1: header lacks column"):
        read_xmarket(path)


def test_read_xmarket_on_real_mexico_file_matches_the_release_notes() -> None:
    # Prepare: the shared data set must be present; a missing one is a failure.
    path = REAL_XMARKET / "mx_5core.txt"
    assert path.is_file(), f"XMarket data missing: expected {path} (see README)"

    # Execute
    frame = read_xmarket(path)

    # Assert: the row, user and item counts of the data set's README.
    _assert_interaction_dtypes(frame)
    assert len(frame) == 17_095
    assert frame["user"].nunique() == 1_878
    assert frame["item"].nunique() == 1_645
    assert set(frame["market"]) == {"mx"}
    assert frame["value"].between(1.0, 5.0).all()
    assert frame["order"].tolist() == list(range(17_095))


# ---------------------------------------------------------------------------
# Order and rating logs
# ---------------------------------------------------------------------------


def test_read_table_drops_junk_rows_of_a_messy_order_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Prepare: of 20 rows, rows 2 and 9 lack a customer, 10 a stock code, 13 a
    # country; 12 has no date, 17 the quantity "two"; 4 and 5 are cancellations
    # (-1) and 11 has quantity 0; 6 repeats 3 and 16 repeats 14.
    caplog.set_level(logging.INFO, logger="common.data")

    # Execute
    frame = read_table(ORDERS, ORDER_COLUMNS, implicit=True)

    # Assert: the nine clean rows, in file order.
    _assert_interaction_dtypes(frame)
    assert frame["order"].tolist() == [0, 1, 3, 7, 8, 14, 15, 18, 19]
    assert frame["user"].tolist() == [
        "17850",
        "17850",
        "13047",
        "12583",
        "12583",
        "abc-7",
        "12583",
        "12583",
        "17850",
    ]
    assert frame["item"].tolist() == [
        "85123A",
        "71053",
        "84879",
        "22728",
        "22727",
        "21754",
        "21755",
        "22086",
        "71053",
    ]
    assert frame["market"].tolist() == ["United Kingdom"] * 3 + ["France"] * 2 + [
        "Germany"
    ] * 2 + ["France", "United Kingdom"]
    assert frame["value"].tolist() == [6.0, 6.0, 32.0, 24.0, 24.0, 3.0, 3.0, 12.0, 2.0]
    assert frame["time"].iloc[0] == _ns("2010-12-01 08:26")
    # A second date format in the same column (month first when ambiguous).
    assert frame["time"].iloc[8] == _ns("2010-12-05 14:00")

    # Assert: one INFO line with every reason and count.
    lines = [record for record in caplog.records if record.name == "common.data"]
    assert len(lines) == 1
    assert lines[0].levelno == logging.INFO
    assert lines[0].getMessage() == (
        "read: orders_messy.csv: kept 9 of 20 rows; dropped 2 missing user "
        "(CustomerID), 1 missing item (StockCode), 1 missing market (Country), "
        "1 unparsable time (InvoiceDate), 1 unparsable quantity (Quantity), "
        "3 non-positive quantity (Quantity), 2 duplicate"
    )


def test_read_table_integer_and_float_ids_are_one_id(tmp_path: Path) -> None:
    # Prepare: a Parquet log where a gap turned the customer column into floats,
    # stock codes are ints, and times are real datetimes.
    path = tmp_path / "shop.parquet"
    pd.DataFrame(
        {
            "customer": [7.0, np.nan, 7.0, 12.0],
            "product": [101, 102, 103, 101],
            "at": pd.to_datetime(
                ["2021-01-01", "2021-01-02", "2021-01-03", "2021-01-04"]
            ),
        }
    ).to_parquet(path)

    # Execute
    frame = read_table(path, TableColumns(user="customer", item="product", time="at"))

    # Assert: "7" not "7.0"; the market is the file stem; value defaults to 1.0.
    _assert_interaction_dtypes(frame)
    assert frame["user"].tolist() == ["7", "7", "12"]
    assert frame["item"].tolist() == ["101", "103", "101"]
    assert frame["market"].tolist() == ["shop", "shop", "shop"]
    assert frame["value"].tolist() == [1.0, 1.0, 1.0]
    assert frame["time"].tolist() == [
        _ns("2021-01-01"),
        _ns("2021-01-03"),
        _ns("2021-01-04"),
    ]
    assert frame["order"].tolist() == [0, 2, 3]


def test_read_table_explicit_ratings_keep_values_and_drop_only_missing(
    tmp_path: Path,
) -> None:
    # Prepare: ratings may be zero or negative (kept), a missing one is dropped,
    # times are numeric, and the market comes from the argument.
    path = tmp_path / "ratings.csv"
    path.write_text(
        "user,item,time,stars\n1,a,100,-1.5\n2,b,101,0\n3,c,102,\n4,d,103.7,4\n"
    )

    # Execute
    frame = read_table(path, TableColumns(value="stars"), market="de")

    # Assert
    assert frame["user"].tolist() == ["1", "2", "4"]
    assert frame["value"].tolist() == [-1.5, 0.0, 4.0]
    assert frame["time"].tolist() == [100, 101, 103]  # fractions rounded down
    assert frame["market"].tolist() == ["de", "de", "de"]


def test_read_table_missing_column_names_file_column_and_columns_present() -> None:
    # Execute / Assert
    with pytest.raises(DataError) as caught:
        read_table(ORDERS, TableColumns(user="customer_id", item="StockCode"))
    message = str(caught.value)
    assert "orders_messy.csv" in message
    assert "no column 'customer_id'" in message
    assert "'CustomerID'" in message
    assert "'InvoiceNo'" in message


def test_read_table_header_only_is_an_error(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "empty.csv"
    path.write_text("user,item,time\n")

    # Execute / Assert
    with pytest.raises(DataError, match=r"empty\.csv: expected at least one data row"):
        read_table(path, TableColumns())


def test_read_table_empty_file_is_an_error(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "nothing.csv"
    path.write_text("")

    # Execute / Assert
    with pytest.raises(DataError, match=r"nothing\.csv: expected a header line"):
        read_table(path, TableColumns())


def test_read_table_all_rows_junk_is_an_error(tmp_path: Path) -> None:
    # Prepare: every row lacks a user.
    path = tmp_path / "junk.csv"
    path.write_text("user,item,time\n,a,2020-01-01\n,b,2020-01-02\n")

    # Execute / Assert
    with pytest.raises(
        DataError, match=r"junk\.csv: expected at least one usable row.*2 missing user"
    ):
        read_table(path, TableColumns())


def test_read_table_garbage_parquet_is_an_error(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"this is not parquet at all")

    # Execute / Assert
    with pytest.raises(DataError, match=r"broken\.parquet: cannot read as Parquet"):
        read_table(path, TableColumns())


def test_read_table_unknown_suffix_and_missing_file_are_errors(tmp_path: Path) -> None:
    # Prepare
    odd = tmp_path / "log.xlsx"
    odd.write_text("user,item,time\n")

    # Execute / Assert
    with pytest.raises(DataError, match=r"log\.xlsx: expected a file ending in"):
        read_table(odd, TableColumns())
    with pytest.raises(DataError, match=r"absent\.csv: no such file"):
        read_table(tmp_path / "absent.csv", TableColumns())


# ---------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------


def test_load_interactions_dispatches_and_filters_markets() -> None:
    # Execute
    from_dir = load_interactions(XMARKET, "xmarket", markets=["aa"])
    from_file = load_interactions(XMARKET / "bb_5core.txt", "xmarket")
    from_table = load_interactions(
        ORDERS, "table", ORDER_COLUMNS, markets=["France"], implicit=True
    )

    # Assert
    assert set(from_dir["market"]) == {"aa"} and len(from_dir) == 20
    assert set(from_file["market"]) == {"bb"} and len(from_file) == 3
    assert from_table["order"].tolist() == [7, 8, 18]
    assert from_table.index.tolist() == [0, 1, 2]


def test_load_interactions_rejects_unknown_format_and_absent_market() -> None:
    # Execute / Assert
    with pytest.raises(DataError, match=r"expected data format 'xmarket' or 'table'"):
        load_interactions(XMARKET, "json")
    with pytest.raises(DataError, match=r"market\(s\) Spain; markets found: France"):
        load_interactions(
            ORDERS, "table", ORDER_COLUMNS, markets=["Spain"], implicit=True
        )
