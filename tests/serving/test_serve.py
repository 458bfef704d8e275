"""`derm serve` over real HTTP (uvicorn on loopback), real Feast and a private real Redis.

The Redis here is a `redis-server` of this test module on a free loopback port, with a
password, so it can be killed and restarted without touching the shared one on 6379.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from materialize_helpers import VERSION, daily_table, unit_rows, write_daily
from typer.testing import CliRunner

from derm_features.cli import app as cli_app
from derm_features.commands.serving import METRICS_DIR_PREFIX, remove_stale_metrics_dirs
from derm_features.core.workdir import Workdir
from derm_features.serving.ann import IndexConfig, PinIndex, build_index
from derm_features.serving.server import MAX_IDS, ServeConfig, Services, create_app
from materialize.job import MaterializeConfig, materialize_day, push_online

DAY = dt.date(2024, 3, 1)
PASSWORD = "s3cret-pw-do-not-leak"
USERS = np.arange(1, 21, dtype=np.int64)
PINS = np.arange(5_000_000_000, 5_000_000_300, dtype=np.int64)
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """A throwaway redis-server on loopback: no persistence, a password, our own pid."""

    def __init__(self, port: int, workdir):
        self.port, self.workdir, self.process = port, workdir, None

    def start(self) -> None:
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--requirepass", PASSWORD, "--dir", str(self.workdir)]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


class LiveServer:
    """The app under uvicorn in a thread, on a socket bound before it starts."""

    def __init__(self, app):
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_config=None, access_log=True, log_level="info")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.server.started, "uvicorn did not start"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.sock.close()


def call(port: int, method: str, path: str, payload=None, raw: bytes | None = None):
    """(status, JSON body) of one request; 4xx/5xx are returned, not raised."""
    data = raw if raw is not None else (json.dumps(payload).encode() if payload else None)
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def materialize(wd: Workdir, entity: str, ids: np.ndarray, seed: int) -> dict[int, np.ndarray]:
    vectors = unit_rows(np.random.default_rng(seed), len(ids))
    key = f"{entity}_id"
    write_daily(wd, "ctr", entity, DAY, daily_table(ids, vectors, DAY, id_column=key))
    config = MaterializeConfig(wd, "ctr", entity, DAY, online=True, buckets=1, renormalize=False)
    materialize_day(config)  # no re-normalisation: the pool holds these exact floats
    return dict(zip(ids.tolist(), vectors, strict=True))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Private Redis (with a password) + applied workdir + pools + index + live server."""
    from derm_features.feast.repo import apply

    root = tmp_path_factory.mktemp("serve")
    redis = PrivateRedis(free_port(), root)
    redis.start()
    wd = Workdir(root / "workdir")
    wd.root.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REDIS_URL", f"redis://:{PASSWORD}@127.0.0.1:{redis.port}/0")
        mp.setenv("DERM_WORKDIR", str(wd.root))
        apply(wd, quiet=True)
        users = materialize(wd, "user", USERS, seed=1)
        materialize(wd, "pin", PINS, seed=2)
        build_index(IndexConfig(wd, "ctr", DAY))
        with LiveServer(create_app(ServeConfig(wd))) as server:
            yield {"port": server.port, "redis": redis, "wd": wd, "users": users}
    redis.kill()


def test_embeddings_retrieve_health_and_no_secret_anywhere(served, caplog):
    caplog.set_level(logging.INFO)
    port, users = served["port"], served["users"]
    status, health = call(port, "GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["redis"]["reachable"]
    assert health["indexes"]["ctr"]["count"] == len(PINS)
    assert health["redis"]["address"] == f"redis://:***@127.0.0.1:{served['redis'].port}/0"

    asked = [3, 999, 7]
    status, body = call(
        port, "POST", "/embeddings", {"user_ids": asked, "views": ["ctr_user_embedding"]}
    )
    assert status == 200
    values = np.array(body["views"]["ctr_user_embedding"]["values"], np.float32)
    assert body["views"]["ctr_user_embedding"]["found"] == [True, False, True]
    np.testing.assert_array_equal(values[0], users[3])
    np.testing.assert_array_equal(values[2], users[7])
    assert not values[1].any()

    status, by_user = call(port, "POST", "/retrieve", {"user_id": 4, "k": 10})
    assert status == 200 and by_user["source"] == "online" and len(by_user["pin_ids"]) == 10
    status, by_vector = call(port, "POST", "/retrieve", {"vector": users[4].tolist(), "k": 10})
    assert status == 200 and by_vector["pin_ids"] == by_user["pin_ids"]
    assert by_vector["scores"] == sorted(by_vector["scores"], reverse=True)
    status, everything = call(port, "POST", "/retrieve", {"user_id": 4, "k": 1000})
    assert status == 200 and len(everything["pin_ids"]) == len(PINS)  # fewer than k exist

    responses = [health, body, by_user]
    for payload, field, code in [
        ({"user_ids": [1], "views": ["nope"]}, "views", 422),
        ({"user_ids": ["1"], "views": ["ctr_user_embedding"]}, "user_ids", 422),
        ({"pin_ids": [1], "views": []}, "views", 422),
        ({"user_ids": [1], "views": ["ctr_user_embedding"], "extra": 1}, "extra", 422),
        ({"pin_ids": list(range(MAX_IDS + 1)), "views": ["ctr_pin_embedding"]}, "pin_ids", 422),
    ]:
        status, error = call(port, "POST", "/embeddings", payload)
        assert (status, error["field"]) == (code, field), error
        assert field in error["error"]
        responses.append(error)
    for payload, field, code in [
        ({"user_id": 1, "vector": [0.1] * 8}, "user_id", 422),
        ({"k": 5}, "user_id", 422),
        ({"vector": [0.1] * 3}, "vector", 422),
        ({"user_id": 1, "k": 0}, "k", 422),
        ({"user_id": 424242}, "user_id", 404),
        ({"user_id": 1, "model": "cvr"}, "model", 404),
    ]:
        status, error = call(port, "POST", "/retrieve", payload)
        assert (status, error["field"]) == (code, field), error
        responses.append(error)
    status, error = call(port, "POST", "/retrieve", raw=b"{not json")
    assert status == 422 and error["field"] == "body"
    status, error = call(port, "GET", "/nowhere")
    assert status == 404 and "error" in error

    # A million ids: refused by size before any parsing (413), the service lives on.
    million = {"pin_ids": list(range(1_000_000)), "views": ["ctr_pin_embedding"]}
    status, error = call(port, "POST", "/embeddings", million)
    assert status == 413 and error["field"] == "body"
    assert call(port, "GET", "/health")[0] == 200

    text = json.dumps(responses) + caplog.text
    assert "/health" in caplog.text  # the access log was captured
    assert PASSWORD not in text


def test_redis_killed_and_restarted_under_load_gives_503_then_recovers(served, caplog):
    port, redis, wd, users = served["port"], served["redis"], served["wd"], served["users"]
    statuses: list[int] = []
    stop = threading.Event()
    payload = {"user_ids": [1, 2], "pin_ids": PINS[:50].tolist(), "views": ["ctr_pin_embedding"]}

    def load() -> None:
        while not stop.is_set():
            statuses.append(call(port, "POST", "/embeddings", payload)[0])

    workers = [threading.Thread(target=load, daemon=True) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        time.sleep(0.5)
        redis.kill()
        status, error = call(port, "POST", "/embeddings", payload)
        assert status == 503
        assert f"127.0.0.1:{redis.port}" in error["error"] and "***" in error["error"]
        status, health = call(port, "GET", "/health")
        assert status == 503 and not health["redis"]["reachable"]
        # Retrieval by vector needs no Redis: the index is in memory.
        status, _ = call(port, "POST", "/retrieve", {"vector": users[1].tolist(), "k": 5})
        assert status == 200
        time.sleep(0.5)

        redis.start()  # same port, empty: re-push the rows (REDIS_URL is the fixture's)
        for entity in ("user", "pin"):
            push_online(MaterializeConfig(wd, "ctr", entity, DAY, buckets=1, renormalize=False))
        time.sleep(0.5)
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=60)

    status, body = call(
        port, "POST", "/embeddings", {"user_ids": [5], "views": ["ctr_user_embedding"]}
    )
    assert status == 200 and body["views"]["ctr_user_embedding"]["found"] == [True]
    np.testing.assert_array_equal(
        np.array(body["views"]["ctr_user_embedding"]["values"][0], np.float32), users[5]
    )
    assert call(port, "GET", "/health")[0] == 200
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    assert 503 in statuses and statuses[-1] == 200
    assert f"127.0.0.1:{redis.port}" in caplog.text  # the 503s were logged, redacted
    assert PASSWORD not in caplog.text + json.dumps(error)


def test_embeddings_and_health_on_a_redis_cluster(cluster_workdir):
    """The materializer's push, /embeddings and /health on a 3-master Redis Cluster
    (``redis_type: redis_cluster``)."""
    wd = cluster_workdir
    users = materialize(wd, "user", USERS, seed=1)
    pins = materialize(wd, "pin", PINS, seed=2)
    build_index(IndexConfig(wd, "ctr", DAY))
    asked = [*PINS[::7].tolist(), 1]  # 1 was never written
    views = ["ctr_user_embedding", "ctr_pin_embedding"]
    with LiveServer(create_app(ServeConfig(wd))) as server:
        status, health = call(server.port, "GET", "/health")
        assert status == 200 and health["redis"]["reachable"]
        payload = {"user_ids": [4], "pin_ids": asked, "views": views}
        status, body = call(server.port, "POST", "/embeddings", payload)
    assert status == 200
    user = body["views"]["ctr_user_embedding"]
    assert user["found"] == [True]
    np.testing.assert_array_equal(np.array(user["values"][0], np.float32), users[4])
    pin = body["views"]["ctr_pin_embedding"]
    assert pin["found"] == [True] * (len(asked) - 1) + [False]
    expected = [pins[i] for i in asked[:-1]] + [np.zeros_like(pins[asked[0]])]
    np.testing.assert_array_equal(np.array(pin["values"], np.float32), expected)


def test_serve_binds_loopback_by_default():
    result = CliRunner().invoke(cli_app, ["serve", "--help"])
    assert result.exit_code == 0 and "127.0.0.1" in result.output
    assert ServeConfig(Workdir.resolve("/tmp")).host == "127.0.0.1"


def test_retrieve_uses_the_manifest_beta_unless_the_service_or_request_overrides_it(tmp_path):
    """By vector only: no Redis or Feast is needed for retrieval from an in-memory index."""
    rng = np.random.default_rng(3)
    vectors = unit_rows(rng, len(PINS))
    log_pop = np.log1p(rng.permutation(len(PINS))).astype(np.float32)
    index = PinIndex.from_vectors(
        PINS, vectors, model="ctr", day=DAY, model_version=VERSION, log_popularity=log_pop,
        popularity="test",
    ).with_beta(0.2)  # fmt: skip
    plain = PinIndex.from_vectors(PINS, vectors, model="ctr", day=DAY, model_version=VERSION)
    query = unit_rows(rng, 1)
    wd = Workdir(tmp_path)

    def served_ids(config_beta, payload):
        services = Services(None, None, "-", {"ctr": index, "cvr": plain})
        app = create_app(ServeConfig(wd, beta=config_beta), services)
        with LiveServer(app) as server:
            return call(server.port, "POST", "/retrieve", {"vector": query[0].tolist(), **payload})

    def expected(beta, which=index):
        return which.retrieve(query, 10, beta)[0][0].tolist()

    status, body = served_ids(None, {"k": 10})
    assert status == 200 and body["beta"] == 0.2 and body["pin_ids"] == expected(0.2)
    status, body = served_ids(None, {"k": 10, "beta": 0.0})
    assert status == 200 and body["beta"] == 0.0 and body["pin_ids"] == expected(0.0)
    assert expected(0.0) != expected(0.2)
    status, body = served_ids(5.0, {"k": 10})  # `derm serve --beta 5`
    assert status == 200 and body["beta"] == 5.0 and body["pin_ids"] == expected(5.0)
    status, body = served_ids(5.0, {"k": 10, "beta": 0.2})  # the request wins
    assert body["pin_ids"] == expected(0.2)
    # an index without popularity: beta 0 only, a clear 422 otherwise
    status, body = served_ids(None, {"k": 10, "model": "cvr"})
    assert status == 200 and body["beta"] == 0.0 and body["pin_ids"] == expected(0.0, plain)
    status, error = served_ids(None, {"k": 10, "model": "cvr", "beta": 0.5})
    assert status == 422 and error["field"] == "beta" and "no popularity" in error["error"]


def scrape(port: int) -> tuple[str, dict]:
    """(content type, {(sample name, labels as sorted tuple): value}) of one GET /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as response:
        content_type, text = response.headers["Content-Type"], response.read().decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    return content_type, samples


def requests_of(samples: dict, endpoint: str, status: int, method: str = "POST") -> float:
    labels = (("endpoint", endpoint), ("method", method), ("status", str(status)))
    return samples.get(("derm_serve_requests_total", labels), 0.0)


def latency_count(samples: dict, endpoint: str) -> float:
    return samples.get(("derm_serve_request_seconds_count", (("endpoint", endpoint),)), 0.0)


def redis_errors(samples: dict, endpoint: str) -> float:
    return samples.get(("derm_serve_redis_errors_total", (("endpoint", endpoint),)), 0.0)


def moved(before: dict, after: dict) -> dict:
    """The samples whose value changed, by how much."""
    keys = set(before) | set(after)
    return {
        k: after.get(k, 0.0) - before.get(k, 0.0) for k in keys if after.get(k) != before.get(k)
    }


def test_metrics_count_exactly_the_requests_made(served):
    port = served["port"]
    content_type, before = scrape(port)
    assert content_type.startswith("text/plain") and "version=0.0.4" in content_type
    openmetrics = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics", headers={"Accept": "application/openmetrics-text"}
    )
    with urllib.request.urlopen(openmetrics, timeout=60) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        assert response.read().decode().rstrip().endswith("# EOF")
    read = {"user_ids": [1, 2], "views": ["ctr_user_embedding"]}
    for _ in range(3):
        assert call(port, "POST", "/embeddings", read)[0] == 200
    assert call(port, "POST", "/embeddings", {"views": []})[0] == 422
    assert call(port, "POST", "/retrieve", {"user_id": 4, "k": 5})[0] == 200
    assert call(port, "GET", "/health")[0] == 200
    assert call(port, "GET", "/no/such/route/42")[0] == 404
    big = {"pin_ids": list(range(300_000)), "views": ["ctr_pin_embedding"]}
    assert call(port, "POST", "/embeddings", big)[0] == 413
    _, after = scrape(port)

    delta = moved(before, after)
    assert requests_of(delta, "/embeddings", 200) == 3
    assert requests_of(delta, "/embeddings", 422) == 1
    assert requests_of(delta, "/embeddings", 413) == 1
    assert requests_of(delta, "/retrieve", 200) == 1
    assert requests_of(delta, "/health", 200, "GET") == 1
    assert requests_of(delta, "other", 404, "GET") == 1  # an unknown path is no label of its own
    assert requests_of(delta, "/metrics", 200, "GET") == 2  # the first scrape, the OpenMetrics one
    assert latency_count(delta, "/embeddings") == 5
    assert latency_count(delta, "/retrieve") == 1
    counted = sum(v for (name, _), v in delta.items() if name == "derm_serve_requests_total")
    assert counted == 10  # nothing else moved
    assert not any(name.startswith("derm_serve_redis_errors") for name, _ in delta)
    # every observation falls in some bucket: the +Inf bucket equals the count
    inf = ("derm_serve_request_seconds_bucket", (("endpoint", "/embeddings"), ("le", "+Inf")))
    assert after[inf] == latency_count(after, "/embeddings")


def test_a_redis_that_refuses_connections_counts_redis_errors(served, monkeypatch):
    """A second service on the same work directory, its REDIS_URL at a port nobody listens on."""
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    with LiveServer(create_app(ServeConfig(served["wd"]))) as server:
        _, before = scrape(server.port)
        payload = {"user_ids": [1], "views": ["ctr_user_embedding"]}
        assert call(server.port, "POST", "/embeddings", payload)[0] == 503
        assert call(server.port, "POST", "/embeddings", payload)[0] == 503
        assert call(server.port, "GET", "/health")[0] == 503
        # by vector: the index is in memory, Redis is not asked, nothing is counted
        vector = served["users"][1].tolist()
        assert call(server.port, "POST", "/retrieve", {"vector": vector, "k": 3})[0] == 200
        _, after = scrape(server.port)
    delta = moved(before, after)
    assert redis_errors(delta, "/embeddings") == 2
    assert redis_errors(delta, "/health") == 1
    assert redis_errors(delta, "/retrieve") == 0
    assert requests_of(delta, "/embeddings", 503) == 2


@pytest.mark.parametrize("workers", [1, 2])
def test_derm_serve_process_answers_sums_its_workers_metrics_and_cleans_up(served, workers):
    """`derm serve` as a real process: uvicorn alone, or gunicorn with two forked uvicorn
    workers; stopped by SIGTERM, it exits 0 and removes its metrics directory."""
    import os
    import sys

    import psutil

    port, redis = free_port(), served["redis"]
    env = {**os.environ, "REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:{redis.port}/0"}
    # inherited from this process (Feast's import set it): the service must not use it
    assert env["PROMETHEUS_MULTIPROC_DIR"]
    args = [sys.executable, "-m", "derm_features.cli", "serve", "--workers", str(workers)]
    args += ["--workdir", str(served["wd"].root), "--port", str(port)]
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if call(port, "GET", "/health")[0] == 200:
                    break
            except urllib.error.URLError:
                pass  # not listening yet
            time.sleep(0.2)
        assert process.poll() is None, process.stdout.read().decode()[-3000:]
        master = psutil.Process(process.pid)  # the command re-executed itself: same pid
        expected = workers if workers > 1 else 0
        while len(master.children()) < expected and time.monotonic() < deadline:
            time.sleep(0.2)  # gunicorn forks its workers one by one; one may answer first
        assert len(master.children()) == expected
        metrics_dir = master.environ()["PROMETHEUS_MULTIPROC_DIR"]  # as it re-executed
        assert os.path.isdir(metrics_dir) and metrics_dir != env["PROMETHEUS_MULTIPROC_DIR"]
        assert os.path.basename(metrics_dir).startswith(f"{METRICS_DIR_PREFIX}{process.pid}-")

        read = {"user_ids": [3], "views": ["ctr_user_embedding"]}
        for _ in range(20):
            status, body = call(port, "POST", "/embeddings", read)
            assert status == 200
            np.testing.assert_array_equal(
                np.array(body["views"]["ctr_user_embedding"]["values"][0], np.float32),
                served["users"][3],
            )
        _, samples = scrape(port)
        # the sum over the workers: each request counted once, whichever worker answered
        assert requests_of(samples, "/embeddings", 200) == 20
        assert requests_of(samples, "/health", 200, "GET") == 1  # the poll that found it up
        assert latency_count(samples, "/embeddings") == 20
    finally:
        process.terminate()
        output = process.communicate(timeout=60)[0].decode()
    assert process.returncode == 0, output[-3000:]
    assert not os.path.exists(metrics_dir)  # the directory it made for itself is gone
    assert PASSWORD not in output


def test_metrics_directories_of_services_that_are_gone_are_removed(tmp_path):
    """A service killed before it could clean up leaves derm-serve-metrics-<pid>-<random> in
    the temp dir; the next `derm serve` removes those whose process is gone, and keeps a live
    service's, one named before pids were in the name, and anything else."""
    import os
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = tmp_path / f"{METRICS_DIR_PREFIX}{gone.pid}-a1b2"
    stale.mkdir()
    (stale / "counter_1234.db").write_bytes(b"x")
    live = tmp_path / f"{METRICS_DIR_PREFIX}{os.getpid()}-c3d4"
    old_style = tmp_path / f"{METRICS_DIR_PREFIX}k2j4h5x9"
    other = tmp_path / "someone-elses-12-dir"
    for path in (live, old_style, other):
        path.mkdir()
    assert remove_stale_metrics_dirs(tmp_path) == [stale]
    assert not stale.exists() and live.is_dir() and old_style.is_dir() and other.is_dir()
