"""Shared fixtures: a real Redis database per test, temporary work directories, local Spark.

Redis: tests use database `DERM_TEST_REDIS_DB` (default 15) of the server at REDIS_URL
(default redis://127.0.0.1:6379) and flush that database before and after each test that
asks for it, so nothing leaks between tests or into the user's database 0. A test holds
an exclusive file lock on that database while it runs: two pytest sessions on one machine
(several engineers, or a benchmark beside the tests) would otherwise flush each other's
data mid-test, which shows up as values read back as None.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import pytest

from derm_features.core.workdir import Workdir


def _test_redis_url() -> str:
    base = urlparse(os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379")
    db = os.environ.get("DERM_TEST_REDIS_DB", "15")
    return urlunparse(base._replace(path=f"/{db}"))


@pytest.fixture
def redis_url(monkeypatch) -> str:
    """REDIS_URL pointed at the test database, flushed before and after the test."""
    import redis

    url = _test_redis_url()
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"tests need a Redis at {url.split('@')[-1]} (run scripts/setup.sh): {exc}")
    lock_name = f"derm-test-redis-{urlparse(url).port or 6379}-{urlparse(url).path.strip('/')}"
    with open(Path(tempfile.gettempdir()) / f"{lock_name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        client.flushdb()
        monkeypatch.setenv("REDIS_URL", url)
        yield url
        client.flushdb()
    client.close()


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Workdir:
    """An empty work directory; DERM_WORKDIR points at it for the test."""
    root = tmp_path / "workdir"
    root.mkdir()
    monkeypatch.setenv("DERM_WORKDIR", str(root))
    return Workdir(root)


@pytest.fixture
def applied_workdir(workdir, redis_url) -> Workdir:
    """A work directory with the DERM Feast objects applied (real `feast apply`)."""
    from derm_features.feast.repo import apply

    apply(workdir, quiet=True)
    return workdir


@pytest.fixture(scope="session")
def spark():
    """A local[2] Spark session on loopback, shared by the whole test session."""
    from materialize.engines.spark_session import local_spark

    session = local_spark("local[2]", shuffle_partitions=2)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_cluster():
    """The ports of a 3-master Redis Cluster started on loopback for this test session
    (benchmarks/redis_cluster.py); skips with the reason when one cannot start here."""
    from benchmarks.redis_cluster import ClusterUnavailable, local_redis_cluster

    try:
        with local_redis_cluster(masters=3) as ports:
            yield ports
    except ClusterUnavailable as exc:
        pytest.skip(f"no Redis Cluster here: {exc}")


@pytest.fixture
def cluster_workdir(workdir, redis_cluster, tmp_path, monkeypatch) -> Workdir:
    """A work directory applied against the session's Redis Cluster, emptied first: derm's
    default Feast config with ``redis_type: redis_cluster`` (FEAST_FS_YAML_FILE_PATH) and
    REDIS_URL naming one node (redis-py finds the others)."""
    from redis.cluster import RedisCluster

    from benchmarks.redis_cluster import cluster_feast_config
    from derm_features.feast.repo import apply

    monkeypatch.setenv("FEAST_FS_YAML_FILE_PATH", str(cluster_feast_config(tmp_path)))
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{redis_cluster[0]}")
    client = RedisCluster(host="127.0.0.1", port=redis_cluster[0])
    client.flushall(target_nodes=RedisCluster.PRIMARIES)
    client.close()
    apply(workdir, quiet=True)
    return workdir
