"""Bounded HTTP load on loopback: `derm serve` vs `feast serve` and the HTTP floor, same Redis.

    .venv/bin/python -m benchmarks.serve_load [--requests 400 --threads 4 --entities 100]
        [--workers 1]

Both servers run as their own processes (`--workers`, default one each), started here on free
loopback ports over one fresh work directory and Redis DB 13 (flushed at start and end).
A third, `benchmarks.serve_floor`, is uvicorn answering every request with derm's answer to
the first one: the cost of HTTP alone for that answer, and the most this client can measure.
Each scenario sends a fixed number of requests from threads, one keep-alive connection per
thread, first one request at a time (1 thread: latency), then `--threads` at once
(throughput), and stops by itself:

- floor  POST /embeddings           the derm bodies, one constant answer
- derm   POST /embeddings           {user_ids: [U], pin_ids: [N ids],
                                     views: [ctr_user_embedding, ctr_pin_embedding]}
- feast  POST /get-online-features  {features: [ctr_user_embedding:..., ctr_pin_embedding:...],
                                     entities: {user_id: [U] * N, pin_id: [N ids]}}
- derm   POST /retrieve             {user_id: U, k: 100} (online user vector + HNSW)

Reports p50/p99 latency, throughput and the CPU each request cost the server's processes,
this client and redis-server (CPU is what a loaded machine distorts least), feast / derm
ratios, and issue 15 target 4 (p50 <= 5 ms on one worker, >= 1,000 req/s), met or not.
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
FEAST_PATH = "/get-online-features"


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
    clients: int  # requests in flight at once (threads, one keep-alive connection each)
    p50_ms: float
    p99_ms: float
    per_s: float
    errors: int
    first_error: str  # body of the first non-200 answer, if any
    # CPU seconds spent per request, in ms: by the server's processes (all its workers), by
    # this load generator, by redis-server (INFO cpu; other users of a shared Redis add in)
    server_cpu_ms: float
    client_cpu_ms: float
    redis_cpu_ms: float


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


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (gunicorn's workers), from /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it exited meanwhile
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += parents.get(tree[-1], [])
    return tree


def cpu_seconds(root: int | None) -> float:
    """User + system CPU seconds of the process tree under `root` (Linux /proc), walked
    afresh each call: workers a server restarts mid-run (gunicorn's `max_requests`, as
    `feast serve` sets) count once their parent reaps them, through its children's time."""
    if root is None:
        return 0.0
    total = 0
    for pid in process_tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # it exited meanwhile
            continue
        # utime, stime, and cutime, cstime: the reaped children's
        total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total / os.sysconf("SC_CLK_TCK")


def redis_cpu_seconds(client) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def load(
    name: str,
    port: int,
    path: str,
    bodies: list[bytes],
    threads: int,
    server_pid: int | None = None,
    redis_client=None,
) -> Result:
    """Sends every body once, spread over `threads` keep-alive connections (one thread each),
    and measures latency, throughput and the CPU each side spent per request."""
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
    server_before, client_before = cpu_seconds(server_pid), time.process_time()
    redis_before = redis_cpu_seconds(redis_client) if redis_client else 0.0
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    redis_used = redis_cpu_seconds(redis_client) - redis_before if redis_client else 0.0
    client_used = time.process_time() - client_before
    server_used = cpu_seconds(server_pid) - server_before
    ms = np.array(latencies) * 1e3
    return Result(
        name,
        threads,
        float(np.percentile(ms, 50)),
        float(np.percentile(ms, 99)),
        len(ms) / elapsed,
        errors[0],
        errors[1],
        server_used / len(ms) * 1e3,
        client_used / len(ms) * 1e3,
        redis_used / len(ms) * 1e3,
    )


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main(cfg: LoadConfig) -> None:
    import redis

    url = bench_redis_url(cfg.redis_db)
    client = redis.Redis.from_url(url)
    client.flushdb()
    root = Path(tempfile.mkdtemp(prefix="derm-serve-load-"))
    wd = Workdir(root, redis_url=url)
    env = {**os.environ, "REDIS_URL": url, "DERM_WORKDIR": str(root)}  # for the servers
    processes = []
    load_before = os.getloadavg()
    try:
        apply(wd, quiet=True)
        seed_workdir(cfg, wd)
        derm_port, feast_port, floor_port = free_port(), free_port(), free_port()
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
        views = ["ctr_user_embedding", "ctr_pin_embedding"]
        # Feast reads features of two entities in one call from entity rows that carry both
        # join keys: one (user, Pin) row per Pin, the same user on each (a feature service's
        # call), so its answer holds the user's vector once per Pin.
        feast_bodies = [
            json.dumps(
                {
                    "features": [f"{view}:{view}" for view in views],
                    "entities": {"user_id": [user] * len(pins), "pin_id": pins},
                }
            ).encode()
            for user, pins in zip(users, pin_lists, strict=True)
        ]
        derm_bodies = [
            json.dumps({"user_ids": [user], "pin_ids": pins, "views": views}).encode()
            for user, pins in zip(users, pin_lists, strict=True)
        ]
        retrieve_bodies = [json.dumps({"user_id": u, "k": 100}).encode() for u in users]
        # Warm both (registry caches, connection pools) before measuring.
        load("warm", feast_port, FEAST_PATH, feast_bodies[:20], 1)
        load("warm", derm_port, "/embeddings", derm_bodies[:20], 1)
        # The floor answers every request with derm's own answer to the first one.
        answer = http_post(derm_port, "/embeddings", derm_bodies[0])
        (root / "floor-answer.json").write_bytes(answer)
        floor_args = [sys.executable, "-m", "benchmarks.serve_floor", "--port", str(floor_port)]
        floor_args += ["--body", str(root / "floor-answer.json")]
        processes.append(start(floor_args, env, floor_port, "/health"))
        load("warm", floor_port, "/embeddings", derm_bodies[:20], 1)
        pids = {"floor": processes[2].pid, "derm": processes[0].pid, "feast": processes[1].pid}
        scenarios = [
            ("floor: constant answer", floor_port, "/embeddings", derm_bodies, "floor"),
            ("derm /embeddings", derm_port, "/embeddings", derm_bodies, "derm"),
            ("feast /get-online-features", feast_port, FEAST_PATH, feast_bodies, "feast"),
        ]
        results = []
        for clients in (1, cfg.threads):
            for name, port, path, bodies, server in scenarios:
                results.append(load(name, port, path, bodies, clients, pids[server], client))
        results.append(
            load(
                "derm /retrieve k=100",
                derm_port,
                "/retrieve",
                retrieve_bodies,
                cfg.threads,
                pids["derm"],
                client,
            )
        )
    finally:
        stop_processes(processes)
        client.flushdb()
    load_after = os.getloadavg()
    report(cfg, results, len(answer), load_before, load_after)


def http_post(port: int, path: str, body: bytes) -> bytes:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("POST", path, body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    answer = response.read()
    connection.close()
    if response.status != 200:
        raise RuntimeError(f"{path}: {response.status} {answer[:300].decode()}")
    return answer


def report(cfg: LoadConfig, results: list[Result], answer_bytes: int, before, after) -> None:
    cores = os.cpu_count() or 1
    print(
        f"{cfg.requests} requests per scenario, {cfg.workers} worker(s) per server, 1 user + "
        f"{cfg.entities} Pins of D={cfg.dim} per embeddings request (derm's answer "
        f"{answer_bytes / 1e3:.0f} kB; {cfg.pins} Pins, {cfg.users} users in Redis); "
        f"{cores} cores; load average {before[0]:.2f} before, {after[0]:.2f} after"
    )
    print("  CPU ms per request: the server's processes / this client / redis-server")
    for r in results:
        print(
            f"  {r.name:<28} {r.clients} client(s)  p50 {r.p50_ms:7.2f} ms  "
            f"p99 {r.p99_ms:7.2f} ms  {r.per_s:7.1f} req/s  CPU {r.server_cpu_ms:5.2f} / "
            f"{r.client_cpu_ms:4.2f} / {r.redis_cpu_ms:4.2f} ms  non-200: {r.errors}"
        )
        if r.first_error:
            print(f"    first non-200: {r.first_error}")
    by = {(r.name, r.clients): r for r in results}
    for clients in sorted({1, cfg.threads}):
        feast, derm = by["feast /get-online-features", clients], by["derm /embeddings", clients]
        print(
            f"  feast / derm, {clients} client(s): p50 {feast.p50_ms / derm.p50_ms:.1f}x, "
            f"p99 {feast.p99_ms / derm.p99_ms:.1f}x, throughput {derm.per_s / feast.per_s:.1f}x"
        )
    one, many = by["derm /embeddings", 1], by["derm /embeddings", cfg.threads]
    floor = by["floor: constant answer", cfg.threads]
    print(
        f"  the client is not the limit: {floor.per_s:.0f} req/s from the constant answer, "
        f"{floor.per_s / many.per_s:.1f}x derm's"
    )
    spent = many.server_cpu_ms + many.client_cpu_ms + many.redis_cpu_ms
    print(
        f"  CPU per derm request at {cfg.threads} clients: {spent:.2f} ms in all, so {cores} "
        f"idle cores answer at most {cores * 1000 / spent:.0f} req/s with client and Redis "
        f"on them"
    )
    print("issue 15 target 4:")
    if cfg.workers == 1:
        print(
            f"  p50 <= 5 ms on one worker: {one.p50_ms:.2f} ms one request at a time "
            f"({met(one.p50_ms <= 5)}), {many.p50_ms:.2f} ms with {cfg.threads} in flight "
            f"({met(many.p50_ms <= 5)})"
        )
    print(
        f"  >= 1,000 req/s with {cfg.workers} worker(s) on {cores} cores: {many.per_s:.0f} "
        f"req/s ({met(many.per_s >= 1000)})"
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
