"""Point-in-time-correct training sets: ad logs joined with DERM embeddings through Feast.

For every day of a range, the log rows of that day are joined with the chosen embedding
views by `FeatureStore.get_historical_features` and written as Parquet (or, with
``file_format="arrow"``, as Arrow IPC files) under ``<workdir>/training_sets/<name>/ds=<day>/``,
with a ``meta.json`` beside the partitions.

The point-in-time cut. An event on day t looks its embeddings up at the first microsecond
of day t, 00:00:00.000001 UTC (the ``event_timestamp`` Feast sees). Feast's as-of join
returns the newest value stamped at or before that instant and no older than the view's
ttl, so the event sees the pool of day t-1 (stamped at the end of day t-1: (t) 00:00 UTC
by the materializer, or 23:59:59.999999 of t-1) or an older one, never day t's own value,
which carries day t's impressions and labels. The extra microsecond keeps Feast's
inclusive ttl bound in step with the pool: an entity last seen on day L is served to
events of day L+91 (the pool of day L+90 still holds it) and to none of day L+92.

Missing embeddings. A new entity (no value before its first day) or an expired one gets
an all-zero vector and ``has_<view> = 0``; a present one gets ``has_<view> = 1``. The
indicator lets the downstream model tell "no embedding" from "an embedding near zero".

Why the Feast entity dataframe is deduplicated. All events of one day share one cut, so
the embedding of an event depends only on (entity id, day). For each chunk of
`days_per_fetch` days, Feast is asked once for the distinct (user, day) pairs (user views)
and once for the distinct (Pin, day) pairs (Pin views); the results are joined back to the
rows on (day, id). Labels and the log's own features never go through pandas: they stay
Arrow columns and are written as read, so list columns (recent Pins, content embeddings)
are never pandas object columns, and a day's rows are held in memory only until that day
is written (at most `WRITERS` + 1 days at a time); its vectors never are, whole.

Where the time goes (1M rows x 4 views, `benchmarks/training_set.py`). With derm's own
join (`asof_embeddings`) the join is a small share: encoding and writing the set's Parquet
is most of it, and grows with D (at D=256 the set is 4 GB of vectors). So the join carries
row numbers rather than vectors, each output column is gathered once straight from the
offline rows as read, a batch of rows at a time into buffers its writer reuses, and days
are written on `WRITERS` threads while the next is read.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from derm_features.core.arrays import fixed_size_list
from derm_features.core.files import data_files, parquet_files
from derm_features.core.ids import hash_ids_to_int64
from derm_features.core.spec import ENTITY_NAMES, DermSpec, feature_name, join_key, view_name
from derm_features.core.workdir import Workdir


def embedding_keys(spec: DermSpec) -> tuple[str, ...]:
    """Short names of the spec's embeddings, as the CLI spells them: ``<model>_<entity>``."""
    return tuple(f"{model}_{entity}" for model, entity, _ in spec.views())


# The default spec's four: ctr_user, ctr_pin, cvr_user, cvr_pin.
EMBEDDING_KEYS = embedding_keys(DermSpec())
TIMESTAMP = pa.timestamp("us", tz="UTC")
META_FILE = "meta.json"
# Days `build_training_set` writes at once (two: the 2-core machine it was tuned on).
WRITERS = 2
# File formats of a training set and their file names. Arrow IPC (Feather v2, uncompressed)
# stores a vector column as its float32 buffer, where Parquet encodes a repetition and a
# definition level per float: at D=256 the Parquet write is most of a build, and an Arrow
# file is read back memory-mapped without a copy (BENCHMARKS.md, issue 15 target 3).
FILE_FORMATS = {"parquet": ".parquet", "arrow": ".arrow"}


class TrainingSetError(ValueError):
    """Bad input to the training-set builder; the message names the flag, file or column."""


def check_file_format(value: str, flag: str) -> None:
    """Raises TrainingSetError naming `flag` unless `value` is one of FILE_FORMATS."""
    if value not in FILE_FORMATS:
        raise TrainingSetError(f"{flag} must be one of {', '.join(FILE_FORMATS)}, got '{value}'")


def embedding_view(key: str) -> tuple[str, str, str]:
    """``"ctr_user"`` -> ``("ctr", "user", "ctr_user_embedding")``.

    Checks the form ``<model>_<entity>`` only; whether the spec has the model is checked by
    `parse_embeddings` and `TrainingSetConfig` against their spec.
    """
    model, _, entity = key.rpartition("_")
    if not model or "_" in model or entity not in ENTITY_NAMES:
        raise TrainingSetError(
            f"unknown embedding '{key}': expected <model>_<entity>, e.g. {EMBEDDING_KEYS}"
        )
    return model, entity, view_name(model, entity)


def parse_embeddings(
    text: str, flag: str = "--embeddings", spec: DermSpec | None = None
) -> tuple[str, ...]:
    """``"none"`` -> (); ``"ctr_user,cvr_pin"`` -> those keys, in the spec's order."""
    known = embedding_keys(spec or DermSpec())
    text = (text or "").strip()
    if text.lower() == "none":
        return ()
    keys = [k.strip() for k in text.split(",") if k.strip()]
    if not keys:
        raise TrainingSetError(f"{flag} must be 'none' or a comma list of {known}")
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise TrainingSetError(
            f"{flag}: unknown embedding(s) {unknown}; use 'none' or a comma list of "
            f"{', '.join(known)}"
        )
    return tuple(k for k in known if k in keys)


def embedding_column(key: str) -> str:
    """The training-set column of an embedding: its Feast view name."""
    return embedding_view(key)[2]


def presence_column(key: str) -> str:
    """The 0/1 column saying whether the embedding was found (``has_<view>``)."""
    return f"has_{embedding_view(key)[2]}"


def lookup_time(day: dt.date) -> dt.datetime:
    """The point-in-time cut of every event on `day`: its first microsecond (UTC)."""
    return dt.datetime.combine(day, dt.time(0, 0, 0, 1), tzinfo=dt.UTC)


def embedding_matrix(
    values: pa.Array | pa.ChunkedArray, dim: int, column: str
) -> tuple[np.ndarray, np.ndarray]:
    """A (possibly null) list<float> column as ([n, dim] float32 with zeros, [n] bool present).

    Raises TrainingSetError naming `column` if a present vector is not of length `dim`.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    present = values.is_valid().to_numpy(zero_copy_only=False)
    if pa.types.is_fixed_size_list(values.type) and values.type.list_size == dim:
        # every row owns `dim` slots (a null row's are unspecified): one reshape, no lengths
        flat = values.values.slice(values.offset * dim, len(values) * dim)
        if flat.null_count:  # the slots of null rows
            flat = pc.fill_null(flat, 0.0)
        out = flat.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
        out[~present] = 0.0
        return out, present
    out = np.zeros((len(values), dim), dtype=np.float32)
    if present.any():
        kept = values.filter(pa.array(present))
        lengths = pc.list_value_length(kept).to_numpy(zero_copy_only=False)
        if (lengths != dim).any():
            bad = int(lengths[lengths != dim][0])
            raise TrainingSetError(
                f"column '{column}': an embedding has length {bad}, expected {dim} "
                "(every vector of a view must share the view's D)"
            )
        flat = pc.list_flatten(kept).to_numpy(zero_copy_only=False).astype(np.float32)
        out[present] = flat.reshape(-1, dim)
    return out, present


def view_dim(workdir: Workdir, key: str) -> int:
    """D of an embedding view: that of its newest offline rows (after a model switch with
    another D, events before the switch hold the old D and are refused by name)."""
    model, entity, view = embedding_view(key)
    source = workdir.offline(model, entity)
    files = parquet_files(source)[::-1] if source.is_dir() else []
    for file in files:
        column = pq.read_table(file, columns=["embedding"]).column("embedding")
        valid = column.drop_null()
        if len(valid):
            kind = valid.type
            if pa.types.is_fixed_size_list(kind):
                return kind.list_size
            return int(pc.list_value_length(valid.chunk(0)).to_numpy()[0])
    raise TrainingSetError(
        f"view '{view}' has no embeddings at {source}: run `derm materialize` for "
        f"--model {model} --entity {entity} first, or drop '{key}' from --embeddings"
    )


@dataclass(frozen=True)
class TrainingSetConfig:
    """One training set: the log days [start, end] joined with `embeddings` (keys)."""

    logs: Path
    workdir: Workdir | Path  # a Workdir carries its spec and Redis address
    start: dt.date
    end: dt.date
    embeddings: tuple[str, ...] | None = None  # None: every embedding of the spec
    name: str = ""
    # Days whose (entity, day) pairs go to Feast in one call: fewer calls (each one scans
    # the offline sources) against the memory of the pairs' embeddings.
    days_per_fetch: int = 7
    file_format: str = "parquet"  # one of FILE_FORMATS
    # Rows of a file's record batches (Parquet row groups). A writer gathers a batch's
    # vectors into buffers it reuses, just before writing them: a day's vectors are never
    # held whole (at D=256, 1M rows x 4 views is 4 GB), nor taken fresh from the OS (and
    # page-faulted in) day after day (BENCHMARKS.md, issue 15 target 3).
    batch_rows: int = 65_536

    @property
    def spec(self) -> DermSpec:
        return Workdir.resolve(self.workdir).spec

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise TrainingSetError(f"the end day {self.end} is before the start day {self.start}")
        check_file_format(self.file_format, "training-set format")
        for name in ("batch_rows", "days_per_fetch"):
            if getattr(self, name) < 1:
                raise TrainingSetError(f"{name} must be at least 1, got {getattr(self, name)}")
        known = embedding_keys(self.spec)
        if self.embeddings is None:
            object.__setattr__(self, "embeddings", known)
        for key in self.embeddings:
            embedding_view(key)
            if key not in known:
                raise TrainingSetError(f"unknown embedding '{key}': expected one of {known}")

    @property
    def set_name(self) -> str:
        return self.name or (
            f"{self.start.isoformat()}_{self.end.isoformat()}_{'-'.join(self.embeddings) or 'none'}"
        )

    def output_dir(self) -> Path:
        return Workdir.resolve(self.workdir).training_set(self.set_name)


@dataclass(frozen=True)
class TrainingSet:
    """A written training set: where it is and what its meta.json says."""

    path: Path
    meta: dict = field(repr=False)

    @property
    def embeddings(self) -> tuple[str, ...]:
        return tuple(self.meta["embeddings"])

    def dim(self, key: str) -> int:
        return int(self.meta["embeddings"][key]["dim"])

    @property
    def file_format(self) -> str:
        """``parquet`` or ``arrow`` (sets written before the format was recorded: Parquet)."""
        return self.meta.get("format", "parquet")

    def files(self) -> list[Path]:
        """The set's data files, by day."""
        return data_files(self.path, FILE_FORMATS[self.file_format])

    def dataset(self) -> pads.Dataset:
        """The set's files as one dataset, memory-mapped: an Arrow set's columns are read
        without a copy (a set is only ever replaced whole, never truncated in place)."""
        files = [str(p) for p in self.files()]
        mapped = pafs.LocalFileSystem(use_mmap=True)
        return pads.dataset(files, format=self.file_format, filesystem=mapped)

    def read(self, columns: list[str] | None = None) -> pa.Table:
        return self.dataset().to_table(columns=columns)


def _parquet_options(schema: pa.Schema) -> dict:
    """Vectors neither compress (snappy saves ~2 % on float32) nor dictionary-encode, so
    both only cost time on the embedding columns; the log's own columns keep the defaults."""
    vectors = [f.name for f in schema if pa.types.is_fixed_size_list(f.type)]
    others = [name for name in schema.names if name not in vectors]
    return {
        "compression": {name: "none" if name in vectors else "snappy" for name in schema.names},
        "use_dictionary": others,
        "write_statistics": others,
    }


class DayFile:
    """One day of a training set written batch by batch as `path`: a Parquet file (a row
    group per batch) or an uncompressed Arrow IPC file (Feather v2, a record batch per
    batch). Opened on the first batch, whose schema every later one must share; `close`
    finishes the file."""

    def __init__(self, path: Path, file_format: str) -> None:
        self.path, self.file_format, self._writer = path, file_format, None

    def write(self, table: pa.Table) -> None:
        if self._writer is None:
            if self.file_format == "arrow":
                self._writer = pa.ipc.new_file(str(self.path), table.schema)
            else:
                options = _parquet_options(table.schema)
                self._writer = pq.ParquetWriter(self.path, table.schema, **options)
        self._writer.write_table(table)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def open_training_set(path: Path) -> TrainingSet:
    meta_path = Path(path) / META_FILE
    if not meta_path.is_file():
        raise TrainingSetError(f"{path} is not a training set: {META_FILE} is missing")
    return TrainingSet(Path(path), json.loads(meta_path.read_text()))


def cut_micros(day: dt.date) -> int:
    """`lookup_time(day)` as microseconds since the epoch."""
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (lookup_time(day) - epoch) // dt.timedelta(microseconds=1)


@dataclass(frozen=True)
class Lookup:
    """Where the embeddings of distinct (day, id) pairs are, pairs sorted by day then id.

    Per key, the pairs point into a matrix of vectors rather than holding copies: with
    derm's own join that matrix is the view's offline rows as read (no [P, D] copy of the
    pairs' vectors is ever made); with Feast's it is Feast's result, one row per pair. The
    training-set rows are then gathered from it once, straight into their output column.
    """

    cuts: np.ndarray  # [P] int64 microseconds (lookup_time of the pair's day)
    ids: np.ndarray  # [P] int64
    vectors: dict[str, np.ndarray]  # key -> [M, D] float32 the pairs point into
    rows: dict[str, np.ndarray]  # key -> [P] int64, each pair's row of vectors[key]; -1: none

    # day -> (its row ids when the pairs were made, their pair indices): the day's rows
    # read again in the same order need no search
    known: dict[dt.date, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def rows_of(self, day: dt.date, row_ids: np.ndarray) -> np.ndarray:
        """Pair index of each (day, row id); every row id must be among the day's pairs."""
        ids, pairs = self.known.get(day, (None, None))
        if ids is not None and np.array_equal(ids, row_ids):
            return pairs
        lo, hi = np.searchsorted(self.cuts, [cut_micros(day), cut_micros(day) + 1])
        return lo + np.searchsorted(self.ids[lo:hi], row_ids)

    def gather(
        self, key: str, pairs: np.ndarray, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The vectors of `pairs` ([n] pair indices): ([n, D] float32, zeros where there is
        none; [n] bool, whether there is one). One pass over the output bytes.

        `out`: an [n, D] float32 C-contiguous matrix to write them into (and return), e.g.
        one of `OutputBuffers`; None allocates one.
        """
        source, rows = self.vectors[key], self.rows[key][pairs]
        present = rows >= 0
        if out is None:
            out = np.empty((len(pairs), source.shape[1]), np.float32)
        if not len(source):  # nothing to point into: every row is absent
            out[:] = 0.0
            return out, present
        # mode="clip": the default buffers `out` (2x slower); -1 reads row 0, zeroed just after
        np.take(source, rows, axis=0, out=out, mode="clip")
        if not present.all():
            out[~present] = 0.0
        return out, present


class OutputBuffers:
    """Float32 matrices one writer gathers a batch's vectors into, batch after batch.

    Memory freshly taken from the OS is page-faulted in on first write; a buffer kept
    from batch to batch pays that once (`TrainingSetConfig.batch_rows`). Each grows to the
    largest batch.
    """

    def __init__(self) -> None:
        self._matrices: dict[str, np.ndarray] = {}

    def matrix(self, key: str, rows: int, dim: int) -> np.ndarray:
        """An [rows, D] float32 C-contiguous view of `key`'s buffer (contents undefined)."""
        held = self._matrices.get(key)
        if held is None or held.shape[0] < rows or held.shape[1] != dim:
            held = self._matrices[key] = np.empty((rows, dim), np.float32)
        return held[:rows]


def fetch_embeddings(
    store,
    entity: str,
    keys: tuple[str, ...],
    dims: dict[str, int],
    cuts: np.ndarray,
    ids: np.ndarray,
) -> Lookup:
    """One get_historical_features for the distinct (cut, id) pairs, sorted by cut then id.

    Feast keeps neither the order of the entity rows nor (in every store) their dtype, so
    the result is re-keyed on (cut, id) and checked to hold exactly one row per pair.
    """
    import pandas as pd

    key_column = join_key(entity)
    entity_df = pd.DataFrame(
        {key_column: ids, "event_timestamp": pd.to_datetime(cuts, unit="us", utc=True)}
    )
    refs = {
        k: (embedding_view(k)[2], feature_name(*embedding_view(k)[:2], "embedding")) for k in keys
    }
    features = [f"{view}:{feature}" for view, feature in refs.values()]
    result = store.get_historical_features(
        entity_df=entity_df, features=features, full_feature_names=True
    ).to_arrow()
    found_ids = result.column(key_column).to_numpy().astype(np.int64)
    found_cuts = pc.cast(result.column("event_timestamp"), TIMESTAMP).cast(pa.int64()).to_numpy()
    order = np.lexsort((found_ids, found_cuts))
    if not (np.array_equal(found_ids[order], ids) and np.array_equal(found_cuts[order], cuts)):
        raise RuntimeError(
            f"Feast returned {len(found_ids)} rows for {len(ids)} distinct ({entity}, day) "
            "pairs; expected exactly one row per pair"
        )
    take = pa.array(order)
    vectors, rows = {}, {}
    for k in keys:
        column = "__".join(refs[k])  # Feast's full name: <view>__<feature>
        vectors[k], present = embedding_matrix(result.column(column).take(take), dims[k], column)
        rows[k] = np.where(present, np.arange(len(ids)), -1)
    return Lookup(cuts, ids, vectors, rows)


def vector_lengths(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """[S] int64: the length of each vector of a list (or fixed-size list) column; -1 for a
    null one (a model switch's tombstone)."""
    return pc.list_value_length(values).fill_null(-1).to_numpy().astype(np.int64)


def chunk_matrix(chunk: pa.Array, dim: int) -> np.ndarray:
    """[n, D] float32 of one chunk of vectors: a view of the Arrow buffer when every row
    holds `dim` values; otherwise a copy whose null and other-length rows are zeros."""
    ok = vector_lengths(chunk) == dim
    if ok.all():  # flatten: the rows' values back to back, honouring the chunk's offset
        return chunk.flatten().to_numpy().reshape(-1, dim)
    matrix = np.zeros((len(chunk), dim), np.float32)
    if ok.any():
        kept = chunk.filter(pa.array(ok)).flatten()
        matrix[ok] = kept.to_numpy(zero_copy_only=False).reshape(-1, dim)
    return matrix


def used_vectors(values: pa.ChunkedArray, used: np.ndarray, dim: int) -> np.ndarray:
    """[U, D] float32: the vectors of rows `used` ([U] sorted row numbers of `values`),
    copied chunk by chunk: only the rows some event sees are kept, never the whole source
    (nor one concatenated copy of it)."""
    out = np.empty((len(used), dim), np.float32)
    start = 0
    for chunk in values.chunks:
        lo, hi = np.searchsorted(used, [start, start + len(chunk)])
        if hi > lo:
            rows = used[lo:hi] - start  # in range; "clip" as the default mode buffers `out`
            np.take(chunk_matrix(chunk, dim), rows, axis=0, out=out[lo:hi], mode="clip")
        start += len(chunk)
    return out


def asof_embeddings(
    workdir: Workdir,
    entity: str,
    keys: tuple[str, ...],
    dims: dict[str, int],
    cuts: np.ndarray,
    ids: np.ndarray,
) -> Lookup:
    """Feast's point-in-time join computed by DuckDB straight over the views' Parquet
    sources, for the distinct (cut, id) pairs sorted by cut then id (as `fetch_embeddings`).

    Per view, the offline rows are read once (id, stamp, vector) and one ``ASOF LEFT JOIN``
    finds, for each pair, the row of its id with the latest ``event_timestamp <= cut``, kept
    when ``cut <= event_timestamp + ttl`` (Feast's inclusive ttl, `DermSpec.feast_ttl`); a
    null row (a model switch's tombstone) is "absent" as in Feast. The join carries only
    row numbers, never vectors; the vectors of the rows it found are then copied once
    (`used_vectors`) and the pairs point into them (`Lookup`). Equal to
    `get_historical_features` row for row (tested), without Feast's per-call planning: the
    fast path for the DuckDB/file offline stores.

    Raises TrainingSetError naming the view if a pair would see a vector whose length is not
    the view's D (`dims`).
    """
    import duckdb

    if not len(ids):
        return Lookup(cuts, ids, {k: np.zeros((0, dims[k]), np.float32) for k in keys},
                      {k: np.zeros(0, np.int64) for k in keys})  # fmt: skip
    ttl_us = int(workdir.spec.feast_ttl.total_seconds() * 1_000_000)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    pairs = pa.table(
        {
            "i": pa.array(np.arange(len(ids), dtype=np.int64)),
            "id": pa.array(ids, pa.int64()),
            "cut": pa.array(cuts, pa.int64()),
        }
    )
    con.register("pairs", pairs)
    # Only rows stamped in [first cut - ttl, last cut] can be seen (an older row is expired
    # for every pair, so dropping it changes no answer); DuckDB skips the rest by the files'
    # statistics. Stamps are compared as epoch microseconds (naive ones count as UTC, as in
    # Feast).
    window = f"epoch_us(event_timestamp) BETWEEN {int(cuts.min()) - ttl_us} AND {int(cuts.max())}"
    key_column = join_key(entity)
    vectors, rows = {}, {}
    for k in keys:
        model, _, view = embedding_view(k)
        files = parquet_files(workdir.offline(model, entity))
        rows[k] = np.full(len(ids), -1, np.int64)
        if not files:
            vectors[k] = np.zeros((0, dims[k]), np.float32)
            continue
        source = con.sql(
            f'SELECT "{key_column}"::BIGINT AS id, epoch_us(event_timestamp) AS ts, embedding '
            f"FROM read_parquet({[str(p) for p in files]}) WHERE {window}"
        ).to_arrow_table()
        con.register(
            "source",
            source.select(["id", "ts"]).append_column(
                "r", pa.array(np.arange(source.num_rows, dtype=np.int64))
            ),
        )
        found = con.sql(
            f"""
            SELECT p.i, CASE WHEN p.cut <= s.ts + {ttl_us} THEN s.r END AS r
            FROM pairs p ASOF LEFT JOIN source s ON p.id = s.id AND p.cut >= s.ts
            """
        ).to_arrow_table()
        con.unregister("source")
        rows[k][found.column("i").to_numpy()] = found.column("r").fill_null(-1).to_numpy()
        hit = np.flatnonzero(rows[k] >= 0)
        seen = vector_lengths(source.column("embedding"))[rows[k][hit]]  # -1: a null vector
        wrong = seen[(seen >= 0) & (seen != dims[k])]
        if len(wrong):
            raise TrainingSetError(
                f"view '{view}': an embedding a training event would see has length "
                f"{int(wrong[0])}, expected {dims[k]} (every vector of a view must share the "
                "view's D)"
            )
        rows[k][hit[seen < 0]] = -1  # a tombstone hides the older values: absent
        hit = hit[seen >= 0]
        # keep only the source rows some pair sees (a mask rather than a sort), and point the
        # pairs at them, renumbered in order
        used = np.zeros(source.num_rows, bool)
        used[rows[k][hit]] = True
        rows[k][hit] = (np.cumsum(used) - 1)[rows[k][hit]]
        vectors[k] = used_vectors(source.column("embedding"), np.flatnonzero(used), dims[k])
    con.close()
    return Lookup(cuts, ids, vectors, rows)


def distinct_pairs(
    ids_by_day: dict[dt.date, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, dict[dt.date, tuple[np.ndarray, np.ndarray]]]:
    """(cuts, ids) of the distinct (day, id) pairs, sorted by day then id, and per day
    (its ids as given, the pair index of each): what `Lookup.rows_of` would compute."""
    cuts, uniques, known, start = [], [], {}, 0
    for day in sorted(ids_by_day):
        unique, inverse = np.unique(ids_by_day[day], return_inverse=True)
        cuts.append(np.full(len(unique), cut_micros(day), np.int64))
        uniques.append(unique.astype(np.int64))
        known[day] = (ids_by_day[day], start + inverse)
        start += len(unique)
    return np.concatenate(cuts), np.concatenate(uniques), known


def join_batch(
    rows: pa.Table,
    day: dt.date,
    lookups: dict[str, Lookup],
    pairs: dict[str, np.ndarray],
    buffers: OutputBuffers,
) -> pa.Table:
    """Log rows of `day` plus, per embedding key, its column and has_ indicator.

    pairs: entity -> [n] each row's pair index in `lookups[entity]` (`Lookup.rows_of`).
    The vector columns wrap `buffers`' matrices (valid until they are reused).
    """
    columns = {"event_timestamp": pa.array(np.full(rows.num_rows, cut_micros(day))).cast(TIMESTAMP)}
    for entity, lookup in lookups.items():
        for k in lookup.rows:
            dim = lookup.vectors[k].shape[1]
            out = buffers.matrix(k, rows.num_rows, dim)
            matrix, present = lookup.gather(k, pairs[entity], out)
            columns[embedding_column(k)] = fixed_size_list(matrix)
            columns[presence_column(k)] = pa.array(present.astype(np.int8))
    for name, values in columns.items():
        rows = rows.append_column(name, values)
    return rows


def day_pairs(rows: pa.Table, day: dt.date, lookups: dict[str, Lookup]) -> dict[str, np.ndarray]:
    """entity -> [n] the pair index of each of the day's rows in that entity's `Lookup`."""
    return {
        entity: lookup.rows_of(day, hash_ids_to_int64(rows.column(join_key(entity))))
        for entity, lookup in lookups.items()
    }


def join_and_write_day(
    rows: pa.Table,
    day: dt.date,
    lookups: dict[str, Lookup],
    path: Path,
    file_format: str,
    buffers: OutputBuffers,
    batch_rows: int,
) -> None:
    """One day of a training set joined and written `batch_rows` rows at a time, each
    batch's vectors gathered into `buffers` just before it is written
    (`TrainingSetConfig.batch_rows`)."""
    pairs = day_pairs(rows, day, lookups)
    # One chunk per column, once for the day: the log's columns arrive in a chunk per file
    # or row group, and a dictionary column with a dictionary per file, where an Arrow IPC
    # file wants one record batch per batch and one dictionary per column.
    rows = rows.combine_chunks()
    day_file = DayFile(path, file_format)
    try:
        for lo in range(0, rows.num_rows, batch_rows):
            batch = {entity: index[lo : lo + batch_rows] for entity, index in pairs.items()}
            day_file.write(join_batch(rows.slice(lo, batch_rows), day, lookups, batch, buffers))
    finally:
        day_file.close()


BACKENDS = ("auto", "duckdb", "feast")


def embedding_fetcher(workdir: Workdir, store=None, backend: str = "auto") -> Callable:
    """How the point-in-time join is computed: `asof_embeddings` (``duckdb``: straight over
    the Parquet sources) or Feast's `get_historical_features` (``feast``, through `store`,
    default the work directory's). ``auto``: duckdb when the Feast config's offline store
    reads those files (duckdb or file) and no `store` is given, else Feast (a Spark
    offline store, or a team's own store object).

    Returns fetch(entity, keys, dims, cuts, ids) -> Lookup. Raises TrainingSetError for an
    unknown backend.
    """
    from derm_features.feast.repo import feature_store, offline_store_type

    if backend not in BACKENDS:
        raise TrainingSetError(f"backend must be one of {', '.join(BACKENDS)}, got '{backend}'")
    if backend == "auto":
        local = offline_store_type() in ("duckdb", "file")
        backend = "duckdb" if store is None and local else "feast"
    if backend == "duckdb":
        return lambda *args: asof_embeddings(workdir, *args)
    store = store if store is not None else feature_store(workdir)
    return lambda *args: fetch_embeddings(store, *args)


def entity_lookups(
    fetch: Callable, keys, dims, ids_by_day_of: Callable[[str], dict[dt.date, np.ndarray]]
) -> dict[str, Lookup]:
    """entity -> its `Lookup`, for each entity kind among `keys`: one `fetch` over the
    distinct (day, id) pairs of `ids_by_day_of(entity)` (day -> int64 ids; days without
    ids are left out)."""
    lookups = {}
    for entity in ENTITY_NAMES:
        entity_keys = tuple(k for k in keys if embedding_view(k)[1] == entity)
        if entity_keys:
            ids_by_day = {d: v for d, v in ids_by_day_of(entity).items() if len(v)}
            cuts, ids, known = distinct_pairs(ids_by_day)
            lookups[entity] = replace(fetch(entity, entity_keys, dims, cuts, ids), known=known)
    return lookups


def fetch_chunk(log, fetch: Callable, keys, dims, days: list[dt.date]) -> dict[str, Lookup]:
    """The embeddings every event of `days` needs: one join per entity kind."""

    def ids_by_day(entity: str) -> dict[dt.date, np.ndarray]:
        column = join_key(entity)
        return {
            day: hash_ids_to_int64(log.scanner(day, day, columns=[column]).to_table()[column])
            for day in days
        }

    return entity_lookups(fetch, keys, dims, ids_by_day)


@dataclass(frozen=True)
class EmbeddingFeatures:
    """Point-in-time DERM embeddings of n rows of a model owner's entity dataframe.

    vectors[key]: [n, D] float32, the row's embedding (zeros where it had none yet or it had
    expired); present[key]: [n] bool, whether it was found. Keys as `embedding_keys`.
    """

    vectors: dict[str, np.ndarray]
    present: dict[str, np.ndarray]


def point_in_time_embeddings(
    entity_df,
    embeddings: tuple[str, ...] | list[str] | None = None,
    workdir: Workdir | str | Path | None = None,
) -> EmbeddingFeatures:
    """The embeddings each row of `entity_df` may use: Feast's point-in-time join, as dense
    matrices in the rows' own order.

    entity_df: a pandas DataFrame with ``event_timestamp`` (UTC; naive times are read as UTC,
    as Feast does) and the join key of every entity asked for (``user_id``, ``pin_id``):
    integer ids, or string ids hashed as the upstream trainer hashes them
    (`derm_features.core.ids.hash_ids_to_int64`). embeddings: keys such as ``ctr_user``
    (default: every embedding of the work directory's spec). An event on day t sees the
    value derm published at the end of day t-1 (DESIGN.md, the point-in-time rule): one
    join per entity over the distinct (day, id) pairs (`embedding_fetcher`).

    Raises TrainingSetError naming a missing column, a null id or timestamp, or an
    unknown key.

    Example::

        rows = pd.DataFrame({"user_id": [12, 34], "event_timestamp": pd.to_datetime(
            ["2026-01-15 10:00", "2026-01-16 09:30"], utc=True)})
        emb = point_in_time_embeddings(rows, ["ctr_user"], workdir="/data/derm")
        emb.vectors["ctr_user"].shape, emb.present["ctr_user"]   # (2, D), [True, False]
    """
    import pandas as pd

    wd = Workdir.resolve(workdir)
    known = embedding_keys(wd.spec)
    keys = tuple(embeddings) if embeddings is not None else known
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise TrainingSetError(f"unknown embedding(s) {unknown}: expected some of {known}")
    n = len(entity_df)
    needed = ["event_timestamp"] + sorted({join_key(embedding_view(k)[1]) for k in keys})
    for column in needed:
        if column not in entity_df.columns:
            raise TrainingSetError(f"entity_df has no column '{column}' (needed for {keys})")
        if entity_df[column].isna().any():
            row = int(np.flatnonzero(entity_df[column].isna().to_numpy())[0])
            raise TrainingSetError(f"entity_df column '{column}' row {row}: null")
    stamps = pd.to_datetime(entity_df["event_timestamp"])
    stamps = stamps.dt.tz_localize("UTC") if stamps.dt.tz is None else stamps.dt.tz_convert("UTC")
    row_days = stamps.dt.date.to_numpy()
    dims = {k: view_dim(wd, k) for k in keys}
    days = sorted(set(row_days))
    ids = {  # entity -> the rows' int64 ids
        e: hash_ids_to_int64(pa.array(entity_df[join_key(e)].to_numpy()))
        for e in {embedding_view(k)[1] for k in keys}
    }
    lookups = (
        entity_lookups(
            embedding_fetcher(wd), keys, dims, lambda e: {d: ids[e][row_days == d] for d in days}
        )
        if n
        else {}
    )
    vectors, present = {}, {}
    for entity, lookup in lookups.items():
        index = np.empty(n, np.int64)
        for day in days:
            rows = np.flatnonzero(row_days == day)
            index[rows] = lookup.rows_of(day, ids[entity][rows])
        for k in lookup.rows:
            vectors[k], present[k] = lookup.gather(k, index)
    for k in keys:  # an empty dataframe: empty matrices of the right width
        vectors.setdefault(k, np.zeros((0, dims[k]), np.float32))
        present.setdefault(k, np.zeros(0, bool))
    return EmbeddingFeatures(vectors, present)


def build_training_set(
    cfg: TrainingSetConfig,
    store=None,
    progress: Callable | None = None,
    backend: str = "auto",
) -> TrainingSet:
    """Builds (or rebuilds, atomically) the training set of `cfg`; returns it.

    `store` is a feast.FeatureStore to join through (default: none, see `embedding_fetcher`
    for `backend`). `progress` wraps the iterator over the days that have rows (e.g.
    tqdm; a day counts once it is joined, up to `WRITERS` days before it is written); None
    shows nothing. Memory: the offline vectors some event of a chunk sees, up to
    `WRITERS` + 1 days of log rows, and per writer one batch of vectors (`batch_rows` x D
    x 4 bytes per embedding).
    """
    from derm_features.core.atomic import atomic_dir, write_text_atomic
    from derm_features.core.logs import open_log

    workdir = Workdir.resolve(cfg.workdir)
    log = open_log(cfg.logs, labels=cfg.spec.labels)
    dims = {k: view_dim(workdir, k) for k in cfg.embeddings}
    fetch = embedding_fetcher(workdir, store, backend) if cfg.embeddings else None
    days = [
        day
        for day in (cfg.start + dt.timedelta(days=i) for i in range((cfg.end - cfg.start).days + 1))
        if log.scanner(day, day, columns=["ts"]).count_rows()
    ]
    if not days:
        raise TrainingSetError(f"{cfg.logs} holds no impressions between {cfg.start} and {cfg.end}")
    rows_written = 0
    written_days = []
    # Gathering the vectors and encoding and writing them is most of the work: it runs on
    # WRITERS threads (numpy's take and pyarrow's writers release the GIL) while the next
    # day's log rows are read. Each writer thread owns one OutputBuffers.
    free = [OutputBuffers() for _ in range(WRITERS)]
    with atomic_dir(cfg.output_dir()) as tmp, ThreadPoolExecutor(WRITERS) as writers:
        pending: deque[tuple[Future, OutputBuffers]] = deque()
        for i, day in enumerate(progress(days) if progress else days):
            if i % cfg.days_per_fetch == 0:  # the first day of a chunk: its embeddings
                chunk = days[i : i + cfg.days_per_fetch]
                lookups = fetch_chunk(log, fetch, cfg.embeddings, dims, chunk) if fetch else {}
            rows = log.scanner(day, day).to_table()
            part = tmp / f"ds={day.isoformat()}"
            part.mkdir()
            if len(pending) == WRITERS:
                done, buffers = pending.popleft()
                done.result()
                free.append(buffers)
            path = part / f"part-0{FILE_FORMATS[cfg.file_format]}"
            buffers = free.pop()
            done = writers.submit(
                join_and_write_day,
                *(rows, day, lookups, path, cfg.file_format, buffers, cfg.batch_rows),
            )
            pending.append((done, buffers))
            rows_written += rows.num_rows
            written_days.append(day.isoformat())
            del rows  # the writer holds the day until it is written
        while pending:
            pending.popleft()[0].result()
        meta = {
            "logs": str(Path(cfg.logs).resolve()),
            "schema": log.schema.to_dict(),
            "start": cfg.start.isoformat(),
            "end": cfg.end.isoformat(),
            "days": written_days,
            "rows": rows_written,
            "format": cfg.file_format,
            "embeddings": {
                k: {"view": embedding_column(k), "dim": dims[k], "has": presence_column(k)}
                for k in cfg.embeddings
            },
            "point_in_time": "an event on day t sees values stamped at or before "
            "00:00:00.000001 UTC of day t (and within the view's ttl); missing -> zeros "
            "and has_<view> = 0",
        }
        write_text_atomic(json.dumps(meta, indent=2), tmp / META_FILE)
    return open_training_set(cfg.output_dir())
