"""Training-set fetch speed: Feast's DuckDB offline store vs its default `file` (Dask) store,
and derm's own builder (issue 15 target 3).

Same data for every contender: four embedding views (ctr/cvr x user/Pin) of synthetic
offline rows of `--dim` floats (a share of the entities changes each day, stamped at the end
of the day), and an entity dataframe of `--rows` events over `--days` days.

Contenders, each in a fresh process of its own (so that each peak RSS is its own; the
seconds are those of the call alone, not of starting the process or reading its input):

    duckdb raw      FeatureStore.get_historical_features on all `--rows` entity rows
                    (user_id, pin_id, event_timestamp), four views, to Arrow
    file raw        the same call with `offline_store: type: file`, on the first
                    `--file-rows` rows only (it is ~100x slower; rates are per row)
    derm builder    trainers.downstream.training_set.build_training_set on a log of the
                    same `--rows` events: per-day cut, entities deduplicated, Parquet out;
                    once joining through Feast (backend feast), then with its own DuckDB
                    ASOF join over the Parquet sources (backend duckdb, the default) once
                    per `--formats` (Parquet, Arrow IPC files), every set checked equal row
                    for row to the first

Two floors of the output, measured on the same sets: pyarrow writing the Parquet set again
on one thread, and the Arrow set's bytes written with plain file writes on `WRITERS`
threads (what any format of the same float32 vectors costs this machine's page cache).

Prints seconds, rows/s and peak RSS of each, the ratios, and the issue's target for the
builder on its own join: <= 3 s, < 4 GB peak RSS and >= 3x one raw Feast DuckDB call, each
met or not met. Examples (the issue asks for D=32 and D=256):

    .venv/bin/python -m benchmarks.training_set --rows 1000000 --file-rows 0 --dim 32
    .venv/bin/python -m benchmarks.training_set --rows 1000000 --file-rows 0 --dim 256
    .venv/bin/python -m benchmarks.training_set --rows 1000000 --file-rows 20000
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

UTC = pa.timestamp("us", tz="UTC")
START = dt.date(2025, 6, 1)


def write_views(workdir, users: int, pins: int, dim: int, days: int, change: float, seed: int):
    """Offline rows for the four views: on each day `change` of the entities get a new value."""
    rng = np.random.default_rng(seed)
    rows = 0
    for model in ("ctr", "cvr"):
        for entity, count, base in (("user", users, 1_000_000_000), ("pin", pins, 5_000_000_000)):
            for i in range(days):
                day = START + dt.timedelta(days=i)
                ids = base + (
                    np.arange(count)
                    if i == 0
                    else rng.choice(count, int(count * change), replace=False)
                )
                stamp = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
                values = rng.standard_normal((len(ids), dim), dtype=np.float32)
                table = pa.table({
                    f"{entity}_id": pa.array(np.sort(ids), pa.int64()),
                    "event_timestamp": pa.array(np.full(len(ids), stamp)).cast(UTC),
                    "embedding": pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), dim),
                    "last_seen": pa.array(np.full(len(ids), stamp)).cast(UTC),
                    "model_version": pa.array([f"{model}-0123abcd-d{dim}@{day}"] * len(ids)),
                })  # fmt: skip
                out = workdir.offline(model, entity) / f"ds={day.isoformat()}"
                out.mkdir(parents=True, exist_ok=True)
                pq.write_table(table, out / "part-0.parquet")
                rows += len(ids)
    return rows


def write_log(path: Path, rows: int, users: int, pins: int, first_day: int, days: int, seed: int):
    """A log of `rows` impressions over `days` days (the log contract's required columns)."""
    rng = np.random.default_rng(seed + 1)
    day0 = dt.datetime.combine(START + dt.timedelta(days=first_day), dt.time(), tzinfo=dt.UTC)
    micros = rng.integers(0, days * 86_400_000_000, rows)
    ts = np.sort(int(day0.timestamp() * 1_000_000) + micros)
    table = pa.table({
        "user_id": pa.array(1_000_000_000 + rng.integers(0, users, rows), pa.int64()),
        "pin_id": pa.array(5_000_000_000 + rng.integers(0, pins, rows), pa.int64()),
        "ts": pa.array(ts).cast(UTC),
        "click": pa.array(rng.integers(0, 2, rows).astype(np.int8)),
        "conversion": pa.array(np.zeros(rows, np.int8)),
    })  # fmt: skip
    for i in range(days):
        day = START + dt.timedelta(days=first_day + i)
        lo = int(dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC).timestamp() * 1_000_000)
        hi = lo + 86_400_000_000
        mask = (ts >= lo) & (ts < hi)
        out = path / f"ds={day.isoformat()}"
        out.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.filter(pa.array(mask)), out / "part-0.parquet")
    return table


# <view>:<feature>; each view's vector feature is named like the view (`feature_name`)
FEATURES = [f"{m}_{e}_embedding:{m}_{e}_embedding" for m in ("ctr", "cvr") for e in ("user", "pin")]


def in_child(fn, *args):
    """fn(*args) in a fresh spawned process: (its result, that process's peak RSS in GB)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # The previous contender's files still being flushed would slow this one: start each
    # with nothing dirty
    os.sync()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_peak, fn, *args).result()


def _peak(fn, *args):
    result = fn(*args)
    return result, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KB on Linux


def raw_fetch(workdir, yaml: Path | None, log_dir: Path, rows: int) -> float:
    """Seconds of one get_historical_features over the first `rows` events, four views
    (`yaml`: another feature_store.yaml, e.g. the `file` store; None: the work directory's)."""
    from derm_features.feast.repo import feature_store

    if yaml is not None:  # read by feature_store (this is a process of its own)
        os.environ["FEAST_FS_YAML_FILE_PATH"] = str(yaml)
    store = feature_store(workdir)
    log = pq.read_table(log_dir).sort_by("ts")
    entity_df = log.slice(0, rows).select(["user_id", "pin_id", "ts"]).to_pandas()
    entity_df = entity_df.rename(columns={"ts": "event_timestamp"})
    t0 = time.perf_counter()
    result = store.get_historical_features(
        entity_df=entity_df, features=FEATURES, full_feature_names=True
    ).to_arrow()
    seconds = time.perf_counter() - t0
    assert result.num_rows == rows, (result.num_rows, rows)
    return seconds


def write_alone(set_dir: Path, out_dir: Path) -> float:
    """Seconds pyarrow takes to write `set_dir`'s day files again, one after the other on one
    thread with the builder's options (each read untimed first): the floor of the build's
    Parquet out on this machine, which the builder spreads over `WRITERS` threads."""
    from derm_features.core.files import parquet_files
    from trainers.downstream.training_set.write import _parquet_options

    seconds = 0.0
    for i, file in enumerate(parquet_files(set_dir)):
        table = pq.read_table(file)
        t0 = time.perf_counter()
        pq.write_table(table, out_dir / f"{i}.parquet", **_parquet_options(table.schema))
        seconds += time.perf_counter() - t0
        del table
    return seconds


def write_bytes_alone(set_dir: Path, out_dir: Path) -> float:
    """Seconds to write the bytes of `set_dir`'s files again with plain file writes, on
    `WRITERS` threads as the builder writes (each read untimed first): the floor of any
    output format that stores the same vectors as float32."""
    from concurrent.futures import ThreadPoolExecutor

    from trainers.downstream.training_set import open_training_set
    from trainers.downstream.training_set.build import WRITERS

    data = [p.read_bytes() for p in open_training_set(set_dir).files()]
    os.sync()

    def write(i: int) -> None:
        (out_dir / str(i)).write_bytes(data[i])

    t0 = time.perf_counter()
    with ThreadPoolExecutor(WRITERS) as pool:
        list(pool.map(write, range(len(data))))
    return time.perf_counter() - t0


def build(cfg, backend: str) -> tuple[float, int]:
    """Seconds of build_training_set(cfg, backend), and the rows it wrote."""
    from trainers.downstream.training_set import build_training_set

    t0 = time.perf_counter()
    built = build_training_set(cfg, backend=backend)
    return time.perf_counter() - t0, built.meta["rows"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="entity rows (events)")
    parser.add_argument(
        "--file-rows", type=int, default=20_000, help="rows for the file store (0: skip it)"
    )
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--pins", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=32, help="embedding D")
    parser.add_argument("--history-days", type=int, default=14, help="days of offline rows")
    parser.add_argument("--days", type=int, default=7, help="days the events span")
    parser.add_argument("--change", type=float, default=0.1, help="share of entities updated a day")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--formats", default="parquet,arrow",
        help="training-set formats of derm's own join, comma-separated (parquet, arrow)",
    )  # fmt: skip
    args = parser.parse_args()
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]

    from derm_features.core.workdir import Workdir
    from derm_features.feast.repo import REPO_ROOT, apply
    from trainers.downstream.training_set import TrainingSetConfig, open_training_set
    from trainers.downstream.training_set.build import WRITERS

    print(f"load average at the start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
    with tempfile.TemporaryDirectory(prefix="derm-bench-") as tmp:
        redis_url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/14"
        workdir = Workdir(Path(tmp) / "workdir", redis_url=redis_url)
        offline_rows = write_views(
            workdir, args.users, args.pins, args.dim, args.history_days + args.days,
            args.change, args.seed,
        )  # fmt: skip
        log_dir = Path(tmp) / "logs"
        write_log(log_dir, args.rows, args.users, args.pins, args.history_days, args.days,
                  args.seed)  # fmt: skip
        apply(workdir, quiet=True)
        print(f"data: {offline_rows:,} offline rows in 4 views (D={args.dim}), "
              f"{args.rows:,} events over {args.days} days")  # fmt: skip

        runs = {}  # name -> (seconds, rows, peak RSS GB)
        duck_s, peak = in_child(raw_fetch, workdir, None, log_dir, args.rows)
        runs[f"duckdb raw ({args.rows:,} rows)"] = (duck_s, args.rows, peak)
        file_rate = None
        if args.file_rows:
            file_yaml = Path(tmp) / "feature_store.file.yaml"
            file_yaml.write_text(
                (REPO_ROOT / "feature_store.yaml").read_text().replace("type: duckdb", "type: file")
            )
            file_s, peak = in_child(raw_fetch, workdir, file_yaml, log_dir, args.file_rows)
            runs[f"file raw ({args.file_rows:,} rows)"] = (file_s, args.file_rows, peak)
            file_rate = args.file_rows / file_s

        first = START + dt.timedelta(days=args.history_days)
        keys = ("ctr_user", "ctr_pin", "cvr_user", "cvr_pin")
        seconds, peaks = {}, {}  # set name -> seconds, peak RSS GB
        for name, backend, fmt in [("feast", "feast", "parquet")] + [
            (f"duckdb-{f}", "duckdb", f) for f in formats
        ]:
            cfg = TrainingSetConfig(log_dir, workdir.root, first,
                                    first + dt.timedelta(days=args.days - 1), keys,
                                    name=name, file_format=fmt)  # fmt: skip
            (seconds[name], rows), peaks[name] = in_child(build, cfg, backend)
            assert rows == args.rows, (rows, args.rows)
            runs[f"derm builder, {backend} join ({args.rows:,} rows, {fmt} out)"] = (
                seconds[name], rows, peaks[name],
            )  # fmt: skip
        sets = {name: open_training_set(workdir.training_set(name)) for name in seconds}
        order = [("ts", "ascending"), ("user_id", "ascending"), ("pin_id", "ascending")]
        same = len({tuple(s.meta["days"]) for s in sets.values()}) == 1
        for i in range(len(sets["feast"].meta["days"])):  # a day at a time: at D=256 a set is 4 GB
            first_set, *others = (
                pads.dataset(s.files()[i], format=s.file_format).to_table().sort_by(order)
                for s in sets.values()
            )
            same = same and all(first_set.equals(other) for other in others)
        print(f"the builders' training sets ({', '.join(sets)}) are equal row for row: {same}")
        assert same

        floors = {}
        floor_dir = Path(tmp) / "write-alone"
        for fmt, fn in (("parquet", write_alone), ("arrow", write_bytes_alone)):
            if f"duckdb-{fmt}" in sets:
                floor_dir.mkdir()
                floors[fmt], _ = in_child(fn, sets[f"duckdb-{fmt}"].path, floor_dir)
                shutil.rmtree(floor_dir)

        for name, (s, rows, peak) in runs.items():
            print(f"{name:<62} {s:8.2f} s {rows / s:>12,.0f} rows/s  peak RSS {peak:5.2f} GB")
        if "parquet" in floors:
            print(f"floor: pyarrow writing the Parquet set alone, one thread: "
                  f"{floors['parquet']:.2f} s (the builder: {WRITERS} threads)")  # fmt: skip
        if "arrow" in floors:
            print(f"floor: the Arrow set's bytes written with plain file writes on {WRITERS} "
                  f"threads: {floors['arrow']:.2f} s")  # fmt: skip

        def met(ok: bool) -> str:
            return "met" if ok else "NOT met"

        for fmt in formats:
            ours, peak = seconds[f"duckdb-{fmt}"], peaks[f"duckdb-{fmt}"]
            ratio = duck_s / ours
            print(f"{fmt}: derm builder (ASOF join) / one raw Feast DuckDB call {ratio:,.2f}x; "
                  f"/ derm builder via Feast {seconds['feast'] / ours:,.2f}x"
                  + (f"; / file raw (per row) {args.rows / ours / file_rate:,.1f}x"
                     if file_rate else ""))  # fmt: skip
            print(f"target (issue 15, 3), D={args.dim}, {fmt} out: <= 3 s: {ours:.2f} s, "
                  f"{met(ours <= 3)}; < 4 GB: {peak:.2f} GB, {met(peak < 4)}; >= 3x Feast's "
                  f"DuckDB call: {ratio:.2f}x, {met(ratio >= 3)}")  # fmt: skip
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
