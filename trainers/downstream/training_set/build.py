"""`build_training_set`: a whole training set from a log, what `derm downstream` runs.

For every day of a range, the log rows of that day are joined with the chosen embedding
views by `FeatureStore.get_historical_features` and written as Parquet (or, with
``file_format="arrow"``, as Arrow IPC files) under ``<workdir>/training_sets/<name>/ds=<day>/``,
with a ``meta.json`` beside the partitions: the training data of the paper's downstream CTR
and CVR models (section 3.2), cut by DESIGN.md's "Point-in-time rule".

Embeddings are fetched once for each chunk of `days_per_fetch` days, over the distinct
(entity, day) pairs of the chunk (`fetch_chunk`; `point_in_time_join` says why). Labels and
the log's own features never go through pandas: they stay Arrow columns and are written as
read, so list columns (recent Pins, content embeddings) are never pandas object columns, and
a day's rows are held in memory only until that day is written (at most `WRITERS` + 1 days
at a time); its vectors never are, whole.

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
from pathlib import Path

import numpy as np

from derm_features.core.ids import hash_ids_to_int64
from derm_features.core.spec import join_key
from derm_features.core.workdir import Workdir
from trainers.downstream.training_set.config import (
    TrainingSet,
    TrainingSetConfig,
    open_training_set,
)
from trainers.downstream.training_set.lookup import Lookup
from trainers.downstream.training_set.names import (
    FILE_FORMATS,
    META_FILE,
    TrainingSetError,
    embedding_column,
    presence_column,
)
from trainers.downstream.training_set.point_in_time_join import embedding_fetcher, entity_lookups
from trainers.downstream.training_set.vectors import view_dim
from trainers.downstream.training_set.write import OutputBuffers, join_and_write_day

# Days `build_training_set` writes at once (two: the 2-core machine it was tuned on).
WRITERS = 2


def fetch_chunk(log, fetch: Callable, keys, dims, days: list[dt.date]) -> dict[str, Lookup]:
    """The embeddings every event of `days` needs: one join per entity kind."""

    def ids_by_day(entity: str) -> dict[dt.date, np.ndarray]:
        column = join_key(entity)
        return {
            day: hash_ids_to_int64(log.scanner(day, day, columns=[column]).to_table()[column])
            for day in days
        }

    return entity_lookups(fetch, keys, dims, ids_by_day)


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
