"""The local engine: the kernel over hash buckets of the entity id, one bucket at a time.

Bucket k of pool(t-1) and bucket k of day t (its spill file, written while the job
validated the day: `storage.split_daily`) go through `kernel.merge_day`; the bucket's pool
file is written, and so are its changed rows, sorted by id, to a run file in the day's
scratch directory (`storage.write_changed_run`), which the job copies into the offline
file in bucket order. Only the day's stats (`health.fold_stats`: a few scalars per changed
entity, one row per last-seen day for the others) and 8 bytes per changed row (their ids)
stay in memory, so memory is bounded by the buckets in flight (the next one being read, the one
merging, the last one being written), not by the day or the pool.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa

from materialize.engines.base import STATS_COLUMNS, Engine
from materialize.health import fold_stats
from materialize.kernel import KernelParams, empty_pool, merge_day, sorted_by, split_annotated
from materialize.storage import (
    ChangedRows,
    DailyInput,
    PoolFile,
    read_pool_bucket,
    verify_pool,
    write_changed_run,
    write_layout,
    write_pool_bucket,
)


def run_local(
    previous_pool: Path | None,
    daily: DailyInput,
    params: KernelParams,
    dim: int,
    buckets: int,
    out_dir: Path,
    changed_rows: ChangedRows,
    progress: Callable[[int], None] = lambda n: None,
) -> pa.Table:
    """Merges day t bucket by bucket and writes pool(t) under `out_dir`; each bucket's
    changed rows go to `changed_rows` as their run file is written (`Engine.merge`).

    previous_pool: pool(t-1)'s directory (bucketed with `buckets`), or None for a new pool.
    daily: day t, validated and split into `buckets` (`DailyInput.split`; no rows: a
    carry-over-only day). `progress(1)` is called after each bucket. Raises
    `PoolIntegrityError` when a bucket of pool(t-1) does not match its manifest (nothing
    of pool(t) is kept then).
    """
    split = daily.split
    if split is None or len(split.rows) != buckets:
        raise ValueError(f"the local engine needs the day split into {buckets} buckets")
    key = params.id_column
    id_type = split.schema.field(key).type
    runs_dir = split.directory / "changed"
    runs_dir.mkdir(parents=True, exist_ok=True)
    layout = verify_pool(previous_pool) if previous_pool is not None else None

    def read(k: int) -> tuple[pa.Table, pa.Table]:
        day = split.read(k)
        if previous_pool is None:
            return empty_pool(key, id_type, dim), day
        return read_pool_bucket(previous_pool, k, layout), day

    def write(k: int, pool: pa.Table, changed: pa.Table) -> PoolFile:
        # One writer thread: the runs reach `changed_rows` in bucket order.
        pool_file = write_pool_bucket(out_dir, k, pool)
        run = runs_dir / f"bucket={k}.arrow"
        changed_rows.add(run, write_changed_run(run, changed, buckets), changed.schema)
        return pool_file

    # I/O overlaps the merge: bucket k+1 is read and bucket k-1 written (Arrow releases the
    # GIL) while bucket k merges, and the job writes the offline file from the runs as they
    # come; at most three buckets are in memory.
    stats, files = [], []

    def done(written) -> None:
        files.append(written.result())  # one write in flight; raises its error here
        progress(1)

    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer:
        next_input = reader.submit(read, 0)
        written = None
        for k in range(buckets):
            pool_k, day_k = next_input.result()
            if k + 1 < buckets:
                next_input = reader.submit(read, k + 1)
            annotated = merge_day(pool_k, day_k, params, dim)
            del pool_k, day_k
            result = split_annotated(annotated, key)
            changed = sorted_by(result.changed, key)
            if written is not None:
                done(written)
            written = writer.submit(write, k, result.pool, changed)
            stats.append(fold_stats(annotated.select(list(STATS_COLUMNS))))
            del annotated, result, changed
        if written is not None:
            done(written)
    write_layout(out_dir, buckets, files)
    return pa.concat_tables(stats)


class LocalEngine(Engine):
    """The buckets one after another in this process (with read-ahead and write-behind)."""

    name = "local"

    def merge(
        self,
        previous_pool: Path | None,
        daily: DailyInput,
        params: KernelParams,
        dim: int,
        buckets: int,
        out_dir: Path,
        changed: ChangedRows,
        progress: Callable[[int], None] = lambda n: None,
    ) -> pa.Table:
        return run_local(previous_pool, daily, params, dim, buckets, out_dir, changed, progress)
