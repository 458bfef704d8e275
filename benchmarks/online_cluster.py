"""Online push and read on a 3-master Redis Cluster next to one Redis, in one run.

Starts a Redis Cluster on loopback (`benchmarks/redis_cluster.py`), then measures the same
work on each target in a child process of its own, configured as a user would: one Redis
through derm's default `feature_store.yaml`, the cluster through the same file with
``redis_type: redis_cluster`` (FEAST_FS_YAML_FILE_PATH) and REDIS_URL naming one node. The
one Redis is a fresh redis-server started beside the cluster's nodes (same binary, settings
and niceness), not a long-running shared one. On each target:

- push   derm `push_rows`, Feast's `write_to_online_store` and redis-py's own pipeline of
         pre-serialized HSETs (its cluster pipeline on the cluster) of N rows x D float32
         (median of --repeats, target flushed before each), read back through
         `FeatureStore.get_online_features` on a sample and compared with the input
- read   1 user + K Pins over the four views: derm `EmbeddingReader.read`, Feast's
         `get_online_features().to_dict()` and redis-py's pipelined HMGET + decode,
         interleaved in rotating order, p50 / p99, values compared

    .venv/bin/python -m benchmarks.online_cluster --rows 50000 --dim 256 --k 100

Prints each figure on both targets and cluster / one Redis, and derm against each peer per
target.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000, help="entities pushed")
    parser.add_argument("--feast-rows", type=int, default=10_000, help="rows Feast pushes")
    parser.add_argument("--dim", type=int, default=256, help="embedding dimension D")
    parser.add_argument("--repeats", type=int, default=3, help="pushes per writer (median)")
    parser.add_argument("--k", type=int, default=100, help="Pins per read request")
    parser.add_argument("--requests", type=int, default=300, help="read requests per peer")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # child: the target's label
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- child


def flush(client) -> None:
    """Empties the target: every primary of a cluster, else the one database."""
    from derm_features.feast.redis_layout import is_cluster

    if is_cluster(client):
        client.flushall(target_nodes=client.PRIMARIES)
    else:
        client.flushdb()


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def measure(args: argparse.Namespace) -> dict:
    """The push and read figures on the target this process is configured for."""
    from benchmarks.online_push import FEATURES as PUSH_FEATURES
    from benchmarks.online_push import VIEW, make_rows, read_back_matches
    from benchmarks.online_read import (
        ALL_VIEWS,
        USER_VIEWS,
        RawHmget,
        feast_read,
        rows,
        same_values,
    )
    from derm_features.core.workdir import Workdir
    from derm_features.feast.online_store import (
        EmbeddingReader,
        hset_columns,
        push_rows,
        redis_client,
    )
    from derm_features.feast.redis_layout import view_layout
    from derm_features.feast.repo import apply, feature_store

    root = Path(tempfile.mkdtemp(prefix="derm-bench-cluster-"))
    try:
        workdir = Workdir(root, redis_url=os.environ.get("REDIS_URL"))
        apply(workdir, quiet=True)
        store = feature_store(workdir)
        client = redis_client(store)
        flush(client)

        table = make_rows(args.rows, args.dim)
        feast_rows = table.slice(0, args.feast_rows)
        frame = feast_rows.to_pandas().rename(columns=PUSH_FEATURES)
        sample = np.random.default_rng(1).choice(args.feast_rows, 500, replace=False)
        # the floor: redis-py's own pipeline (its cluster pipeline on a cluster), values
        # serialized beforehand
        columns = hset_columns(view_layout(store, VIEW), table)
        full = [[c] * args.rows if isinstance(c, bytes) else c for c in columns[1:]]
        per_row = list(zip(*full, strict=True))

        def raw_push() -> None:
            for start in range(0, args.rows, 1024):
                with client.pipeline(transaction=False) as pipe:
                    for command in per_row[start : start + 1024]:
                        pipe.execute_command("HSET", *command)
                    pipe.execute()

        writers = {
            "derm": (lambda: push_rows(store, VIEW, table), table),
            "feast": (lambda: store.write_to_online_store(VIEW, frame), feast_rows),
            "raw": (raw_push, table),
        }
        push: dict[str, list[float]] = {name: [] for name in writers}
        equal = True
        for _ in range(args.repeats):
            for name, (write, written) in writers.items():
                flush(client)  # Feast would skip rows that are not newer
                push[name].append(written.num_rows / timed(write))
                equal &= read_back_matches(store, written, sample)

        flush(client)
        rng = np.random.default_rng(0)
        user_ids, pin_ids = np.arange(2_000) * 31 + 7, np.arange(20_000) * 17 + 3
        for seed, view in enumerate(ALL_VIEWS):
            entity, ids = ("user", user_ids) if view in USER_VIEWS else ("pin", pin_ids)
            push_rows(store, view, rows(entity, ids, args.dim, seed))
        reader = EmbeddingReader(store)
        raw = RawHmget(client, {v: view_layout(store, v) for v in ALL_VIEWS}, args.dim)
        latency: dict[str, list[int]] = {"derm": [], "feast": [], "raw": []}
        for request in range(-10, args.requests):  # negative: warm-up, untimed
            user, pins = int(rng.choice(user_ids)), rng.choice(pin_ids, args.k, replace=False)
            pins[: args.k // 20] *= -1  # 5 % ids that were never written
            peers = {
                "derm": partial(reader.read, [user], pins, ALL_VIEWS),
                "feast": partial(feast_read, store, user, pins),
                "raw": partial(raw.read_pipeline, user, pins),
            }
            order = list(peers)[request % 3 :] + list(peers)[: request % 3]  # rotated
            results = {}
            for name in order:
                start = time.perf_counter_ns()
                results[name] = peers[name]()
                if request >= 0:
                    latency[name].append(time.perf_counter_ns() - start)
            if request < 20:
                equal &= same_values(results["derm"], results["raw"], results["feast"])
        flush(client)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {f"push {name} rows/s": statistics.median(r) for name, r in push.items()}
    for name, samples in latency.items():
        ms = np.asarray(samples) / 1e6
        result[f"read {name} p50 ms"] = float(np.percentile(ms, 50))
        result[f"read {name} p99 ms"] = float(np.percentile(ms, 99))
    result["equal"] = bool(equal)
    return result


# ----------------------------------------------------------------------------- parent


def run_child(args: argparse.Namespace, label: str, env: dict) -> dict:
    command = [sys.executable, "-m", "benchmarks.online_cluster", "--measure", label]
    for flag in ("rows", "feast_rows", "dim", "repeats", "k", "requests"):
        command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{label} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    args = parse_args()
    if args.measure:
        print(json.dumps(measure(args)))
        return
    from benchmarks.redis_cluster import cluster_feast_config, local_redis, local_redis_cluster

    with contextlib.ExitStack() as stack:
        ports = stack.enter_context(local_redis_cluster(masters=3))
        single = stack.enter_context(local_redis())
        config = cluster_feast_config(stack.enter_context(tempfile.TemporaryDirectory()))
        env = {k: v for k, v in os.environ.items() if k != "FEAST_FS_YAML_FILE_PATH"}
        one = run_child(args, "one Redis", {**env, "REDIS_URL": f"redis://127.0.0.1:{single}"})
        cluster_env = {
            **env,
            "REDIS_URL": f"redis://127.0.0.1:{ports[0]}",
            "FEAST_FS_YAML_FILE_PATH": str(config),
        }
        cluster = run_child(args, "cluster", cluster_env)

    print(
        f"online store on a 3-master Redis Cluster (loopback) vs one Redis: push {args.rows} "
        f"rows x {args.dim}-d (Feast {args.feast_rows}), median of {args.repeats}; read 1 user "
        f"+ {args.k} Pins x 4 views, {args.requests} requests"
    )
    print(f"  {'':28s} {'one Redis':>12s} {'cluster':>12s} {'cluster/one':>12s}")
    for name in one:
        if name == "equal":
            continue
        print(
            f"  {name:28s} {one[name]:12,.2f} {cluster[name]:12,.2f} "
            f"{cluster[name] / one[name]:11.2f}x"
        )
    for label, figures in (("one Redis", one), ("cluster", cluster)):
        feast = figures["push derm rows/s"] / figures["push feast rows/s"]
        raw = figures["push derm rows/s"] / figures["push raw rows/s"]
        read_feast = figures["read feast p50 ms"] / figures["read derm p50 ms"]
        read_raw = figures["read raw p50 ms"] / figures["read derm p50 ms"]
        print(
            f"  {label}: derm push {feast:.1f}x Feast, {raw:.2f}x redis-py's pipeline; derm "
            f"read p50 {read_feast:.1f}x faster than Feast, {read_raw:.2f}x than redis-py's "
            f"pipeline; values equal across peers: {figures['equal']}"
        )


if __name__ == "__main__":
    main()
