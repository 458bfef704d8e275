"""Pin retrieval on a generated log: recall@k of next-day clicks, and ANN vs exact latency.

    .venv/bin/python -m benchmarks.retrieval [--users 20000 --pins 5000 --days 10]

(`-m` from the repository root: run as a file, benchmarks/materialize.py would shadow
the `materialize` package.)

1. `derm generate`'s world (`generate_logs`) -> logs and the latent truth.
2. Daily tower outputs made from the truth plus noise: a user seen on day t gets
   normalise(interest(u, t) + noise), a Pin seen on day t normalise(content(p) + noise).
   These stand in for the upstream model's outputs ("truth + noise", not a trained model),
   and go through the real `materialize.job.materialize_day` (moving-average pools).
3. The Pin index of day D (the day before the last) from that pool (`derm_features.ann`).
   Then again with embeddings of the trained upstream model: the real daily job
   (`derm backfill`, ctr, the demo's model shape) on the same log (skip: --no-trained).
4. For every user who clicks on day D+1 and is in the user pool of day D: recall@k of
   the Pins they click on day D+1, for the index (HNSW), exact search (NumPy), the most
   clicked Pins up to day D (popularity) and k random Pins of the pool.
5. Single-query latency p50/p99, HNSW vs NumPy brute force, on the pool and on a larger
   synthetic pool (clustered vectors), where the difference shows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from derm_features.ann import (
    IndexConfig,
    PinIndex,
    build_index,
    exact_search,
    l2_normalise,
    load_index,
)
from derm_features.generate import GenerateConfig, generate_logs, interest_at
from derm_features.provenance import ModelVersion
from derm_features.workdir import Workdir, ds
from materialize.job import MaterializeConfig, materialize_day
from materialize.kernel import embedding_matrix
from materialize.storage import read_pool

LINEAGE = "0badcafe"


@dataclass(frozen=True)
class BenchConfig:
    out: Path
    users: int
    pins: int
    days: int
    impressions: int
    noise: float
    k: int
    seed: int
    synthetic_pins: int
    synthetic_dim: int
    queries: int
    trained: bool


def matrix(table: pa.Table, column: str) -> np.ndarray:
    flat = table[column].combine_chunks().flatten().to_numpy()
    return flat.reshape(table.num_rows, -1)


def noisy_unit(rng: np.random.Generator, signal: np.ndarray, noise: float) -> np.ndarray:
    """normalise(unit(signal) + noise * N(0, I/d)): a tower output that is mostly truth."""
    d = signal.shape[1]
    x = l2_normalise(signal) + noise * rng.standard_normal(signal.shape) / np.sqrt(d)
    return l2_normalise(x)


def write_daily_outputs(cfg: BenchConfig, wd: Workdir, truth: Path) -> list[dt.date]:
    """Daily tower outputs of every day of the log, from the truth plus noise."""
    users = pq.read_table(truth / "users.parquet")
    pins = pq.read_table(truth / "pins.parquet")
    a, b = matrix(users, "interest_a"), matrix(users, "interest_b")
    rate, phase = users["drift_rate"].to_numpy(), users["drift_phase"].to_numpy()
    content = matrix(pins, "content")
    user_base, pin_base = users["user_id"][0].as_py(), pins["pin_id"][0].as_py()
    days = sorted(dt.date.fromisoformat(p.name[3:]) for p in wd.logs.glob("ds=*"))
    rng = np.random.default_rng(cfg.seed + 1)
    for t, day in enumerate(days):
        log = pq.read_table(wd.logs / ds(day), columns=["user_id", "pin_id", "ts"])
        version = str(ModelVersion("ctr", LINEAGE, content.shape[1], day))
        for entity, base in (("user", user_base), ("pin", pin_base)):
            ids = np.unique(log[f"{entity}_id"].to_numpy())
            rows = ids - base
            if entity == "user":
                signal = interest_at(a[rows], b[rows], rate[rows], phase[rows], t)
            else:
                signal = content[rows]
            vectors = noisy_unit(rng, signal, cfg.noise)
            stamp = pa.array(
                np.full(len(ids), np.datetime64(day.isoformat(), "us") + np.timedelta64(12, "h")),
                pa.timestamp("us", "UTC"),
            )
            table = pa.table(
                {
                    f"{entity}_id": pa.array(ids, pa.int64()),
                    "ts": stamp,
                    "embedding": pa.FixedSizeListArray.from_arrays(
                        pa.array(vectors.reshape(-1), pa.float32()), vectors.shape[1]
                    ),
                    "model_version": pa.array([version] * len(ids)),
                }
            )
            directory = wd.daily("ctr", entity, day)
            directory.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, directory / "part-0.parquet")
            materialize_day(MaterializeConfig(wd, "ctr", entity, day, online=False))
    return days


def recall(retrieved: list[np.ndarray], clicked: list[set]) -> float:
    """Mean over users of |retrieved & clicked| / |clicked|."""
    return float(
        np.mean(
            [
                len(c.intersection(r.tolist())) / len(c)
                for r, c in zip(retrieved, clicked, strict=True)
            ]
        )
    )


def latency_ms(search, queries: np.ndarray) -> tuple[float, float]:
    """p50, p99 of one query at a time (ms)."""
    times = []
    for q in queries:
        start = time.perf_counter()
        search(q[None, :])
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def compare_latency(name: str, pins: np.ndarray, queries: np.ndarray, k: int) -> None:
    started = time.perf_counter()
    index = PinIndex.from_vectors(
        np.arange(len(pins)), pins, model="ctr", day=dt.date.today(), model_version="-", kind="hnsw"
    )
    build_s = time.perf_counter() - started
    unit = l2_normalise(pins)
    ann_ids, _ = index.retrieve(queries, k)
    exact_rows, _ = exact_search(unit, l2_normalise(queries), k)
    overlap = np.mean([len(set(x) & set(y)) / k for x, y in zip(ann_ids, exact_rows, strict=True)])
    ann = latency_ms(lambda q: index.retrieve(q, k), queries)
    exact = latency_ms(lambda q: exact_search(unit, l2_normalise(q), k), queries)
    print(
        f"{name}: {len(pins)} x {pins.shape[1]}, HNSW build {build_s:.1f} s, "
        f"HNSW recall@{k} vs exact {overlap:.3f}\n"
        f"  HNSW   p50 {ann[0]:.3f} ms  p99 {ann[1]:.3f} ms\n"
        f"  exact  p50 {exact[0]:.3f} ms  p99 {exact[1]:.3f} ms (NumPy brute force)\n"
        f"  exact / HNSW: p50 {exact[0] / ann[0]:.1f}x, p99 {exact[1] / ann[1]:.1f}x"
    )


def clicked_next_day(logs: Path, user_pool: pa.Table, next_day: dt.date) -> dict[int, set]:
    """user -> the Pins they click on `next_day`, for users in `user_pool`."""
    in_pool = set(user_pool["user_id"].to_pylist())
    log = pq.read_table(logs / ds(next_day), columns=["user_id", "pin_id", "click"])
    clicks = log.filter(pc.equal(log["click"], 1))
    by_user: dict[int, set] = {}
    for u, p in zip(clicks["user_id"].to_pylist(), clicks["pin_id"].to_pylist(), strict=True):
        if u in in_pool:
            by_user.setdefault(u, set()).add(p)
    return by_user


def evaluate(
    cfg: BenchConfig, wd: Workdir, logs: Path, days: list[dt.date], label: str
) -> tuple[np.ndarray, np.ndarray]:
    """Recall@k of next-day clicks for the index of the day before the last, against the
    popularity and random baselines; returns the user queries and the index's Pin vectors
    (for the latency part)."""
    day, next_day = days[-2], days[-1]
    index = load_index(wd, "ctr", day)
    user_pool = read_pool(wd.pool("ctr", "user", day), ["user_id", "embedding"])
    user_vectors = embedding_matrix(user_pool["embedding"], index.dim)
    user_row = {u: i for i, u in enumerate(user_pool["user_id"].to_pylist())}
    by_user = clicked_next_day(logs, user_pool, next_day)
    users = sorted(by_user)
    clicked = [by_user[u] for u in users]
    queries = user_vectors[[user_row[u] for u in users]]
    in_pool = set(index.pin_ids.tolist())
    ceiling = np.mean([len(c & in_pool) / len(c) for c in clicked])

    history = pa.concat_tables(
        pq.read_table(logs / ds(d), columns=["pin_id", "click"]) for d in days[:-1]
    )
    counts = history.group_by("pin_id").aggregate([("click", "sum")])
    order = np.argsort(-counts["click_sum"].to_numpy(), kind="stable")[: cfg.k]
    popular = counts["pin_id"].to_numpy()[order]
    rng = np.random.default_rng(cfg.seed + 2)
    random_lists = [rng.choice(index.pin_ids, cfg.k, replace=False) for _ in users]

    ann_ids, _ = index.retrieve(queries, cfg.k)
    pool_pins = l2_normalise(index.index.reconstruct_n(0, index.index.ntotal))
    exact_rows, _ = exact_search(pool_pins, l2_normalise(queries), cfg.k)
    results = {
        f"DERM index ({index.manifest.kind})": recall(list(ann_ids), clicked),
        "exact search": recall(list(index.pin_ids[exact_rows]), clicked),
        "popularity": recall([popular] * len(users), clicked),
        "random": recall(random_lists, clicked),
    }
    print(
        f"{label}: recall@{cfg.k} of the Pins clicked on {next_day} ({len(users)} users who "
        f"click, {sum(map(len, clicked))} clicked Pins; {ceiling:.3f} of them are in the pool "
        f"of {index.manifest.count} Pins, D={index.dim}):"
    )
    for name, value in results.items():
        ratio = value / results["popularity"] if results["popularity"] else float("nan")
        print(f"  {name:<20} {value:.3f}   ({ratio:.2f}x popularity)", flush=True)
    return queries, pool_pins


def train_upstream(cfg: BenchConfig, wd: Workdir, logs: Path, days: list[dt.date]) -> None:
    """The real daily job on the same log: the ctr model (the demo's light shape) fitted
    on the first days, then trained, inferred, materialized and indexed day by day."""
    from derm_features.demo import DEMO_MODEL
    from derm_features.pipeline import PipelineConfig, backfill

    pipeline = PipelineConfig(
        logs=logs,
        workdir=wd,
        models=("ctr",),
        window_days=min(7, len(days) - 2),
        seed=cfg.seed,
        model=DEMO_MODEL,
        online=False,
        progress=False,
    )
    backfill(pipeline, days[0], days[-2])


def main(cfg: BenchConfig) -> None:
    faiss.omp_set_num_threads(1)  # one query at a time: no thread start-up in the timings
    wd = Workdir(cfg.out)
    started = time.perf_counter()
    generate_logs(
        GenerateConfig(
            out=cfg.out,
            users=cfg.users,
            pins=cfg.pins,
            days=cfg.days,
            impressions_per_day=cfg.impressions,
            seed=cfg.seed,
            overwrite=True,
            progress=False,
        )
    )
    days = write_daily_outputs(cfg, wd, cfg.out / "truth")
    build_index(IndexConfig(wd, "ctr", days[-2], kind="hnsw"))
    print(
        f"setup {time.perf_counter() - started:.0f} s: {cfg.users} users, {cfg.pins} Pins, "
        f"{cfg.days} days x {cfg.impressions} impressions"
    )
    queries, pool_pins = evaluate(
        cfg, wd, wd.logs, days, f"truth + noise embeddings (noise {cfg.noise}, not a trained model)"
    )
    if cfg.trained:
        started = time.perf_counter()
        trained = Workdir(cfg.out / "trained")
        train_upstream(cfg, trained, wd.logs, days)
        print(
            f"trained the upstream ctr model through the daily job in "
            f"{time.perf_counter() - started:.0f} s"
        )
        evaluate(
            cfg, trained, wd.logs, days, "trained upstream embeddings (`derm backfill`, demo shape)"
        )

    some = queries[np.random.default_rng(3).choice(len(queries), cfg.queries)]
    compare_latency("pool of " + days[-2].isoformat(), pool_pins, some, cfg.k)
    rng = np.random.default_rng(cfg.seed + 4)
    centres = rng.standard_normal((256, cfg.synthetic_dim)).astype(np.float32)
    assignment = rng.integers(0, 256, cfg.synthetic_pins)
    synthetic = centres[assignment] + 0.5 * rng.standard_normal(
        (cfg.synthetic_pins, cfg.synthetic_dim)
    ).astype(np.float32)
    probes = centres[rng.integers(0, 256, cfg.queries)] + 0.5 * rng.standard_normal(
        (cfg.queries, cfg.synthetic_dim)
    ).astype(np.float32)
    compare_latency("synthetic clustered pool", synthetic, probes, cfg.k)


def parse() -> BenchConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="work directory (default: a temp dir)")
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--pins", type=int, default=5_000)
    p.add_argument("--days", type=int, default=10)
    p.add_argument("--impressions", type=int, default=50_000, help="impressions per day")
    p.add_argument("--noise", type=float, default=0.5, help="noise norm relative to the signal")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--synthetic-pins", type=int, default=100_000)
    p.add_argument("--synthetic-dim", type=int, default=64)
    p.add_argument("--queries", type=int, default=500, help="single queries timed per method")
    p.add_argument(
        "--no-trained",
        dest="trained",
        action="store_false",
        help="skip the trained-embeddings run (the real daily job on the same log, ~2 min)",
    )
    a = p.parse_args()
    out = a.out or Path(tempfile.mkdtemp(prefix="derm-retrieval-"))
    return BenchConfig(
        out,
        a.users,
        a.pins,
        a.days,
        a.impressions,
        a.noise,
        a.k,
        a.seed,
        a.synthetic_pins,
        a.synthetic_dim,
        a.queries,
        a.trained,
    )


if __name__ == "__main__":
    main(parse())
