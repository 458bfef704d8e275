"""Pin retrieval on a generated log: recall@k of next-day clicks, and ANN vs exact latency.

    .venv/bin/python -m benchmarks.retrieval [--users 20000 --pins 5000 --days 10] [--threads 1]

(`-m` from the repository root: run as a file, benchmarks/materialize.py would shadow
the `materialize` package.)

1. `derm generate`'s world (`generate_logs`) -> logs and the latent truth.
2. Daily tower outputs made from the truth plus noise: a user seen on day t gets
   normalise(interest(u, t) + noise), a Pin seen on day t normalise(content(p) + noise).
   These stand in for the upstream model's outputs ("truth + noise", not a trained model),
   and go through the real `materialize.job.materialize_day` (moving-average pools).
3. The Pin index of day D (the day before the last) from that pool (`derm_features.serving.ann`),
   with the Pins' log-popularity (clicks over the 7 days to D) and beta fitted on day D
   from the pools of D - 1 (`derm_features.serving.popularity`): day D + 1 is never seen by the fit.
   Then again with embeddings of the trained upstream model: the real daily job
   (`derm backfill`, ctr, the demo's model shape) on the same log (skip: --no-trained).
4. For every user who clicks on day D+1 and is in the user pool of day D: recall@k of
   the Pins they click on day D+1, on the same users, for: k random Pins of the pool, the
   most clicked Pins up to day D (popularity), the index with beta = 0 (u.p, HNSW or
   flat), exact search (NumPy, beta = 0), the index with the fitted beta, and a
   matrix-factorisation peer: BPR (Rendle et al. 2009) with item biases, trained on the
   clicks of the same days up to D (its L2 weight chosen on day D, as beta is). Each with
   a bootstrap 95 % interval over users (1000 resamples) and its ratio to popularity
   (paired: the same resamples).
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
import torch

from derm_features.core.provenance import ModelVersion
from derm_features.core.workdir import Workdir, ds
from derm_features.serving.ann import (
    IndexConfig,
    PinIndex,
    build_index,
    exact_search,
    l2_normalise,
)
from derm_features.synthetic import GenerateConfig, generate_logs, interest_at
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
    threads: int


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


def recall(retrieved: list[np.ndarray], clicked: list[set]) -> np.ndarray:
    """[n] per user: |retrieved & clicked| / |clicked|."""
    return np.array(
        [len(c.intersection(r.tolist())) / len(c) for r, c in zip(retrieved, clicked, strict=True)]
    )


def bootstrap(
    per_user: dict[str, np.ndarray], baseline: str, seed: int, resamples: int = 1000
) -> dict[str, tuple[float, float, float, float, float]]:
    """name -> (mean, lo, hi, ratio lo, ratio hi): 95 % percentile intervals of the mean
    recall over users resampled with replacement, and of its ratio to `baseline`'s on the
    same resamples (paired)."""
    n = len(next(iter(per_user.values())))
    rows = np.random.default_rng(seed).integers(0, n, (resamples, n))
    base = per_user[baseline][rows].mean(axis=1)
    out = {}
    for name, values in per_user.items():
        means = values[rows].mean(axis=1)
        ratio = means / np.where(base > 0, base, np.nan)
        lo, hi = np.percentile(means, [2.5, 97.5])
        rlo, rhi = np.nanpercentile(ratio, [2.5, 97.5])
        out[name] = (float(values.mean()), float(lo), float(hi), float(rlo), float(rhi))
    return out


@dataclass(frozen=True)
class BPR:
    """A trained BPR model: score(u, p) = U[u] . V[p] + b[p]; unknown users get U = 0
    (so the item biases, a learned popularity, rank for them)."""

    users: dict[int, int]  # user id -> row
    pin_ids: np.ndarray  # [m] the catalogue
    user_vectors: np.ndarray  # [n_users, d]
    pin_vectors: np.ndarray  # [m, d]
    bias: np.ndarray  # [m]

    def top_k(self, user_ids: list[int], k: int) -> list[np.ndarray]:
        d = self.user_vectors.shape[1]
        rows = [self.users.get(u) for u in user_ids]
        q = np.stack([self.user_vectors[r] if r is not None else np.zeros(d) for r in rows])
        scores = q @ self.pin_vectors.T + self.bias[None, :]
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return list(self.pin_ids[top])


def train_bpr(
    logs: Path, days: list[dt.date], seed: int, reg: float, dim: int = 32, epochs: int = 40
) -> BPR:
    """BPR-MF (Rendle et al. 2009) on the (user, clicked Pin) pairs of `days`: maximise
    log sigmoid(x_up - x_un) - reg * (|U_u|^2 + |V_p|^2 + |V_n|^2) with n a Pin drawn
    uniformly from the Pins shown on those days; Adam. Seeded."""
    torch.manual_seed(seed)
    shown = pa.concat_tables(
        pq.read_table(logs / ds(d), columns=["user_id", "pin_id", "click"]) for d in days
    )
    catalogue = np.unique(shown["pin_id"].to_numpy())
    clicks = shown.filter(pc.equal(shown["click"], 1))
    pairs = np.unique(
        np.stack([clicks["user_id"].to_numpy(), clicks["pin_id"].to_numpy()], axis=1), axis=0
    )
    user_ids = np.unique(pairs[:, 0])
    u = torch.as_tensor(np.searchsorted(user_ids, pairs[:, 0]))
    p = torch.as_tensor(np.searchsorted(catalogue, pairs[:, 1]))
    users = torch.nn.Embedding(len(user_ids), dim)
    pins = torch.nn.Embedding(len(catalogue), dim)
    bias = torch.nn.Embedding(len(catalogue), 1)
    for table in (users, pins):
        torch.nn.init.normal_(table.weight, std=0.01)
    torch.nn.init.zeros_(bias.weight)
    params = [*users.parameters(), *pins.parameters(), *bias.parameters()]
    opt = torch.optim.Adam(params, lr=0.01)
    for _ in range(epochs):
        for batch in torch.randperm(len(u)).split(1024):
            bu, bp = users(u[batch]), pins(p[batch])
            bn_rows = torch.randint(0, len(catalogue), (len(batch),))
            bn = pins(bn_rows)
            x = (bu * (bp - bn)).sum(1) + bias(p[batch])[:, 0] - bias(bn_rows)[:, 0]
            l2 = bu.pow(2).sum(1) + bp.pow(2).sum(1) + bn.pow(2).sum(1)
            loss = -torch.nn.functional.logsigmoid(x).mean() + reg * l2.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return BPR(
        {int(x): i for i, x in enumerate(user_ids)},
        catalogue,
        users.weight.detach().numpy(),
        pins.weight.detach().numpy(),
        bias.weight.detach().numpy()[:, 0],
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


def fit_bpr(logs: Path, days: list[dt.date], seed: int, k: int) -> tuple[BPR, float, dict]:
    """BPR with its L2 weight chosen as beta is: trained on days[:-1], scored by recall@k of
    the clicks of days[-1] (every user who clicks), then retrained on all of `days` with the
    best weight. Returns (model, weight, recall of each weight)."""
    val = pq.read_table(logs / ds(days[-1]), columns=["user_id", "pin_id", "click"])
    val = val.filter(pc.equal(val["click"], 1))
    by_user: dict[int, set] = {}
    for u, p in zip(val["user_id"].to_pylist(), val["pin_id"].to_pylist(), strict=True):
        by_user.setdefault(u, set()).add(p)
    users = sorted(by_user)
    recalls = {}
    for reg in (1e-4, 1e-3, 1e-2, 1e-1, 1.0):
        model = train_bpr(logs, days[:-1], seed, reg)
        recalls[reg] = float(recall(model.top_k(users, k), [by_user[u] for u in users]).mean())
    best = max(recalls, key=recalls.get)
    return train_bpr(logs, days, seed, best), best, recalls


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
    cfg: BenchConfig,
    wd: Workdir,
    logs: Path,
    days: list[dt.date],
    label: str,
    bpr: BPR,
    kind: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Recall@k of next-day clicks for the index of the day before the last, with beta 0
    and the fitted beta, against random, popularity and BPR on the same users; returns the
    user queries and the index's Pin vectors (for the latency part)."""
    day, next_day = days[-2], days[-1]
    # (re)built here with the log at hand: the daily job's index of a workdir without
    # logs/ has no popularity column
    index = build_index(IndexConfig(wd, "ctr", day, kind=kind, logs=logs, fit_k=cfg.k))
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
    pin_ids = counts["pin_id"].to_numpy()
    # most clicked first, ties by pin id: group_by's row order is not deterministic
    order = np.lexsort((pin_ids, -counts["click_sum"].to_numpy()))[: cfg.k]
    popular = pin_ids[order]
    rng = np.random.default_rng(cfg.seed + 2)
    random_lists = [rng.choice(index.pin_ids, cfg.k, replace=False) for _ in users]

    plain_ids, _ = index.retrieve(queries, cfg.k, beta=0.0)
    fitted_ids, _ = index.retrieve(queries, cfg.k)
    pool_pins = index.pin_vectors()
    exact_rows, _ = exact_search(pool_pins, l2_normalise(queries), cfg.k)
    beta = index.manifest.beta
    results = {
        "random": recall(random_lists, clicked),
        "popularity": recall([popular] * len(users), clicked),
        f"u.p, beta 0 ({index.manifest.kind})": recall(list(plain_ids), clicked),
        "u.p, beta 0 (exact)": recall(list(index.pin_ids[exact_rows]), clicked),
        f"u.p + {beta:g} logpop": recall(list(fitted_ids), clicked),
        "BPR-MF": recall(bpr.top_k(users, cfg.k), clicked),
    }
    fit = index.manifest.beta_fit or {}
    grid = ", ".join(f"{b}: {r:.3f}" for b, r in (fit.get("recall_at_k") or {}).items())
    print(
        f"{label}: recall@{cfg.k} of the Pins clicked on {next_day} ({len(users)} users who "
        f"click, {sum(map(len, clicked))} clicked Pins; {ceiling:.3f} of them are in the pool "
        f"of {index.manifest.count} Pins, D={index.dim})\n"
        f"  popularity column: {index.manifest.popularity}; beta {beta:g} fitted on "
        f"{fit.get('validation_day')} over {fit.get('users')} users {fit.get('note', '')}\n"
        f"  fit grid (beta: recall@{cfg.k} on {fit.get('validation_day')}): {grid}"
    )
    print(f"  {'method':<26} recall@{cfg.k} [95% CI]       x popularity [95% CI]")
    for name, (mean, lo, hi, rlo, rhi) in bootstrap(results, "popularity", cfg.seed).items():
        ratio = mean / results["popularity"].mean()
        print(
            f"  {name:<26} {mean:.3f} [{lo:.3f}, {hi:.3f}]   {ratio:.2f} [{rlo:.2f}, {rhi:.2f}]",
            flush=True,
        )
    return queries, pool_pins


def train_upstream(cfg: BenchConfig, wd: Workdir, logs: Path, days: list[dt.date]) -> None:
    """The real daily job on the same log: the ctr model (the demo's light shape) fitted
    on the first days, then trained, inferred, materialized and indexed day by day."""
    from derm_features.jobs.demo import DEMO_MODEL
    from derm_features.jobs.pipeline import PipelineConfig, backfill

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
    torch.set_num_threads(cfg.threads)
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
    print(
        f"setup {time.perf_counter() - started:.0f} s: {cfg.users} users, {cfg.pins} Pins, "
        f"{cfg.days} days x {cfg.impressions} impressions"
    )
    started = time.perf_counter()
    bpr, reg, regs = fit_bpr(wd.logs, days[:-1], cfg.seed, cfg.k)
    print(
        f"BPR-MF on the clicks up to {days[-2]}, L2 {reg:g} chosen by recall@{cfg.k} on "
        f"{days[-2]} (trained to {days[-3]}: "
        + ", ".join(f"{r:g}: {v:.3f}" for r, v in regs.items())
        + f"): {time.perf_counter() - started:.0f} s"
    )
    queries, pool_pins = evaluate(
        cfg,
        wd,
        wd.logs,
        days,
        f"truth + noise embeddings (noise {cfg.noise}, not a trained model)",
        bpr,
        kind="hnsw",
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
            cfg,
            trained,
            wd.logs,
            days,
            "trained upstream embeddings (`derm backfill`, demo shape)",
            bpr,
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
    p.add_argument("--threads", type=int, default=1, help="torch threads (BPR, training)")
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
        a.threads,
    )


if __name__ == "__main__":
    main(parse())
