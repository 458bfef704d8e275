"""Point-in-time-correct training sets: ad logs joined with DERM embeddings through Feast.

For every day of a range, the log rows of that day are joined point-in-time with the chosen
embedding views (by default one DuckDB ASOF join per view over the offline Parquet sources,
`point_in_time_join`; or Feast's `FeatureStore.get_historical_features`) and written as
Parquet (or, with ``file_format="arrow"``, as Arrow IPC files) under
``<workdir>/training_sets/<name>/ds=<day>/``, with a ``meta.json`` beside the partitions.

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

The package, leaf first (a module imports only modules above it in this list):

names.py               embedding keys and columns, FILE_FORMATS, TrainingSetError, the cut
config.py              TrainingSetConfig (what to build); TrainingSet, meta.json (what was built)
vectors.py             list<float> columns -> [n, D] float32 matrices; a view's D (`view_dim`)
lookup.py              Lookup: the join's answer for each distinct (day, id) pair
point_in_time_join.py  the join: DuckDB ASOF over the offline Parquet, or Feast's
                       get_historical_features (`embedding_fetcher` picks)
entity_df.py           point_in_time_embeddings: a model owner's entity_df -> matrices
write.py               one day joined and written batch by batch (DayFile, OutputBuffers)
build.py               build_training_set: a log's days, fetched a chunk at a time and
                       written on WRITERS threads

Callers import the names below from the package; the machinery behind them (`Lookup`, the
two joins, the day writer, `WRITERS`) from its own module.
"""

from __future__ import annotations

from trainers.downstream.training_set.build import build_training_set
from trainers.downstream.training_set.config import (
    TrainingSet,
    TrainingSetConfig,
    open_training_set,
)
from trainers.downstream.training_set.entity_df import EmbeddingFeatures, point_in_time_embeddings
from trainers.downstream.training_set.names import (
    EMBEDDING_KEYS,
    FILE_FORMATS,
    META_FILE,
    TIMESTAMP,
    TrainingSetError,
    check_file_format,
    cut_micros,
    embedding_column,
    embedding_keys,
    embedding_view,
    lookup_time,
    parse_embeddings,
    presence_column,
)
from trainers.downstream.training_set.point_in_time_join import BACKENDS, embedding_fetcher
from trainers.downstream.training_set.vectors import embedding_matrix, view_dim

__all__ = [
    "BACKENDS",
    "EMBEDDING_KEYS",
    "FILE_FORMATS",
    "META_FILE",
    "TIMESTAMP",
    "EmbeddingFeatures",
    "TrainingSet",
    "TrainingSetConfig",
    "TrainingSetError",
    "build_training_set",
    "check_file_format",
    "cut_micros",
    "embedding_column",
    "embedding_fetcher",
    "embedding_keys",
    "embedding_matrix",
    "embedding_view",
    "lookup_time",
    "open_training_set",
    "parse_embeddings",
    "point_in_time_embeddings",
    "presence_column",
    "view_dim",
]
