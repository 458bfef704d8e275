"""derm's push, removal and reads on a real 3-master Redis Cluster (Feast's ``redis_type:
redis_cluster``), checked against Feast's own SDK on the same cluster.

The cluster is started on loopback once per session (`redis_cluster` in conftest.py); each
test empties it. The ids of one request hash to slots on all three nodes (asserted), so a
request that went to one node only would read back None for the others. The tests that stop
a node start a cluster of their own.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from redis.cluster import RedisCluster
from test_online_push import assert_online_equals, embedding_rows, online
from test_online_read import ALL_VIEWS, feast_embeddings

from benchmarks.redis_cluster import cluster_feast_config
from derm_features.core.spec import PUBLISHED_COLUMNS, feature_name
from derm_features.core.workdir import Workdir
from derm_features.feast import online_store
from derm_features.feast.online_store import (
    EmbeddingReader,
    OnlineStoreUnavailable,
    check_reachable,
    push_rows,
    redis_client,
    remove_entities,
)
from derm_features.feast.redis_layout import entity_keys, view_layout
from derm_features.feast.repo import feature_store


def cluster_client(ports) -> RedisCluster:
    return RedisCluster(host="127.0.0.1", port=ports[0])


def nodes_of(client: RedisCluster, keys) -> set[str]:
    """The names of the nodes that serve `keys`."""
    return {client.nodes_manager.get_node_from_slot(client.keyslot(k)).name for k in keys}


def test_the_store_client_is_redis_py_cluster_client(cluster_workdir, redis_cluster):
    store = feature_store(cluster_workdir)
    client = redis_client(store)
    assert isinstance(client, RedisCluster)
    assert sorted(node.port for node in client.get_primaries()) == sorted(redis_cluster)
    assert "db=" not in store.config.online_store.connection_string  # a cluster has db 0 only
    check_reachable(store, "derm status")  # raises when the cluster does not answer


def test_push_reads_back_equal_through_derm_and_feast(cluster_workdir, redis_cluster):
    store = feature_store(cluster_workdir)
    users, pins = [10, 11, 12, 2**40, -5], np.arange(1000, 1060)
    pushed = {
        "ctr_user_embedding": embedding_rows("user", users, dim=16, seed=1),
        "cvr_user_embedding": embedding_rows("user", users[:3], dim=16, seed=2),
        "ctr_pin_embedding": embedding_rows("pin", pins, dim=16, seed=3, fixed_size=False),
    }
    for view, rows in pushed.items():
        assert push_rows(store, view, rows) == rows.num_rows
    keys = entity_keys(view_layout(store, "ctr_pin_embedding"), pins)
    assert len(nodes_of(cluster_client(redis_cluster), keys)) == 3  # one push, every node

    for view, rows in pushed.items():
        assert_online_equals(store, view, rows)  # Feast's get_online_features
    reader = EmbeddingReader(store, dims=dict.fromkeys(ALL_VIEWS, 16))
    user_ids, pin_ids = users + [77], [*pins[::-1], 5, pins[3]]  # unknown ids, a repeat
    result = reader.read(user_ids, pin_ids, ALL_VIEWS)
    for view, (values, found) in result.items():
        ids = user_ids if "_user_" in view else pin_ids
        expected = feast_embeddings(store, view, ids)
        assert found.tolist() == [e is not None for e in expected], view
        assert values.tolist() == [e if e is not None else [0.0] * 16 for e in expected]
    assert result["ctr_pin_embedding"][1].sum() == len(pins) + 1  # not a vacuous match
    assert result["cvr_user_embedding"][1].tolist() == [True] * 3 + [False] * 3


def test_push_writes_the_same_bytes_as_feasts_writer_on_the_cluster(cluster_workdir, redis_cluster):
    store = feature_store(cluster_workdir)
    ids = [3, 1, -7, 2**62, *range(100, 130)]
    rows = embedding_rows("pin", ids, dim=16)
    push_rows(store, "ctr_pin_embedding", rows)
    client = cluster_client(redis_cluster)
    keys = entity_keys(view_layout(store, "ctr_pin_embedding"), ids)
    assert len(nodes_of(client, keys)) == 3
    ours = [client.hgetall(k) for k in keys]

    client.flushall(target_nodes=RedisCluster.PRIMARIES)
    names = {c: feature_name("ctr", "pin", c) for c in PUBLISHED_COLUMNS}
    store.write_to_online_store("ctr_pin_embedding", rows.to_pandas().rename(columns=names))
    feasts = [client.hgetall(k) for k in keys]

    assert all(len(h) == 4 for h in ours)  # 3 features + the _ts field
    assert ours == feasts


def test_remove_entities_on_the_cluster_drops_one_view(cluster_workdir, redis_cluster):
    store = feature_store(cluster_workdir)
    ids = list(range(1, 31))
    push_rows(store, "ctr_user_embedding", embedding_rows("user", ids, seed=1))
    cvr = embedding_rows("user", ids[:10], seed=2)
    push_rows(store, "cvr_user_embedding", cvr)
    removed = ids[::2]

    touched = remove_entities(store, "ctr_user_embedding", pa.array([*removed, 999], pa.int64()))

    assert touched == len(removed)  # 999 never had the view
    got = online(store, "ctr_user_embedding", "user", ids)["embedding"]
    assert [g is None for g in got] == [i in removed for i in ids]
    assert_online_equals(store, "cvr_user_embedding", cvr)  # the other view stays
    client = cluster_client(redis_cluster)
    keys = entity_keys(view_layout(store, "ctr_user_embedding"), removed)
    assert len(nodes_of(client, keys)) == 3
    # entities with only the removed view are gone; those with cvr keep their hash
    assert [client.exists(k) for k, i in zip(keys, removed, strict=True)] == [
        int(i <= 10) for i in removed
    ]


def test_a_cluster_url_selecting_a_database_is_refused(workdir, redis_cluster, monkeypatch):
    config = cluster_feast_config(workdir.root)
    monkeypatch.setenv("FEAST_FS_YAML_FILE_PATH", str(config))
    bad = Workdir(workdir.root, redis_url=f"redis://127.0.0.1:{redis_cluster[0]}/12")
    with pytest.raises(ValueError, match="selects database 12, but a Redis Cluster"):
        feature_store(bad)
    zero = Workdir(workdir.root, redis_url=f"redis://127.0.0.1:{redis_cluster[0]}/0")
    assert "db=" not in feature_store(zero).config.online_store.connection_string


def test_an_unreachable_cluster_is_a_clear_error(cluster_workdir, monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://:secret@127.0.0.1:6391")
    store = feature_store(cluster_workdir)
    with pytest.raises(OnlineStoreUnavailable) as error:
        push_rows(store, "ctr_user_embedding", embedding_rows("user", [1]))
    assert "online push to 'ctr_user_embedding'" in str(error.value)
    assert "redis://:***@127.0.0.1:6391" in str(error.value)
    assert "secret" not in str(error.value)
    with pytest.raises(OnlineStoreUnavailable, match="127.0.0.1:6391"):
        EmbeddingReader(store)
    with pytest.raises(OnlineStoreUnavailable, match="derm status"):
        check_reachable(store, "derm status")


def test_the_reader_fails_fast_on_every_node(cluster_workdir):
    reader = EmbeddingReader(feature_store(cluster_workdir))
    client = reader.client
    assert client.retry.get_retries() == 0
    assert client.nodes_manager.connection_kwargs["socket_timeout"] == 2.0  # nodes found later
    for node in client.get_nodes():  # and the connections of every known node, even those
        pool = node.redis_connection.connection_pool  # opened to learn the slot map
        connection = pool.get_connection()
        assert connection.socket_timeout == connection.socket_connect_timeout == 2.0
        assert connection.retry.get_retries() == 0
        pool.release(connection)
    values, found = reader.read([1], [], ["ctr_user_embedding"])["ctr_user_embedding"]
    assert not found.any()  # and it still reads


def test_reads_and_pushes_follow_slots_moved_after_the_client_learned_the_map(
    cluster_workdir, redis_cluster
):
    """A client's slot map goes stale when slots migrate (resharding, scale-out): commands
    sent to the old owner come back MOVED and go again through redis-py's cluster pipeline."""
    import subprocess

    store = feature_store(cluster_workdir)
    pins = np.arange(1, 401)
    first = embedding_rows("pin", pins, dim=8, seed=1)
    push_rows(store, "ctr_pin_embedding", first)
    reader = EmbeddingReader(store)
    reader.read([], pins[:3], ["ctr_pin_embedding"])  # the reader has its slot map now
    source, target = redis_cluster[0], redis_cluster[1]
    ids = {
        port: subprocess.run(
            ["redis-cli", "-p", str(port), "cluster", "myid"], capture_output=True, text=True
        ).stdout.strip()
        for port in (source, target)
    }
    moved = subprocess.run(
        # fmt: off
        [
            "redis-cli",
            "--cluster",
            "reshard",
            f"127.0.0.1:{source}",
            "--cluster-from",
            ids[source],
            "--cluster-to",
            ids[target],
            "--cluster-slots",
            "2000",
            "--cluster-yes",
        ],
        # fmt: on
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert moved.returncode == 0, moved.stdout[-2000:]

    keys = entity_keys(view_layout(store, "ctr_pin_embedding"), pins)
    now = cluster_client(redis_cluster)
    stale = [
        reader.client.nodes_manager.get_node_from_slot(now.keyslot(k)).port
        != now.nodes_manager.get_node_from_slot(now.keyslot(k)).port
        for k in keys
    ]
    assert 0 < sum(stale) < len(pins)  # some keys live elsewhere than the reader believes

    values, found = reader.read([], pins, ["ctr_pin_embedding"])["ctr_pin_embedding"]
    assert found.all()
    expected = np.asarray(first.column("embedding").to_pylist(), np.float32)
    np.testing.assert_array_equal(values, expected)

    second = embedding_rows("pin", pins, dim=8, seed=2)  # the store's client is stale too
    assert push_rows(store, "ctr_pin_embedding", second) == len(pins)
    assert_online_equals(store, "ctr_pin_embedding", second)
    assert remove_entities(store, "ctr_pin_embedding", pa.array(pins, pa.int64())) == len(pins)
    assert [now.exists(k) for k in keys] == [0] * len(pins)


def test_feasts_own_redis_type_with_a_list_of_nodes_works_and_db_is_refused(
    workdir, redis_cluster, monkeypatch
):
    """A team's config: Feast's `redis` store type, its connection_string used as written."""
    import yaml

    from derm_features.feast.repo import apply

    def team_config(connection_string: str) -> None:
        config = yaml.safe_load(cluster_feast_config(workdir.root).read_text())
        config["online_store"] = {
            "type": "redis",
            "redis_type": "redis_cluster",
            "connection_string": connection_string,
        }
        path = workdir.root / "feature_store.yaml"
        path.write_text(yaml.safe_dump(config))
        monkeypatch.setenv("FEAST_FS_YAML_FILE_PATH", str(path))

    nodes = ",".join(f"127.0.0.1:{port}" for port in redis_cluster)
    team_config(f"{nodes},db=0")
    with pytest.raises(ValueError, match="has a db= part, but a Redis Cluster"):
        feature_store(workdir)

    team_config(nodes)
    cluster_client(redis_cluster).flushall(target_nodes=RedisCluster.PRIMARIES)
    apply(workdir, quiet=True)
    store = feature_store(workdir)
    rows = embedding_rows("user", range(1, 41), seed=5)
    push_rows(store, "ctr_user_embedding", rows)
    assert_online_equals(store, "ctr_user_embedding", rows)
    values, found = EmbeddingReader(store).read(range(1, 41), [], ["ctr_user_embedding"])[
        "ctr_user_embedding"
    ]
    assert found.all()
    np.testing.assert_array_equal(values, np.asarray(rows.column("embedding").to_pylist()))


def test_the_reader_recovers_when_every_node_dropped_its_connections(
    cluster_workdir, redis_cluster
):
    import redis

    store = feature_store(cluster_workdir)
    pins = np.arange(1, 61)
    push_rows(store, "ctr_pin_embedding", embedding_rows("pin", pins, dim=4))
    reader = EmbeddingReader(store)
    assert reader.read([], pins, ["ctr_pin_embedding"])["ctr_pin_embedding"][1].all()
    killed = 0
    for port in redis_cluster:  # as a restart of every node would (only normal clients)
        admin = redis.Redis(port=port)
        killed += admin.client_kill_filter(_type="normal", skipme=True)
        admin.close()
    assert killed >= 3  # at least the reader's pooled connection to each node
    assert reader.read([], pins, ["ctr_pin_embedding"])["ctr_pin_embedding"][1].all()


def test_a_node_down_mid_life_is_a_clear_error_not_a_wrong_answer(cluster_workdir, monkeypatch):
    """Its own cluster: one node is shut down after the reader learned the slot map."""
    import subprocess

    from benchmarks.redis_cluster import local_redis_cluster

    with local_redis_cluster(masters=3) as ports:
        monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{ports[0]}")
        store = feature_store(cluster_workdir)
        pins = np.arange(1, 61)
        push_rows(store, "ctr_pin_embedding", embedding_rows("pin", pins, dim=4))
        reader = EmbeddingReader(store)
        assert reader.read([], pins, ["ctr_pin_embedding"])["ctr_pin_embedding"][1].all()
        subprocess.run(["redis-cli", "-p", str(ports[2]), "shutdown", "nosave"], timeout=30)
        with pytest.raises(OnlineStoreUnavailable, match=f"127.0.0.1:{ports[0]}"):
            reader.read([], pins, ["ctr_pin_embedding"])
        with pytest.raises(OnlineStoreUnavailable, match="online push"):
            push_rows(store, "ctr_pin_embedding", embedding_rows("pin", pins, dim=4))


def test_after_a_failover_the_reader_and_the_push_follow_the_promoted_replica(
    cluster_workdir, monkeypatch
):
    """Its own cluster, 3 primaries with a replica each: a primary dies, its replica takes
    over its slots, and the clients that knew the old map follow (redis-py refreshes it)."""
    import subprocess
    import time

    from benchmarks.redis_cluster import local_redis_cluster

    def cli(port, *args) -> str:
        done = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True)
        return done.stdout.decode()

    with local_redis_cluster(masters=3, replicas=1, node_timeout_ms=1000) as ports:
        monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{ports[0]}")
        store = feature_store(cluster_workdir)
        pins = np.arange(1, 61)
        first = embedding_rows("pin", pins, dim=4, seed=1)
        push_rows(store, "ctr_pin_embedding", first)
        reader = EmbeddingReader(store)
        assert reader.read([], pins, ["ctr_pin_embedding"])["ctr_pin_embedding"][1].all()
        admin = cluster_client(ports)
        victim = next(n.port for n in admin.get_primaries() if n.port != ports[0])
        keys = entity_keys(view_layout(store, "ctr_pin_embedding"), pins)
        assert any(admin.get_node_from_key(k).port == victim for k in keys)
        victim_id = cli(victim, "cluster", "myid").strip()
        (replica,) = [
            int(line.split()[1].split(":")[1].split("@")[0])
            for line in cli(ports[0], "cluster", "nodes").splitlines()
            if f"slave {victim_id}" in line
        ]
        assert cli(victim, "wait", "1", "5000").strip() == "1"  # its replica has every row
        cli(victim, "shutdown", "nosave")
        deadline = time.monotonic() + 60  # a bounded wait for the election, not a timing check
        survivors = [port for port in ports if port != victim]
        while time.monotonic() < deadline:  # every node that redis-py may ask knows it now
            views = [cli(port, "cluster", "nodes") for port in survivors]
            if all(
                f":{replica}@" in line and "master" in line.split()[2]
                for view in views
                for line in view.splitlines()
                if f":{replica}@" in line
            ) and all("cluster_state:ok" in cli(port, "cluster", "info") for port in survivors):
                break
            time.sleep(0.1)
        else:
            pytest.fail("no replica took over within 60 s")

        # The reader retries nothing (fail_fast): a read fails while redis-py refreshes the
        # map (the first one, unless the load here delays it), and none answers wrong.
        answer = None
        for _ in range(3):
            try:
                answer = reader.read([], pins, ["ctr_pin_embedding"])["ctr_pin_embedding"]
                break
            except OnlineStoreUnavailable:
                pass
        assert answer is not None, "the reader kept the dead primary in its slot map"
        values, found = answer
        assert found.all()
        np.testing.assert_array_equal(values, np.asarray(first.column("embedding").to_pylist()))

        second = embedding_rows("pin", pins, dim=4, seed=2)  # the push client retries
        assert push_rows(store, "ctr_pin_embedding", second) == len(pins)
        assert_online_equals(store, "ctr_pin_embedding", second)


def test_several_connections_in_flight_on_the_cluster(cluster_workdir, monkeypatch):
    monkeypatch.setattr(online_store, "CHUNK_ROWS", 7)  # many chunks, each on every node
    store = feature_store(cluster_workdir)
    pins = np.r_[np.arange(1000, 1060), [1003, 1003]]  # a repeated id: its last row wins
    rows = embedding_rows("pin", pins, dim=16, seed=4)
    assert push_rows(store, "ctr_pin_embedding", rows, connections=3) == len(pins)
    last = [int(np.flatnonzero(pins == p)[-1]) for p in np.unique(pins)]
    assert_online_equals(store, "ctr_pin_embedding", rows.take(last))
