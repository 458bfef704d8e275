"""Feast's Redis online-store layout, encoded and decoded in bulk.

The one place that knows how Feast's Redis store (feast/infra/online_stores/redis.py,
entity_key_serialization_version 3) lays out a row, so the writer and
the reader (`derm_features.feast.online_store`) cannot drift apart:

    key    = serialize_entity_key(entity) + project          one hash per entity, all views
    field  = mmh3("<view>:<feature>") (4 bytes)  ->  ValueProto bytes of that feature
    field  = "_ts:<view>"                        ->  google.protobuf.Timestamp bytes

Feast's helpers build one proto per value, which is slow for 256 floats a row. Here an
int64 entity key is a constant prefix + 8 little-endian bytes + the project, and a float
list ValueProto is a small length header followed by the packed float32 payload, so both
are built and parsed with NumPy over whole batches. Everything else (scalar features,
timestamps) goes through Feast's own converters, once per distinct value.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from feast import FeatureStore, FeatureView, utils
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import _mmh3, compute_versioned_name
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.type_map import python_values_to_proto_values
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp

# ValueProto field 16 (`float_list_val`, wire type 2) and FloatList field 1 (packed, wire
# type 2), as protobuf encodes their tags. Tests check the result byte for byte.
_FLOAT_LIST_VAL_TAG = b"\x82\x01"
_PACKED_VALUES_TAG = b"\x0a"
_FLOAT32_LE = np.dtype("<f4")


@dataclass(frozen=True)
class ViewLayout:
    """Where one feature view's values live in Feast's Redis layout."""

    view: str  # the name Feast uses in field names (versioned when versioning is on)
    join_key: str
    key_prefix: bytes  # serialized entity key up to the 8 id bytes
    key_suffix: bytes  # the project name
    feature_fields: dict[str, bytes]  # feature name -> mmh3 hash field
    feature_types: dict[str, ValueType]
    ts_field: bytes  # b"_ts:<view>"
    # feature name -> the column that holds it in the rows derm writes (the source's
    # field_mapping reversed: `ctr_user_embedding` <- `embedding`)
    source_columns: dict[str, str]

    def feature_of(self, column: str) -> str:
        """The feature stored from source column `column` (e.g. ``embedding``)."""
        for feature, source in self.source_columns.items():
            if source == column:
                return feature
        raise ValueError(f"view '{self.view}' has no feature from column '{column}'")

    @property
    def all_fields(self) -> list[bytes]:
        """Every hash field this view owns (features and timestamp)."""
        return [*self.feature_fields.values(), self.ts_field]


def view_layout(store: FeatureStore, view_name: str) -> ViewLayout:
    """The layout of `view_name` in `store`'s project. Only single int64 join keys."""
    view: FeatureView = store.get_feature_view(view_name)
    config = store.config
    if config.entity_key_serialization_version != 3:
        raise ValueError(
            "derm writes Feast's Redis layout for entity_key_serialization_version 3, "
            f"the config sets {config.entity_key_serialization_version}"
        )
    columns = view.entity_columns
    if len(columns) != 1 or columns[0].dtype.to_value_type() != ValueType.INT64:
        raise ValueError(f"view '{view_name}' must have exactly one int64 join key")
    join_key = columns[0].name
    fv_name = compute_versioned_name(view, config.registry.enable_online_feature_view_versioning)
    reverse = {feature: column for column, feature in view.batch_source.field_mapping.items()}
    return ViewLayout(
        view=fv_name,
        join_key=join_key,
        key_prefix=_int64_key_prefix(join_key),
        key_suffix=config.project.encode("utf-8"),
        feature_fields={f.name: _mmh3(f"{fv_name}:{f.name}") for f in view.features},
        feature_types={f.name: f.dtype.to_value_type() for f in view.features},
        ts_field=f"_ts:{fv_name}".encode(),
        source_columns={f.name: reverse.get(f.name, f.name) for f in view.features},
    )


def _int64_key_prefix(join_key: str) -> bytes:
    """The bytes Feast's `serialize_entity_key` puts before an int64 id's 8 bytes."""
    probe = 0x0102030405060708
    serialized = serialize_entity_key(
        EntityKeyProto(join_keys=[join_key], entity_values=[ValueProto(int64_val=probe)]),
        entity_key_serialization_version=3,
    )
    prefix, id_bytes = serialized[:-8], serialized[-8:]
    if id_bytes != struct.pack("<q", probe):  # guards against a change in Feast's encoding
        raise RuntimeError("Feast's entity key encoding changed; update this module (redis_layout)")
    return prefix


def entity_keys(layout: ViewLayout, ids: np.ndarray | Sequence[int] | pa.Array) -> list[bytes]:
    """The Redis key of each int64 id, in order."""
    ids64 = np.ascontiguousarray(_as_numpy(ids), dtype="<i8")
    n = len(ids64)
    prefix = np.frombuffer(layout.key_prefix, dtype=np.uint8)
    suffix = np.frombuffer(layout.key_suffix, dtype=np.uint8)
    rows = np.empty((n, len(prefix) + 8 + len(suffix)), dtype=np.uint8)
    rows[:, : len(prefix)] = prefix
    rows[:, len(prefix) : len(prefix) + 8] = ids64.view(np.uint8).reshape(n, 8)
    rows[:, len(prefix) + 8 :] = suffix
    return _split_rows(rows)


def _as_numpy(values) -> np.ndarray:
    if isinstance(values, pa.ChunkedArray | pa.Array):
        if values.null_count:
            raise ValueError(f"{values.null_count} entity ids are null")
        values = values.to_numpy(zero_copy_only=False)
    array = np.asarray(values)
    if len(array) and array.dtype.kind not in "iu":
        raise ValueError(f"entity ids must be integers, got {array.dtype}")
    return array


def _split_rows(rows: np.ndarray) -> list[bytes]:
    """One bytes object per row of a C-contiguous uint8 matrix (one copy, no per-byte work)."""
    width = rows.shape[1]
    blob = rows.tobytes()
    return [blob[start : start + width] for start in range(0, len(blob), width)]


def _varint(value: int) -> bytes:
    """Protobuf's base-128 varint of a non-negative int."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def float_list_header(dim: int) -> bytes:
    """The bytes of a `float_list_val` ValueProto of `dim` floats before its float32 payload."""
    payload = 4 * dim
    inner = _PACKED_VALUES_TAG + _varint(payload) if dim else b""
    return _FLOAT_LIST_VAL_TAG + _varint(len(inner) + payload) + inner


def encode_float_lists(embeddings: pa.Array | pa.ChunkedArray) -> list[bytes]:
    """ValueProto bytes (`float_list_val`) of each row of a list / fixed_size_list of floats.

    Equal to `ValueProto(float_list_val=FloatList(val=row)).SerializeToString()`, built from
    the packed float32 payload: one NumPy copy when all rows have the same length.
    """
    if isinstance(embeddings, pa.ChunkedArray):
        embeddings = embeddings.combine_chunks()
    if embeddings.null_count:
        raise ValueError(f"{embeddings.null_count} embedding rows are null")
    n = len(embeddings)
    lengths = pc.list_value_length(embeddings).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = embeddings.flatten()
    if flat.null_count:
        raise ValueError(f"{flat.null_count} embedding values are null")
    floats = np.ascontiguousarray(flat.to_numpy(zero_copy_only=False), dtype=_FLOAT32_LE)
    if n == 0:
        return []
    dim = int(lengths[0])
    if np.all(lengths == dim):
        header = np.frombuffer(float_list_header(dim), dtype=np.uint8)
        rows = np.empty((n, len(header) + 4 * dim), dtype=np.uint8)
        rows[:, : len(header)] = header
        rows[:, len(header) :] = floats.view(np.uint8).reshape(n, 4 * dim)
        return _split_rows(rows)
    # Ragged lists (a Spark `list<float>` column may be): per row, never per element.
    payload = floats.tobytes()
    ends = np.cumsum(lengths) * 4
    headers: dict[int, bytes] = {}
    out = []
    for length, end in zip(lengths.tolist(), ends.tolist(), strict=True):
        if length not in headers:
            headers[length] = float_list_header(length)
        out.append(headers[length] + payload[end - 4 * length : end])
    return out


def decode_float_lists(
    blobs: Sequence[bytes | None], dim: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(values float32 [n, D], found bool [n]) from `float_list_val` ValueProto bytes.

    A missing field (None) or an unset value (b"", what Feast writes for null) gives a
    zero row and found=False. D comes from the data, else from `dim`, else 0. Rows of one
    length are parsed with a single `np.frombuffer`; a row of another length is an error.
    """
    found = np.array(list(map(bool, blobs)), dtype=bool)
    present = list(filter(None, blobs))
    if present:
        dim = _float_list_dim(present[0])
    dim = dim or 0
    values = np.zeros((len(blobs), dim), dtype=np.float32)
    if not present:
        return values, found
    header_len = len(float_list_header(dim))
    width = header_len + 4 * dim
    joined = b"".join(present)
    if len(joined) != width * len(present):
        bad = sum(len(b) != width for b in present)
        raise ValueError(f"{bad} embeddings do not have the dimension {dim} of the first one")
    rows = np.frombuffer(joined, dtype=np.uint8).reshape(len(present), width)
    values[found] = rows[:, header_len:].view(_FLOAT32_LE)
    return values, found


def _float_list_dim(blob: bytes) -> int:
    """The number of floats in a `float_list_val` ValueProto (parses its header only)."""
    if not blob.startswith(_FLOAT_LIST_VAL_TAG):
        raise ValueError("value is not a float list (Feast Array(Float32))")
    _, pos = _read_varint(blob, len(_FLOAT_LIST_VAL_TAG))
    if pos == len(blob):
        return 0
    if blob[pos : pos + 1] != _PACKED_VALUES_TAG:
        raise ValueError("float list is not packed")
    payload, _ = _read_varint(blob, pos + 1)
    return payload // 4


def _read_varint(blob: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = blob[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def encode_by_distinct_value(column: pa.Array | pa.ChunkedArray, value_type: ValueType) -> list:
    """ValueProto bytes of each row, converted by Feast's own `python_values_to_proto_values`.

    Feast's converter runs once per distinct value (model_version, last_seen: a handful per
    day), with the same NumPy input Feast's writer gives it, so the bytes are Feast's.
    """
    encoded = pc.dictionary_encode(column, null_encoding="encode")
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    distinct = encoded.dictionary.to_numpy(zero_copy_only=False)
    protos = python_values_to_proto_values(distinct, value_type)
    serialized = np.array([p.SerializeToString() for p in protos], dtype=object)
    return serialized[encoded.indices.to_numpy(zero_copy_only=False)].tolist()


def encode_event_timestamps(column: pa.Array | pa.ChunkedArray) -> list:
    """`_ts:<view>` bytes of each row: Feast's conversion (microseconds, naive = UTC)."""
    if column.null_count:
        raise ValueError(f"{column.null_count} event_timestamp values are null")
    encoded = pc.dictionary_encode(column)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    serialized = []
    for value in encoded.dictionary.to_pandas():  # pd.Timestamp, as in Feast's writer
        ts = Timestamp()
        ts.FromDatetime(utils.make_tzaware(value.to_pydatetime()))
        serialized.append(ts.SerializeToString())
    return np.array(serialized, dtype=object)[encoded.indices.to_numpy()].tolist()


# A batch of n Redis commands given column-wise: each column is either one argument shared
# by every command (bytes) or the n per-command arguments. Columns keep the per-row work
# in C (zip / join) instead of building n argument lists in Python.
CommandColumns = Sequence[bytes | Sequence[bytes]]


def _bulk(arg: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(arg), arg)


def _batch_size(batch: CommandColumns) -> int:
    sizes = {len(column) for column in batch if not isinstance(column, bytes)}
    if len(sizes) != 1:
        raise ValueError(f"command columns must have one common length, got {sorted(sizes)}")
    return sizes.pop()


def pack_commands(batch: CommandColumns) -> bytes:
    """The batch's commands in the RESP wire format, concatenated."""
    n = _batch_size(batch)
    framed = [part for column in batch for part in _framed(column, n)]
    header = itertools.repeat(b"*%d\r\n" % len(batch), n)
    return b"".join(itertools.chain.from_iterable(zip(header, *framed, strict=False)))


def _framed(column: bytes | Sequence[bytes], n: int) -> list:
    """The column's n arguments in RESP bulk framing, as iterables whose items are
    interleaved row by row. A column whose values all have one length (keys, fixed-D
    embeddings) is (length prefix repeated, values, CRLF repeated), so no Python call and
    no copy runs per value: that call was half of a 256-d push's packing time."""
    if isinstance(column, bytes):
        return [itertools.repeat(_bulk(column), n)]
    lengths = set(map(len, column))
    if len(lengths) != 1:
        return [map(_bulk, column)]
    prefix = b"$%d\r\n" % lengths.pop()
    return [itertools.repeat(prefix, n), column, itertools.repeat(b"\r\n", n)]


def run_pipelined(client, *batches: CommandColumns) -> list:
    """Run the batches' commands in one round trip per Redis node; the replies, in order.

    `client`: a `redis.Redis` or a `redis.cluster.RedisCluster`. Every command's key is
    its second argument (HSET, HMGET, HDEL, EXPIRE).

    redis-py's `Pipeline` spends most of its time per command in Python (packing, reply
    callbacks); here the commands are packed into one buffer, sent with one write, and the
    raw replies read back. The pool checks a connection when handing it out and reconnects
    one the server dropped (a Redis restart). On a cluster, `_run_on_cluster` does the same
    once per node. Raises the first error reply (`redis.ResponseError`) and redis-py's
    `ConnectionError` / `TimeoutError`.
    """
    if is_cluster(client):
        return _run_on_cluster(client, batches)
    count = sum(_batch_size(batch) for batch in batches)
    packed = b"".join(pack_commands(batch) for batch in batches)  # one write: no Nagle stall
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        connection.send_packed_command([packed])
        return [connection.read_response() for _ in range(count)]
    except BaseException:
        connection.disconnect()  # unread replies would corrupt the next user's reads
        raise
    finally:
        pool.release(connection)


async def run_pipelined_async(client, *batches: CommandColumns) -> list:
    """`run_pipelined` on a `redis.asyncio.Redis` (one Redis, not a cluster): one write, the
    replies read without blocking the event loop, in order, within the connection's
    socket timeout (`dedicated_async_redis_client` sets one).

    redis-py's async `read_response` enters a timeout context per reply, four times the
    CPU of the whole sync read for 101 replies; here one timeout covers the read, and the
    replies already received are taken from the connection's hiredis reader in one C loop
    (`iter(gets, NOT_ENOUGH_DATA)`), the socket read through the parser when more are due.
    That reaches into redis-py's hiredis parser (`_parser._reader`), which is why redis and
    hiredis are pinned; without hiredis, replies are read one by one. Raises
    `redis.ResponseError` for an error reply, `redis.ConnectionError` / `TimeoutError`.
    """
    import asyncio

    from redis._parsers.hiredis import NOT_ENOUGH_DATA
    from redis.exceptions import ConnectionError, ResponseError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    count = sum(_batch_size(batch) for batch in batches)
    packed = b"".join(pack_commands(batch) for batch in batches)
    pool = client.connection_pool
    connection = await pool.get_connection()
    try:
        await connection.send_packed_command([packed], check_health=False)
        reader = getattr(connection._parser, "_reader", None)
        if reader is None or not hasattr(reader, "gets"):  # redis-py's pure-Python parser
            return [await connection.read_response() for _ in range(count)]
        replies: list = []
        timeout_s = connection.socket_timeout
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    replies += iter(reader.gets, NOT_ENOUGH_DATA)
                    if len(replies) >= count:
                        break
                    await connection._parser.read_from_socket()
        except TimeoutError as exc:  # asyncio's (the builtin), not redis-py's
            raise RedisTimeoutError(f"no reply within {timeout_s} s") from exc
        except OSError as exc:
            raise ConnectionError(f"error while reading: {exc}") from exc
        for reply in replies:
            if isinstance(reply, ResponseError | ConnectionError):
                raise reply
        return replies
    except BaseException:
        await connection.disconnect()  # unread replies would corrupt the next user's reads
        raise
    finally:
        await pool.release(connection)


def is_cluster(client) -> bool:
    """Whether `client` is redis-py's Redis Cluster client (one pool per node, a slot map)
    rather than a `redis.Redis` (one pool)."""
    return hasattr(client, "nodes_manager")


def _take(column: bytes | Sequence[bytes], rows: np.ndarray) -> bytes | list[bytes]:
    """The `rows` of a command column (a shared argument stays shared)."""
    if isinstance(column, bytes):
        return column
    return [column[i] for i in rows.tolist()]


def _run_on_cluster(client, batches: Sequence[CommandColumns]) -> list:
    """`run_pipelined` on a Redis Cluster: each command goes to the primary that redis-py's
    slot map names for its key, every node's share packed into one write; all nodes are
    sent to before any is read, so they work at once.

    Commands the slot map got wrong (MOVED / ASK while slots migrate) and those of a node
    whose connection failed are run again through redis-py's own cluster pipeline, which
    follows redirects, refreshes the slot map and retries as the client is configured:
    every command derm sends is idempotent (HSET, HDEL, HMGET, EXPIRE).
    """
    from redis.crc import key_slot
    from redis.exceptions import AskError, ConnectionError, ResponseError, TimeoutError

    manager = client.nodes_manager
    offsets = np.cumsum([0] + [_batch_size(batch) for batch in batches])
    # node name -> [(position of each of its commands in the call, its packed commands)]
    shares: dict[str, list[tuple[np.ndarray, bytes]]] = {}
    nodes = {}
    for offset, batch in zip(offsets.tolist(), batches, strict=False):
        keys = batch[1]
        slots = np.fromiter(map(key_slot, keys), dtype=np.int64, count=len(keys))
        distinct, inverse = np.unique(slots, return_inverse=True)
        owners = [_primary_of(manager, slot) for slot in distinct.tolist()]
        names = sorted({node.name for node in owners})
        nodes.update((node.name, node) for node in owners)
        owner = np.array([names.index(node.name) for node in owners])[inverse]
        for index, name in enumerate(names):
            rows = np.flatnonzero(owner == index)
            packed = pack_commands([_take(column, rows) for column in batch])
            shares.setdefault(name, []).append((rows + offset, packed))

    replies: list = [None] * int(offsets[-1])
    redo: list[int] = []  # positions to run again through redis-py's cluster pipeline
    error = None
    sent: list = []  # (pool, connection, positions) whose replies are still to be read
    try:
        for name, share in shares.items():
            pool = client.get_redis_connection(nodes[name]).connection_pool
            positions = np.concatenate([rows for rows, _ in share]).tolist()
            try:
                connection = pool.get_connection()  # connects: a node down fails here
            except (ConnectionError, TimeoutError):
                redo += positions  # redis-py's pipeline refreshes the map (a failover)
                continue
            sent.append((pool, connection, positions))
            try:
                connection.send_packed_command([b"".join(packed for _, packed in share)])
            except (ConnectionError, TimeoutError):
                sent.pop()
                connection.disconnect()
                pool.release(connection)
                redo += positions
        while sent:
            pool, connection, positions = sent[0]
            answered = 0
            try:
                for position in positions:
                    try:
                        replies[position] = connection.read_response()
                    except AskError:  # MOVED too: the command did not run
                        redo.append(position)
                    except ResponseError as exc:  # read on: the stream stays in step
                        error = error or exc
                    answered += 1
            except (ConnectionError, TimeoutError):
                connection.disconnect()
                redo += positions[answered:]
            sent.pop(0)
            pool.release(connection)
    except BaseException:
        for pool, connection, _ in sent:
            connection.disconnect()  # unread replies would corrupt the next user's reads
            pool.release(connection)
        raise
    if error is not None:
        raise error
    if redo:
        redo.sort()
        again = _run_with_redis_py_pipeline(client, _select(batches, offsets, redo))
        for position, reply in zip(redo, again, strict=True):
            replies[position] = reply
    return replies


def _primary_of(manager, slot: int):
    """The primary serving `slot` in redis-py's slot map (`NodesManager.slots_cache`, slot ->
    [primary, replicas...]): read directly, as `get_node_from_slot`'s argument-checking
    wrapper costs a third of a cluster push; that method raises SlotNotCoveredError for a
    slot no node serves."""
    owners = manager.slots_cache.get(slot)
    return owners[0] if owners else manager.get_node_from_slot(slot)


def _select(batches: Sequence[CommandColumns], offsets: np.ndarray, positions: list[int]):
    """The commands at `positions` (sorted, in the call's numbering), as batches."""
    positions_array = np.asarray(positions)
    selected = []
    for index, batch in enumerate(batches):
        mask = (positions_array >= offsets[index]) & (positions_array < offsets[index + 1])
        rows = positions_array[mask] - offsets[index]
        if len(rows):
            selected.append([_take(column, rows) for column in batch])
    return selected


def _run_with_redis_py_pipeline(client, batches: Sequence[CommandColumns]) -> list:
    with client.pipeline(transaction=False) as pipe:
        for batch in batches:
            n = _batch_size(batch)
            name, *args = batch  # redis-py's cluster routing looks commands up by str name
            columns = [itertools.repeat(c, n) if isinstance(c, bytes) else c for c in args]
            for command in zip(*columns, strict=False):
                pipe.execute_command(name.decode(), *command)
        return pipe.execute()
