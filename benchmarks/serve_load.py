"""Bounded HTTP load on loopback: `derm serve` vs `feast serve`, same entities, same Redis.

    .venv/bin/python -m benchmarks.serve_load [--requests 400 --threads 4 --entities 100]
        [--workers 1]

Both servers run as their own processes (`--workers`, default one each), started here on free
loopback ports over one fresh work directory and Redis DB 13 (flushed at start and end).
Each scenario sends a fixed number of requests from a few threads, one keep-alive
connection per thread, and stops by itself:

- feast  POST /get-online-features  {features: [ctr_pin_embedding:ctr_pin_embedding],
                                     entities: {pin_id: [N ids]}}
- derm   POST /embeddings           {pin_ids: [N ids], views: [ctr_pin_embedding]}
- derm   POST /retrieve             {user_id: U, k: 100} (online user vector + HNSW)

Reports p50/p99 latency and throughput per scenario, and feast / derm ratios.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from derm_features.core.processes import stop_processes
from derm_features.core.workdir import Workdir
from derm_features.feast.repo import REPO_ROOT, apply
from derm_features.serving.ann import IndexConfig, build_index
from materialize.job import MaterializeConfig, materialize_day

DAY = dt.date(2024, 3, 1)
USER_BASE, PIN_BASE = 1_000_000_000, 5_000_000_000
VENV_BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class LoadConfig:
    requests: int
    threads: int
    entities: int
    users: int
    pins: int
    dim: int
    redis_db: int
    workers: int = 1  # server processes of each (derm serve --workers, feast serve --workers)


@dataclass(frozen=True)
class Result:
    name: str
    p50_ms: float
    p99_ms: float
    per_s: float
    errors: int
    first_error: str  # body of the first non-200 answer, if any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_redis_url(db: int) -> str:
    base = urlparse(os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379")
    return urlunparse(base._replace(path=f"/{db}"))


def seed_workdir(cfg: LoadConfig, wd: Workdir) -> None:
    """Pools of random unit vectors, pushed to Redis by the real job; the Pin index."""
    rng = np.random.default_rng(0)
    version = f"ctr-0badcafe-d{cfg.dim}@{DAY.isoformat()}"
    for entity, base, n in (("user", USER_BASE, cfg.users), ("pin", PIN_BASE, cfg.pins)):
        x = rng.standard_normal((n, cfg.dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        table = pa.table(
            {
                f"{entity}_id": pa.array(np.arange(n) + base, pa.int64()),
                "ts": pa.array(
                    np.full(n, np.datetime64(DAY.isoformat(), "us")), pa.timestamp("us", "UTC")
                ),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), cfg.dim),
                "model_version": pa.array([version] * n),
            }
        )
        directory = wd.daily("ctr", entity, DAY)
        directory.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, directory / "part-0.parquet")
        materialize_day(MaterializeConfig(wd, "ctr", entity, DAY, online=True))
    build_index(IndexConfig(wd, "ctr", DAY, kind="hnsw"))


def start(args: list[str], env: dict, port: int, health: str) -> subprocess.Popen:
    process = subprocess.Popen(
        args, env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{args[0]} exited: {process.stderr.read().decode()[-2000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", health)
            if connection.getresponse().status == 200:
                return process
        except OSError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"{args[0]} did not answer {health} on port {port}")


def load(name: str, port: int, path: str, bodies: list[bytes], threads: int) -> Result:
    """Sends every body once, spread over `threads` keep-alive connections."""
    latencies: list[float] = []
    errors: list = [0, ""]
    lock = threading.Lock()

    def worker(chunk: list[bytes]) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = []
        for body in chunk:
            start = time.perf_counter()
            connection.request("POST", path, body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            answer = response.read()
            mine.append(time.perf_counter() - start)
            if response.status != 200:
                with lock:
                    errors[0] += 1
                    errors[1] = errors[1] or f"{response.status} {answer[:300].decode()}"
        connection.close()
        with lock:
            latencies.extend(mine)

    workers = [threading.Thread(target=worker, args=(bodies[i::threads],)) for i in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1e3
    return Result(
        name,
        float(np.percentile(ms, 50)),
        float(np.percentile(ms, 99)),
        len(ms) / elapsed,
        errors[0],
        errors[1],
    )


def main(cfg: LoadConfig) -> None:
    import redis

    url = bench_redis_url(cfg.redis_db)
    client = redis.Redis.from_url(url)
    client.flushdb()
    root = Path(tempfile.mkdtemp(prefix="derm-serve-load-"))
    wd = Workdir(root, redis_url=url)
    env = {**os.environ, "REDIS_URL": url, "DERM_WORKDIR": str(root)}  # for the servers
    processes = []
    try:
        apply(wd, quiet=True)
        seed_workdir(cfg, wd)
        derm_port, feast_port = free_port(), free_port()
        processes.append(
            start(
                [str(VENV_BIN / "derm"), "serve", "--workdir", str(root), "--port", str(derm_port)]
                + ["--workers", str(cfg.workers)],
                env,
                derm_port,
                "/health",
            )
        )
        processes.append(
            start(
                [str(VENV_BIN / "feast"), "serve", "-h", "127.0.0.1", "-p", str(feast_port)]
                + ["--no-access-log", "--workers", str(cfg.workers)],
                env,
                feast_port,
                "/health",
            )
        )
        rng = np.random.default_rng(1)
        pin_lists = [
            (rng.choice(cfg.pins, cfg.entities, replace=False) + PIN_BASE).tolist()
            for _ in range(cfg.requests)
        ]
        users = (rng.integers(0, cfg.users, cfg.requests) + USER_BASE).tolist()
        feast_bodies = [
            json.dumps(
                {"features": ["ctr_pin_embedding:ctr_pin_embedding"], "entities": {"pin_id": pins}}
            ).encode()
            for pins in pin_lists
        ]
        derm_bodies = [
            json.dumps({"pin_ids": pins, "views": ["ctr_pin_embedding"]}).encode()
            for pins in pin_lists
        ]
        retrieve_bodies = [json.dumps({"user_id": u, "k": 100}).encode() for u in users]
        # Warm both (registry caches, connection pools) before measuring.
        load("warm", feast_port, "/get-online-features", feast_bodies[:20], 1)
        load("warm", derm_port, "/embeddings", derm_bodies[:20], 1)
        results = [
            load(
                "feast /get-online-features",
                feast_port,
                "/get-online-features",
                feast_bodies,
                cfg.threads,
            ),
            load("derm /embeddings", derm_port, "/embeddings", derm_bodies, cfg.threads),
            load("derm /retrieve k=100", derm_port, "/retrieve", retrieve_bodies, cfg.threads),
        ]
    finally:
        stop_processes(processes)
        client.flushdb()
    print(
        f"{cfg.requests} requests per scenario, {cfg.threads} threads, {cfg.workers} worker(s) "
        f"per server, {cfg.entities} Pins of "
        f"D={cfg.dim} per embeddings request ({cfg.pins} Pins, {cfg.users} users in Redis)"
    )
    for r in results:
        print(
            f"  {r.name:<28} p50 {r.p50_ms:7.2f} ms  p99 {r.p99_ms:7.2f} ms  "
            f"{r.per_s:7.1f} req/s  non-200: {r.errors}"
        )
        if r.first_error:
            print(f"    first non-200: {r.first_error}")
    feast, derm = results[0], results[1]
    print(
        f"  feast / derm embeddings: p50 {feast.p50_ms / derm.p50_ms:.1f}x, "
        f"p99 {feast.p99_ms / derm.p99_ms:.1f}x, throughput {derm.per_s / feast.per_s:.1f}x"
    )


def parse() -> LoadConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=400, help="requests per scenario")
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--entities", type=int, default=100, help="Pins per embeddings request")
    p.add_argument("--users", type=int, default=1_000)
    p.add_argument("--pins", type=int, default=20_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--redis-db", type=int, default=13, help="flushed at start and end")
    p.add_argument("--workers", type=int, default=1, help="processes of each server")
    a = p.parse_args()
    return LoadConfig(
        a.requests, a.threads, a.entities, a.users, a.pins, a.dim, a.redis_db, a.workers
    )


if __name__ == "__main__":
    main(parse())
