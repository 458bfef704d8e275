"""The local engine: the kernel over hash buckets of the entity id, one bucket at a time.

Bucket k of pool(t-1) and the daily rows of bucket k go through `kernel.merge_day`; the
bucket's pool is written and only its changed rows and a few scalars per entity are kept,
so memory is bounded by three buckets (the next one being read, the one merging, the last
one being written) plus the day's raw input.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa

from derm_features.core.arrays import fixed_size_list
from materialize.engines.base import STATS_COLUMNS, Engine, EngineOutput
from materialize.kernel import (
    KernelParams,
    embedding_matrix,
    empty_pool,
    merge_day,
    split_annotated,
    take_rows,
)
from materialize.storage import (
    DailyInput,
    bucket_of,
    read_pool_bucket,
    verify_pool,
    write_layout,
    write_pool_bucket,
)


def run_local(
    previous_pool: Path | None,
    daily: pa.Table,
    params: KernelParams,
    dim: int,
    buckets: int,
    out_dir: Path,
    progress: Callable[[int], None] = lambda n: None,
) -> EngineOutput:
    """Merges day t bucket by bucket and writes pool(t) under `out_dir`.

    previous_pool: pool(t-1)'s directory (bucketed with `buckets`), or None for a new pool.
    daily: the validated raw rows of day t (may have no rows: a carry-over-only day).
    `progress(1)` is called after each bucket. Raises `PoolIntegrityError` when a bucket
    of pool(t-1) does not match its manifest (nothing of pool(t) is kept then).
    """
    key = params.id_column
    id_type = daily.schema.field(key).type
    daily_bucket = bucket_of(daily[key], buckets)
    order = np.argsort(daily_bucket, kind="stable")
    bounds = np.searchsorted(daily_bucket[order], np.arange(buckets + 1))
    # Vectors are split with NumPy: Arrow's take on list columns is several times slower.
    daily_vectors = embedding_matrix(daily["embedding"], dim)
    daily_rest = daily.drop_columns(["embedding"])

    layout = verify_pool(previous_pool) if previous_pool is not None else None

    def read(k: int) -> pa.Table:
        if previous_pool is None:
            return empty_pool(key, id_type, dim)
        return read_pool_bucket(previous_pool, k, layout)

    # Parquet I/O overlaps the merge: bucket k+1 is read and bucket k-1 written (Arrow
    # releases the GIL) while bucket k merges; at most three buckets are in memory.
    changed, stats, files = [], [], []
    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer:
        next_pool = reader.submit(read, 0)
        written = None
        for k in range(buckets):
            pool_k = next_pool.result()
            if k + 1 < buckets:
                next_pool = reader.submit(read, k + 1)
            rows = order[bounds[k] : bounds[k + 1]]
            daily_k = daily_rest.take(pa.array(rows)).append_column(
                "embedding", fixed_size_list(np.take(daily_vectors, rows, axis=0))
            )
            annotated = merge_day(pool_k, daily_k, params, dim)
            del pool_k
            result = split_annotated(annotated, key)
            if written is not None:
                files.append(written.result())  # one write in flight; raises its error here
                progress(1)
            written = writer.submit(write_pool_bucket, out_dir, k, result.pool)
            # A copy of the day's rows, so the bucket's vectors are freed once written.
            changed.append(take_rows(result.changed, np.arange(result.changed.num_rows)))
            stats.append(annotated.select(list(STATS_COLUMNS)))
            del annotated, result
        if written is not None:
            files.append(written.result())
            progress(1)
    write_layout(out_dir, buckets, files)
    # Unsorted (one chunk per bucket): the job sorts them for the offline file once the
    # day's rows are freed (`offline_rows`), so the two are never held with a sorted copy.
    return EngineOutput(changed=pa.concat_tables(changed), stats=pa.concat_tables(stats))


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
        progress: Callable[[int], None] = lambda n: None,
    ) -> EngineOutput:
        return run_local(previous_pool, daily.table, params, dim, buckets, out_dir, progress)
