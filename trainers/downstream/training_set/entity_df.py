"""`point_in_time_embeddings`: a model owner's own rows -> their point-in-time embeddings.

The rows are a pandas entity dataframe in any order; the embeddings come back as dense
[n, D] float32 matrices in the rows' order, with a presence flag per row (README, "Train on
DERM embeddings"; DESIGN.md, "Point-in-time rule"; the paper's section 3.2 and appendix D:
the downstream models that consume them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from derm_features.core.ids import hash_ids_to_int64
from derm_features.core.spec import join_key
from derm_features.core.workdir import Workdir
from trainers.downstream.training_set.names import (
    TrainingSetError,
    embedding_keys,
    embedding_view,
)
from trainers.downstream.training_set.point_in_time_join import embedding_fetcher, entity_lookups
from trainers.downstream.training_set.vectors import view_dim


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
