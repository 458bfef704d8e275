"""What the storage modules share: the error they raise, the Parquet settings of files of
vectors, the hash buckets of the entity id (`bucket_of`, `buckets_for`), and files read
into one chunk per column with their vectors in one (n, D) matrix (`read_contiguous`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from derm_features.core.arrays import fixed_size_list
from materialize.kernel import embedding_matrix

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


def buckets_for(rows: int, dim: int, target_bytes: int = 128 << 20) -> int:
    """Enough buckets that one bucket (pool(t-1) in, pool(t) out: two vectors a row) stays
    near `target_bytes`. Smaller buckets bound memory lower and fill and drain the local
    engine's read/merge/write pipeline sooner, at a small cost per bucket (BENCHMARKS.md:
    128 MB against 256 and 64)."""
    return max(1, math.ceil(rows * dim * 4 * 2 / target_bytes))


def contiguous_table(
    pieces: Iterable[pa.Table], schema: pa.Schema, rows: int, mismatch: Callable[[int], str]
) -> pa.Table | None:
    """The consecutive `pieces` of a file (`schema`, `rows` rows in all) as one table with
    one chunk per column, each fixed-size float32 vector column copied piece by piece into
    one (n, D) matrix (`read_contiguous`, `read_ipc_contiguous`). None when a vector column
    has a null row; ValueError(`mismatch(rows held)`) when the pieces hold another count."""
    dense = {
        f.name: np.empty((rows, f.type.list_size), dtype=np.float32)
        for f in schema
        if pa.types.is_fixed_size_list(f.type) and f.type.value_type == pa.float32()
    }
    parts: dict[str, list[pa.Array]] = {name: [] for name in schema.names}
    row = 0
    for piece in pieces:
        for name in schema.names:
            column = piece[name]
            if name not in dense:
                parts[name].extend(column.chunks)
            elif column.null_count:
                return None
            else:
                matrix = embedding_matrix(column, schema.field(name).type.list_size)
                dense[name][row : row + len(matrix)] = matrix
        row += piece.num_rows
        del piece
    if row != rows:
        raise ValueError(mismatch(row))
    columns = []
    for f in schema:
        if f.name in dense:
            columns.append(fixed_size_list(dense[f.name]).cast(f.type))
        elif parts[f.name]:
            columns.append(pa.concat_arrays(parts[f.name]))
        else:
            columns.append(pa.array([], f.type))
    return pa.Table.from_arrays(columns, schema=schema)


def read_contiguous(path: Path) -> pa.Table:
    """A Parquet file (a pool bucket, a day's tower outputs) as `pq.read_table` gives it,
    but one chunk per column, its fixed-size float32 vector columns (without nulls)
    copied row group by row group into one (n, D) matrix each: the file's vectors then
    take their own size in memory, once, and the kernel views them without a copy (read
    whole, Arrow returns a chunk per row group, which the kernel concatenated into a
    second copy; with the default pre-buffering it also held the file's raw column chunks
    while decoding). A vector column with a null row makes it read the file as
    `pq.read_table` does.
    """
    source = pq.ParquetFile(path)
    n = source.metadata.num_rows
    groups = (source.read_row_group(group) for group in range(source.num_row_groups))
    mismatch = lambda row: f"{path}: row groups hold {row} rows, the footer says {n}"  # noqa: E731
    table = contiguous_table(groups, source.schema_arrow, n, mismatch)
    # a null vector row (never in a pool's vectors): read as Arrow gives it
    return pq.read_table(path) if table is None else table
