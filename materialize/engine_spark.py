"""The Spark engine: the same kernel, run per hash bucket with `cogroup(...).applyInArrow`.

pool(t-1) and daily(t) are grouped by the entity's bucket (`storage.bucket_of`, the same
function as the local engine, so both write the same buckets) and each bucket pair goes
through `kernel.merge_day`. Spark writes pool(t) partitioned by bucket; the changed rows
and per-entity stats come back to the driver for the offline file and the metrics.
pyspark 4.3 refuses fixed-size lists across the Arrow boundary, so embeddings travel as
list<float> here.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from materialize.engine_local import STATS_COLUMNS, EngineOutput
from materialize.kernel import EXPIRED, NEW, UPDATED, KernelParams, merge_day
from materialize.storage import bucket_of, write_layout

_VECTOR = pa.list_(pa.float32())


def _annotated_ddl(key: str) -> str:
    return (
        f"{key} bigint, embedding array<float>, last_seen timestamp, prev_daily array<float>, "
        "model_version string, status tinyint, cosine float, norm float, bucket int"
    )


def _pool_ddl(key: str) -> str:
    return (
        f"{key} bigint, embedding array<float>, last_seen timestamp, "
        "prev_daily array<float>, model_version string, bucket int"
    )


def _with_bucket(key: str, buckets: int):
    """A mapInArrow function adding each row's `bucket` column."""

    def add(batches):
        for batch in batches:
            yield pa.RecordBatch.from_arrays(
                [*batch.columns, pa.array(bucket_of(batch.column(key), buckets))],
                names=[*batch.schema.names, "bucket"],
            )

    return add


def _merge_bucket(params: KernelParams, dim: int):
    """The cogroup function: one bucket of pool(t-1) and daily(t) through the kernel."""
    key = params.id_column

    def merge(group_key, pool: pa.Table, daily: pa.Table) -> pa.Table:
        pool = pool.drop_columns(["bucket"])
        daily = daily.drop_columns(["bucket"])
        # One thread: Spark already runs a task per core.
        annotated = merge_day(pool, daily, params, dim, threads=1)
        annotated = annotated.set_column(
            annotated.schema.get_field_index("embedding"),
            "embedding",
            pc.cast(annotated["embedding"], _VECTOR),
        ).set_column(
            annotated.schema.get_field_index("prev_daily"),
            "prev_daily",
            pc.cast(annotated["prev_daily"], _VECTOR),
        )
        bucket = pa.array([group_key[0].as_py()] * annotated.num_rows, pa.int32())
        return annotated.append_column("bucket", bucket).select(
            [key, *annotated.column_names[1:], "bucket"]
        )

    return merge


def run_spark(
    spark,
    previous_pool: Path | None,
    daily_files: list[Path],
    params: KernelParams,
    dim: int,
    buckets: int,
    out_dir: Path,
) -> EngineOutput:
    """Merges day t on Spark and writes pool(t) under `out_dir` (bucket=k/ partitions)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    key = params.id_column
    # Spark's default INT96 timestamps read back as naive nanoseconds elsewhere.
    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    daily = spark.read.parquet(*[str(p) for p in daily_files]).select(
        F.col(key).cast("bigint").alias(key),
        F.col("ts").cast("timestamp").alias("ts"),
        F.col("embedding").cast("array<float>").alias("embedding"),
        F.col("model_version").cast("string").alias("model_version"),
    )
    daily = daily.mapInArrow(
        _with_bucket(key, buckets),
        f"{key} bigint, ts timestamp, embedding array<float>, model_version string, bucket int",
    )
    if previous_pool is not None:
        pool = spark.read.parquet(str(previous_pool)).select(
            *[F.col(c) for c in _pool_columns(key)]
        )
        pool = pool.withColumn("embedding", F.col("embedding").cast("array<float>"))
        pool = pool.withColumn("prev_daily", F.col("prev_daily").cast("array<float>"))
        pool = pool.withColumn("bucket", F.col("bucket").cast("int"))
    else:
        pool = spark.createDataFrame([], _pool_ddl(key))

    annotated = (
        pool.groupBy("bucket")
        .cogroup(daily.groupBy("bucket"))
        .applyInArrow(_merge_bucket(params, dim), _annotated_ddl(key))
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    try:
        (
            annotated.filter(F.col("status") != EXPIRED)
            .select(*_pool_columns(key))
            .write.mode("overwrite")
            .partitionBy("bucket")
            .parquet(str(out_dir))
        )
        write_layout(out_dir, buckets)
        changed = (
            annotated.filter(F.col("status").isin(NEW, UPDATED))
            .select(key, "embedding", "last_seen", "model_version")
            .toArrow()
        )
        stats = annotated.select(*STATS_COLUMNS).toArrow()
    finally:
        annotated.unpersist()
    return EngineOutput(
        changed=changed.take(pc.sort_indices(changed, [(key, "ascending")])),
        stats=stats,
    )


def _pool_columns(key: str) -> list[str]:
    return [key, "embedding", "last_seen", "prev_daily", "model_version", "bucket"]
