"""Every reader of a directory of Parquet files reads the same layouts the same way.

Logs, daily tower outputs, pools and training sets all list their files with
`derm_features.core.files.parquet_files`: nested files are read, and writer markers, a
Spark job's `_temporary/` and an atomic write in flight (`.tmp-*`) are never read.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from materialize_helpers import DIM, daily_table, unit_rows

from derm_features.core.files import parquet_files
from derm_features.core.logs import LogContractError, open_log
from derm_features.core.workdir import Workdir
from materialize.storage import MaterializeError, scan_daily, split_daily
from trainers.downstream.training_set import TrainingSet

DAY = dt.date(2026, 1, 1)


def write_layout(directory: Path, table: pa.Table, junk: pa.Table) -> None:
    """`table` split over a top-level and a nested file; `junk` in every place a reader
    must skip."""
    half = table.num_rows // 2
    for name, part in (
        ("part-0.parquet", table.slice(0, half)),
        ("nested/part-1.parquet", table.slice(half)),
        ("_temporary/0/part-9.parquet", junk),  # a Spark job still writing
        (".tmp-part-2.parquet", junk),  # an atomic write in flight
        ("_hidden/part-3.parquet", junk),
    ):
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(part, directory / name)
    (directory / "_SUCCESS").touch()
    (directory / ".part-0.parquet.crc").write_bytes(b"\x00crc")


def test_parquet_files_reads_nested_files_and_skips_hidden_names(tmp_path):
    table = pa.table({"x": [1, 2, 3, 4]})
    write_layout(tmp_path, table, pa.table({"x": [9]}))
    assert [str(p.relative_to(tmp_path)) for p in parquet_files(tmp_path)] == [
        "nested/part-1.parquet",
        "part-0.parquet",
    ]
    assert parquet_files(tmp_path / "part-0.parquet") == [tmp_path / "part-0.parquet"]
    (tmp_path / "empty").mkdir()
    assert parquet_files(tmp_path / "empty") == []
    with pytest.raises(FileNotFoundError, match="no such file"):
        parquet_files(tmp_path / "missing")


def log_table(n: int, first_user: int) -> pa.Table:
    ts = [dt.datetime(2026, 1, 1, 8, tzinfo=dt.UTC) + dt.timedelta(minutes=i) for i in range(n)]
    return pa.table(
        {
            "user_id": pa.array(np.arange(n) + first_user, pa.int64()),
            "pin_id": pa.array(np.arange(n) + 100, pa.int64()),
            "ts": pa.array(ts, pa.timestamp("us", "UTC")),
            "click": pa.array([0, 1] * (n // 2), pa.int8()),
            "conversion": pa.array([0, None] * (n // 2), pa.int8()),
        }
    )


@pytest.mark.parametrize("partitioned", [True, False])
def test_a_log_reads_its_data_files_only(tmp_path, partitioned):
    root = tmp_path / "log"
    directory = root / f"ds={DAY}" if partitioned else root
    # junk with another id type would even be refused, were it read
    junk = log_table(2, 10_000).cast(log_table(2, 0).schema.set(0, pa.field("user_id", pa.int32())))
    write_layout(directory, log_table(8, 0), junk)
    log = open_log(root)
    assert log.partitioned is partitioned
    users = log.scanner(DAY, DAY, columns=["user_id"]).to_table()["user_id"].to_pylist()
    assert sorted(users) == list(range(8))


def test_daily_outputs_read_their_data_files_only(tmp_path):
    workdir = Workdir(tmp_path)
    rng = np.random.default_rng(0)
    good = daily_table(np.arange(10), unit_rows(rng, 10), DAY)
    junk = daily_table(np.arange(1000, 1003), unit_rows(rng, 3), DAY)
    directory = workdir.daily("ctr", "user", DAY)
    write_layout(directory, good, junk)
    daily = split_daily(scan_daily(directory, "user_id", "ctr"), DIM, 2, tmp_path / "scratch")
    ids = [i for k in range(2) for i in daily.split.read(k)["user_id"].to_pylist()]
    assert sorted(ids) == list(range(10))
    assert daily.rows == 10 and len(daily.files) == 2


def test_a_day_of_only_hidden_files_is_no_output(tmp_path):
    directory = tmp_path / "ds=2026-01-01"
    (directory / "_temporary" / "0").mkdir(parents=True)
    pq.write_table(pa.table({"x": [1]}), directory / "_temporary" / "0" / "part-0.parquet")
    with pytest.raises(MaterializeError, match=r"no \*\.parquet in"):
        scan_daily(directory, "user_id", "ctr")
    with pytest.raises(LogContractError, match=r"holds no \*\.parquet files"):
        open_log(directory)


def test_a_training_set_reads_its_data_files_only(tmp_path):
    table = pa.table({"user_id": pa.array(range(6), pa.int64()), "click": [0, 1] * 3})
    write_layout(tmp_path / f"ds={DAY}", table, pa.table({"user_id": [99], "click": [1]}))
    read = TrainingSet(tmp_path, {}).read()
    assert sorted(read["user_id"].to_pylist()) == list(range(6))
