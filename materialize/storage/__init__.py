"""Reading and writing the materializer's files (DESIGN.md, "Work directory").

    daily/<model>/<entity>/ds=<day>/*.parquet        input, validated here (`scan_daily`,
                                                     `split_daily`), spilled per bucket
    pool/<model>/<entity>/ds=<day>/bucket=<k>/*.arrow     one row per live entity
    pool/.../ds=<day>/_layout.json                   the manifest: bucket count, and each
                                                     file's bucket, rows, bytes and crc32
    offline/<model>_<entity>_embedding/day=<day>.parquet   that day's changed rows (Feast)

The pool is split into hash buckets of the entity id (`bucket_of`), so an engine can merge
one bucket of pool(t-1) with the same bucket of daily(t) at a time and memory stays bounded
by a bucket. Both engines write this layout. A pool of day t-1 is verified against its
manifest before day t reads it (`verify_pool`, `read_pool_bucket`): a missing, truncated or
unlisted file, or a garbled manifest, is refused by name (`PoolIntegrityError`), never read
as an empty bucket. Pools written before manifests (`{"buckets": n}` only) are read with an
`UnverifiedPoolWarning` as long as every bucket has a readable file.

Pool files are Arrow IPC files (`POOL_SUFFIX`), read memory-mapped: the next day's kernel
views a bucket's vectors where they lie in the page cache, with nothing decoded or copied
(BENCHMARKS.md, "pool files"). Pools written by derm 0.1.0 hold Parquet files; the
manifest's file names say which, and both are read.

The package, one module per kind of file, leaf first:

    common.py    the error, the Parquet settings of vector files, the hash buckets
    daily.py     day t's tower outputs: checked (`scan_daily`), split by bucket (`split_daily`)
    pool.py      pool files and their manifest: written, verified, read
    offline.py   the offline day file, written from the engines' changed rows
"""

from __future__ import annotations

from materialize.storage.common import (
    VECTOR_PARQUET,
    MaterializeError,
    bucket_of,
    buckets_for,
    read_contiguous,
)
from materialize.storage.daily import (
    DAILY_COLUMNS,
    DailyInput,
    SplitDay,
    daily_files,
    read_ipc_contiguous,
    scan_daily,
    split_daily,
)
from materialize.storage.offline import (
    ChangedRows,
    MergeAborted,
    offline_day_path,
    offline_rows,
    offline_timestamp,
    parquet_row_groups,
    read_offline_day,
    write_changed_run,
    write_offline_day,
)
from materialize.storage.pool import (
    LAYOUT_FILE,
    LAYOUT_FORMAT,
    POOL_SUFFIX,
    POOL_SUFFIXES,
    Layout,
    PoolFile,
    PoolIntegrityError,
    UnverifiedPoolWarning,
    pool_rows,
    pool_versions,
    read_ipc_buffer,
    read_layout,
    read_pool,
    read_pool_bucket,
    read_pool_file,
    verify_pool,
    write_layout,
    write_pool_bucket,
)

__all__ = [
    "bucket_of",
    "buckets_for",
    "ChangedRows",
    "DAILY_COLUMNS",
    "daily_files",
    "DailyInput",
    "Layout",
    "LAYOUT_FILE",
    "LAYOUT_FORMAT",
    "MaterializeError",
    "MergeAborted",
    "offline_day_path",
    "offline_rows",
    "offline_timestamp",
    "parquet_row_groups",
    "pool_rows",
    "POOL_SUFFIX",
    "POOL_SUFFIXES",
    "pool_versions",
    "PoolFile",
    "PoolIntegrityError",
    "read_contiguous",
    "read_ipc_buffer",
    "read_ipc_contiguous",
    "read_layout",
    "read_offline_day",
    "read_pool",
    "read_pool_bucket",
    "read_pool_file",
    "scan_daily",
    "split_daily",
    "SplitDay",
    "UnverifiedPoolWarning",
    "VECTOR_PARQUET",
    "verify_pool",
    "write_changed_run",
    "write_layout",
    "write_offline_day",
    "write_pool_bucket",
]
