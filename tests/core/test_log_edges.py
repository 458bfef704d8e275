"""Every edge of real logs is decided once, at the edge: refused by name or read the same.

Each rule names the file, column, row and what to do; `derm validate-logs` exits 2 like
every other command.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_logs_contract import good_table, write

from derm_features.core.logs import LogContractError, open_log

DAY = dt.date(2026, 1, 1)


def with_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


def test_naive_ts_is_refused_with_the_fix(tmp_path):
    table = good_table()
    naive = table["ts"].cast(pa.timestamp("us"))
    path = write(with_column(table, "ts", naive), tmp_path / "log.parquet")
    with pytest.raises(LogContractError, match=r"column 'ts' has no time zone; it must be UTC"):
        open_log(path)


def test_nanosecond_ts_is_read_when_whole_microseconds_and_refused_otherwise(tmp_path):
    table = good_table()
    ns = table["ts"].cast(pa.timestamp("ns", "UTC"))
    log = open_log(write(with_column(table, "ts", ns), tmp_path / "a" / "log.parquet"))
    assert log.scanner(DAY, DAY).to_table().num_rows == table.num_rows
    raw = ns.cast(pa.int64()).to_numpy().copy()
    raw[3] += 7  # 7 ns past a microsecond
    odd = pa.array(raw, pa.int64()).cast(pa.timestamp("ns", "UTC"))
    path = write(with_column(table, "ts", odd), tmp_path / "b" / "log.parquet")
    with pytest.raises(LogContractError, match=r"'ts' row 3: .* sub-microsecond"):
        open_log(path)


def test_a_row_outside_its_ds_day_is_refused_not_dropped(tmp_path):
    late = good_table(start=dt.datetime(2026, 1, 1, 20, tzinfo=dt.UTC))  # rows 4, 5: next day
    write(late, tmp_path / "log" / "ds=2026-01-01" / "part-0.parquet")
    with pytest.raises(LogContractError, match=r"'ts' row 4: .* is not on 2026-01-01"):
        open_log(tmp_path / "log")


def test_id_types_must_not_drift_between_files(tmp_path):
    a = good_table()
    b = with_column(good_table(), "user_id", a["user_id"].cast(pa.int32()))
    write(a, tmp_path / "log" / "ds=2026-01-01" / "part-0.parquet")
    write(b, tmp_path / "log" / "ds=2026-01-01" / "part-1.parquet")
    with pytest.raises(LogContractError, match=r"part-1.parquet: column 'user_id' is int32 here"):
        open_log(tmp_path / "log")


def test_uint64_ids_are_refused_by_name(tmp_path):
    table = good_table()
    big = pa.array(np.array([2**63 + 5] * table.num_rows, np.uint64))
    path = write(with_column(table, "pin_id", big), tmp_path / "log.parquet")
    with pytest.raises(LogContractError, match="column 'pin_id' has type uint64"):
        open_log(path)


def test_invalid_utf8_string_ids_are_refused_naming_the_row(tmp_path):
    table = good_table()
    ids = [f"u{i}".encode() for i in range(table.num_rows)]
    ids[2] = b"\xff\xfe"
    binary = pa.array(ids, pa.binary())
    # Parquet keeps the bytes; a reader that trusts the string type gets invalid UTF-8
    bad = pa.Array.from_buffers(pa.string(), len(ids), binary.buffers())
    strings = pa.array([f"p{i}" for i in range(table.num_rows)])
    table = with_column(with_column(table, "user_id", bad), "pin_id", strings)
    path = write(table, tmp_path / "log.parquet")
    with pytest.raises(LogContractError, match=r"'user_id' row 2: not valid UTF-8"):
        open_log(path)


def test_validate_logs_exits_2(tmp_path):
    from typer.testing import CliRunner

    from derm_features.cli import app

    table = good_table()
    path = write(
        with_column(table, "ts", table["ts"].cast(pa.timestamp("us"))), tmp_path / "l.parquet"
    )
    result = CliRunner().invoke(app, ["validate-logs", str(path)])
    assert result.exit_code == 2 and "no time zone" in result.output
    assert pq.read_table(path).num_rows == 6  # nothing touched
