"""The log contract: every rule rejects with a message naming the file, column and rule."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from derm_features.cli import app
from derm_features.core.logs import (
    CATEGORICAL,
    DENSE,
    PRETRAINED,
    SEQUENCE,
    LogContractError,
    open_log,
)


def good_table(n: int = 6, start: dt.datetime | None = None) -> pa.Table:
    start = start or dt.datetime(2026, 1, 1, 8, tzinfo=dt.UTC)
    ts = [start + dt.timedelta(hours=i) for i in range(n)]
    return pa.table(
        {
            "user_id": pa.array(np.arange(n), pa.int64()),
            "pin_id": pa.array(np.arange(n) + 100, pa.int64()),
            "ts": pa.array(ts, pa.timestamp("us", "UTC")),
            "click": pa.array([0, 1] * (n // 2), pa.int8()),
            "conversion": pa.array([0, None] * (n // 2), pa.int8()),
            "surface": pa.array(["home_feed"] * n),
            "user_country": pa.array(["US"] * n),
            "user_sessions_7d": pa.array(np.ones(n), pa.float32()),
            "user_recent_pins": pa.array([[1, 2]] * n, pa.list_(pa.int64())),
            "pin_content_embedding": pa.array([[0.1] * 4] * n, pa.list_(pa.float32(), 4)),
            "ctx_hour": pa.array(np.arange(n), pa.int8()),
        }
    )


def write(table: pa.Table, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def test_good_log_is_accepted_and_routed_by_prefix_and_type(tmp_path):
    path = write(good_table(), tmp_path / "log.parquet")
    log = open_log(path)
    kinds = {f.name: (f.tower, f.kind) for f in log.schema.features}
    assert kinds == {
        "user_country": ("user", CATEGORICAL),
        "user_sessions_7d": ("user", DENSE),
        "user_recent_pins": ("user", SEQUENCE),
        "pin_content_embedding": ("pin", PRETRAINED),
        "ctx_hour": ("ctx", CATEGORICAL),
    }
    assert log.schema.id_type == "int64"
    assert log.schema.has_surface
    assert [f.dim for f in log.schema.features if f.kind == PRETRAINED] == [4]


@pytest.mark.parametrize(
    ("mutate", "column", "rule"),
    [
        (lambda t: t.drop_columns(["click"]), "click", "missing"),
        (lambda t: t.drop_columns(["pin_id"]), "pin_id", "missing"),
        (
            lambda t: t.set_column(0, "user_id", pa.array([1.5] * t.num_rows)),
            "user_id",
            "int64 or string",
        ),
        (
            lambda t: t.set_column(2, "ts", pa.array(["2026-01-01"] * t.num_rows)),
            "ts",
            "timestamp",
        ),
        (
            lambda t: t.set_column(
                2, "ts", t.column("ts").cast(pa.timestamp("us", "America/New_York"))
            ),
            "ts",
            "UTC",
        ),
        (
            lambda t: t.set_column(3, "click", pa.array([0, 2, 0, 1, 0, 1], pa.int8())),
            "click",
            "not 0 or 1",
        ),
        (
            lambda t: t.set_column(3, "click", pa.array([0, None, 0, 1, 0, 1], pa.int8())),
            "click",
            "null",
        ),
        (
            lambda t: t.set_column(4, "conversion", pa.array([0, 1, 5, 1, 0, 1], pa.int8())),
            "conversion",
            "not 0 or 1",
        ),
        (
            lambda t: t.set_column(0, "user_id", pa.array([1, None, 3, 4, 5, 6], pa.int64())),
            "user_id",
            "null",
        ),
        (lambda t: t.append_column("foo", pa.array([1] * t.num_rows)), "foo", "user_*, pin_*"),
        (
            lambda t: t.append_column("user_tags", pa.array([["a"]] * t.num_rows)),
            "user_tags",
            "no encoder",
        ),
        (
            lambda t: t.set_column(
                7,
                "user_sessions_7d",
                pa.array([1.0, np.nan, 1.0, 1.0, 1.0, 1.0], pa.float32()),
            ),
            "user_sessions_7d",
            "NaN",
        ),
        (
            lambda t: t.set_column(
                9,
                "pin_content_embedding",
                pa.array([[0.1] * 4] * 5 + [[0.1, np.inf, 0.1, 0.1]], pa.list_(pa.float32(), 4)),
            ),
            "pin_content_embedding",
            "row 5",
        ),
    ],
)
def test_each_rule_rejects_naming_file_and_column(tmp_path, mutate, column, rule):
    path = write(mutate(good_table()), tmp_path / "bad.parquet")
    with pytest.raises(LogContractError) as err:
        open_log(path)
    message = str(err.value)
    assert str(path) in message
    assert f"'{column}'" in message
    assert rule in message


def test_files_of_one_log_must_agree(tmp_path):
    write(good_table(), tmp_path / "log" / "ds=2026-01-01" / "a.parquet")
    other = good_table().drop_columns(["ctx_hour"])
    bad = write(other, tmp_path / "log" / "ds=2026-01-02" / "b.parquet")
    with pytest.raises(LogContractError, match="ctx_hour") as err:
        open_log(tmp_path / "log")
    assert str(bad) in str(err.value)


def test_missing_path_and_empty_directory_are_named(tmp_path):
    with pytest.raises(LogContractError, match="no such file"):
        open_log(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LogContractError, match="no \\*.parquet"):
        open_log(tmp_path / "empty")


def test_hive_partitions_scan_by_day(tmp_path):
    for day in (1, 2, 3):
        start = dt.datetime(2026, 1, day, 1, tzinfo=dt.UTC)
        write(good_table(4, start), tmp_path / "log" / f"ds=2026-01-0{day}" / "part-0.parquet")
    log = open_log(tmp_path / "log")
    assert log.partitioned
    assert log.days() == [dt.date(2026, 1, 1), dt.date(2026, 1, 2), dt.date(2026, 1, 3)]
    rows = log.scanner(dt.date(2026, 1, 2), dt.date(2026, 1, 3)).to_table()
    assert rows.num_rows == 8
    assert "ds" not in rows.column_names
    assert {t.date() for t in rows.column("ts").to_pylist()} == {
        dt.date(2026, 1, 2),
        dt.date(2026, 1, 3),
    }


def test_string_ids_are_accepted(tmp_path):
    t = good_table()
    t = t.set_column(0, "user_id", t.column("user_id").cast(pa.string()))
    t = t.set_column(1, "pin_id", t.column("pin_id").cast(pa.string()))
    assert open_log(write(t, tmp_path / "s.parquet")).schema.id_type == "string"


def test_cli_exit_code_and_message(tmp_path):
    runner = CliRunner()
    good = write(good_table(), tmp_path / "good.parquet")
    ok = runner.invoke(app, ["validate-logs", str(good)])
    assert ok.exit_code == 0, ok.output
    assert "follows the log contract" in ok.output
    bad = write(good_table().drop_columns(["ts"]), tmp_path / "bad.parquet")
    res = runner.invoke(app, ["validate-logs", str(bad)])
    assert res.exit_code == 2  # like every other command (issue 13)
    assert "'ts'" in res.output and "missing" in res.output
