"""Reading and writing the materializer's files (DESIGN.md, "Work directory").

    daily/<model>/<entity>/ds=<day>/*.parquet        input, validated here (`read_daily`)
    pool/<model>/<entity>/ds=<day>/bucket=<k>/*.parquet   one row per live entity
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
"""

from __future__ import annotations

import datetime as dt
import json
import math
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from derm_features.core.arrays import fixed_size_list
from derm_features.core.atomic import write_parquet_atomic, write_text_atomic
from derm_features.core.files import parquet_files
from derm_features.core.provenance import ModelVersion, compatible
from materialize.kernel import (
    TIMESTAMP,
    day_start,
    embedding_matrix,
    row_norms,
    sorted_by,
)

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
    """The data files of one day's outputs (`parquet_files`: any depth, hidden skipped)."""
    return parquet_files(directory)


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
    return problems + _vector_problems(table["embedding"], dim)


def _vector_problems(column: pa.ChunkedArray, dim: int) -> list[str]:
    """Rows of a daily `embedding` column that no merge can use, each rule with its count
    and first row (0-based, in the file): values that are NaN or inf, or beyond float32's
    range (the pool's type), and zero norms. Norms are float64 (`row_norms`), so a finite
    vector of huge values (x1e30) is accepted and merges like any other.

    Checked `_CHECK_ROWS` rows at a time: whole-column float64 copies of a day's vectors
    were the largest allocation of a `derm materialize` run (4x the day's float32 bytes)."""
    masks: dict[str, list[np.ndarray]] = {what: [] for what in _VECTOR_RULES}
    for chunk in column.chunks:
        for begin in range(0, len(chunk), _CHECK_ROWS):
            part = chunk.slice(begin, _CHECK_ROWS)
            flat = part.flatten().to_numpy(zero_copy_only=False)
            for what, bad in _bad_vector_rows(flat.reshape(-1, dim)).items():
                masks[what].append(bad)
    problems = []
    for what in _VECTOR_RULES:
        bad = np.concatenate(masks[what]) if masks[what] else np.zeros(0, dtype=bool)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            problems.append(
                f"{int(bad.sum())} row(s) {what} in column 'embedding' (first: row {first})"
            )
    return problems


# Rows of daily vectors checked at a time (256-d float64: 32 MiB).
_CHECK_ROWS = 16_384
_VECTOR_RULES = (
    "with NaN or inf",
    "with values beyond float32's range",
    "with a non-finite norm",
    "with a zero-norm vector",
)


def _bad_vector_rows(values: np.ndarray) -> dict[str, np.ndarray]:
    """[n] bool per rule of `_VECTOR_RULES` for an (n, D) block of float vectors."""
    finite = np.isfinite(values).all(axis=1)
    if values.dtype == np.float32:  # a finite float32 is within float32's range
        too_large = np.zeros(len(values), dtype=bool)
    else:
        too_large = finite & (np.abs(values) > np.finfo(np.float32).max).any(axis=1)
    usable = finite & ~too_large
    norms = np.full(len(values), np.nan)
    norms[usable] = row_norms(values[usable].astype(np.float32, copy=False))
    return dict(
        zip(
            _VECTOR_RULES,
            (~finite, too_large, usable & ~np.isfinite(norms), usable & (norms == 0)),
            strict=True,
        )
    )


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
            # Not pq.read_table: its pre-buffered reads allocate from Arrow's C++ default
            # pool, whose freed pages stayed in the process (~0.26 GB after reading a
            # 169 MB day, measured), and its chunks had to be copied into one buffer.
            table = read_contiguous(path)
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
    del tables
    dim = dims.pop() if dims else 0
    return DailyInput(_contiguous_embedding(table, dim), tuple(files), dim, tuple(versions))


def _contiguous_embedding(table: pa.Table, dim: int) -> pa.Table:
    """`table` with its `embedding` column (list<float32>, no nulls, every row `dim` long:
    validated) as one chunk over one contiguous (n, dim) buffer: the engines then view it
    as a matrix without a copy (Parquet gives one chunk per row group, and a second copy
    of the day's vectors was held while the first was). Over 2**31 values it stays
    chunked."""
    if table.num_rows == 0 or table["embedding"].num_chunks == 1 or table.num_rows * dim >= 2**31:
        return table  # (a list column's int32 offsets stop at 2**31 values)
    matrix = embedding_matrix(table["embedding"], dim)
    offsets = pa.array(np.arange(len(matrix) + 1, dtype=np.int32) * dim)
    column = pa.ListArray.from_arrays(offsets, pa.array(matrix.reshape(-1)))
    at = table.schema.get_field_index("embedding")
    return table.set_column(at, table.schema.field(at), column)


def _check_compatible(versions: list[str], where: str) -> None:
    for other in versions[1:]:
        if not compatible(versions[0], other):
            raise MaterializeError(
                f"{where} mix incompatible model versions '{versions[0]}' and '{other}' "
                "(different lineage or D); they cannot be aggregated together"
            )


# ---------------------------------------------------------------- pool

LAYOUT_FORMAT = 2  # 1 (implicit): {"buckets": n} only, written before manifests existed


class PoolIntegrityError(MaterializeError):
    """A pool on disk does not match its manifest (or has none that can be read)."""


class UnverifiedPoolWarning(UserWarning):
    """A pool written before manifests existed was read without checksums."""


@dataclass(frozen=True)
class PoolFile:
    """One Parquet file of a pool, as its manifest records it."""

    bucket: int
    path: str  # relative to the pool directory, e.g. "bucket=3/part-00000.parquet"
    rows: int
    bytes: int
    crc32: str  # zlib.crc32 of the whole file, 8 hex digits

    def as_json(self) -> dict:
        return {
            "bucket": self.bucket,
            "path": self.path,
            "rows": self.rows,
            "bytes": self.bytes,
            "crc32": self.crc32,
        }


@dataclass(frozen=True)
class Layout:
    """A pool's `_layout.json`: its bucket count and, since format 2, every file."""

    buckets: int
    files: tuple[PoolFile, ...] | None  # None: a format-1 pool (no manifest)

    def bucket_files(self, bucket: int) -> tuple[PoolFile, ...]:
        return tuple(f for f in self.files or () if f.bucket == bucket)


def _crc32(data: bytes | memoryview) -> str:
    """8 hex digits; crc32 rather than a cryptographic hash: it detects torn or truncated
    files (what a crash or a bad copy leaves) at ~2 GB/s here, 2x sha256."""
    return f"{zlib.crc32(data):08x}"


# Bytes read at a time for a file's checksum: a whole pool file in memory (128-256 MiB)
# only to checksum it raised a run's peak RSS by as much.
_CRC_BLOCK = 8 << 20


def _file_crc32(path: Path) -> tuple[int, str]:
    """(size in bytes, crc32 as `_crc32` gives it) of a file, read `_CRC_BLOCK` at a time."""
    crc, size = 0, 0
    block = bytearray(_CRC_BLOCK)
    view = memoryview(block)
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(block):
            crc = zlib.crc32(view[:n], crc)
            size += n
    return size, f"{crc:08x}"


def write_pool_bucket(pool_dir: Path, bucket: int, table: pa.Table) -> PoolFile:
    """One bucket of the pool being built (inside `atomic_dir`, so not atomic on its own).

    Returns the file's manifest entry (rows, bytes and crc32 of what was written; the file
    is read back from the page cache for the checksum, a block at a time).
    """
    relative = f"bucket={bucket}/part-00000.parquet"
    path = pool_dir / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, **VECTOR_PARQUET)
    size, crc = _file_crc32(path)
    return PoolFile(bucket, relative, table.num_rows, size, crc)


def write_layout(pool_dir: Path, buckets: int, files: Sequence[PoolFile]) -> None:
    """Writes the pool's manifest (format 2): the bucket count and every file with its rows,
    bytes and crc32. Every bucket must have a file (an empty bucket has an empty one)."""
    missing = sorted(set(range(buckets)) - {f.bucket for f in files})
    if missing:
        raise RuntimeError(f"pool {pool_dir}: no file written for bucket(s) {missing}")
    layout = {
        "format": LAYOUT_FORMAT,
        "buckets": buckets,
        "files": [f.as_json() for f in sorted(files, key=lambda f: (f.bucket, f.path))],
    }
    write_text_atomic(json.dumps(layout, indent=1) + "\n", pool_dir / LAYOUT_FILE)


def read_layout(pool_dir: Path) -> Layout:
    """The manifest of a pool; raises `PoolIntegrityError` naming the file when it is
    missing, not JSON, or not a manifest. A format-1 file ({"buckets": n}) gives
    `files=None`."""
    path = pool_dir / LAYOUT_FILE
    where = f"pool {pool_dir}: {LAYOUT_FILE}"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise PoolIntegrityError(f"{where} is missing; {_REBUILD}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PoolIntegrityError(f"{where} is unreadable ({exc}); {_REBUILD}") from None
    try:
        buckets = raw["buckets"]
        if not isinstance(buckets, int) or isinstance(buckets, bool) or buckets < 1:
            raise ValueError(f"'buckets' must be a positive integer, got {buckets!r}")
        if "files" not in raw:
            return Layout(buckets, None)
        files = tuple(
            PoolFile(
                int(f["bucket"]), str(f["path"]), int(f["rows"]), int(f["bytes"]), str(f["crc32"])
            )
            for f in raw["files"]
        )
        outside = [f.path for f in files if not 0 <= f.bucket < buckets]
        if outside:
            raise ValueError(f"files outside buckets 0..{buckets - 1}: {outside}")
        unlisted = sorted(set(range(buckets)) - {f.bucket for f in files})
        if unlisted:
            raise ValueError(f"no file listed for bucket(s) {unlisted}")
    except (KeyError, TypeError, ValueError) as exc:
        raise PoolIntegrityError(f"{where} is not a pool manifest ({exc}); {_REBUILD}") from None
    return Layout(buckets, files)


# What to do about a damaged pool, in every integrity message.
_REBUILD = (
    "restore this pool from a backup, or re-materialize its day (and every later day) from "
    "the daily outputs, oldest first"
)


def _legacy_files(pool_dir: Path, layout: Layout, bucket: int) -> list[Path]:
    """The Parquet files of one bucket of a format-1 pool (no manifest): each bucket must
    have at least one, since every engine writes a file for every bucket."""
    directory = pool_dir / f"bucket={bucket}"
    files = parquet_files(directory) if directory.is_dir() else []
    if not files:
        raise PoolIntegrityError(
            f"pool {pool_dir}: bucket {bucket} of {layout.buckets} has no Parquet file "
            f"({directory}); {_REBUILD}"
        )
    return files


_WARNED: set[Path] = set()  # format-1 pools already warned about in this process


def _warn_unverified(pool_dir: Path) -> None:
    if pool_dir in _WARNED:
        return
    _WARNED.add(pool_dir)
    warnings.warn(
        f"pool {pool_dir} was written before pool manifests (no row counts or checksums in "
        f"{LAYOUT_FILE}): read unverified; the next day's pool gets a manifest",
        UnverifiedPoolWarning,
        stacklevel=3,
    )


def verify_pool(pool_dir: Path) -> Layout:
    """Checks a pool before any work reads it; returns its layout.

    Format 2: every listed file exists with its recorded size and its Parquet footer
    holds the recorded rows, and no unlisted Parquet file sits in a bucket (checksums are
    verified when a bucket is read whole, `read_pool_bucket`). Format 1: every bucket has
    a readable Parquet file, with a warning that nothing else can be checked.
    Raises `PoolIntegrityError` naming the pool, the file and what does not match.
    """
    layout = read_layout(pool_dir)
    if layout.files is None:
        _warn_unverified(pool_dir)
        for bucket in range(layout.buckets):
            for path in _legacy_files(pool_dir, layout, bucket):
                _footer_rows(pool_dir, path)
        return layout
    for f in layout.files:
        _check_size(pool_dir, f)
        rows = _footer_rows(pool_dir, pool_dir / f.path)
        if rows != f.rows:
            raise PoolIntegrityError(
                f"pool {pool_dir}: {f.path} holds {rows} rows, its manifest says {f.rows}; "
                f"{_REBUILD}"
            )
    listed = {f.path for f in layout.files}
    extra = sorted(
        str(p.relative_to(pool_dir))
        for p in parquet_files(pool_dir)
        if str(p.relative_to(pool_dir)) not in listed
    )
    if extra:
        raise PoolIntegrityError(
            f"pool {pool_dir}: Parquet file(s) not in its manifest: {extra}; {_REBUILD}"
        )
    return layout


def _check_size(pool_dir: Path, f: PoolFile) -> None:
    path = pool_dir / f.path
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise PoolIntegrityError(
            f"pool {pool_dir}: {f.path} (bucket {f.bucket}, {f.rows} rows) is missing; {_REBUILD}"
        ) from None
    if size != f.bytes:
        raise PoolIntegrityError(
            f"pool {pool_dir}: {f.path} is {size} bytes, its manifest says {f.bytes} "
            f"(truncated or overwritten); {_REBUILD}"
        )


def _footer_rows(pool_dir: Path, path: Path) -> int:
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowInvalid, OSError) as exc:
        raise PoolIntegrityError(
            f"pool {pool_dir}: {path.relative_to(pool_dir)} is not readable Parquet ({exc}); "
            f"{_REBUILD}"
        ) from None


def _read_verified(pool_dir: Path, f: PoolFile) -> pa.Table:
    """One manifest-listed file, its size, crc32 and rows checked, read whole.

    The checksum is taken a block at a time before the file is parsed (not over a copy of
    the whole file held in memory): pools are written once into a fresh directory and a
    day's runs hold the work directory's lock, so the two reads see the same bytes.
    """
    _check_size(pool_dir, f)
    path = pool_dir / f.path
    _, crc = _file_crc32(path)
    if crc != f.crc32:
        raise PoolIntegrityError(
            f"pool {pool_dir}: {f.path} has crc32 {crc}, its manifest says "
            f"{f.crc32} (corrupted); {_REBUILD}"
        )
    table = read_contiguous(path)
    if table.num_rows != f.rows:
        raise PoolIntegrityError(
            f"pool {pool_dir}: {f.path} holds {table.num_rows} rows, its manifest says "
            f"{f.rows}; {_REBUILD}"
        )
    return table


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
    schema = source.schema_arrow
    n = source.metadata.num_rows
    dense = {
        field.name: np.empty((n, field.type.list_size), dtype=np.float32)
        for field in schema
        if pa.types.is_fixed_size_list(field.type) and field.type.value_type == pa.float32()
    }
    parts: dict[str, list[pa.Array]] = {name: [] for name in schema.names}
    row = 0
    for group in range(source.num_row_groups):
        table = source.read_row_group(group)
        for name in schema.names:
            column = table[name]
            if name not in dense:
                parts[name].extend(column.chunks)
            elif column.null_count:  # never in a pool's vectors: read as Arrow gives it
                return pq.read_table(path)
            else:
                matrix = embedding_matrix(column, schema.field(name).type.list_size)
                dense[name][row : row + len(matrix)] = matrix
        row += table.num_rows
        del table
    if row != n:
        raise ValueError(f"{path}: row groups hold {row} rows, the footer says {n}")
    columns = []
    for field in schema:
        if field.name in dense:
            columns.append(fixed_size_list(dense[field.name]).cast(field.type))
        elif parts[field.name]:
            columns.append(pa.concat_arrays(parts[field.name]))
        else:
            columns.append(pa.array([], field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def read_pool_bucket(pool_dir: Path, bucket: int, layout: Layout | None = None) -> pa.Table:
    """The rows of one bucket of a pool (no `bucket` column), verified against the
    manifest (`layout`, read from `pool_dir` when not given): size, crc32 and rows of each
    file. Never an empty table for a missing file: raises `PoolIntegrityError`."""
    layout = layout or read_layout(pool_dir)
    if layout.files is None:
        tables = [pq.read_table(p) for p in _legacy_files(pool_dir, layout, bucket)]
    else:
        tables = [_read_verified(pool_dir, f) for f in layout.bucket_files(bucket)]
    return pa.concat_tables(tables)


def read_pool(pool_dir: Path, columns: list[str] | None = None) -> pa.Table:
    """A whole pool (or some of its columns), without the `bucket` partition column.

    Reads exactly the files of its manifest after `verify_pool`'s checks (sizes and row
    counts; a column subset is not checksummed, as it does not read whole files).
    """
    layout = verify_pool(pool_dir)
    if layout.files is None:
        paths = [p for k in range(layout.buckets) for p in _legacy_files(pool_dir, layout, k)]
    else:
        paths = [pool_dir / f.path for f in layout.files]
    tables = [pq.read_table(p, columns=columns) for p in paths]
    return pa.concat_tables(tables)


def pool_rows(pool_dir: Path) -> int:
    """The number of live entities in a pool: its manifest's row counts (read from the
    files' footers for a format-1 pool). Raises `PoolIntegrityError` as `read_layout`."""
    layout = read_layout(pool_dir)
    if layout.files is not None:
        return sum(f.rows for f in layout.files)
    return sum(
        _footer_rows(pool_dir, p)
        for k in range(layout.buckets)
        for p in _legacy_files(pool_dir, layout, k)
    )


def pool_versions(pool_dir: Path) -> list[str]:
    return sorted(pc.unique(read_pool(pool_dir, ["model_version"])["model_version"]).to_pylist())


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
