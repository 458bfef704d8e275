"""A throw-away Redis Cluster on loopback, for the cluster tests and benchmarks/online_cluster.

`local_redis_cluster` starts redis-server processes in cluster mode on free ports, joins them
with `redis-cli --cluster create` (by default 3 masters and no replicas: each master holds a
third of the 16384 slots) and waits for `cluster_state:ok`; on exit it stops them and removes
their files. Nothing is persisted (`--save ''`, no AOF). `local_redis` starts one plain server the
same way, the benchmark's one-Redis peer.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from derm_features.core.processes import stop_processes


class ClusterUnavailable(RuntimeError):
    """redis-server / redis-cli are missing or could not form a cluster here (the reason)."""


# A cluster node also listens on its port + 10000 (the cluster bus), so ports stay below
# 55536 and both numbers must be free.
_BUS_OFFSET = 10_000


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
    ports: list[int] = []
    for port in random.Random().sample(range(20_000, 45_000), 500):
        if _is_free(port) and _is_free(port + _BUS_OFFSET):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise ClusterUnavailable(f"no {count} free port pairs (port, port + 10000) on 127.0.0.1")


def _wait(check, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise ClusterUnavailable(f"{what} within {timeout_s:.0f} s")
        time.sleep(0.05)


def _cli(port: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


@contextlib.contextmanager
def _redis_servers(
    count: int, cluster: bool, timeout_s: float, node_timeout_ms: int = 15_000
) -> Iterator[list[int]]:
    """The ports of `count` fresh redis-server processes on 127.0.0.1 (nothing persisted),
    in cluster mode or not; stopped and their files removed on exit."""
    for binary in ("redis-server", "redis-cli"):
        if shutil.which(binary) is None:
            raise ClusterUnavailable(f"{binary} is not installed")
    root = Path(tempfile.mkdtemp(prefix="derm-redis-"))
    ports = _free_ports(count)
    processes: list[subprocess.Popen] = []
    try:
        for port in ports:
            args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
            args += ["--dir", str(root), "--save", "", "--appendonly", "no", "--daemonize", "no"]
            if cluster:
                args += ["--cluster-enabled", "yes"]
                args += ["--cluster-config-file", str(root / f"nodes-{port}.conf")]
                args += ["--cluster-node-timeout", str(node_timeout_ms)]
            processes.append(
                subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        for port, process in zip(ports, processes, strict=True):
            _wait(
                lambda p=port, proc=process: (
                    proc.poll() is not None or _cli(p, "ping").stdout.strip() == "PONG"
                ),
                f"redis-server on port {port} did not answer",
                timeout_s,
            )
            if process.poll() is not None:
                code = process.returncode
                raise ClusterUnavailable(f"redis-server on port {port} exited with {code}")
        yield ports
    finally:
        stop_processes(processes, timeout_s=10)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def local_redis_cluster(
    masters: int = 3, replicas: int = 0, timeout_s: float = 30.0, node_timeout_ms: int = 15_000
) -> Iterator[list[int]]:
    """The ports of a running Redis Cluster on 127.0.0.1: `masters` primaries (>= 3, as
    `redis-cli --cluster create` requires), each with `replicas` replicas, in sync (which
    ports are which: `CLUSTER NODES`). `node_timeout_ms`: how long a node may not answer
    before the others mark it failed and promote a replica (Redis's default 15 s; a short
    one on a loaded machine can fail a busy node). Raises ClusterUnavailable with the reason
    when the binaries are missing or the cluster does not form within `timeout_s` seconds."""
    count = masters * (1 + replicas)
    with _redis_servers(count, True, timeout_s, node_timeout_ms) as ports:
        created = subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports)]
            + ["--cluster-replicas", str(replicas), "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if created.returncode != 0:
            raise ClusterUnavailable(f"redis-cli --cluster create failed: {created.stdout[-500:]}")
        # every node must see the whole slot map, not just the one redis-cli asked last
        for port in ports:
            _wait(
                lambda p=port: "cluster_state:ok" in _cli(p, "cluster", "info").stdout,
                f"node {port} did not reach cluster_state:ok",
                timeout_s,
            )
            if _cli(port, "role").stdout.startswith("slave"):  # a failover needs its data
                _wait(
                    lambda p=port: "master_link_status:up" in _cli(p, "info", "replication").stdout,
                    f"replica {port} did not sync with its primary",
                    timeout_s,
                )
        yield ports


@contextlib.contextmanager
def local_redis(timeout_s: float = 30.0) -> Iterator[int]:
    """The port of one fresh plain redis-server on 127.0.0.1, started like the cluster's
    nodes (same binary, settings and niceness): the fair peer of `local_redis_cluster`."""
    with _redis_servers(1, cluster=False, timeout_s=timeout_s) as ports:
        yield ports[0]


def cluster_feast_config(folder: Path) -> Path:
    """derm's default `feature_store.yaml` with ``online_store.redis_type: redis_cluster``,
    written into `folder`: what FEAST_FS_YAML_FILE_PATH names for a cluster (with REDIS_URL
    naming one of its nodes). Returns the file's path."""
    import yaml

    from derm_features.feast.repo import DEFAULT_YAML

    config = yaml.safe_load(DEFAULT_YAML.read_text())
    config["online_store"]["redis_type"] = "redis_cluster"
    path = Path(folder) / "feature_store.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
