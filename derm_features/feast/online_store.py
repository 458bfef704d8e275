"""Feast's Redis online store for DERM embeddings: the client, the writer and the reader.

Like Feast's own `infra/online_stores/redis.py`, one module holds what talks to the store;
the byte layout both sides share lives in `derm_features.feast.redis_layout`.

**Client.** `redis_client` is the store's own redis-py client; `dedicated_redis_client` a
new one configured the same way; `fail_fast` and `unavailable_as_clear_error` turn a Redis
outage into an `OnlineStoreUnavailable` naming the redacted address. With Feast's
``redis_type: redis_cluster`` these are redis-py's `RedisCluster`, and every round trip
below is one per node (`redis_layout.run_pipelined`).

**Writer** (the daily online push). `FeatureStore.get_online_features` reads what
`push_rows` writes. Two deliberate differences from Feast's `write_to_online_store`:

- Every row overwrites. Feast first reads each entity's `_ts:<view>` and skips rows
  whose timestamp is not newer (feast-dev/feast#2795), so re-running a day, or replacing
  a value after a reset, would silently keep the old one.
- It is fast: values are serialized over whole batches with NumPy, each chunk is one
  pipelined round trip of HSETs (no read before write), and `PUSH_CONNECTIONS` chunks
  are in flight at once on their own connections.

`remove_entities` drops one view's fields from entities (the TTL of the pool): the hash
holds every view of an entity, so Redis key expiry is no substitute.

**Reader** (ranking requests: one user, many candidate Pins). `EmbeddingReader.read`
returns the same values as `FeatureStore.get_online_features` as NumPy arrays, in one
pipelined round trip: one HMGET per distinct entity, asking for just the `embedding` field
of each requested view of that entity, decoded with `np.frombuffer`. `read_async` does the
same on a `redis.asyncio` client (`dedicated_async_redis_client`), for `derm serve`.

Freshness: like Feast, the reader does not apply the views' ttl at read time (Feast's
online reads do not enforce ttl). Expired entities are kept out of Redis instead: the
daily materializer removes the view's fields of every entity that leaves the pool
(`remove_entities`), so what Redis holds is the live pool.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from operator import itemgetter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from feast import FeatureStore
from feast.infra.online_stores.redis import RedisOnlineStoreConfig
from feast.value_type import ValueType

from derm_features.feast.redis_layout import (
    ViewLayout,
    decode_float_lists,
    encode_by_distinct_value,
    encode_event_timestamps,
    encode_float_lists,
    entity_keys,
    is_cluster,
    run_pipelined,
    run_pipelined_async,
    view_layout,
)
from derm_features.feast.redis_url import redacted_connection_string


class OnlineStoreUnavailable(RuntimeError):
    """Redis could not be reached or refused us; the message names the redacted address."""


# ----------------------------------------------------------------------------- client


def redis_client(store: FeatureStore):
    """The redis-py client of `store`'s own Redis online store (its pool, TLS, password): a
    `redis.Redis`, or a `redis.cluster.RedisCluster` for ``redis_type: redis_cluster``,
    which connects to the cluster when it is built (RedisClusterException when no node
    answers; `unavailable_as_clear_error` turns that into OnlineStoreUnavailable)."""
    if not isinstance(store.config.online_store, RedisOnlineStoreConfig):
        raise ValueError(f"the online store is not Redis: {store.config.online_store.type}")
    online_store = store._get_provider().online_store
    return online_store._get_client(store.config.online_store)


def dedicated_redis_client(store: FeatureStore):
    """A new redis-py client configured exactly like `store`'s (address, TLS, password,
    cluster or sentinel: Feast's own `_get_client` builds it), with its own connections.

    Why not share the store's: a TCP connection carries its congestion-control state. With
    BBR (this machine's default, common on Linux servers) a connection that Feast's SDK
    also uses is modelled on Feast's slow reply consumption, and the server then sends our
    1 MB replies slowly: measured here, 1-2 % of 1 user + 500 Pin reads took ~120 ms
    instead of ~4 ms on the shared connection, none on one of its own, and none on the
    shared one with the machine switched to cubic (BENCHMARKS.md, online read).
    """
    online_store = store._get_provider().online_store
    redis_client(store)  # the same checks
    return type(online_store)()._get_client(store.config.online_store)


# Serving reads fail within about this long when Redis is down, not after redis-py's default
# retries with backoff (4-9 s measured here), which a ranking request cannot wait for.
SERVING_SOCKET_TIMEOUT_S = 2.0


def fail_fast(client, timeout_s: float = SERVING_SOCKET_TIMEOUT_S):
    """Sets `client` (a `redis.Redis` or `RedisCluster`) to fail at once on a connection
    error (no retry, no backoff) and to time out connects and reads after `timeout_s`
    seconds, unless the operator set timeouts in the connection string. A connection the
    server dropped is still replaced: the pool checks each one as it hands it out. Returns
    the client."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client.set_retry(Retry(NoBackoff(), 0))
    settings = [pool.connection_kwargs for pool in _pools(client)]
    if is_cluster(client):  # also for the nodes it finds later
        settings.append(client.nodes_manager.connection_kwargs)
    for kwargs in settings:
        for name in ("socket_timeout", "socket_connect_timeout"):
            if kwargs.get(name) is None:  # keep what an operator configured
                kwargs[name] = timeout_s
    if is_cluster(client):
        for pool in _pools(client):
            pool.reset()  # the connections it opened to learn the slot map had no timeouts
    return client


async def dedicated_async_redis_client(store: FeatureStore, timeout_s=SERVING_SOCKET_TIMEOUT_S):
    """A `redis.asyncio.Redis` configured like `store`'s Redis (Feast's own
    `_get_client_async`: address, TLS, password), with connections of its own, failing fast
    like `fail_fast`; None for a Redis Cluster or Sentinel, which are read with the sync
    client. Call it in the event loop that will use it (its connections belong to one)."""
    from feast.infra.online_stores.redis import RedisType
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    config = store.config.online_store
    redis_client(store)  # the same checks
    if config.redis_type != RedisType.redis:
        return None
    client = await type(store._get_provider().online_store)()._get_client_async(config)
    client.set_retry(Retry(NoBackoff(), 0))
    kwargs = client.connection_pool.connection_kwargs
    for name in ("socket_timeout", "socket_connect_timeout"):
        if kwargs.get(name) is None:  # keep what an operator configured
            kwargs[name] = timeout_s
    return client


def _pools(client) -> list:
    """The connection pools of `client`: its one, or one per known node of a cluster."""
    if is_cluster(client):
        nodes = [node.redis_connection for node in client.get_nodes()]
        return [node.connection_pool for node in nodes if node is not None]
    return [client.connection_pool]


@contextlib.contextmanager
def unavailable_as_clear_error(store: FeatureStore, action: str) -> Iterator[None]:
    """Turn redis-py connection failures into `OnlineStoreUnavailable` naming the address.

    The message shows the redacted address and the error class; any password that a
    lower layer put into its message is masked.
    """
    import redis
    from redis.exceptions import ClusterDownError, RedisClusterException

    try:
        yield
    # RedisClusterException: building a cluster client found no reachable node, or the slot
    # of a key has no node (SlotNotCoveredError); ClusterDownError: the cluster is failing over
    except (
        redis.ConnectionError,
        redis.TimeoutError,
        ClusterDownError,
        RedisClusterException,
    ) as exc:
        connection_string = store.config.online_store.connection_string
        detail = _mask_password(str(exc), connection_string)
        raise OnlineStoreUnavailable(
            f"{action}: Redis online store at {redacted_connection_string(connection_string)} "
            f"is unavailable ({type(exc).__name__}: {detail})"
        ) from None


def _mask_password(text: str, connection_string: str) -> str:
    for part in connection_string.split(","):
        if part.startswith("password=") and len(part) > len("password="):
            text = text.replace(part[len("password=") :], "***")
    return text


def check_reachable(store: FeatureStore, action: str) -> None:
    """Raises OnlineStoreUnavailable (naming the redacted address and `action`) unless the
    store's Redis answers a PING within the serving timeouts: checked before a job that
    would otherwise train for minutes and then fail at its push."""
    with unavailable_as_clear_error(store, action):
        fail_fast(dedicated_redis_client(store)).ping()


# ----------------------------------------------------------------------------- writer

EVENT_TIMESTAMP = "event_timestamp"
# Rows per pipelined round trip: ~4 MB of 256-d embeddings, enough to hide the latency.
CHUNK_ROWS = 4096
# Chunks a push keeps in flight, each sent on its own connection by a thread (the GIL is
# released on socket I/O) while the calling thread encodes the next, so the client's CPU
# and Redis's overlap instead of taking turns (BENCHMARKS.md, online push).
PUSH_CONNECTIONS = 4


def push_rows(
    store: FeatureStore, view_name: str, rows: pa.Table, connections: int = PUSH_CONNECTIONS
) -> int:
    """Write `rows` into `view_name`'s online store; returns the number of rows written.

    `rows`: the view's join key (`user_id` / `pin_id`, int64), the source column of each
    feature of the view (`embedding` as list or fixed_size_list of float32, `last_seen`,
    `model_version`: the offline files' names, mapped to the view's feature names as its
    source's `field_mapping` says) and `event_timestamp`. Other columns are ignored. Each
    row replaces the entity's values of this view whatever their timestamp; if an id
    repeats, its last row wins. `key_ttl_seconds` of the store config, if set, is applied
    as Feast does. Rows go in chunks of `CHUNK_ROWS`, encoded on this thread while up to
    `connections` chunks are in flight (each on its own connection and thread; 1: one
    chunk after the other on this thread). If Redis fails midway, other chunks may stay
    written, and re-running the push completes it (every write is idempotent). The first
    error of any chunk is raised once the chunks already sent have finished (ValueError
    for bad rows or `connections` < 1, redis-py's ResponseError, OnlineStoreUnavailable
    when Redis cannot be reached).
    """
    if connections < 1:
        raise ValueError(f"connections must be at least 1, got {connections}")
    layout = view_layout(store, view_name)
    _check_columns(
        rows, view_name, [layout.join_key, *layout.source_columns.values(), EVENT_TIMESTAMP]
    )
    ttl = store.config.online_store.key_ttl_seconds
    # Chunks may land in any order, so an id's earlier rows are dropped first: the last wins.
    unique = _last_row_per_id(rows, layout.join_key) if connections > 1 else rows

    def encode(start: int) -> list:
        hset = hset_columns(layout, unique.slice(start, CHUNK_ROWS))
        if ttl:  # as Feast: every written key gets the ttl
            return [hset, [b"EXPIRE", hset[1], str(ttl).encode()]]
        return [hset]

    with unavailable_as_clear_error(store, f"online push to '{view_name}'"):
        client = redis_client(store)
        chunks = map(encode, range(0, unique.num_rows, CHUNK_ROWS))
        _in_flight(lambda batches: run_pipelined(client, *batches), chunks, connections)
    return rows.num_rows


def _last_row_per_id(rows: pa.Table, join_key: str) -> pa.Table:
    """`rows` without the rows whose id appears again later (order kept); `rows` itself,
    no copy, when every id is distinct (the materializer's case). Null ids are left for
    `entity_keys` to refuse."""
    ids = rows.column(join_key)
    if ids.null_count or pc.count_distinct(ids).as_py() == rows.num_rows:
        return rows
    reversed_ids = ids.to_numpy()[::-1]
    _, first_from_end = np.unique(reversed_ids, return_index=True)
    return rows.take(np.sort(rows.num_rows - 1 - first_from_end))


def _in_flight(send, items: Iterator, connections: int) -> None:
    """`send(item)` for every item of `items` (produced lazily on this thread), on up to
    `connections` threads at once; the next item is produced while they send, and at most
    `connections` sends wait unfinished (so memory holds that many chunks plus one). With 1,
    one after the other on this thread. The first exception (of the oldest send, or of
    `items`) is raised after the sends already started end; later items are not sent."""
    if connections == 1:
        for item in items:
            send(item)
        return
    with ThreadPoolExecutor(max_workers=connections, thread_name_prefix="derm-push") as pool:
        pending: collections.deque = collections.deque()
        try:
            for item in items:
                if len(pending) == connections:
                    pending.popleft().result()
                pending.append(pool.submit(send, item))
            while pending:
                pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()  # a no-op for those running: the pool's exit waits for them


def hset_columns(layout: ViewLayout, chunk: pa.Table) -> list:
    """`HSET key ts_field ts feature_field value ...` for each row of `chunk`, column-wise."""
    columns: list = [b"HSET", entity_keys(layout, chunk.column(layout.join_key))]
    columns += [layout.ts_field, encode_event_timestamps(chunk.column(EVENT_TIMESTAMP))]
    for feature, field in layout.feature_fields.items():
        column = chunk.column(layout.source_columns[feature])
        value_type = layout.feature_types[feature]
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
    touched = 0
    with unavailable_as_clear_error(store, f"removing entities from '{view_name}'"):
        client = redis_client(store)
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


# ----------------------------------------------------------------------------- reader


class EmbeddingReader:
    """Reads DERM embeddings of users and Pins from the online store of a `FeatureStore`.

    Layouts are resolved from the registry once per view and kept. The Redis client is
    configured like the store's (address, TLS, password) but has connections of its own,
    not shared with Feast's SDK calls (`dedicated_redis_client` says why), and fails fast
    when Redis is down (`fail_fast`: no retries, 2 s socket timeouts unless configured).
    """

    def __init__(self, store: FeatureStore, dims: dict[str, int] | None = None, client=None):
        """`dims`: view -> D. Without it, D is learned from the first value read and kept,
        so a request in which no entity of a never-read view is found gets shape (n, 0).
        `client`: a redis-py client to read with (default: a fail-fast
        `dedicated_redis_client`)."""
        self._store = store
        if client is None:
            with unavailable_as_clear_error(store, "connecting the embedding reader"):
                client = fail_fast(dedicated_redis_client(store))
        self.client = client
        self._dims = dict(dims or {})
        self._layouts: dict[str, ViewLayout] = {}

    def layout(self, view: str) -> ViewLayout:
        if view not in self._layouts:
            self._layouts[view] = view_layout(self._store, view)
        return self._layouts[view]

    def read(
        self,
        user_ids: Sequence[int] | np.ndarray,
        pin_ids: Sequence[int] | np.ndarray,
        views: list[str],
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """view -> (values float32 [n, D], found bool [n]).

        User views are read for `user_ids`, Pin views for `pin_ids`, in the order given
        (repeats allowed). A missing entity gives a zero row and found=False.
        """
        batches, plan, n_commands = self._plan(user_ids, pin_ids, views)
        with unavailable_as_clear_error(self._store, "online embedding read"):
            replies = run_pipelined(self.client, *batches) if n_commands else []
        return self._decode(plan, replies)

    async def read_async(
        self,
        client,
        user_ids: Sequence[int] | np.ndarray,
        pin_ids: Sequence[int] | np.ndarray,
        views: list[str],
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """`read` through `client`, a `redis.asyncio.Redis` for the same Redis
        (`dedicated_async_redis_client`): the event loop serves other requests while
        Redis answers. Same result and errors as `read`."""
        batches, plan, n_commands = self._plan(user_ids, pin_ids, views)
        with unavailable_as_clear_error(self._store, "online embedding read"):
            replies = await run_pipelined_async(client, *batches) if n_commands else []
        return self._decode(plan, replies)

    def _plan(self, user_ids, pin_ids, views: list[str]) -> tuple[list, list, int]:
        """(HMGET batches, how to split their replies by view, number of commands)."""
        ids_by_join_key = {"user_id": np.asarray(user_ids), "pin_id": np.asarray(pin_ids)}
        # Views sharing a join key share the entity's hash: one HMGET reads them all.
        views_by_join_key: dict[str, list[str]] = {}
        for view in views:
            views_by_join_key.setdefault(self.layout(view).join_key, []).append(view)

        batches: list[list] = []
        # (views, position of each requested id among the distinct ones, first reply, count)
        plan: list[tuple[list[str], np.ndarray, int, int]] = []
        n_commands = 0
        for join_key, key_views in views_by_join_key.items():
            if join_key not in ids_by_join_key:
                raise ValueError(f"views {key_views} have join key '{join_key}', not user/pin")
            ids = ids_by_join_key[join_key]
            distinct, inverse = np.unique(ids, return_inverse=True)
            fields = [
                self.layout(v).feature_fields[self.layout(v).feature_of("embedding")]
                for v in key_views
            ]
            keys = entity_keys(self.layout(key_views[0]), distinct)
            plan.append((key_views, inverse, n_commands, len(keys)))
            batches.append([b"HMGET", keys, *fields])
            n_commands += len(keys)
        return batches, plan, n_commands

    def _decode(self, plan: list, replies: list) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        result: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for key_views, inverse, first, count in plan:
            entity_replies = replies[first : first + count]
            for position, view in enumerate(key_views):
                blobs = list(map(itemgetter(position), entity_replies))
                values, found = decode_float_lists(blobs, self._dims.get(view))
                if found.any():
                    known = self._dims.setdefault(view, values.shape[1])
                    if known != values.shape[1]:
                        raise ValueError(f"'{view}' holds {values.shape[1]}-d values, not {known}")
                result[view] = (values[inverse], found[inverse])
        return result
