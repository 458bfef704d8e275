"""The point-in-time join of distinct (day, id) pairs with DERM embedding views, two ways.

The two agree row for row (tested): `asof_embeddings`, DuckDB's ``ASOF JOIN`` straight over
the views' offline Parquet (the fast path for the DuckDB and file offline stores), and
`fetch_embeddings`, Feast's `get_historical_features` through any offline store (Spark, a
team's own). `embedding_fetcher` picks one; `entity_lookups` runs it once per entity kind.
Each returns a `Lookup`. DESIGN.md, "Point-in-time rule" and "Where things scale" (offline
retrieval).

Why the Feast entity dataframe is deduplicated. All events of one day share one cut, so
the embedding of an event depends only on (entity id, day). For each chunk of
`days_per_fetch` days, Feast is asked once for the distinct (user, day) pairs (user views)
and once for the distinct (Pin, day) pairs (Pin views); the results are joined back to the
rows on (day, id).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from derm_features.core.files import parquet_files
from derm_features.core.spec import ENTITY_NAMES, feature_name, join_key
from derm_features.core.workdir import Workdir
from trainers.downstream.training_set.lookup import Lookup, distinct_pairs
from trainers.downstream.training_set.names import TIMESTAMP, TrainingSetError, embedding_view
from trainers.downstream.training_set.vectors import (
    embedding_matrix,
    used_vectors,
    vector_lengths,
)


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
