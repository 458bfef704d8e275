"""Materialization benchmark (issue 4, "Show" parts 1-2), peers run in one process.

1. Compute only, on the same in-memory arrays: the kernel (`merge_day` + `split_annotated`,
   what the local engine runs per bucket, here on the whole pool at once) vs a
   straightforward pandas implementation (sort + groupby().tail(1) dedup, outer merge,
   per-row combine) vs the NumPy floor: one pass of w*a + (1-w)*b over pool-sized
   (entities x dim) float32 arrays, the least any merge must touch. The kernel runs on
   `default_threads()` threads (what the local engine uses) and again on one, since the
   peer and the floor are single-threaded. Then, separately, the
   local engine end to end through the job (Parquet in and out, validation, metrics).
2. The Spark engine vs the local engine end to end on the same input, through the job
   (Spark session started before the clock runs; each engine run twice, the first warms up).

    .venv/bin/python -m benchmarks.materialize [--entities 1000000] [--dim 256]
        [--updated 0.3] [--repeat 3] [--spark-entities 200000] [--no-spark] [--cluster] [--no-part1]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
# This file is named like the `materialize` package: take its folder off the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]
sys.path.insert(0, str(ROOT / "tests"))

from materialize_helpers import daily_table, write_daily  # noqa: E402

from derm_features.core.arrays import fixed_size_list  # noqa: E402
from derm_features.core.workdir import Workdir  # noqa: E402
from materialize.job import MaterializeConfig, materialize_offline  # noqa: E402
from materialize.kernel import (  # noqa: E402
    PREV_DAILY_TYPE,
    TIMESTAMP,
    KernelParams,
    day_start,
    default_threads,
    merge_day,
    split_annotated,
)
from materialize.storage import (  # noqa: E402
    bucket_of,
    buckets_for,
    write_layout,
    write_pool_bucket,
)

DAY = dt.date(2024, 6, 2)
W = 0.8


def unit(rng, n, dim):
    x = rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_inputs(entities: int, dim: int, updated: float, seed: int = 0):
    """pool(t-1) of `entities` unit vectors and day t's rows for a random `updated` share."""
    rng = np.random.default_rng(seed)
    pool_emb = unit(rng, entities, dim)
    ids = np.arange(entities, dtype=np.int64)
    seen = np.sort(rng.choice(entities, int(entities * updated), replace=False))
    daily_emb = unit(rng, len(seen), dim)
    last_seen = pa.array(
        np.full(entities, int(day_start(DAY - dt.timedelta(days=1)).timestamp() * 1e6)),
        TIMESTAMP,
    )
    version = f"ctr-0a1b2c3d-d{dim}@2024-06-01"
    pool = pa.table(
        {
            "user_id": ids,
            "embedding": fixed_size_list(pool_emb),
            "last_seen": last_seen,
            "prev_daily": pa.nulls(entities, PREV_DAILY_TYPE),
            "model_version": pa.array([version] * entities),
        }
    )
    daily = daily_table(seen, daily_emb, DAY, version=day_version(dim))
    return pool, daily, pool_emb, seen, daily_emb


def day_version(dim: int) -> str:
    """The model version stamped on the day's rows (D = `dim`)."""
    return f"ctr-0a1b2c3d-d{dim}@{DAY}"


def repeated_daily(seen: np.ndarray, daily_emb: np.ndarray, copies: int) -> pa.Table:
    """`copies` rows per entity, shuffled; the real embedding has the latest `ts`."""
    rng = np.random.default_rng(5)
    n = len(seen)
    ids = np.tile(seen, copies)
    noise = unit(rng, n * (copies - 1), daily_emb.shape[1])
    emb = np.concatenate([noise, daily_emb])  # the last copy is the day's real value
    seconds = np.repeat(np.arange(copies), n) * 3600
    order = rng.permutation(len(ids))
    version = day_version(daily_emb.shape[1])
    return daily_table(ids[order], emb[order], DAY, seconds[order], version=version)


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def pandas_peer(pool_emb, seen, daily_emb, daily_ts):
    """What one would write first: object columns of vectors, groupby + merge + apply."""
    pool_df = pd.DataFrame({"user_id": np.arange(len(pool_emb)), "embedding": list(pool_emb)})
    daily_df = pd.DataFrame({"user_id": seen, "ts": daily_ts, "daily": list(daily_emb)})
    last = daily_df.sort_values(["user_id", "ts"]).groupby("user_id").tail(1)
    merged = pool_df.merge(last[["user_id", "daily"]], on="user_id", how="outer")
    merged["embedding"] = [
        d
        if not isinstance(e, np.ndarray)
        else (e if not isinstance(d, np.ndarray) else W * e + (1 - W) * d)
        for e, d in zip(merged["embedding"], merged["daily"], strict=True)
    ]
    merged["embedding"] = [v / np.linalg.norm(v) for v in merged["embedding"]]
    return merged


def prepare_workdir(root: Path, pool: pa.Table, daily: pa.Table) -> Workdir:
    """A work directory holding pool(t-1) (written in the engines' bucket layout, as the
    local engine would) and the raw daily rows of day t."""
    wd = Workdir(root)
    previous = wd.pool("ctr", "user", DAY - dt.timedelta(days=1))
    buckets = buckets_for(pool.num_rows, pool.schema.field("embedding").type.list_size)
    bucket = bucket_of(pool["user_id"], buckets)
    files = [
        write_pool_bucket(previous, k, pool.filter(pa.array(bucket == k))) for k in range(buckets)
    ]
    write_layout(previous, buckets, files)
    write_daily(wd, "ctr", "user", DAY, daily)
    return wd


def run_day(wd: Workdir, engine: str, spark=None) -> float:
    config = MaterializeConfig(
        workdir=wd, model="ctr", entity="user", day=DAY, engine=engine, w=W, online=False
    )
    start = time.perf_counter()
    materialize_offline(config, spark=spark)
    return time.perf_counter() - start


def part1(entities: int, dim: int, updated: float, repeat: int) -> None:
    pool, daily, pool_emb, seen, daily_emb = make_inputs(entities, dim, updated)
    params = KernelParams(day=DAY, id_column="user_id", heuristic="ma", w=W)
    # The floor: one pass of w*a + (1-w)*b over pool-sized arrays (b: the day's vectors
    # spread over the pool), the least any merge must touch.
    b = np.zeros_like(pool_emb)
    b[seen] = daily_emb
    out = np.empty_like(pool_emb)

    def floor():
        np.multiply(pool_emb, W, out=out)
        out.__iadd__((1 - W) * b)

    def kernel(threads=None):
        split_annotated(merge_day(pool, daily, params, dim, threads=threads), "user_id")

    daily_ts = daily["ts"].to_numpy()
    print(f"part 1: {entities:,} entities x {dim} dims, {updated:.0%} updated (ma, w={W})")
    print("  compute only, same in-memory arrays, best of", repeat)
    t_floor = best_of(floor, repeat)
    print(f"  numpy floor (w*a+(1-w)*b, pool-sized)  {t_floor:8.3f} s", flush=True)
    t_kernel = best_of(kernel, repeat)
    threads = default_threads()
    print(f"  kernel (merge_day + split_annotated)   {t_kernel:8.3f} s  ({threads} threads)")
    t_kernel1 = best_of(lambda: kernel(threads=1), repeat)
    print(f"  kernel on one thread                   {t_kernel1:8.3f} s", flush=True)
    # Tower outputs repeat an entity once per impression, in ts order: the same day with
    # each updated entity 3 times (the last by ts wins), rows shuffled, for the dedup's cost.
    repeated = repeated_daily(seen, daily_emb, copies=3)
    t_repeated = best_of(
        lambda: split_annotated(merge_day(pool, repeated, params, dim), "user_id"), repeat
    )
    same = merge_day(pool, repeated, params, dim).equals(merge_day(pool, daily, params, dim))
    print(f"  kernel, 3 rows per entity, shuffled    {t_repeated:8.3f} s  (same result: {same})")
    t_pandas = best_of(lambda: pandas_peer(pool_emb, seen, daily_emb, daily_ts), 2)
    print(f"  pandas groupby/merge peer (best of 2)  {t_pandas:8.3f} s")
    print(f"  kernel vs pandas: {t_pandas / t_kernel:6.1f}x faster (target >= 20x)")
    print(f"  kernel vs floor : {t_kernel / t_floor:6.2f}x the floor (target <= 3x)", flush=True)
    print(
        f"  one thread      : {t_pandas / t_kernel1:6.1f}x faster than pandas, "
        f"{t_kernel1 / t_floor:.2f}x the floor (pandas and the floor run on one thread)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        wd = prepare_workdir(Path(tmp), pool, daily)
        t_local = run_day(wd, "local")
    print("  end to end, local engine (Parquet pool(t-1) + daily in, pool(t) + offline out,")
    print(f"  validation, metrics; one run)          {t_local:8.3f} s", flush=True)


def part2(entities: int, dim: int, updated: float, cluster: bool = False) -> None:
    from materialize.engines.spark_session import local_spark, standalone_cluster

    pool, daily, *_ = make_inputs(entities, dim, updated)
    print(f"part 2: Spark vs local engine end to end, {entities:,} x {dim}, same input")
    masters = {"local[2]": contextlib.nullcontext("local[2]")}
    if cluster:  # a master and two 1-core workers on loopback (pyspark's own launcher)
        masters["standalone 2x1"] = standalone_cluster(workers=2, cores=1, memory="2g")
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(2):
            times.setdefault("local", []).append(
                run_day(prepare_workdir(Path(tmp) / f"local-{i}", pool, daily), "local")
            )
        for n, (name, context) in enumerate(masters.items()):
            with context as master:
                spark = local_spark(master, shuffle_partitions=2)
                try:
                    # Two runs: the first pays warm-up (JIT, Python workers and their imports).
                    times[name] = [
                        run_day(
                            # no brackets in paths: Spark reads "local[2]" as a glob
                            prepare_workdir(Path(tmp) / f"spark{n}-{i}", pool, daily),
                            "spark",
                            spark,
                        )
                        for i in range(2)
                    ]
                finally:
                    spark.stop()
    best_local = min(times["local"])
    for name, runs in times.items():
        label = "local engine" if name == "local" else f"spark {name}"
        print(
            f"  {label:22s} first {runs[0]:8.3f} s  best {min(runs):8.3f} s"
            f"  / local {min(runs) / best_local:6.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entities", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--updated", type=float, default=0.3)
    parser.add_argument("--repeat", type=int, default=3, help="runs of the floor and kernel")
    parser.add_argument("--spark-entities", type=int, default=200_000)
    parser.add_argument("--no-spark", action="store_true")
    parser.add_argument(
        "--cluster", action="store_true", help="also on a standalone cluster on loopback"
    )
    parser.add_argument("--no-part1", action="store_true", help="only the Spark comparison")
    args = parser.parse_args()
    if not args.no_part1:
        part1(args.entities, args.dim, args.updated, args.repeat)
    if not args.no_spark:
        part2(args.spark_entities, args.dim, args.updated, args.cluster)


if __name__ == "__main__":
    main()
