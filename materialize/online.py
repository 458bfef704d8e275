"""The online push: a day's changed rows into Redis, in Feast's own layout.

`FeatureStore.get_online_features` reads what `push_rows` writes (the layout lives in
`derm_features.feast_redis_layout`). Two deliberate differences from Feast's
`write_to_online_store`:

- Every row overwrites. Feast first reads each entity's `_ts:<view>` and skips rows
  whose timestamp is not newer (feast-dev/feast#2795), so re-running a day, or replacing
  a value after a reset, would silently keep the old one.
- It is fast: values are serialized over whole batches with NumPy, and each chunk is
  one pipelined round trip of HSETs (no read before write).

`remove_entities` drops one view's fields from entities (the TTL of the pool): the hash
holds every view of an entity, so Redis key expiry is no substitute.
"""

from __future__ import annotations

import pyarrow as pa
from feast import FeatureStore
from feast.value_type import ValueType

from derm_features.feast_redis_layout import (
    ViewLayout,
    encode_by_distinct_value,
    encode_event_timestamps,
    encode_float_lists,
    entity_keys,
    redis_client,
    run_pipelined,
    unavailable_as_clear_error,
    view_layout,
)

EVENT_TIMESTAMP = "event_timestamp"
# Rows per pipelined round trip: ~4 MB of 256-d embeddings, enough to hide the latency.
CHUNK_ROWS = 4096


def push_rows(store: FeatureStore, view_name: str, rows: pa.Table) -> int:
    """Write `rows` into `view_name`'s online store; returns the number of rows written.

    `rows`: the view's join key (`user_id` / `pin_id`, int64), one column per feature of
    the view (`embedding` as list or fixed_size_list of float32, `last_seen`,
    `model_version`) and `event_timestamp`. Other columns are ignored. Each row replaces
    the entity's values of this view whatever their timestamp; if an id repeats, its last
    row wins. `key_ttl_seconds` of the store config, if set, is applied as Feast does.
    Rows go in chunks of `CHUNK_ROWS`: if Redis fails midway, the chunks before stay
    written, and re-running the push completes it (every write is idempotent).
    """
    layout = view_layout(store, view_name)
    _check_columns(rows, view_name, [layout.join_key, *layout.feature_fields, EVENT_TIMESTAMP])
    ttl = store.config.online_store.key_ttl_seconds
    client = redis_client(store)
    written = 0
    with unavailable_as_clear_error(store, f"online push to '{view_name}'"):
        for start in range(0, rows.num_rows, CHUNK_ROWS):
            chunk = rows.slice(start, CHUNK_ROWS)
            hset = hset_columns(layout, chunk)
            if ttl:  # as Feast: every written key gets the ttl
                run_pipelined(client, hset, [b"EXPIRE", hset[1], str(ttl).encode()])
            else:
                run_pipelined(client, hset)
            written += chunk.num_rows
    return written


def hset_columns(layout: ViewLayout, chunk: pa.Table) -> list:
    """`HSET key ts_field ts feature_field value ...` for each row of `chunk`, column-wise."""
    columns: list = [b"HSET", entity_keys(layout, chunk.column(layout.join_key))]
    columns += [layout.ts_field, encode_event_timestamps(chunk.column(EVENT_TIMESTAMP))]
    for feature, field in layout.feature_fields.items():
        column, value_type = chunk.column(feature), layout.feature_types[feature]
        if value_type == ValueType.FLOAT_LIST:
            values = encode_float_lists(column)
        else:
            values = encode_by_distinct_value(column, value_type)
        columns += [field, values]
    return columns


def remove_entities(store: FeatureStore, view_name: str, entity_ids: pa.Array) -> int:
    """Delete `view_name`'s fields (and its `_ts:` field) for `entity_ids`.

    Other views of the same entity stay. Redis deletes a hash when its last field goes,
    so an entity that had only this view disappears. Returns how many entities had any
    field of this view.
    """
    layout = view_layout(store, view_name)
    fields = layout.all_fields
    client = redis_client(store)
    touched = 0
    with unavailable_as_clear_error(store, f"removing entities from '{view_name}'"):
        for start in range(0, len(entity_ids), CHUNK_ROWS):
            keys = entity_keys(layout, entity_ids[start : start + CHUNK_ROWS])
            replies = run_pipelined(client, [b"HDEL", keys, *fields])
            touched += sum(1 for deleted in replies if deleted)
    return touched


def _check_columns(rows: pa.Table, view_name: str, required: list[str]) -> None:
    missing = [c for c in required if c not in rows.column_names]
    if missing:
        raise ValueError(
            f"rows for '{view_name}' lack column(s) {missing}; they have {rows.column_names}"
        )
