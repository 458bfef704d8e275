"""`EmbeddingReader` returns what `FeatureStore.get_online_features` returns, as arrays.

Real Feast and real Redis (DB 15): rows are pushed with `derm_features.feast.online_store.push_rows`
(whose layout is checked byte for byte against Feast's writer in test_online_push.py)
and read back by both paths.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pyarrow as pa
import pytest
import redis
from test_online_push import embedding_rows

from derm_features.core.spec import feature_name
from derm_features.feast.online_store import (
    EmbeddingReader,
    OnlineStoreUnavailable,
    dedicated_async_redis_client,
    push_rows,
    redis_client,
    remove_entities,
)
from derm_features.feast.repo import feature_store

ALL_VIEWS = ["ctr_user_embedding", "ctr_pin_embedding", "cvr_user_embedding", "cvr_pin_embedding"]


def feast_embeddings(store, view: str, ids) -> list:
    model, entity = view.split("_")[:2]
    feature = feature_name(model, entity, "embedding")
    rows = [{f"{entity}_id": int(i)} for i in ids]
    return store.get_online_features(features=[f"{view}:{feature}"], entity_rows=rows).to_dict()[
        feature
    ]


def test_reader_equals_get_online_features_with_missing_entities(applied_workdir):
    store = feature_store(applied_workdir)
    push_rows(store, "ctr_user_embedding", embedding_rows("user", [1, 2], dim=16, seed=1))
    push_rows(store, "cvr_user_embedding", embedding_rows("user", [2], dim=16, seed=2))
    pins = np.arange(100, 140)
    push_rows(store, "ctr_pin_embedding", embedding_rows("pin", pins, dim=16, seed=3))
    push_rows(store, "cvr_pin_embedding", embedding_rows("pin", pins[::3], dim=16, seed=4))
    remove_entities(store, "ctr_pin_embedding", pa.array([104], pa.int64()))

    user_ids = [1]
    pin_ids = [103, 104, 999, 100, 103, 2**50, 139]  # a removed Pin, unknown ones, a repeat
    reader = EmbeddingReader(store, dims=dict.fromkeys(ALL_VIEWS, 16))
    result = reader.read(user_ids, pin_ids, ALL_VIEWS)

    assert sorted(result) == sorted(ALL_VIEWS)
    for view, (values, found) in result.items():
        ids = user_ids if "_user_" in view else pin_ids
        expected = feast_embeddings(store, view, ids)
        assert values.dtype == np.float32 and values.shape == (len(ids), 16)
        assert found.tolist() == [e is not None for e in expected]
        for row, feast_value in zip(values, expected, strict=True):
            assert row.tolist() == (feast_value if feast_value is not None else [0.0] * 16)
    # The user has ctr but not cvr; the spot checks guard against a vacuous comparison.
    assert result["ctr_user_embedding"][1].tolist() == [True]
    assert result["cvr_user_embedding"][1].tolist() == [False]
    assert result["ctr_pin_embedding"][1].tolist() == [True, False, False, True, True, False, True]


def test_reader_gives_zeros_when_nothing_is_found(applied_workdir):
    store = feature_store(applied_workdir)
    reader = EmbeddingReader(store, dims={"ctr_pin_embedding": 8})
    result = reader.read([], [5, 6], ["ctr_pin_embedding", "ctr_user_embedding"])
    values, found = result["ctr_pin_embedding"]
    assert values.shape == (2, 8) and not values.any() and not found.any()
    values, found = result["ctr_user_embedding"]
    assert values.shape == (0, 0) and found.shape == (0,)


def test_reader_learns_the_dimension_and_refuses_a_different_one(applied_workdir):
    store = feature_store(applied_workdir)
    push_rows(store, "ctr_user_embedding", embedding_rows("user", [1], dim=4))
    reader = EmbeddingReader(store)
    reader.read([1], [], ["ctr_user_embedding"])
    values, found = reader.read([2], [], ["ctr_user_embedding"])["ctr_user_embedding"]
    assert values.shape == (1, 4) and not found.any()
    push_rows(store, "ctr_user_embedding", embedding_rows("user", [3], dim=6))
    with pytest.raises(ValueError, match="6-d values, not 4"):
        reader.read([3], [], ["ctr_user_embedding"])


def test_reader_unreachable_redis_is_a_clear_error(applied_workdir, monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://:secret@127.0.0.1:6390/0")
    reader = EmbeddingReader(feature_store(applied_workdir))
    # fail fast: no retries with backoff, bounded socket waits
    assert reader.client.get_retry().get_retries() == 0
    kwargs = reader.client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == 2.0
    with pytest.raises(OnlineStoreUnavailable) as error:
        reader.read([1], [2, 3], ALL_VIEWS)
    assert "redis://:***@127.0.0.1:6390/0" in str(error.value)
    assert "secret" not in str(error.value)


def test_reader_recovers_when_its_pooled_connection_was_dropped(applied_workdir, redis_url):
    store = feature_store(applied_workdir)
    push_rows(store, "ctr_user_embedding", embedding_rows("user", [1], dim=4))
    reader = EmbeddingReader(store)
    reader.read([1], [], ["ctr_user_embedding"])
    # The pool's one idle connection is the one `client_id` runs on; kill it server-side,
    # as a Redis restart would (only this connection: other clients share the server).
    connection_id = reader.client.client_id()
    assert redis.Redis.from_url(redis_url).client_kill_filter(_id=connection_id) == 1
    values, found = reader.read([1], [], ["ctr_user_embedding"])["ctr_user_embedding"]
    assert found.tolist() == [True] and values.shape == (1, 4)


def test_reader_has_connections_of_its_own_configured_like_the_store(applied_workdir):
    # Sharing Feast's connections lets Feast's slow reply consumption set the server's
    # TCP pacing for our reads (BENCHMARKS.md, online read): the pool must be separate.
    store = feature_store(applied_workdir)
    feast_client = redis_client(store)
    reader = EmbeddingReader(store)
    assert reader.client.connection_pool is not feast_client.connection_pool
    ours = reader.client.connection_pool.connection_kwargs
    theirs = feast_client.connection_pool.connection_kwargs
    for name in ("host", "port", "db", "username", "password", "ssl"):
        assert ours.get(name) == theirs.get(name), name
    assert reader.client.client_id() != feast_client.client_id()


def read_async(store, reader: EmbeddingReader, user_ids, pin_ids, views) -> dict:
    """`reader.read_async` in an event loop of its own, on a fresh asyncio client."""

    async def read() -> dict:
        client = await dedicated_async_redis_client(store)
        # fail fast, as the sync client does
        assert client.get_retry().get_retries() == 0
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == 2.0
        try:
            return await reader.read_async(client, user_ids, pin_ids, views)
        finally:
            await client.aclose()

    return asyncio.run(read())


def test_read_async_equals_read(applied_workdir):
    """`derm serve` reads /embeddings through redis.asyncio: the same arrays as `read`
    (found, missing, removed, repeated entities; two views of one entity in one HMGET)."""
    store = feature_store(applied_workdir)
    push_rows(store, "ctr_user_embedding", embedding_rows("user", [1, 2], dim=16, seed=1))
    pins = np.arange(100, 400)  # replies span several socket reads
    push_rows(store, "ctr_pin_embedding", embedding_rows("pin", pins, dim=16, seed=3))
    push_rows(store, "cvr_pin_embedding", embedding_rows("pin", pins[::3], dim=16, seed=4))
    remove_entities(store, "ctr_pin_embedding", pa.array([104], pa.int64()))
    user_ids, pin_ids = [1, 7], [103, 104, 999, *range(100, 400), 103]
    reader = EmbeddingReader(store, dims=dict.fromkeys(ALL_VIEWS, 16))

    got = read_async(store, reader, user_ids, pin_ids, ALL_VIEWS)
    expected = reader.read(user_ids, pin_ids, ALL_VIEWS)
    assert sorted(got) == sorted(expected)
    for view, (values, found) in expected.items():
        np.testing.assert_array_equal(got[view][0], values)
        np.testing.assert_array_equal(got[view][1], found)
    assert got["ctr_pin_embedding"][1][:3].tolist() == [True, False, False]
    assert got["ctr_user_embedding"][1].tolist() == [True, False]


def test_read_async_unreachable_redis_is_the_same_clear_error(applied_workdir, monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://:secret@127.0.0.1:6390/0")
    store = feature_store(applied_workdir)
    with pytest.raises(OnlineStoreUnavailable) as error:
        read_async(store, EmbeddingReader(store), [1], [2, 3], ALL_VIEWS)
    assert "online embedding read" in str(error.value)
    assert "redis://:***@127.0.0.1:6390/0" in str(error.value)
    assert "secret" not in str(error.value)
