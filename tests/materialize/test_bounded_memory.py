"""What keeps `derm materialize`'s memory near its buckets (issue 15): the day's vectors
validated a block at a time and spilled into one file per bucket, pool buckets read row
group by row group into one matrix, checksums over blocks of a file, changed rows written
per bucket and merged into the offline file a row group at a time, and Arrow's freed pages
given back. Each gives the same result (the same bytes, for files) as the plain
whole-table way it replaced."""

from __future__ import annotations

import datetime as dt
import threading
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from materialize_helpers import DIM, VERSION, daily_table, unit_rows

from derm_features.core.arrays import fixed_size_list
from materialize import health, memory, storage
from materialize.kernel import (
    CARRIED,
    EXPIRED,
    NEW,
    UPDATED,
    embedding_matrix,
    gather_rows,
    pool_schema,
    sorted_by,
)
from materialize.storage import (
    VECTOR_PARQUET,
    bucket_of,
    read_contiguous,
    scan_daily,
    split_daily,
)
from materialize.storage.pool import _file_crc32

DAY = dt.date(2024, 3, 1)


def test_vector_checks_count_and_locate_across_blocks_and_row_groups(tmp_path, monkeypatch):
    """Blocks of 7 rows over row groups of 5: counts add up and the first bad row is the
    file's row number, as one whole-file check gives them."""
    values = unit_rows(np.random.default_rng(0), 40).astype(np.float64)
    values[[12, 31], 2] = np.nan
    values[[18, 19, 39]] = 0.0
    values[25, 0] = 1e39
    table = daily_table(np.arange(40), np.zeros((40, DIM), np.float32), DAY)
    flat = pa.array(values.reshape(-1))
    table = table.set_column(2, "embedding", pa.FixedSizeListArray.from_arrays(flat, DIM))
    pq.write_table(table, tmp_path / "wide.parquet", row_group_size=5)
    expected = [
        "2 row(s) with NaN or inf in column 'embedding' (first: row 12)",
        "1 row(s) with values beyond float32's range in column 'embedding' (first: row 25)",
        "3 row(s) with a zero-norm vector in column 'embedding' (first: row 18)",
    ]
    for block in (7, 1 << 20):
        monkeypatch.setattr(storage.daily, "_CHECK_ROWS", block)
        daily = scan_daily(tmp_path, "user_id", "ctr")
        with pytest.raises(storage.MaterializeError) as info:
            split_daily(daily, DIM, 3, None)
        assert str(info.value).splitlines()[1:] == [
            f"  {tmp_path / 'wide.parquet'}: {e}" for e in expected
        ]


def test_split_daily_spills_each_bucket_in_input_order_as_one_chunk(tmp_path, monkeypatch):
    """Two files (row groups of 4, blocks of 5 rows): each bucket's spill file holds
    exactly the rows `bucket_of` gives it, in the order of the files' concatenation, as
    one chunk a column and one (n, D) buffer of vectors."""
    monkeypatch.setattr(storage.daily, "_CHECK_ROWS", 5)
    rng = np.random.default_rng(1)
    tables = []
    for name, n in (("a", 23), ("b", 9)):
        tables.append(daily_table(rng.integers(0, 50, n), unit_rows(rng, n), DAY, fixed=n > 10))
        pq.write_table(tables[-1], tmp_path / f"{name}.parquet", row_group_size=4)
    daily = split_daily(scan_daily(tmp_path, "user_id", "ctr"), DIM, 3, tmp_path / "scratch")
    plain = pa.concat_tables(t.cast(tables[0].schema) for t in tables)
    bucket = bucket_of(plain["user_id"], 3)
    assert daily.rows == 32 and sum(daily.split.rows) == 32
    for k in range(3):
        got = daily.split.read(k)
        want = plain.filter(pa.array(bucket == k))
        assert all(column.num_chunks == 1 for column in got.columns)
        assert got["user_id"].equals(want["user_id"]) and got["ts"].equals(want["ts"])
        assert got["model_version"].equals(want["model_version"])
        np.testing.assert_array_equal(
            embedding_matrix(got["embedding"], DIM), embedding_matrix(want["embedding"], DIM)
        )


def pool_bucket(n: int, rng) -> pa.Table:
    schema = pool_schema(pa.int64(), DIM).set(0, pa.field("user_id", pa.int64()))
    return pa.Table.from_arrays(
        [
            pa.array(rng.permutation(n).astype(np.int64)),
            fixed_size_list(unit_rows(rng, n)),
            pa.array(rng.uniform(0.5, 1, n)),
            pa.array(np.arange(n) * 1_000_000, pa.timestamp("us", "UTC")),
            pa.nulls(n, schema.field("prev_daily").type),
            pa.array([VERSION] * n),
        ],
        schema=schema,
    )


@pytest.mark.parametrize("rows", [0, 1, 10, 37])
def test_read_contiguous_equals_read_table(tmp_path, rows):
    path = tmp_path / "bucket.parquet"
    options = {**VECTOR_PARQUET, "row_group_size": 8}
    pq.write_table(pool_bucket(rows, np.random.default_rng(rows)), path, **options)
    table = read_contiguous(path)
    assert table.equals(pq.read_table(path))
    assert table.schema == pq.read_table(path).schema
    assert all(column.num_chunks == 1 for column in table.columns)


def test_read_contiguous_reads_null_vectors_as_arrow_does(tmp_path):
    path = tmp_path / "nulls.parquet"
    table = pool_bucket(12, np.random.default_rng(2))
    with_null = pa.FixedSizeListArray.from_arrays(
        table["embedding"].combine_chunks().values, DIM, mask=pa.array(np.arange(12) == 9)
    )
    table = table.set_column(1, table.schema.field(1), with_null)
    pq.write_table(table, path, row_group_size=5)
    assert read_contiguous(path).equals(pq.read_table(path))


def test_file_crc32_over_blocks_is_the_whole_file_crc32(tmp_path, monkeypatch):
    path = tmp_path / "data.bin"
    path.write_bytes(np.random.default_rng(3).bytes(100_003))
    monkeypatch.setattr(storage.pool, "_CRC_BLOCK", 4096)
    assert _file_crc32(path) == (100_003, f"{zlib.crc32(path.read_bytes()):08x}")


@pytest.mark.parametrize("sizes", [[5, 0, 7, 3], [10], [0, 4], [1, 1, 1]])
def test_gather_rows_from_chunks_equals_take_on_the_concatenation(sizes):
    rng = np.random.default_rng(len(sizes))
    parts = [unit_rows(rng, n) for n in sizes]
    column = pa.chunked_array([fixed_size_list(p) for p in parts], type=pa.list_(pa.float32(), DIM))
    whole = np.concatenate(parts)
    rows = rng.permutation(len(whole)).astype(np.uint64)  # Arrow's sort indices' type
    np.testing.assert_array_equal(gather_rows(column, rows, DIM), whole[rows.astype(int)])
    np.testing.assert_array_equal(gather_rows(column, rows[:2], DIM), whole[rows[:2].astype(int)])


def test_sorted_by_over_chunks_equals_sorting_the_combined_table():
    rng = np.random.default_rng(5)
    chunks = [
        pa.table({"user_id": rng.permutation(50)[:n] + 100 * k, "embedding": fixed_size_list(rows)})
        for k, n in enumerate((6, 0, 9, 4))
        for rows in [unit_rows(rng, n)]
    ]
    table = pa.concat_tables(chunks)
    expected = table.combine_chunks().sort_by("user_id")
    assert sorted_by(table, "user_id").combine_chunks().equals(expected)


def test_returning_memory_pool_restores_the_default_pool():
    before = pa.default_memory_pool().backend_name
    with memory.returning_memory_pool():
        inside = pa.default_memory_pool().backend_name
        kept = pa.array(np.arange(1000))
    assert pa.default_memory_pool().backend_name == before
    assert inside in ("jemalloc", before)
    assert kept.sum().as_py() == 499_500


def test_small_pages_turns_numpys_huge_page_advice_off_and_back():
    switch = memory._HUGEPAGE_SWITCH  # NumPy's; returns the setting it replaces
    original = switch(True)
    try:
        with memory.small_pages():
            inside = switch(False)  # reads it (and leaves it off)
            assert float(np.ones((1024, 1024), dtype=np.float32).sum()) == 1024 * 1024
        assert inside is False
        assert switch(True) is True  # restored on the way out
        with pytest.raises(ZeroDivisionError), memory.small_pages():
            raise ZeroDivisionError
        assert switch(True) is True  # and when the block raises
    finally:
        switch(original)


def test_overlapping_holders_keep_the_setting_until_the_last_leaves():
    """Two days materialized at once in one process (threads of a library caller): the
    first out must not restore NumPy's advice under the second, nor leave it off."""
    switch = memory._HUGEPAGE_SWITCH
    original = switch(True)
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def first() -> None:
        with memory.small_pages():
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def second() -> None:
        a_in.wait(5)
        with memory.small_pages():
            b_in.set()
            a_out.wait(5)
            seen["after the first left"] = switch(False)  # reads it, leaves it off

    try:
        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert seen == {"after the first left": False}
        assert switch(True) is True  # restored once both left
    finally:
        switch(original)


def test_folded_stats_give_the_same_health_row():
    """Carried and expired rows folded by (status, last_seen): the same counts, cosine
    quantiles, norms and carried ages as one row per entity."""
    rng = np.random.default_rng(6)
    n = 500
    status = rng.choice([CARRIED, UPDATED, NEW, EXPIRED], n).astype(np.int8)
    day_rows = (status == UPDATED) | (status == NEW)
    days_ago = np.where(day_rows, 0, rng.integers(1, 95, n))
    stamp = int(dt.datetime(2024, 3, 1, tzinfo=dt.UTC).timestamp()) * 1_000_000
    stats = pa.table(
        {
            "status": pa.array(status),
            "cosine": pa.array(rng.uniform(-1, 1, n).astype(np.float32), mask=status != UPDATED),
            "norm": pa.array(rng.uniform(0, 1, n), mask=~day_rows),
            "degenerate": pa.array(rng.uniform(0, 1, n) < 0.1, mask=~day_rows),
            "last_seen": pa.array(stamp - days_ago * 86_400_000_000, pa.timestamp("us", "UTC")),
        }
    )
    folded = health.fold_stats(stats)
    assert folded.num_rows < n and folded["rows"].to_numpy().sum() == n
    whole = health.day_metrics(stats, "ctr", "user", DAY)
    assert health.day_metrics(folded, "ctr", "user", DAY) == whole
    assert whole["expired"] and whole["carried_age_max_days"] > 1


def _observe_arrow_bytes(monkeypatch, owner, name: str, seen: list[int]) -> None:
    """Records Arrow's live bytes each time `owner.name` is called (it still runs)."""
    real = getattr(owner, name)

    def observed(*args, **kwargs):
        seen.append(pa.total_allocated_bytes())
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, observed)


def _split_peak(tmp_path, monkeypatch, n: int) -> int:
    """Arrow's most live bytes (above what was live before) at each block `split_daily`
    spills, for a day of `n` 64-d rows in row groups of 400, blocks of 1000 rows."""
    monkeypatch.setattr(storage.daily, "_CHECK_ROWS", 1000)
    directory = tmp_path / f"day-{n}"
    directory.mkdir()
    rng = np.random.default_rng(8)
    version = "ctr-0a1b2c3d-d64@2024-01-01"
    table = daily_table(rng.integers(0, 10**6, n), unit_rows(rng, n, 64), DAY, version=version)
    pq.write_table(table, directory / "day.parquet", row_group_size=400)
    del table
    daily = scan_daily(directory, "user_id", "ctr")
    seen: list[int] = []
    with monkeypatch.context() as patch:
        _observe_arrow_bytes(patch, storage.daily._Spill, "add", seen)
        before = pa.total_allocated_bytes()
        split = split_daily(daily, 64, 6, directory / "scratch").split
    assert len(seen) >= n // 1000 and sum(split.rows) == n
    return max(seen) - before


def test_split_daily_holds_a_few_blocks_whatever_the_day(tmp_path, monkeypatch):
    """Arrow's live bytes (counts, not timings) while days of 24 and 96 blocks are split:
    the same few blocks for both (`iter_batches`, once used here, held the whole day)."""
    small = _split_peak(tmp_path, monkeypatch, 24_000)
    large = _split_peak(tmp_path, monkeypatch, 96_000)
    block = 1000 * 64 * 4
    # A few blocks of slack: the peak moves by 1-2 blocks from run to run (Arrow's IPC
    # writers' buffers), while a day held whole would add 72 blocks.
    assert large < small + 4 * block and large < 96_000 * 64 * 4 / 10


def _merge_peak(tmp_path, n: int) -> int:
    """Arrow's most live bytes (above what was live before) while 20 sorted runs of `n`
    64-d rows in all are read back in groups of 1024; checks the order (run after run)."""
    dim, buckets = 64, 20
    rng = np.random.default_rng(9)
    ids = rng.permutation(10 * n)[:n].astype(np.int64)
    vectors = unit_rows(rng, n, dim)
    bucket = bucket_of(pa.array(ids), buckets)
    runs, run_ids, order = [], [], []
    for k in range(buckets):
        rows = np.flatnonzero(bucket == k)
        rows = rows[np.argsort(ids[rows])]
        order.append(ids[rows])
        part = pa.table({"user_id": ids[rows], "embedding": fixed_size_list(vectors[rows])})
        runs.append(tmp_path / f"run-{n}-{k}.arrow")
        run_ids.append(storage.write_changed_run(runs[-1], part, buckets))
    changed = storage.ChangedRows(part.schema, runs, run_ids)
    before = pa.total_allocated_bytes()
    peak, merged = 0, []
    for group in changed.groups(1024):
        peak = max(peak, pa.total_allocated_bytes() - before)
        merged.append(np.array(group["user_id"]))  # a copy: a view would hold Arrow buffers
        assert group["embedding"].num_chunks == 1
    np.testing.assert_array_equal(np.concatenate(merged), np.concatenate(order))
    assert sorted(len(m) for m in merged)[1:] == [1024] * (len(merged) - 1)
    return peak


def test_changed_rows_read_back_holds_a_few_groups_whatever_the_day(tmp_path, monkeypatch):
    """Arrow's live bytes while runs of 10 and 40 groups in all are read back: a few
    groups' worth (the run's current batch and the group) for both, not all the rows."""
    monkeypatch.setitem(VECTOR_PARQUET, "row_group_size", 1024)
    small = _merge_peak(tmp_path, 10_240)
    large = _merge_peak(tmp_path, 40_960)
    assert large < 2 * small and large < 40_960 * 64 * 4 / 8


def test_streaming_changed_rows_are_read_as_they_are_added_and_stop_on_abort(tmp_path):
    """A reader thread gets each run as the merge adds it, in order; `abort` makes it
    raise instead of waiting; `add` after `close` is refused."""
    import threading

    schema = pa.schema([("user_id", pa.int64())])
    runs = [pa.table({"user_id": np.arange(k * 10, k * 10 + 7)}, schema=schema) for k in range(3)]
    changed = storage.ChangedRows.streaming()
    got, added = [], threading.Event()

    def read() -> None:
        for group in changed.groups(5):
            got.append(group["user_id"].to_pylist())
            added.set()

    reader = threading.Thread(target=read)
    reader.start()
    changed.add(runs[0], runs[0]["user_id"].to_numpy(), schema)
    assert added.wait(10)  # the first group is read before any other run exists
    assert got[0] == [0, 1, 2, 3, 4]
    for run in runs[1:]:
        changed.add(run, run["user_id"].to_numpy(), schema)
    changed.close()
    reader.join(10)
    assert sum(got, []) == [i for run in runs for i in run["user_id"].to_pylist()]
    assert [len(g) for g in got] == [5, 5, 5, 5, 1]
    with pytest.raises(RuntimeError, match="after close"):
        changed.add(runs[0], runs[0]["user_id"].to_numpy(), schema)

    aborted = storage.ChangedRows.streaming()
    aborted.add(runs[0], runs[0]["user_id"].to_numpy(), schema)
    groups = aborted.groups(100)
    aborted.abort()
    with pytest.raises(storage.MergeAborted):
        list(groups)
