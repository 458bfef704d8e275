"""Reading and writing the materializer's files (DESIGN.md, "Work directory").

    daily/<model>/<entity>/ds=<day>/*.parquet        input, validated here (`read_daily`)
    pool/<model>/<entity>/ds=<day>/bucket=<k>/*.parquet   one row per live entity
    pool/.../ds=<day>/_layout.json                   {"buckets": n}: entity k lives in bucket k
    offline/<model>_<entity>_embedding/day=<day>.parquet   that day's changed rows (Feast)

The pool is split into hash buckets of the entity id (`bucket_of`), so an engine can merge
one bucket of pool(t-1) with the same bucket of daily(t) at a time and memory stays bounded
by a bucket. Both engines write this layout; Spark adds its own part-file names.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from derm_features.core.atomic import write_parquet_atomic, write_text_atomic
from derm_features.core.provenance import ModelVersion, compatible
from materialize.kernel import TIMESTAMP, day_start, embedding_matrix, sorted_by

DAILY_COLUMNS = ("ts", "embedding", "model_version")
LAYOUT_FILE = "_layout.json"
# Parquet settings for files of vectors. Float embeddings neither compress (snappy saves
# ~2 %, measured on 256-d unit vectors) nor dictionary-encode, so both only cost time;
# statistics of the vector values are never used. Strings (model_version) stay
# dictionary-encoded: a handful of distinct values. Row groups of 64k rows (64 MiB at
# 256-d): Arrow reads a list column one row group at a time into fresh buffers, and one
# 300k x 256 row group read in 0.4-2.7 s where 64k-row groups of the same file read in
# 0.25 s (measured here; `benchmarks/materialize.py` end to end).
VECTOR_PARQUET = {
    "row_group_size": 65_536,
    "compression": "none",
    "use_dictionary": ["model_version"],
    "write_statistics": ["last_seen", "event_timestamp", "model_version"],
}


class MaterializeError(ValueError):
    """Bad input or a refused request; the message says what and where. Nothing was written."""


# ---------------------------------------------------------------- partitioning


def bucket_of(ids: pa.Array | pa.ChunkedArray, buckets: int) -> np.ndarray:
    """The bucket of each entity id: splitmix64(id) mod `buckets` (integer ids).

    A fixed integer mix rather than Python's or Spark's hash, so every engine and every
    run puts an entity in the same bucket.
    """
    if not pa.types.is_integer(ids.type):
        raise MaterializeError(f"entity ids must be integers to be bucketed, got {ids.type}")
    x = pc.cast(ids, pa.int64()).to_numpy().astype(np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x % np.uint64(buckets)).astype(np.int32)


def buckets_for(rows: int, dim: int, target_bytes: int = 256 << 20) -> int:
    """Enough buckets that one bucket (pool(t-1) in, pool(t) out: two vectors a row) stays
    near `target_bytes`."""
    return max(1, math.ceil(rows * dim * 4 * 2 / target_bytes))


# ---------------------------------------------------------------- daily input


@dataclass(frozen=True)
class DailyInput:
    """Validated raw tower outputs of one day."""

    table: pa.Table  # <id>, ts (timestamp UTC), embedding, model_version
    files: tuple[Path, ...]
    dim: int
    versions: tuple[str, ...]  # distinct model versions, sorted


def daily_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.parquet") if not p.name.startswith((".", "_")))


def _check_daily_file(path: Path, table: pa.Table, id_column: str, model: str) -> list[str]:
    """The broken rules of one daily file, each with its number of bad rows."""
    missing = [c for c in (id_column, *DAILY_COLUMNS) if c not in table.column_names]
    if missing:
        return [f"missing column(s) {missing} (has {table.column_names})"]
    problems = []
    emb_type = table.schema.field("embedding").type
    if not (
        (pa.types.is_list(emb_type) or pa.types.is_fixed_size_list(emb_type))
        and pa.types.is_floating(emb_type.value_type)
    ):
        return [f"column 'embedding' must be list<float32>, got {emb_type}"]
    if not pa.types.is_timestamp(table.schema.field("ts").type):
        problems.append(f"column 'ts' must be a timestamp, got {table.schema.field('ts').type}")
    for name in (id_column, "ts", "embedding", "model_version"):
        nulls = table[name].null_count
        if nulls:
            problems.append(f"{nulls} row(s) with a null '{name}'")
    versions = pc.unique(table["model_version"].drop_null()).to_pylist()
    dims = set()
    for text in versions:
        try:
            version = ModelVersion.parse(text)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        if version.model != model:
            problems.append(f"model_version '{text}' belongs to model '{version.model}'")
        dims.add(version.dim)
    if problems or not table.num_rows:
        return problems
    if len(dims) != 1:
        return [f"model versions of several dimensions {sorted(dims)}"]
    dim = dims.pop()
    lengths = pc.list_value_length(table["embedding"]).to_numpy(zero_copy_only=False)
    wrong = int(np.count_nonzero(lengths != dim))
    if wrong:
        return [f"{wrong} row(s) whose embedding length is not D={dim} (from model_version)"]
    matrix = embedding_matrix(table["embedding"], dim)
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        problems.append(f"{int((~finite).sum())} row(s) with NaN or inf in 'embedding'")
    zero = finite & (np.einsum("ij,ij->i", matrix, matrix) == 0)
    if zero.any():
        problems.append(f"{int(zero.sum())} row(s) with a zero-norm 'embedding'")
    return problems


def read_daily(directories: Path | Sequence[Path], id_column: str, model: str) -> DailyInput:
    """Reads and validates every Parquet file of one day (or of several days' directories,
    read as one input); raises `MaterializeError` naming each bad file, the broken rule and
    its number of bad rows."""
    directories = [directories] if isinstance(directories, Path) else list(directories)
    files = []
    for directory in directories:
        if not directory.is_dir():
            raise MaterializeError(
                f"no daily tower outputs for this day: {directory} does not exist"
            )
        found = daily_files(directory)
        if not found:
            raise MaterializeError(
                f"no daily tower outputs for this day: no *.parquet in {directory}"
            )
        files.extend(found)
    tables, errors = [], []
    for path in files:
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as exc:
            errors.append(f"{path}: unreadable Parquet ({exc})")
            continue
        problems = _check_daily_file(path, table, id_column, model)
        errors.extend(f"{path}: {p}" for p in problems)
        if not problems:
            tables.append(table.select([id_column, *DAILY_COLUMNS]))
    if errors:
        raise MaterializeError("bad daily tower outputs:\n  " + "\n  ".join(errors))
    versions = sorted({v for t in tables for v in pc.unique(t["model_version"]).to_pylist()})
    _check_compatible(versions, f"daily outputs in {directories[-1]}")
    dims = {ModelVersion.parse(v).dim for v in versions}
    table = pa.concat_tables(
        [
            t.cast(
                pa.schema(
                    [
                        t.schema.field(id_column),
                        ("ts", TIMESTAMP),
                        ("embedding", pa.list_(pa.float32())),
                        ("model_version", pa.string()),
                    ]
                )
            )
            for t in tables
        ]
    )
    return DailyInput(table, tuple(files), dims.pop() if dims else 0, tuple(versions))


def _check_compatible(versions: list[str], where: str) -> None:
    for other in versions[1:]:
        if not compatible(versions[0], other):
            raise MaterializeError(
                f"{where} mix incompatible model versions '{versions[0]}' and '{other}' "
                "(different lineage or D); they cannot be aggregated together"
            )


# ---------------------------------------------------------------- pool


def pool_buckets(pool_dir: Path) -> int:
    """The bucket count a pool was written with."""
    return int(json.loads((pool_dir / LAYOUT_FILE).read_text())["buckets"])


def write_layout(pool_dir: Path, buckets: int) -> None:
    write_text_atomic(json.dumps({"buckets": buckets}) + "\n", pool_dir / LAYOUT_FILE)


def _dataset(pool_dir: Path) -> pads.Dataset:
    return pads.dataset(pool_dir, format="parquet", partitioning="hive")


def read_pool_bucket(pool_dir: Path, bucket: int) -> pa.Table:
    """The rows of one bucket of a pool (no `bucket` column)."""
    files = sorted((pool_dir / f"bucket={bucket}").glob("*.parquet"))
    tables = [pq.read_table(f) for f in files if not f.name.startswith((".", "_"))]
    if not tables:
        return pq.read_schema(_any_pool_file(pool_dir)).empty_table()
    return pa.concat_tables(tables)


def _any_pool_file(pool_dir: Path) -> Path:
    for f in sorted(pool_dir.glob("bucket=*/*.parquet")):
        if not f.name.startswith((".", "_")):
            return f
    raise MaterializeError(f"pool {pool_dir} holds no Parquet file")


def read_pool(pool_dir: Path, columns: list[str] | None = None) -> pa.Table:
    """A whole pool (or some of its columns), without the `bucket` partition column."""
    table = _dataset(pool_dir).to_table(columns=columns)
    return table.drop_columns(["bucket"]) if "bucket" in table.column_names else table


def pool_versions(pool_dir: Path) -> list[str]:
    return sorted(pc.unique(read_pool(pool_dir, ["model_version"])["model_version"]).to_pylist())


def write_pool_bucket(pool_dir: Path, bucket: int, table: pa.Table) -> None:
    """One bucket of the pool being built (inside `atomic_dir`, so not atomic on its own)."""
    path = pool_dir / f"bucket={bucket}" / "part-00000.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, **VECTOR_PARQUET)


# ---------------------------------------------------------------- offline source


def offline_timestamp(day: dt.date) -> dt.datetime:
    """The stamp of day t's changed rows: (t+1) 00:00:00 UTC, the end of day t.

    Feast joins a row to an event when ``stamp <= event_timestamp``, so every event of day
    t+1 (midnight included) sees day t's value and no event of day t does, which is the
    point-in-time rule. ``t 23:59:59.999999`` would let an event in day t's last
    microsecond see day t's own value.
    """
    return day_start(day + dt.timedelta(days=1))


def offline_day_path(offline_dir: Path, day: dt.date) -> Path:
    return offline_dir / f"day={day.isoformat()}.parquet"


def offline_rows(changed: pa.Table, id_column: str, day: dt.date) -> pa.Table:
    """The Feast offline rows of day t's changed entities, sorted by id."""
    changed = sorted_by(changed, id_column)
    stamp = pa.array(np.full(changed.num_rows, 0), pa.int64())
    stamp = pc.cast(pc.add(stamp, _micros(offline_timestamp(day))), TIMESTAMP)
    return pa.table(
        {
            id_column: changed[id_column],
            "event_timestamp": stamp,
            "embedding": pc.cast(changed["embedding"], pa.list_(pa.float32())),
            "last_seen": pc.cast(changed["last_seen"], TIMESTAMP),
            "model_version": pc.cast(changed["model_version"], pa.string()),
        }
    )


def _micros(moment: dt.datetime) -> int:
    return int(moment.timestamp()) * 1_000_000


def write_offline_day(offline_dir: Path, day: dt.date, rows: pa.Table) -> Path:
    """Writes (or replaces) day t's file atomically; a re-run leaves no duplicate rows."""
    path = offline_day_path(offline_dir, day)
    write_parquet_atomic(rows, path, **VECTOR_PARQUET)
    return path


def read_offline_day(offline_dir: Path, day: dt.date) -> pa.Table:
    path = offline_day_path(offline_dir, day)
    if not path.is_file():
        raise MaterializeError(
            f"no offline rows for {day} at {path}: run `derm materialize` for that day first"
        )
    return pq.read_table(path)
