"""The offline day file Feast reads, and the changed rows it is written from.

    offline/<model>_<entity>_embedding/day=<day>.parquet   day t's changed rows

An engine hands each bucket's changed rows, sorted by id, to `ChangedRows` as it merges;
`write_offline_day` writes them a row group at a time, bucket after bucket, while later
buckets merge."""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from derm_features.core.atomic import atomic_file
from materialize.kernel import TIMESTAMP, day_start
from materialize.storage.common import VECTOR_PARQUET, MaterializeError


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
