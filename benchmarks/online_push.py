"""Online push throughput: derm's `push_rows` vs Feast's `write_to_online_store`.

derm runs with each `--connections` value (chunks in flight at once, each on its own
connection) and with one connection, the push before several were kept in flight. Same
rows (N entities x D float32 plus `last_seen` / `model_version`) into the same Redis
database, each writer from its natural input (Arrow for ours, the pandas frame Feast
takes; the conversion is not timed). A raw pipelined HSET of pre-serialized values
(redis-py, no encoding in the timed part) is the floor. After each writer, a sample is
read back through `FeatureStore.get_online_features` and compared with the input, and
the raw hashes of every writer are compared byte for byte with Feast's. redis-server's CPU
seconds during each write (INFO cpu, user + sys) are printed as a share of one core: near
100 % the single-threaded server, not the client, is the limit.

    .venv/bin/python -m benchmarks.online_push --rows 200000 --dim 256 --connections 2 4

Uses Redis DB 14 (flushed at start and end) and a fresh work directory under /tmp.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import statistics
import time

import numpy as np
import pyarrow as pa

from benchmarks.online_store import add_redis_url_flag, scratch_store
from derm_features.core.spec import PUBLISHED_COLUMNS, feature_name

VIEW = "ctr_pin_embedding"
FEATURES = {c: feature_name("ctr", "pin", c) for c in PUBLISHED_COLUMNS}  # column -> feature
DAY = dt.datetime(2024, 3, 5, tzinfo=dt.UTC)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000, help="entities to write")
    parser.add_argument("--dim", type=int, default=256, help="embedding dimension D")
    parser.add_argument("--repeats", type=int, default=3, help="runs per writer (median)")
    parser.add_argument("--sample", type=int, default=2_000, help="rows read back to check")
    parser.add_argument(
        "--connections", type=int, nargs="+", default=[2], help="derm's chunks in flight"
    )
    add_redis_url_flag(parser)
    return parser.parse_args()


def make_rows(n: int, dim: int) -> pa.Table:
    rng = np.random.default_rng(0)
    values = rng.standard_normal((n, dim)).astype(np.float32)
    values /= np.linalg.norm(values, axis=1, keepdims=True)
    stamp = pa.timestamp("us", "UTC")
    return pa.table(
        {
            "pin_id": pa.array(rng.permutation(n).astype(np.int64) * 7919 + 11),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), dim),
            "last_seen": pa.array([DAY - dt.timedelta(hours=1)] * n, stamp),
            "model_version": pa.array(["ctr-2024-03-04"] * n),
            "event_timestamp": pa.array([DAY] * n, stamp),
        }
    )


def read_back_matches(store, rows: pa.Table, sample: np.ndarray) -> bool:
    """get_online_features of the sampled rows equals the input values."""
    ids = rows.column("pin_id").to_numpy()[sample]
    got = store.get_online_features(
        features=[f"{VIEW}:{FEATURES['embedding']}", f"{VIEW}:{FEATURES['model_version']}"],
        entity_rows=[{"pin_id": int(i)} for i in ids],
    ).to_dict()
    got = {column: got.get(feature) for column, feature in FEATURES.items()}
    if any(v is None for v in got["embedding"]):
        return False
    embeddings = rows.column("embedding").combine_chunks().flatten().to_numpy()
    expected = embeddings.reshape(rows.num_rows, -1)[sample]
    versions = rows.column("model_version").to_numpy(zero_copy_only=False)[sample].tolist()
    return bool(
        np.array_equal(np.asarray(got["embedding"], dtype=np.float32), expected)
        and got["model_version"] == versions
    )


def server_cpu_s(client) -> float:
    """redis-server's CPU seconds so far (user + sys, all its threads)."""
    cpu = client.info("cpu")
    return cpu["used_cpu_user"] + cpu["used_cpu_sys"]


def timed(run, client) -> tuple[float, float]:
    """(wall seconds of `run()`, redis-server CPU seconds meanwhile)."""
    cpu = server_cpu_s(client)
    start = time.perf_counter()
    run()
    wall = time.perf_counter() - start
    return wall, server_cpu_s(client) - cpu


def main() -> None:
    args = parse_args()
    from derm_features.feast.online_store import hset_columns, push_rows
    from derm_features.feast.redis_layout import entity_keys, view_layout

    with scratch_store(args.redis_url, "online-push") as (store, client):
        rows = make_rows(args.rows, args.dim)
        # Feast's own write takes the feature names (it applies no field_mapping)
        frame = rows.to_pandas().rename(columns=FEATURES)
        sample = np.random.default_rng(1).choice(args.rows, min(args.sample, args.rows), False)
        sample_keys = entity_keys(
            view_layout(store, VIEW), rows.column("pin_id").to_numpy()[sample]
        )

        # Floor: a redis-py pipelined HSET of values serialized beforehand.
        columns = hset_columns(view_layout(store, VIEW), rows)
        full = [[c] * args.rows if isinstance(c, bytes) else c for c in columns]
        per_row = list(zip(*full, strict=True))

        def raw_hset() -> None:
            for start in range(0, args.rows, 1024):
                with client.pipeline(transaction=False) as pipe:
                    for command in per_row[start : start + 1024]:
                        pipe.execute_command(*command)
                    pipe.execute()

        runs = {
            "feast": lambda: store.write_to_online_store(VIEW, frame),
            "derm-1": lambda: push_rows(store, VIEW, rows, connections=1),
            **{
                f"derm-{k}": functools.partial(push_rows, store, VIEW, rows, connections=k)
                for k in args.connections
                if k != 1
            },
            "raw": raw_hset,
        }
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
        checks: dict[str, bool] = {}
        hashes: dict[str, list] = {}
        for _ in range(args.repeats):
            for name, run in runs.items():  # interleaved, so load changes hit all alike
                client.flushdb()  # Feast would skip rows that are not newer
                results[name].append(timed(run, client))
                checks[name] = read_back_matches(store, rows, sample)
                hashes[name] = [client.hgetall(k) for k in sample_keys]

    print(
        f"online push: {args.rows} rows x {args.dim}-d float32 into {VIEW}, "
        f"median of {args.repeats} runs"
    )
    labels = {
        "feast": "Feast write_to_online_store",
        "derm-1": "derm push_rows, 1 connection",
        **{f"derm-{k}": f"derm push_rows, {k} connections" for k in args.connections if k != 1},
        "raw": "raw pipelined HSET (pre-serialized)",
    }
    rate = {}
    for name, label in labels.items():
        wall = statistics.median(w for w, _ in results[name])
        server = statistics.median(c / w for w, c in results[name])
        rate[name] = args.rows / wall
        print(
            f"  {label:38s} {rate[name]:>10,.0f} rows/s   redis-server at {server:4.0%} of a "
            f"core   read back equal: {checks[name]}   hashes equal Feast's: "
            f"{hashes[name] == hashes['feast']}"
        )
    best = max((n for n in rate if n.startswith("derm-")), key=rate.get)
    print(
        f"  {labels[best]}: {rate[best] / rate['feast']:.1f}x Feast, "
        f"{rate[best] / rate['derm-1']:.2f}x one connection, {rate[best] / rate['raw']:.2f}x raw"
    )
    print(
        f"  target >= 150,000 rows/s: {'met' if rate[best] >= 150_000 else 'not met'} "
        f"({rate[best]:,.0f})"
    )


if __name__ == "__main__":
    main()
