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
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import itertools
import json
import math
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from isal import isal_zlib

from derm_features.core.arrays import fixed_size_list
from derm_features.core.atomic import atomic_file, write_text_atomic
from derm_features.core.files import data_files, parquet_files
from derm_features.core.provenance import ModelVersion, compatible
from materialize.kernel import (
    POOL_COLUMNS,
    TIMESTAMP,
    day_start,
    embedding_matrix,
    row_norms,
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


def buckets_for(rows: int, dim: int, target_bytes: int = 128 << 20) -> int:
    """Enough buckets that one bucket (pool(t-1) in, pool(t) out: two vectors a row) stays
    near `target_bytes`. Smaller buckets bound memory lower and fill and drain the local
    engine's read/merge/write pipeline sooner, at a small cost per bucket (BENCHMARKS.md:
    128 MB against 256 and 64)."""
    return max(1, math.ceil(rows * dim * 4 * 2 / target_bytes))


# ---------------------------------------------------------------- daily input
#
# A day's tower outputs are read twice, never whole: `scan_daily` reads the files' footers
# and `model_version` columns (the rules that need no vectors, the model versions, D and
# the row count, which decide the bucket count), then `split_daily` streams every row,
# `_CHECK_ROWS` at a time, through the row rules and, for an engine that merges buckets
# in this process, into one spill file per bucket. Both raise `MaterializeError` naming
# every bad file before any pool file is written; memory stays near one block of rows.


@dataclass(frozen=True)
class DailyInput:
    """Day t's raw tower outputs: its files (checked by `scan_daily`), and once
    `split_daily` validated every row, the rows split by bucket (`split`)."""

    files: tuple[Path, ...]
    file_rows: tuple[int, ...]  # rows of each file, from its footer
    id_column: str
    id_type: pa.DataType | None  # None: no readable file
    rows: int  # raw rows (several per entity allowed), from the files' footers
    dim: int  # D of the model versions (0 without rows)
    versions: tuple[str, ...]  # distinct model versions, sorted
    split: SplitDay | None = None


@dataclass(frozen=True)
class SplitDay:
    """The validated rows of day t in one Arrow IPC file per bucket, in their input order
    (files in order, rows in file order), under a run's scratch directory.

    Columns: <id> (the files' id type), ts (timestamp[us, UTC]), embedding
    (fixed_size_list<float32>[D]), model_version (string). A bucket without rows has no
    file. `directory` is the run's scratch directory (the engine may put its own
    intermediate files there too); it lives as long as the run.
    """

    directory: Path
    schema: pa.Schema
    rows: tuple[int, ...]  # rows per bucket

    def path(self, bucket: int) -> Path:
        return self.directory / "day" / f"bucket={bucket}.arrow"

    def read(self, bucket: int) -> pa.Table:
        """The bucket's rows, each column one chunk, the vectors one (n, D) buffer."""
        return read_ipc_contiguous(self.path(bucket), self.schema, self.rows[bucket])


def daily_files(directory: Path) -> list[Path]:
    """The data files of one day's outputs (`parquet_files`: any depth, hidden skipped)."""
    return parquet_files(directory)


@dataclass
class _DailyFile:
    """What `scan_daily` learnt of one daily file without reading its vectors."""

    path: Path
    rows: int = 0
    id_type: pa.DataType | None = None
    fatal: list[str] = field(default_factory=list)  # its rows cannot be read as a day's
    ts: list[str] = field(default_factory=list)  # 'ts' is not a timestamp
    versions: list[str] = field(default_factory=list)  # distinct, in order of appearance
    version_nulls: int = 0
    version_problems: list[str] = field(default_factory=list)
    dims: set[int] = field(default_factory=set)

    @property
    def dim(self) -> int | None:
        """D of its rows when the checks so far found nothing (then every row is checked
        against it), else None."""
        clean = not (self.fatal or self.ts or self.version_nulls or self.version_problems)
        return next(iter(self.dims)) if clean and len(self.dims) == 1 else None


# What reading a damaged daily file raises (bad UTF-8 in a string: UnicodeDecodeError).
_UNREADABLE = (pa.ArrowInvalid, OSError, UnicodeDecodeError)


def _scan_file(path: Path, id_column: str, model: str) -> _DailyFile:
    """Footer, schema and `model_version` column of one daily file (row group by row group)."""
    f = _DailyFile(path)
    try:
        source = pq.ParquetFile(path)
        schema = source.schema_arrow
    except _UNREADABLE as exc:
        f.fatal.append(f"unreadable Parquet ({exc})")
        return f
    f.rows = source.metadata.num_rows
    missing = [c for c in (id_column, *DAILY_COLUMNS) if c not in schema.names]
    if missing:
        f.fatal.append(f"missing column(s) {missing} (has {schema.names})")
        return f
    f.id_type = schema.field(id_column).type
    emb_type = schema.field("embedding").type
    if not (
        (pa.types.is_list(emb_type) or pa.types.is_fixed_size_list(emb_type))
        and pa.types.is_floating(emb_type.value_type)
    ):
        f.fatal.append(f"column 'embedding' must be list<float32>, got {emb_type}")
        return f
    if not pa.types.is_timestamp(schema.field("ts").type):
        f.ts.append(f"column 'ts' must be a timestamp, got {schema.field('ts').type}")
    seen: dict[str, None] = {}
    try:
        for group in range(source.num_row_groups):
            column = source.read_row_group(group, columns=["model_version"])["model_version"]
            f.version_nulls += column.null_count
            seen.update(dict.fromkeys(pc.unique(column.drop_null()).to_pylist()))
    except _UNREADABLE as exc:
        f.fatal.append(f"unreadable Parquet ({exc})")
        return f
    f.versions = list(seen)
    for text in f.versions:
        try:
            version = ModelVersion.parse(text)
        except ValueError as exc:
            f.version_problems.append(str(exc))
            continue
        if version.model != model:
            f.version_problems.append(f"model_version '{text}' belongs to model '{version.model}'")
        f.dims.add(version.dim)
    return f


class _VectorCheck:
    """Rows of a daily `embedding` column that no merge can use, fed a block of rows at a
    time in file order: each rule of `_VECTOR_RULES` with its count and first row (0-based,
    in the file). Values that are NaN or inf, or beyond float32's range (the pool's type),
    and zero norms. Norms are float64 (`row_norms`), so a finite vector of huge values
    (x1e30) is accepted and merges like any other. Blocks of `_CHECK_ROWS`: whole-column
    float64 copies of a day's vectors were the largest allocation of a run once (4x the
    day's float32 bytes)."""

    def __init__(self) -> None:
        self.rows = 0
        self.counts = dict.fromkeys(_VECTOR_RULES, 0)
        self.first: dict[str, int] = {}

    def add(self, values: np.ndarray) -> None:
        """values: an (n, D) float block, the next n rows of the file."""
        for what, bad in _bad_vector_rows(values).items():
            n = int(np.count_nonzero(bad))
            if n:
                self.counts[what] += n
                self.first.setdefault(what, self.rows + int(np.flatnonzero(bad)[0]))
        self.rows += len(values)

    def problems(self) -> list[str]:
        return [
            f"{n} row(s) {what} in column 'embedding' (first: row {self.first[what]})"
            for what, n in self.counts.items()
            if n
        ]


# Rows of daily vectors checked (and split) at a time (256-d float64: 32 MiB).
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


def scan_daily(directories: Path | Sequence[Path], id_column: str, model: str) -> DailyInput:
    """Lists and checks every Parquet file of one day (or of several days' directories,
    read as one input) without reading its vectors: columns and their types, model
    versions (parsed, of `model`, one D a file, compatible across files), one id type.

    Raises `MaterializeError` naming each bad file, the broken rule and its number of bad
    rows; when a file breaks one of these rules, every row of the others is checked too
    (`split_daily`'s rules), so one message names everything wrong with the day.
    """
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
    scanned = [_scan_file(path, id_column, model) for path in files]
    if any(f.fatal or f.ts or f.version_nulls or f.version_problems or len(f.dims) > 1
           for f in scanned):  # fmt: skip
        _check_rows(scanned, id_column, None)  # raises
    versions = sorted({v for f in scanned for v in f.versions})
    _check_compatible(versions, f"daily outputs in {directories[-1]}")
    id_types = {f.id_type for f in scanned if f.rows}
    if len(id_types) > 1:
        raise MaterializeError(
            f"daily outputs in {directories[-1]} mix id types {sorted(map(str, id_types))} in "
            f"column '{id_column}'; every file must use one"
        )
    dims = {ModelVersion.parse(v).dim for v in versions}
    return DailyInput(
        files=tuple(files),
        file_rows=tuple(f.rows for f in scanned),
        id_column=id_column,
        id_type=id_types.pop() if id_types else scanned[0].id_type,
        rows=sum(f.rows for f in scanned),
        dim=dims.pop() if dims else 0,
        versions=tuple(versions),
    )


def split_daily(daily: DailyInput, dim: int, buckets: int, scratch: Path | None) -> DailyInput:
    """Checks every row of a scanned day (nulls, each vector's length against D, the
    vector rules of `_VectorCheck`), `_CHECK_ROWS` rows at a time, and with `scratch`
    writes them into one spill file per bucket (`bucket_of`; `SplitDay`) under it.
    dim: D of the day (a day without rows: its pool's, so the spill's schema matches).

    Returns `daily` with `split` set (None without `scratch`: only checked). Raises
    `MaterializeError` naming each bad file, rule, count and first bad row; the spill
    files written meanwhile are left to the caller's scratch directory.
    """
    scanned = [
        _DailyFile(p, rows=n, id_type=daily.id_type, dims={daily.dim})
        for p, n in zip(daily.files, daily.file_rows, strict=True)
    ]
    spill = None
    if scratch is not None:
        spill = _Spill(scratch, daily.id_column, daily.id_type, dim, buckets)
    try:
        _check_rows(scanned, daily.id_column, spill)
    finally:
        split = spill.close() if spill is not None else None
    return dataclasses.replace(daily, split=split)


def _check_rows(scanned: list[_DailyFile], id_column: str, spill: _Spill | None) -> None:
    """Streams the rows of every readable file through the row rules (and into `spill`
    while no file has failed); raises `MaterializeError` with every file's problems, in
    file order and in each file in the order of its rules."""
    errors = []
    for f in scanned:
        problems = f.fatal or _file_problems(f, id_column, spill if not errors else None)
        errors.extend(f"{f.path}: {p}" for p in problems)
    if errors:
        raise MaterializeError("bad daily tower outputs:\n  " + "\n  ".join(errors))


def _file_problems(f: _DailyFile, id_column: str, spill: _Spill | None) -> list[str]:
    """The broken rules of one (scanned) daily file, each with its number of bad rows;
    its rows go to `spill` block by block until a rule breaks."""
    names = (id_column, "ts", "embedding")
    nulls = dict.fromkeys(names, 0)
    wrong_lengths = 0
    dim = f.dim
    vectors = _VectorCheck()
    try:
        for batch in _blocks(f.path, [id_column, *DAILY_COLUMNS]):
            for name in names:
                nulls[name] += batch.column(name).null_count
            if dim is None:
                continue
            column = batch.column("embedding")
            lengths = pc.list_value_length(column)
            wrong_lengths += pc.sum(pc.not_equal(lengths, dim)).as_py() or 0
            if column.null_count or wrong_lengths or any(nulls.values()):
                spill = None  # the file fails: its rows go nowhere
                continue
            values = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
            vectors.add(values)
            if spill is not None and not vectors.first:
                spill.add(batch, pc.cast(column.flatten(), pa.float32()))
            else:
                spill = None
    except _UNREADABLE as exc:
        return [f"unreadable Parquet ({exc})"]
    problems = f.ts + [f"{n} row(s) with a null '{name}'" for name, n in nulls.items() if n]
    if f.version_nulls:
        problems.append(f"{f.version_nulls} row(s) with a null 'model_version'")
    problems += f.version_problems
    if problems or not f.rows:
        return problems
    if len(f.dims) != 1:
        return [f"model versions of several dimensions {sorted(f.dims)}"]
    if wrong_lengths:
        return [
            f"{wrong_lengths} row(s) whose embedding length is not D={dim} (from model_version)"
        ]
    return vectors.problems()


def _blocks(path: Path, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """A Parquet file's rows in order, about `_CHECK_ROWS` at a time (small row groups
    gathered, large ones sliced), read a row group at a time. Not `iter_batches`: with a
    list column its reader kept every batch's buffers until the end of the file (1.66 GB
    of RSS to iterate over a 1.35 GB day, measured)."""
    source = pq.ParquetFile(path)

    def gathered() -> Iterator[pa.Table]:
        held: list[pa.Table] = []
        rows = 0
        for group in range(source.num_row_groups):
            held.append(source.read_row_group(group, columns=columns))
            rows += held[-1].num_rows
            if rows >= _CHECK_ROWS or group == source.num_row_groups - 1:
                yield pa.concat_tables(held).combine_chunks() if len(held) > 1 else held[0]
                held, rows = [], 0

    # The next block is read (Parquet decoding releases the GIL) while this one is checked
    # and spilled: one block ahead, on the core that would otherwise wait.
    tables = gathered()
    with ThreadPoolExecutor(1) as reader:
        ahead = reader.submit(next, tables, None)
        while (table := ahead.result()) is not None:
            ahead = reader.submit(next, tables, None)
            yield from table.to_batches(max_chunksize=_CHECK_ROWS)


class _Spill:
    """Appends validated daily rows to one Arrow IPC file per bucket (`SplitDay`)."""

    def __init__(self, scratch: Path, id_column: str, id_type, dim: int, buckets: int):
        self.id_column, self.dim, self.buckets = id_column, dim, buckets
        self.schema = pa.schema(
            [
                (id_column, id_type),
                ("ts", TIMESTAMP),
                ("embedding", pa.list_(pa.float32(), dim)),
                ("model_version", pa.string()),
            ]
        )
        self.split = SplitDay(scratch, self.schema, ())
        self.split.path(0).parent.mkdir(parents=True, exist_ok=True)
        self.rows = np.zeros(buckets, dtype=np.int64)
        self.writers: dict[int, pa.ipc.RecordBatchFileWriter] = {}

    def add(self, batch: pa.RecordBatch, values: pa.Array) -> None:
        """batch: raw rows of a daily file; values: their vectors' float32 values, flat."""
        key = self.id_column
        bucket = bucket_of(batch.column(key), self.buckets)
        # Stable: each bucket keeps the rows in their input order.
        order = np.argsort(bucket, kind="stable")
        bounds = np.searchsorted(bucket[order], np.arange(self.buckets + 1))
        take = pa.array(order)
        matrix = values.to_numpy().reshape(-1, self.dim)
        rows = pa.RecordBatch.from_arrays(
            [
                batch.column(key).take(take),
                pc.cast(batch.column("ts"), TIMESTAMP).take(take),
                fixed_size_list(np.take(matrix, order, axis=0)),
                pc.cast(batch.column("model_version"), pa.string()).take(take),
            ],
            schema=self.schema,
        )
        try:
            for k in np.flatnonzero(np.diff(bounds)):
                if k not in self.writers:
                    self.writers[k] = pa.ipc.new_file(str(self.split.path(k)), self.schema)
                self.writers[k].write_batch(rows.slice(bounds[k], bounds[k + 1] - bounds[k]))
                self.rows[k] += bounds[k + 1] - bounds[k]
        except OSError as exc:  # the scratch disk's fault, not the daily file's
            raise MaterializeError(
                f"could not write the day's spill under {self.split.directory} ({exc}); it "
                "needs free space of about twice the day's vectors"
            ) from exc

    def close(self) -> SplitDay:
        for writer in self.writers.values():
            writer.close()
        return dataclasses.replace(self.split, rows=tuple(int(n) for n in self.rows))


def read_ipc_contiguous(path: Path, schema: pa.Schema, rows: int) -> pa.Table:
    """An Arrow IPC file of `rows` rows (`schema`; none: no file) with one chunk per
    column, its fixed-size float32 vector columns copied batch by batch into one (n, D)
    matrix each (as `read_contiguous` reads Parquet)."""
    if rows == 0:
        return schema.empty_table()
    with pa.OSFile(str(path)) as source:  # read, not mapped: mapped pages count as resident
        reader = pa.ipc.open_file(source)
        batches = (
            pa.Table.from_batches([reader.get_batch(i)]) for i in range(reader.num_record_batches)
        )
        table = _contiguous(
            batches, schema, rows, lambda row: f"{path}: holds {row} rows, {rows} were written"
        )
    if table is None:  # the spill holds validated rows only
        raise ValueError(f"{path}: a null vector row")
    return table


def _contiguous(
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


# Pool files: Arrow IPC (uncompressed, one record batch). Parquet's list reader grew and
# decoded fresh buffers for every bucket read (half of a run's page faults); a mapped IPC
# file is the kernel's input as it lies on disk.
POOL_SUFFIX = ".arrow"
POOL_SUFFIXES = (POOL_SUFFIX, ".parquet")  # ".parquet": pools written by derm 0.1.0


@dataclass(frozen=True)
class PoolFile:
    """One file of a pool, as its manifest records it."""

    bucket: int
    path: str  # relative to the pool directory, e.g. "bucket=3/part-00000.arrow"
    rows: int
    bytes: int
    crc32: str  # crc32 (zlib's) of the whole file, 8 hex digits

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
    """8 hex digits of zlib's crc32. A crc rather than a cryptographic hash: it detects torn
    or truncated files (what a crash or a bad copy leaves). Computed with ISA-L
    (`isal_zlib.crc32`: the same values as `zlib.crc32`, several times faster)."""
    return f"{isal_zlib.crc32(data):08x}"


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
            crc = isal_zlib.crc32(view[:n], crc)
            size += n
    return size, f"{crc:08x}"


def write_pool_bucket(pool_dir: Path, bucket: int, table: pa.Table) -> PoolFile:
    """One bucket of the pool being built (inside `atomic_dir`, so not atomic on its own),
    as an Arrow IPC file of one record batch (the same bytes for the same rows, whatever
    chunks `table` came in: both engines write byte-identical pools).

    Returns the file's manifest entry (rows, bytes and crc32 of what was written; the file
    is read back from the page cache for the checksum, a block at a time).
    """
    relative = f"bucket={bucket}/part-00000{POOL_SUFFIX}"
    path = pool_dir / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    table = table.combine_chunks()  # no copy when each column already has one chunk
    with pa.ipc.new_file(str(path), table.schema) as writer:
        writer.write_table(table, max_chunksize=max(table.num_rows, 1))
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
        # A path elsewhere (another bucket's directory, outside the pool) or listed twice
        # would be read as this bucket's rows: entities in two buckets, or twice in one.
        misplaced = [f.path for f in files if not _in_own_bucket(f)]
        if misplaced:
            raise ValueError(f"paths not a pool file of their bucket's directory: {misplaced}")
        paths = [f.path for f in files]
        twice = sorted({p for p in paths if paths.count(p) > 1})
        if twice:
            raise ValueError(f"files listed more than once: {twice}")
        unlisted = sorted(set(range(buckets)) - {f.bucket for f in files})
        if unlisted:
            raise ValueError(f"no file listed for bucket(s) {unlisted}")
    except (KeyError, TypeError, ValueError) as exc:
        raise PoolIntegrityError(f"{where} is not a pool manifest ({exc}); {_REBUILD}") from None
    return Layout(buckets, files)


def _in_own_bucket(f: PoolFile) -> bool:
    """`bucket=<k>/<name>.arrow|.parquet` with k the file's bucket (what every engine
    writes, derm 0.1.0 included)."""
    directory, _, name = f.path.partition("/")
    return (
        directory == f"bucket={f.bucket}"
        and bool(name)
        and "/" not in name
        and not name.startswith((".", "_"))
        and name.endswith(POOL_SUFFIXES)
    )


# What to do about a damaged pool, in every integrity message.
_REBUILD = (
    "restore this pool from a backup, or rebuild it: re-run `derm materialize` for its day "
    "(if a later day has a pool, remove those later pool directories first and re-run their "
    "days after it, oldest first)"
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


def verify_pool(pool_dir: Path, checksums: bool = False) -> Layout:
    """Checks a pool before any work reads it; returns its layout.

    Format 2: every listed file exists with its recorded size and its footer holds the
    recorded rows, and no unlisted pool file sits in a bucket; with `checksums`, each
    file's crc32 too (a block at a time; otherwise verified when a bucket or the vectors
    are read, `read_pool_bucket`, `read_pool`). Format 1: every bucket has a readable
    Parquet file, with a warning that nothing else can be checked.
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
        for suffix in POOL_SUFFIXES
        for p in data_files(pool_dir, suffix)
        if str(p.relative_to(pool_dir)) not in listed
    )
    if extra:
        raise PoolIntegrityError(
            f"pool {pool_dir}: file(s) not in its manifest: {extra}; {_REBUILD}"
        )
    for f in layout.files if checksums else ():
        _check_crc32(pool_dir, f, _file_crc32(pool_dir / f.path)[1])
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
    arrow = path.suffix == POOL_SUFFIX
    try:
        if arrow:
            return pa.ipc.open_file(pa.memory_map(str(path))).count_rows()
        return pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowException, OSError, ValueError) as exc:
        kind = "a readable Arrow IPC file" if arrow else "readable Parquet"
        raise PoolIntegrityError(
            f"pool {pool_dir}: {path.relative_to(pool_dir)} is not {kind} ({exc}); {_REBUILD}"
        ) from None


def read_pool_file(path: Path, columns: list[str] | None = None) -> pa.Table:
    """One pool file, by its suffix: an Arrow IPC file memory-mapped (`read_ipc_buffer`),
    a Parquet file of derm 0.1.0 as `read_contiguous` reads it (`columns`: those only)."""
    if path.suffix == POOL_SUFFIX:
        return read_ipc_buffer(pa.memory_map(str(path)).read_buffer(), columns)
    if columns is not None:
        return pq.read_table(path, columns=columns)
    return read_contiguous(path)


# What a damaged file's bytes raise while it is parsed (an unknown type in a garbled
# schema: ArrowNotImplementedError; a garbled column name: KeyError; bad UTF-8 in a
# Parquet string: UnicodeDecodeError, a ValueError).
_PARSE_ERRORS = (pa.ArrowException, OSError, ValueError, KeyError, NotImplementedError)


@contextlib.contextmanager
def _parsing(pool_dir: Path, relative: str | Path) -> Iterator[None]:
    """Raises a parse error of the pool file `relative` as `PoolIntegrityError` naming
    the pool and the file."""
    try:
        yield
    except _PARSE_ERRORS as exc:
        raise PoolIntegrityError(
            f"pool {pool_dir}: {relative} is not a readable pool file "
            f"({type(exc).__name__}: {exc}); {_REBUILD}"
        ) from None


def read_ipc_buffer(data: pa.Buffer, columns: list[str] | None = None) -> pa.Table:
    """The table of an Arrow IPC file's bytes (`columns`: those only), its columns views of
    `data` (a memory map: nothing decoded or copied), one chunk each, validated in full
    (offsets in bounds, UTF-8). Raises `pa.ArrowInvalid` when `data` is not a valid IPC
    file."""
    table = pa.ipc.open_file(data).read_all()
    if columns is not None:
        table = table.select(columns)
    # An IPC file is used as it lies: a garbled string offset would make the first
    # kernel that reads the column (pool_versions' unique) read out of bounds and crash
    # the process. Full validation bounds every offset and checks UTF-8; on vectors
    # (fixed-size lists of float32) it has nothing per value to check.
    table.validate(full=True)
    if table.num_rows == 0:  # no record batch: one empty chunk per column, as Parquet gives
        return table.schema.empty_table()
    return table.combine_chunks()  # one batch as written (no copy); several: one copy


def _check_crc32(pool_dir: Path, f: PoolFile, crc: str) -> None:
    if crc != f.crc32:
        raise PoolIntegrityError(
            f"pool {pool_dir}: {f.path} has crc32 {crc}, its manifest says "
            f"{f.crc32} (corrupted); {_REBUILD}"
        )


def _read_verified(pool_dir: Path, f: PoolFile, columns: list[str] | None = None) -> pa.Table:
    """One manifest-listed file, its size, crc32 and rows checked, read whole (`columns`:
    those only, the checksum still over the whole file).

    An Arrow IPC file is mapped once: the checksum is taken over the mapped pages, which
    the table's columns then view (no copy of the file in memory, one pass over it). A
    Parquet file (derm 0.1.0) is checksummed a block at a time before it is parsed: pools
    are written once into a fresh directory and a day's runs hold the work directory's
    lock, so the two reads see the same bytes.
    """
    _check_size(pool_dir, f)
    path = pool_dir / f.path
    mapped = pa.memory_map(str(path)).read_buffer() if path.suffix == POOL_SUFFIX else None
    crc = _crc32(memoryview(mapped)) if mapped is not None else _file_crc32(path)[1]
    _check_crc32(pool_dir, f, crc)
    with _parsing(pool_dir, f.path):  # the bytes the manifest lists, but not a pool file
        if mapped is not None:
            table = read_ipc_buffer(mapped, columns)
        elif columns is not None:
            table = pq.read_table(path, columns=columns)
        else:
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
    n = source.metadata.num_rows
    groups = (source.read_row_group(group) for group in range(source.num_row_groups))
    mismatch = lambda row: f"{path}: row groups hold {row} rows, the footer says {n}"  # noqa: E731
    table = _contiguous(groups, source.schema_arrow, n, mismatch)
    # a null vector row (never in a pool's vectors): read as Arrow gives it
    return pq.read_table(path) if table is None else table


def read_pool_bucket(pool_dir: Path, bucket: int, layout: Layout | None = None) -> pa.Table:
    """The rows of one bucket of a pool (no `bucket` column), verified against the
    manifest (`layout`, read from `pool_dir` when not given): size, crc32 and rows of each
    file. Never an empty table for a missing file: raises `PoolIntegrityError`."""
    layout = layout or read_layout(pool_dir)
    if layout.files is None:
        tables = []
        for path in _legacy_files(pool_dir, layout, bucket):
            with _parsing(pool_dir, path.relative_to(pool_dir)):
                tables.append(read_pool_file(path))
    else:
        tables = [_read_verified(pool_dir, f) for f in layout.bucket_files(bucket)]
    return pa.concat_tables(tables)


def read_pool(pool_dir: Path, columns: list[str] | None = None) -> pa.Table:
    """A whole pool (or some of its columns), without the `bucket` partition column.

    Reads exactly the files of its manifest after `verify_pool`'s checks. A read of the
    vectors (all columns, or `embedding` or `prev_daily` among them: serving, its ANN
    index, `--resync`) checks each file's crc32 and rows too (`_read_verified`), so a
    flipped byte of a vector is refused, never served; a read of ids and scalars only
    (sampling ids, the push's dropped ids) does not, as it would read every byte of a
    pool to use a few percent. A format-1 pool has no checksums. Raises
    `PoolIntegrityError` naming the pool and the file, KeyError for a column no pool has,
    ValueError for no column (an empty table would lose the row count).
    """
    if columns is not None and not columns:
        raise ValueError("read_pool: name at least one column (None reads them all)")
    if columns is not None and (unknown := [c for c in columns if c not in _pool_names(columns)]):
        raise KeyError(f"no column {unknown} in a pool (it has an id column and {POOL_COLUMNS})")
    layout = verify_pool(pool_dir)
    vectors = columns is None or any(c in _VECTOR_COLUMNS for c in columns)
    if layout.files is not None and vectors:
        return pa.concat_tables([_read_verified(pool_dir, f, columns) for f in layout.files])
    paths = _pool_paths(pool_dir, layout)
    tables = []
    for path in paths:
        with _parsing(pool_dir, path.relative_to(pool_dir)):
            tables.append(read_pool_file(path, columns))
    return pa.concat_tables(tables)


_VECTOR_COLUMNS = ("embedding", "prev_daily")


def _pool_paths(pool_dir: Path, layout: Layout) -> list[Path]:
    """The pool's data files: its manifest's, or a format-1 pool's in each bucket."""
    if layout.files is None:
        return [p for k in range(layout.buckets) for p in _legacy_files(pool_dir, layout, k)]
    return [pool_dir / f.path for f in layout.files]


def _pool_names(columns: Sequence[str]) -> set[str]:
    """The columns a pool has, its id column taken from `columns` (`<entity>_id`)."""
    return {c for c in columns if c.endswith("_id")} | set(POOL_COLUMNS)


def pool_rows(pool_dir: Path) -> int:
    """The number of live entities in a pool: its manifest's row counts (read from the
    files' footers for a format-1 pool), after `verify_pool`'s checks (sizes, footers,
    unlisted files: what `derm status` reports a damaged pool by). Raises
    `PoolIntegrityError` as `verify_pool`."""
    layout = verify_pool(pool_dir)
    if layout.files is not None:
        return sum(f.rows for f in layout.files)
    return sum(
        _footer_rows(pool_dir, p)
        for k in range(layout.buckets)
        for p in _legacy_files(pool_dir, layout, k)
    )


def pool_versions(pool_dir: Path) -> list[str]:
    """The distinct model versions of a pool, sorted. Read a file at a time: the pool's
    whole column took ~28 bytes an entity (as a dictionary column, 6x slower to read)."""
    layout = verify_pool(pool_dir)
    paths = _pool_paths(pool_dir, layout)
    versions: set[str] = set()
    for path in paths:
        # pc.unique too: a Parquet string column with bad UTF-8 fails only there
        with _parsing(pool_dir, path.relative_to(pool_dir)):
            column = read_pool_file(path, ["model_version"])["model_version"]
            versions.update(v for v in pc.unique(column).to_pylist() if v is not None)
    return sorted(versions)


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
    """The Feast offline rows of day t's changed entities, in `changed`'s order."""
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


def write_offline_day(offline_dir: Path, day: dt.date, rows: pa.Table | Iterable[pa.Table]) -> Path:
    """Writes (or replaces) day t's file atomically; a re-run leaves no duplicate rows.

    rows: the day's offline rows (`offline_rows`), as one table or as consecutive tables
    of one schema, written a row group at a time: the file is byte for byte the one their
    concatenation gives (`parquet_row_groups`), without the concatenation in memory.
    """
    path = offline_day_path(offline_dir, day)
    options = dict(VECTOR_PARQUET)
    size = options.pop("row_group_size")
    with atomic_file(path) as tmp:
        writer = None
        try:
            for group in parquet_row_groups([rows] if isinstance(rows, pa.Table) else rows, size):
                writer = writer or pq.ParquetWriter(tmp, group.schema, **options)
                writer.write_table(group, row_group_size=size)
        finally:
            if writer is not None:
                writer.close()
    return path


def parquet_row_groups(tables: Iterable[pa.Table], size: int) -> Iterator[pa.Table]:
    """The row groups `pq.write_table(pa.concat_tables(tables), row_group_size=size)`
    writes (`size` rows each, the last fewer), each with the chunks the concatenation has
    there, taken from `tables` as they come. At least one (an empty table, for which
    Arrow writes one empty row group). The chunks matter: Arrow's writer starts a new
    batch of values at each chunk, which moves page boundaries and so the file's bytes.
    """
    pending: list[pa.Table] = []
    held, schema, written = 0, None, False
    for table in tables:
        schema = schema or table.schema
        if table.num_rows == 0:
            continue
        pending.append(table)
        held += table.num_rows
        while held >= size:
            group, taken = [], 0
            while taken < size:
                n = min(size - taken, pending[0].num_rows)
                group.append(pending[0].slice(0, n))
                pending[0] = pending[0].slice(n)
                if pending[0].num_rows == 0:
                    pending.pop(0)
                taken += n
            held -= size
            written = True
            yield pa.concat_tables(group)
    if pending:
        yield pa.concat_tables(pending)
    elif not written and schema is not None:
        yield schema.empty_table()


class MergeAborted(MaterializeError):
    """The merge feeding a `ChangedRows` failed; its reader stops (and writes nothing)."""


class ChangedRows:
    """Day t's changed rows (new and updated entities: <id>, embedding, last_seen,
    model_version), held as runs, one a bucket in bucket order, each sorted by id; read
    back run after run, which is the offline file's row order.

    A run is a table in memory (the Spark engine's) or an Arrow IPC file that
    `write_changed_run` wrote (the local engine: one a bucket, in the run's scratch
    directory); `ids[i]` are run i's ids in its order (8 bytes a row stay in memory, the
    vectors stay on disk until the offline file is written).

    `ChangedRows(schema, runs, ids)` holds runs that are all there. `ChangedRows.streaming()`
    is filled while an engine merges (`add` a bucket's run as it is written, then `close`,
    or `abort` on failure), so the offline file is written from one thread (`groups`)
    while the next buckets merge in another.
    """

    def __init__(
        self,
        schema: pa.Schema | None,
        runs: Sequence[pa.Table | Path],
        ids: Sequence[np.ndarray],
        *,
        complete: bool = True,
    ):
        self.schema, self.runs, self.ids = schema, list(runs), list(ids)
        self._complete, self._aborted = complete, False
        self._changed = threading.Condition()

    @classmethod
    def streaming(cls) -> ChangedRows:
        """An empty holder an engine fills (`add`, then `close` or `abort`)."""
        return cls(None, [], [], complete=False)

    def add(self, run: pa.Table | Path, ids: np.ndarray, schema: pa.Schema) -> None:
        """The next bucket's run (sorted by id; `ids` its ids in that order)."""
        with self._changed:
            if self._complete:
                raise RuntimeError("ChangedRows.add after close")
            self.schema = self.schema or schema
            self.runs.append(run)
            self.ids.append(ids)
            self._changed.notify_all()

    def close(self) -> None:
        """Every run was added: `groups` ends after the last."""
        with self._changed:
            self._complete = True
            self._changed.notify_all()

    def abort(self) -> None:
        """The merge failed: `groups` raises `MergeAborted` instead of waiting for runs."""
        with self._changed:
            self._complete = self._aborted = True
            self._changed.notify_all()

    def _run(self, i: int) -> tuple[pa.Table | Path, np.ndarray] | None:
        """Run i, once it was added; None after the last run of a closed holder."""
        with self._changed:
            self._changed.wait_for(lambda: len(self.runs) > i or self._complete)
            if self._aborted:
                raise MergeAborted("the merge of this day failed; no offline rows written")
            return (self.runs[i], self.ids[i]) if i < len(self.runs) else None

    @property
    def num_rows(self) -> int:
        return sum(len(i) for i in self.ids)

    def id_array(self) -> pa.Array:
        """Every changed id (runs in order)."""
        values = np.concatenate(self.ids) if self.ids else np.zeros(0, np.int64)
        return pa.array(values, self.schema.field(0).type)

    def groups(self, rows: int) -> Iterator[pa.Table]:
        """The runs' rows one after the other, `rows` at a time (the last fewer; one empty
        table when there are none), each column one chunk, whatever batches the runs hold
        (so both engines' offline files are the same bytes). Memory: a group, plus one
        batch of the run being read. On a streaming holder it waits for each run as the
        merge adds it, and raises `MergeAborted` if the merge fails.

        Bucket order rather than id order: a k-way merge of the runs by id cost a sort and
        a gather of every vector, could only start once every bucket was merged, and
        nothing reads the offline file by id range (its Parquet statistics leave the id out).
        """
        pending: list[pa.RecordBatch] = []
        held, total = 0, 0
        with contextlib.ExitStack() as stack:
            for i in itertools.count():
                if (item := self._run(i)) is None:
                    break
                run, run_ids = item
                cursor, left = _RunCursor(run, stack), len(run_ids)
                total += left
                while left:
                    n = min(rows - held, left)
                    pending.extend(cursor.take(n))
                    held, left = held + n, left - n
                    if held == rows:
                        yield pa.Table.from_batches(pending, schema=self.schema).combine_chunks()
                        pending, held = [], 0
        if pending:
            yield pa.Table.from_batches(pending, schema=self.schema).combine_chunks()
        elif not total:
            yield self.schema.empty_table()


class _RunCursor:
    """Reads one sorted run front to back, `take(n)` rows at a time; holds at most one of
    its batches besides what it returns."""

    def __init__(self, run: pa.Table | Path, stack: contextlib.ExitStack):
        if isinstance(run, pa.Table):
            self._batches = iter(run.to_batches())
        else:
            source = stack.enter_context(pa.OSFile(str(run)))  # read, not mapped
            reader = pa.ipc.open_file(source)
            self._batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        self._left: pa.RecordBatch | None = None

    def take(self, n: int) -> list[pa.RecordBatch]:
        out = []
        while n > 0:
            if self._left is None or self._left.num_rows == 0:
                self._left = next(self._batches)
            piece = self._left.slice(0, n)
            self._left = self._left.slice(piece.num_rows)
            out.append(piece)
            n -= piece.num_rows
        return out


def write_changed_run(path: Path, changed: pa.Table, buckets: int) -> np.ndarray:
    """Writes one bucket's changed rows, sorted by id (`changed` is), as an Arrow IPC file
    for `ChangedRows`; returns their ids. Batches of 1/`buckets` of an offline row group:
    reading a group back then holds little beyond the group (batches of a whole row group
    fail `test_changed_rows_read_back_holds_a_few_groups_whatever_the_day`)."""
    rows = max(1, -(-VECTOR_PARQUET["row_group_size"] // buckets))
    with pa.ipc.new_file(str(path), changed.schema) as writer:
        for batch in changed.to_batches(max_chunksize=rows):
            writer.write_batch(batch)
    # A copy: a view would keep the bucket's whole id buffer alive.
    return np.array(changed[changed.schema.names[0]].to_numpy(), copy=True)


def read_offline_day(offline_dir: Path, day: dt.date) -> pa.Table:
    path = offline_day_path(offline_dir, day)
    if not path.is_file():
        raise MaterializeError(
            f"no offline rows for {day} at {path}: run `derm materialize` for that day first"
        )
    return pq.read_table(path)
