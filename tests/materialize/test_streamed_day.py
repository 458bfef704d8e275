"""The day streamed through scratch files (issue 15 target 1): validated and split into one
spill file per bucket, each bucket's changed rows written as a sorted run and merged into
the offline file a row group at a time. The files are byte for byte those of the plain
whole-table way (the day in memory, split by `bucket_of`, every changed row sorted at the
end), and a failure at any point leaves the last good state and no scratch behind."""

from __future__ import annotations

import datetime as dt
import io
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from materialize_helpers import DIM, daily_table, tree_bytes, unit_rows, write_daily

from materialize import storage
from materialize.job import MaterializeConfig, materialize_day
from materialize.kernel import TIMESTAMP, merge_day, sorted_by, split_annotated
from materialize.storage import (
    VECTOR_PARQUET,
    MaterializeError,
    PoolIntegrityError,
    bucket_of,
    daily_files,
    offline_day_path,
    offline_rows,
    read_layout,
    read_pool,
    read_pool_bucket,
)

DAY = dt.date(2024, 3, 1)
DAY1 = DAY + dt.timedelta(days=1)
MODEL, ENTITY, KEY = "ctr", "user", "user_id"
BUCKETS = 5


def config(workdir, d) -> MaterializeConfig:
    return MaterializeConfig(
        workdir=workdir, model=MODEL, entity=ENTITY, day=d, online=False, buckets=BUCKETS
    )


def parquet_bytes(table: pa.Table) -> bytes:
    out = io.BytesIO()
    pq.write_table(table, out, **VECTOR_PARQUET)
    return out.getvalue()


def pool_bytes(table: pa.Table) -> bytes:
    """A pool bucket file's bytes for `table`, as `write_pool_bucket` writes it."""
    with tempfile.TemporaryDirectory() as tmp:
        written = storage.write_pool_bucket(Path(tmp), 0, table)
        return (Path(tmp) / written.path).read_bytes()


def write_day(workdir, d, ids, seconds, seed, files=3, row_group=9) -> None:
    """Day d's rows in `files` files of small row groups, in the given order."""
    vectors = unit_rows(np.random.default_rng(seed), len(ids))
    table = daily_table(ids, vectors, d, seconds)
    directory = workdir.daily(MODEL, ENTITY, d)
    directory.mkdir(parents=True, exist_ok=True)
    for n, part in enumerate(np.array_split(np.arange(len(ids)), files)):
        pq.write_table(table.take(pa.array(part)), directory / f"part-{n}.parquet",
                       row_group_size=row_group)  # fmt: skip


def whole_day_reference(workdir, d) -> tuple[dict[int, bytes], bytes]:
    """Pool(t) bucket files and the offline file of day d as the day in memory gives
    them: every row of the day read at once, split by `bucket_of` (stable), each bucket
    merged, its changed rows sorted by id, the buckets' changed rows one after the other."""
    schema = pa.schema(
        [(KEY, pa.int64()), ("ts", TIMESTAMP), ("embedding", pa.list_(pa.float32())),
         ("model_version", pa.string())]
    )  # fmt: skip
    files = daily_files(workdir.daily(MODEL, ENTITY, d))
    day = pa.concat_tables(pq.read_table(f).cast(schema) for f in files)
    bucket = bucket_of(day[KEY], BUCKETS)
    previous = workdir.pool(MODEL, ENTITY, d - dt.timedelta(days=1))
    params = config(workdir, d).kernel_params()
    pools, changed = {}, []
    for k in range(BUCKETS):
        rows = pa.array(np.flatnonzero(bucket == k))  # in the day's order
        result = split_annotated(
            merge_day(read_pool_bucket(previous, k), day.take(rows), params, DIM), KEY
        )
        pools[k] = pool_bytes(result.pool)
        changed.append(sorted_by(result.changed, KEY))
    offline = offline_rows(pa.concat_tables(changed).combine_chunks(), KEY, d)
    return pools, parquet_bytes(offline)


def test_streamed_day_writes_the_whole_table_files_byte_for_byte(workdir, monkeypatch):
    """Five buckets, blocks of 7 rows over row groups of 9 in three files (so each
    bucket's spill file and run hold many batches), offline row groups of 16 rows (so
    the merge interleaves every bucket's run across several row groups)."""
    monkeypatch.setattr(storage.daily, "_CHECK_ROWS", 7)
    monkeypatch.setitem(VECTOR_PARQUET, "row_group_size", 16)
    rng = np.random.default_rng(0)
    write_day(workdir, DAY, rng.permutation(200), None, seed=1)
    materialize_day(config(workdir, DAY))
    updated = rng.choice(200, 120, replace=False)
    again = rng.choice(updated, 40)  # earlier rows of the same entities: dedup drops them
    ids = np.concatenate([updated, np.arange(1000, 1030), again])
    seconds = np.concatenate([rng.integers(3600, 86_000, 150), rng.integers(0, 3600, 40)])
    order = rng.permutation(len(ids))
    write_day(workdir, DAY1, ids[order], seconds[order], seed=2)
    pools, offline = whole_day_reference(workdir, DAY1)

    materialize_day(config(workdir, DAY1))
    pool = workdir.pool(MODEL, ENTITY, DAY1)
    layout = read_layout(pool)
    assert layout.buckets == BUCKETS
    for f in layout.files:
        written = (pool / f.path).read_bytes()
        assert written == pools[f.bucket]
        assert f.crc32 == f"{zlib.crc32(pools[f.bucket]):08x}"
    path = offline_day_path(workdir.offline(MODEL, ENTITY), DAY1)
    assert path.read_bytes() == offline
    assert pq.ParquetFile(path).metadata.num_row_groups == 10  # 150 changed rows
    assert not list(workdir.staging(MODEL, ENTITY).iterdir())  # scratch removed


def test_offline_rows_of_several_tables_are_the_file_of_their_concatenation(tmp_path, monkeypatch):
    """Row groups cut across the tables as `pq.write_table` cuts their concatenation,
    with its chunks (a day with tombstones appended; an empty day)."""
    monkeypatch.setitem(VECTOR_PARQUET, "row_group_size", 16)
    rng = np.random.default_rng(3)
    changed = daily_table(np.arange(37), unit_rows(rng, 37), DAY).drop_columns(["ts"])
    changed = changed.append_column("last_seen", pa.array([0] * 37, TIMESTAMP))
    rows = offline_rows(changed, KEY, DAY)
    tombstones = rows.slice(0, 21).set_column(2, "embedding", pa.nulls(21, rows.schema[2].type))
    for parts in ([rows.slice(0, 5), rows.slice(5), tombstones], [rows.slice(0, 0)], [rows]):
        path = storage.write_offline_day(tmp_path, DAY, iter(parts))
        assert path.read_bytes() == parquet_bytes(pa.concat_tables(parts))


def test_a_bad_row_found_late_leaves_the_last_good_state_and_no_scratch(workdir, monkeypatch):
    """The last row of the last file is NaN: every other row was spilled by then. Then a
    bucket of pool(t-1) corrupted in place (its size kept, so only its checksum, read in
    the bucket loop, finds it): refused after the spill and earlier buckets' runs."""
    monkeypatch.setattr(storage.daily, "_CHECK_ROWS", 5)
    rng = np.random.default_rng(4)
    write_day(workdir, DAY, np.arange(60), None, seed=5)
    materialize_day(config(workdir, DAY))
    previous = workdir.pool(MODEL, ENTITY, DAY)
    before = tree_bytes(previous)
    offline_dir = workdir.offline(MODEL, ENTITY)

    def nothing_of_day1_and_no_scratch(readable: bool = True) -> None:
        assert tree_bytes(previous) == before  # untouched
        if readable:
            assert read_pool(previous).num_rows == 60
        assert not workdir.pool(MODEL, ENTITY, DAY1).exists()
        assert not offline_day_path(offline_dir, DAY1).exists()
        assert not list(workdir.root.rglob(".tmp-*"))
        assert not list(workdir.staging(MODEL, ENTITY).iterdir())

    good = daily_table(rng.permutation(60)[:40], unit_rows(rng, 40), DAY1)
    bad_vectors = unit_rows(rng, 30)
    bad_vectors[29, 3] = np.nan
    bad = daily_table(np.arange(100, 130), bad_vectors, DAY1)
    write_daily(workdir, MODEL, ENTITY, DAY1, good, "part-0")
    bad_file = write_daily(workdir, MODEL, ENTITY, DAY1, bad, "part-1")
    with pytest.raises(MaterializeError) as info:
        materialize_day(config(workdir, DAY1))
    assert f"{bad_file}: 1 row(s) with NaN or inf in column 'embedding' (first: row 29)" in str(
        info.value
    )
    nothing_of_day1_and_no_scratch()

    write_daily(workdir, MODEL, ENTITY, DAY1, bad.slice(0, 29), "part-1")
    last = read_layout(previous).bucket_files(BUCKETS - 1)[0]
    path = previous / last.path
    intact = path.read_bytes()
    path.write_bytes(intact[:100] + bytes(255 - b for b in intact[100:200]) + intact[200:])
    before = tree_bytes(previous)
    with pytest.raises(PoolIntegrityError, match="crc32"):
        materialize_day(config(workdir, DAY1))
    nothing_of_day1_and_no_scratch(readable=False)

    path.write_bytes(intact)
    materialize_day(config(workdir, DAY1))
    assert read_pool(workdir.pool(MODEL, ENTITY, DAY1)).num_rows == 89
    assert not list(workdir.staging(MODEL, ENTITY).iterdir())


def test_files_with_different_id_types_are_refused_by_name(workdir):
    """Their rows would go to spill files of one schema: refused before any is written."""
    rng = np.random.default_rng(7)
    write_daily(workdir, MODEL, ENTITY, DAY, daily_table([1, 2], unit_rows(rng, 2), DAY), "a")
    narrow = daily_table([3], unit_rows(rng, 1), DAY)
    narrow = narrow.cast(narrow.schema.set(0, pa.field(KEY, pa.int32())))
    write_daily(workdir, MODEL, ENTITY, DAY, narrow, "b")
    with pytest.raises(MaterializeError, match=r"mix id types \['int32', 'int64'\]"):
        materialize_day(config(workdir, DAY))
    assert not workdir.pool_dir(MODEL, ENTITY).exists()


def test_bad_utf8_in_a_daily_model_version_is_refused_naming_the_file(workdir):
    rng = np.random.default_rng(8)
    path = write_daily(workdir, MODEL, ENTITY, DAY, daily_table([1, 2], unit_rows(rng, 2), DAY))
    pq.write_table(pq.read_table(path), path, compression="none")
    data = bytearray(path.read_bytes())
    data[data.find(b"ctr-0a1b2c3d") + 5] = 0xE3  # not UTF-8
    path.write_bytes(bytes(data))
    with pytest.raises(MaterializeError, match=rf"{path}: unreadable Parquet \(.*utf-8"):
        materialize_day(config(workdir, DAY))
    assert not workdir.pool_dir(MODEL, ENTITY).exists()


def test_a_spill_that_cannot_be_written_blames_the_scratch_disk_not_the_day(workdir, monkeypatch):
    """A full scratch disk (ENOSPC injected where the spill files are opened) is named as
    such, not as an unreadable daily file; nothing of the day is kept."""
    rng = np.random.default_rng(9)
    write_daily(workdir, MODEL, ENTITY, DAY, daily_table(np.arange(20), unit_rows(rng, 20), DAY))
    real = pa.ipc.new_file

    def full_disk(sink, schema, **kw):
        if "/day/" in str(sink):
            raise OSError(28, "No space left on device")
        return real(sink, schema, **kw)

    monkeypatch.setattr(pa.ipc, "new_file", full_disk)
    with pytest.raises(MaterializeError, match="could not write the day's spill under") as info:
        materialize_day(config(workdir, DAY))
    assert "No space left on device" in str(info.value)
    assert "unreadable Parquet" not in str(info.value)
    assert not workdir.pool_dir(MODEL, ENTITY).exists()
    assert not list(workdir.staging(MODEL, ENTITY).iterdir())
