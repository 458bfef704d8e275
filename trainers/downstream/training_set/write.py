"""One day of a training set joined and written, batch by batch.

Each batch of the day's log rows gets, per embedding, its vector column and ``has_<view>``
flag (`join_batch`), gathered from the `Lookup`s into buffers the writer reuses
(`OutputBuffers`), and goes to the day's one file (`DayFile`: Parquet with uncompressed
vectors, or Arrow IPC): the rows the paper's downstream models (section 3.2) train on. Why
batches, reused buffers and these options: BENCHMARKS.md, issue 15 target 3. Shapes: a batch
of n rows gives [n, D] float32 vectors per embedding.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from derm_features.core.arrays import fixed_size_list
from derm_features.core.ids import hash_ids_to_int64
from derm_features.core.spec import join_key
from trainers.downstream.training_set.lookup import Lookup
from trainers.downstream.training_set.names import (
    TIMESTAMP,
    cut_micros,
    embedding_column,
    presence_column,
)


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
