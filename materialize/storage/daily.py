"""Day t's tower outputs: checked before any work and split by bucket.

    daily/<model>/<entity>/ds=<day>/*.parquet     (`scan_daily`, then `split_daily`)

A day's tower outputs are read twice, never whole: `scan_daily` reads the files' footers
and `model_version` columns (the rules that need no vectors, the model versions, D and
the row count, which decide the bucket count), then `split_daily` streams every row,
`_CHECK_ROWS` at a time, through the row rules and, for an engine that merges buckets in
this process, into one spill file per bucket (`SplitDay`, read back a bucket at a time by
the local engine). Both raise `MaterializeError` naming every bad file before any pool
file is written; memory stays near one block of rows."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from derm_features.core.arrays import fixed_size_list
from derm_features.core.files import parquet_files
from derm_features.core.provenance import ModelVersion, compatible
from materialize.kernel import TIMESTAMP, row_norms
from materialize.storage.common import MaterializeError, bucket_of, contiguous_table

DAILY_COLUMNS = ("ts", "embedding", "model_version")


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
        table = contiguous_table(
            batches, schema, rows, lambda row: f"{path}: holds {row} rows, {rows} were written"
        )
    if table is None:  # the spill holds validated rows only
        raise ValueError(f"{path}: a null vector row")
    return table


def _check_compatible(versions: list[str], where: str) -> None:
    for other in versions[1:]:
        if not compatible(versions[0], other):
            raise MaterializeError(
                f"{where} mix incompatible model versions '{versions[0]}' and '{other}' "
                "(different lineage or D); they cannot be aggregated together"
            )
