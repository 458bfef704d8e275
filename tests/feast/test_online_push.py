"""The online push writes Feast's exact Redis layout, overwrites, and removes one view.

Real Feast and real Redis (DB 15 via the `applied_workdir` fixture): values written by
`derm_features.feast.online_store.push_rows` are read back with
`FeatureStore.get_online_features`, and the raw hashes are compared byte for byte with what
Feast's own writer produces.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest
import redis
from feast.protos.feast.types.Value_pb2 import FloatList
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

from derm_features.core.spec import PUBLISHED_COLUMNS, feature_name
from derm_features.feast import online_store
from derm_features.feast.online_store import OnlineStoreUnavailable, push_rows, remove_entities
from derm_features.feast.redis_layout import (
    decode_float_lists,
    encode_float_lists,
    entity_keys,
    view_layout,
)
from derm_features.feast.repo import feature_store

UTC = dt.UTC
DAY = dt.datetime(2024, 3, 5, tzinfo=UTC)


def embedding_rows(
    entity: str,
    ids,
    dim: int = 8,
    seed: int = 0,
    event_timestamp: dt.datetime = DAY,
    fixed_size: bool = True,
    model_version: str = "ctr-2024-03-04",
) -> pa.Table:
    """Rows in the materializer's online-push shape, with random float32 embeddings."""
    ids = np.asarray(ids, dtype=np.int64)
    values = np.random.default_rng(seed).standard_normal((len(ids), dim)).astype(np.float32)
    flat = pa.array(values.ravel(), pa.float32())
    if fixed_size:
        embedding = pa.FixedSizeListArray.from_arrays(flat, dim)
    else:
        embedding = pa.ListArray.from_arrays(pa.array(np.arange(len(ids) + 1) * dim), flat)
    n = len(ids)
    return pa.table(
        {
            f"{entity}_id": pa.array(ids),
            "embedding": embedding,
            "last_seen": pa.array(
                [event_timestamp - dt.timedelta(hours=5)] * n, pa.timestamp("us", "UTC")
            ),
            "model_version": pa.array([model_version] * n),
            "event_timestamp": pa.array([event_timestamp] * n, pa.timestamp("us", "UTC")),
        }
    )


def online(store, view: str, entity: str, ids) -> dict:
    """Feast's `get_online_features` of the view's three features, keyed by the plain
    column names (`embedding`, `last_seen`, `model_version`)."""
    model = view.split("_")[0]
    names = {c: feature_name(model, entity, c) for c in PUBLISHED_COLUMNS}
    rows = [{f"{entity}_id": int(i)} for i in ids]
    got = store.get_online_features(
        features=[f"{view}:{f}" for f in names.values()], entity_rows=rows
    ).to_dict()
    return {column: got[feature] for column, feature in names.items()}


def assert_online_equals(store, view: str, rows: pa.Table) -> None:
    entity = view.split("_")[1]
    ids = rows.column(f"{entity}_id").to_pylist()
    got = online(store, view, entity, ids)
    expected = rows.column("embedding").to_pylist()
    assert got["embedding"] == [list(np.float32(e).astype(float)) for e in expected]
    assert got["model_version"] == rows.column("model_version").to_pylist()
    assert got["last_seen"] == rows.column("last_seen").to_pylist()


def raw_hashes(redis_url: str, store, view: str, ids) -> list[dict]:
    client = redis.Redis.from_url(redis_url)
    return [client.hgetall(key) for key in entity_keys(view_layout(store, view), ids)]


@pytest.mark.parametrize("dim", [1, 31, 32, 33, 256, 4100])
def test_float_list_bytes_equal_feast_protobuf(dim):
    rng = np.random.default_rng(dim)
    rows = rng.standard_normal((3, dim)).astype(np.float32)
    array = pa.FixedSizeListArray.from_arrays(pa.array(rows.ravel(), pa.float32()), dim)
    expected = [ValueProto(float_list_val=FloatList(val=r)).SerializeToString() for r in rows]
    assert encode_float_lists(array) == expected
    values, found = decode_float_lists([expected[0], None, b"", expected[2]])
    assert found.tolist() == [True, False, False, True]
    np.testing.assert_array_equal(values, [rows[0], np.zeros(dim), np.zeros(dim), rows[2]])


def test_ragged_float_lists_equal_feast_protobuf():
    lists = [[1.5, -2.0], [0.25] * 40, [], [3.0]]
    expected = [ValueProto(float_list_val=FloatList(val=v)).SerializeToString() for v in lists]
    assert encode_float_lists(pa.array(lists, pa.list_(pa.float32()))) == expected
    with pytest.raises(ValueError, match="dimension"):
        decode_float_lists(expected)


def test_null_embedding_is_refused():
    with pytest.raises(ValueError, match="1 embedding rows are null"):
        encode_float_lists(pa.array([[1.0], None], pa.list_(pa.float32())))


def test_push_writes_the_same_bytes_as_feasts_writer(applied_workdir, redis_url):
    store = feature_store(applied_workdir)
    ids = [3, 1, -7, 2**62]
    rows = embedding_rows("pin", ids, dim=16, fixed_size=False)
    versions = pa.array(["a", None, "b", "a"])  # a null is written as an unset ValueProto
    rows = rows.set_column(rows.schema.get_field_index("model_version"), "model_version", versions)
    assert push_rows(store, "ctr_pin_embedding", rows) == len(ids)
    ours = raw_hashes(redis_url, store, "ctr_pin_embedding", ids)

    redis.Redis.from_url(redis_url).flushdb()
    # Feast's own write takes the feature names (it applies no field_mapping)
    names = {c: feature_name("ctr", "pin", c) for c in PUBLISHED_COLUMNS}
    frame = rows.to_pandas().rename(columns=names)
    store.write_to_online_store("ctr_pin_embedding", frame)
    feasts = raw_hashes(redis_url, store, "ctr_pin_embedding", ids)

    assert all(len(h) == 4 for h in ours)  # 3 features + the _ts field
    assert ours == feasts


def test_push_then_get_online_features_for_several_views(applied_workdir):
    store = feature_store(applied_workdir)
    users, pins = [10, 11, 12, 2**40], [5, 6, 7, 8, 9]
    pushed = {
        "ctr_user_embedding": embedding_rows("user", users, seed=1),
        "cvr_user_embedding": embedding_rows("user", users, seed=2, model_version="cvr-1"),
        "ctr_pin_embedding": embedding_rows("pin", pins, dim=32, seed=3, fixed_size=False),
    }
    for view, rows in pushed.items():
        push_rows(store, view, rows)
    for view, rows in pushed.items():
        assert_online_equals(store, view, rows)
    # A user id is not a Pin id: nothing was written to the Pin views for them.
    assert online(store, "cvr_pin_embedding", "pin", pins)["embedding"] == [None] * len(pins)


@pytest.mark.parametrize("later", [dt.timedelta(0), -dt.timedelta(days=1)])
def test_rerun_overwrites_even_with_an_older_or_equal_timestamp(applied_workdir, later):
    store = feature_store(applied_workdir)
    first = embedding_rows("user", [1, 2, 3], seed=1)
    push_rows(store, "ctr_user_embedding", first)
    rerun = embedding_rows("user", [1, 2], seed=2, event_timestamp=DAY + later)
    push_rows(store, "ctr_user_embedding", rerun)

    got = online(store, "ctr_user_embedding", "user", [1, 2, 3])
    expected = rerun.column("embedding").to_pylist() + [first.column("embedding")[2].as_py()]
    assert got["embedding"] == [list(np.float32(e).astype(float)) for e in expected]


def test_remove_entities_drops_one_view_and_keeps_the_other(applied_workdir, redis_url):
    store = feature_store(applied_workdir)
    push_rows(store, "ctr_user_embedding", embedding_rows("user", [1, 2, 3], seed=1))
    cvr = embedding_rows("user", [1, 2], seed=2)
    push_rows(store, "cvr_user_embedding", cvr)

    touched = remove_entities(store, "ctr_user_embedding", pa.array([1, 3, 99], pa.int64()))

    assert touched == 2  # 99 never had the view
    ctr = online(store, "ctr_user_embedding", "user", [1, 2, 3])
    assert ctr["embedding"][0] is None and ctr["embedding"][2] is None
    assert ctr["embedding"][1] is not None
    assert_online_equals(store, "cvr_user_embedding", cvr)
    key_1, key_3 = entity_keys(view_layout(store, "ctr_user_embedding"), [1, 3])
    client = redis.Redis.from_url(redis_url)
    assert client.exists(key_3) == 0  # its only view is gone, so is the hash
    fields_1 = client.hkeys(key_1)
    assert b"_ts:cvr_user_embedding" in fields_1
    assert b"_ts:ctr_user_embedding" not in fields_1


def test_key_ttl_seconds_from_the_config_is_applied(applied_workdir, redis_url):
    store = feature_store(applied_workdir)
    store.config.online_store.key_ttl_seconds = 3600
    push_rows(store, "ctr_pin_embedding", embedding_rows("pin", [4]))
    (key,) = entity_keys(view_layout(store, "ctr_pin_embedding"), [4])
    assert 0 < redis.Redis.from_url(redis_url).ttl(key) <= 3600


def test_missing_column_is_a_clear_error(applied_workdir):
    store = feature_store(applied_workdir)
    rows = embedding_rows("user", [1]).drop_columns(["model_version"])
    with pytest.raises(ValueError, match=r"lack column\(s\) \['model_version'\]"):
        push_rows(store, "ctr_user_embedding", rows)


def test_unreachable_redis_is_a_clear_error_without_the_password(applied_workdir, monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://:secret@127.0.0.1:6390/0")
    store = feature_store(applied_workdir)
    rows = embedding_rows("user", [1])
    with pytest.raises(OnlineStoreUnavailable) as error:
        push_rows(store, "ctr_user_embedding", rows)
    message = str(error.value)
    assert "online push to 'ctr_user_embedding'" in message
    assert "redis://:***@127.0.0.1:6390/0" in message
    assert "secret" not in message
    assert error.value.__cause__ is None and error.value.__suppress_context__


def test_several_connections_write_what_one_writes(applied_workdir, redis_url, monkeypatch):
    monkeypatch.setattr(online_store, "CHUNK_ROWS", 7)  # many chunks from few rows
    store = feature_store(applied_workdir)
    ids = np.r_[np.arange(60), [5, 41, 5]]  # repeated ids in later chunks: the last row wins
    rows = embedding_rows("pin", ids, dim=32, seed=3)
    client = redis.Redis.from_url(redis_url)
    written = {}
    for connections in (1, 4):
        client.flushdb()
        assert push_rows(store, "ctr_pin_embedding", rows, connections=connections) == len(ids)
        written[connections] = raw_hashes(redis_url, store, "ctr_pin_embedding", range(60))
    assert written[4] == written[1]
    last = [int(np.flatnonzero(ids == i)[-1]) for i in range(60)]
    assert_online_equals(store, "ctr_pin_embedding", rows.take(last))


def test_an_error_on_one_connection_is_raised(applied_workdir, redis_url, monkeypatch):
    monkeypatch.setattr(online_store, "CHUNK_ROWS", 7)
    store = feature_store(applied_workdir)
    (key,) = entity_keys(view_layout(store, "ctr_pin_embedding"), [30])
    redis.Redis.from_url(redis_url).set(key, b"not a hash")  # HSET on it: WRONGTYPE
    rows = embedding_rows("pin", np.arange(60))
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        push_rows(store, "ctr_pin_embedding", rows, connections=3)
    with pytest.raises(ValueError, match="at least 1"):
        push_rows(store, "ctr_pin_embedding", rows, connections=0)
