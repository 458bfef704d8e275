"""The Spark engine: the same kernel, one task per hash bucket through `applyInArrow`.

Spark reads day t's raw rows, tags each with its entity's bucket (`storage.bucket_of`, the
same function as the local engine) and groups them by bucket; each group's task reads
pool(t-1)'s bucket file itself, runs `kernel.merge_day` and writes pool(t)'s bucket file
plus the bucket's changed rows and stats (Arrow I/O, temp file then rename, so a retried
or speculative task cannot leave a torn file). Only a row per bucket goes back through
Spark; the driver reads the changed rows and stats from the files.

Why the pool does not travel through Spark: 256 floats a row cross the JVM/Python
boundary element by element (pyspark 4.3 also refuses fixed-size lists there), and that
conversion, both ways, plus the shuffle of pool(t-1) were most of the engine's time
(measured in BENCHMARKS.md). The pool is already bucketed on disk, so the task that owns a
bucket can read it directly. The work directory must therefore be on storage every
executor sees (a local path in local mode, a shared mount on a cluster), as it already
must for the rest of the daily job.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from derm_features.core.atomic import write_parquet_atomic
from materialize.engines.base import STATS_COLUMNS, Engine
from materialize.kernel import KernelParams, empty_pool, merge_day, sorted_by, split_annotated
from materialize.storage import (
    VECTOR_PARQUET,
    ChangedRows,
    DailyInput,
    Layout,
    PoolFile,
    PoolIntegrityError,
    bucket_of,
    read_pool_bucket,
    verify_pool,
    write_layout,
    write_pool_bucket,
)

SIDE_DIR = "_engine"  # changed rows and stats per bucket, inside pool(t)'s temp dir
# One row per bucket back to the driver: the bucket's pool file, for the manifest.
# `error`: a pool(t-1) bucket that failed verification, raised on the driver by name.
_DONE_DDL = "bucket int, path string, rows long, bytes long, crc32 string, error string"


def _with_bucket(key: str, buckets: int):
    """A mapInArrow function adding each row's `bucket` column."""

    def add(batches):
        for batch in batches:
            yield pa.RecordBatch.from_arrays(
                [*batch.columns, pa.array(bucket_of(batch.column(key), buckets))],
                names=[*batch.schema.names, "bucket"],
            )

    return add


def _done_row(bucket: int, written: PoolFile | None = None, error: str | None = None):
    """A task's one-row answer (`_DONE_DDL`): its pool file's manifest entry, or an error."""
    return pa.table(
        {
            "bucket": pa.array([bucket], pa.int32()),
            "path": [written.path if written else ""],
            "rows": pa.array([written.rows if written else 0], pa.int64()),
            "bytes": pa.array([written.bytes if written else 0], pa.int64()),
            "crc32": [written.crc32 if written else ""],
            "error": pa.array([error], pa.string()),
        }
    )


def _merge_bucket(
    previous_pool: Path | None,
    layout: Layout | None,
    out_dir: Path,
    params: KernelParams,
    dim: int,
    id_type,
):
    """The task of one bucket: its daily rows (plus one marker row with a null id, so that
    buckets without daily rows run too) -> pool(t)'s bucket file, changed rows, stats.
    It returns the bucket file's manifest entry; pool(t-1)'s bucket is verified against
    `layout` (its manifest, read once on the driver) as it is read."""
    key = params.id_column

    def merge(table: pa.Table) -> pa.Table:
        bucket = table["bucket"][0].as_py()
        daily = table.filter(pc.is_valid(table[key])).drop_columns(["bucket"])
        if previous_pool is not None:
            try:
                pool = read_pool_bucket(previous_pool, bucket, layout)
            except PoolIntegrityError as exc:
                return _done_row(bucket, error=str(exc))
        else:
            pool = empty_pool(key, id_type, dim)
        # One thread: Spark already runs a task per core.
        annotated = merge_day(pool, daily, params, dim, threads=1)
        result = split_annotated(annotated, key)
        written = write_pool_bucket(out_dir, bucket, result.pool)
        side = out_dir / SIDE_DIR
        name = f"bucket={bucket}.parquet"
        write_parquet_atomic(result.changed, side / "changed" / name, **VECTOR_PARQUET)
        write_parquet_atomic(annotated.select(list(STATS_COLUMNS)), side / "stats" / name)
        return _done_row(bucket, written)

    return merge


def run_spark(
    spark,
    previous_pool: Path | None,
    daily_files: list[Path],
    params: KernelParams,
    dim: int,
    buckets: int,
    out_dir: Path,
    changed: ChangedRows,
) -> pa.Table:
    """Merges day t on Spark and writes pool(t) under `out_dir` (bucket=k/ directories);
    the buckets' changed rows go to `changed` once every task is done; returns the stats
    (`Engine.merge`)."""
    from pyspark.sql import functions as F

    key = params.id_column
    columns = f"{key} bigint, ts timestamp, embedding array<float>, model_version string"
    daily = spark.read.parquet(*[str(p) for p in daily_files]).select(
        F.col(key).cast("bigint").alias(key),
        F.col("ts").cast("timestamp").alias("ts"),
        F.col("embedding").cast("array<float>").alias("embedding"),
        F.col("model_version").cast("string").alias("model_version"),
    )
    daily = daily.mapInArrow(_with_bucket(key, buckets), f"{columns}, bucket int")
    markers = spark.range(buckets).select(
        F.lit(None).cast("bigint").alias(key),
        F.lit(None).cast("timestamp").alias("ts"),
        F.lit(None).cast("array<float>").alias("embedding"),
        F.lit(None).cast("string").alias("model_version"),
        F.col("id").cast("int").alias("bucket"),
    )
    side = out_dir / SIDE_DIR
    shutil.rmtree(side, ignore_errors=True)
    layout = verify_pool(previous_pool) if previous_pool is not None else None
    merge = _merge_bucket(previous_pool, layout, out_dir, params, dim, pa.int64())
    done = daily.unionByName(markers).groupBy("bucket").applyInArrow(merge, _DONE_DDL).toArrow()
    missing = set(range(buckets)) - set(done["bucket"].to_pylist())
    if missing:  # a bucket without its task would silently drop entities
        raise RuntimeError(f"Spark ran no task for bucket(s) {sorted(missing)}")
    errors = [e for e in done["error"].to_pylist() if e]
    if errors:  # the task's own message; the temp dir is removed by the caller
        raise PoolIntegrityError(errors[0])
    files = [PoolFile(**row) for row in done.drop_columns(["error"]).to_pylist()]
    write_layout(out_dir, buckets, files)
    # One run a bucket, in bucket order, each sorted by id: the local engine's order.
    for k in range(buckets):
        run = sorted_by(pq.read_table(side / "changed" / f"bucket={k}.parquet"), key)
        changed.add(run, run[key].to_numpy(), run.schema)
    stats = pq.read_table(side / "stats")
    shutil.rmtree(side)
    return stats


class SparkEngine(Engine):
    """One Spark task per bucket. Config: the master URL, or a session to reuse."""

    name = "spark"
    reads_split_day = False  # Spark reads the day's files itself

    def __init__(self, master: str = "local[2]", session=None):
        self.master = master
        self._session = session

    @property
    def session(self):
        """The SparkSession (started on first use)."""
        if self._session is None:
            from materialize.engines.spark_session import local_spark

            self._session = local_spark(self.master)
        return self._session

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
        files = list(daily.files)
        stats = run_spark(
            self.session, previous_pool, files, params, dim, buckets, out_dir, changed
        )
        progress(buckets)
        return stats
