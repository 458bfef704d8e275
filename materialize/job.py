"""One day of materialization: order rules, provenance, the kernel, writes, metrics, online.

    materialize_day(config)
      1. plan      which pool is day t-1's (order rules, `plan_day`), checked against its
                   manifest (`storage.verify_pool`); a damaged one is refused by name
      2. read      daily(t): its files checked (`scan_daily`), then every row validated
                   and, for the local engine, spilled into a scratch file per bucket
                   (`split_daily`); nothing of day t is written if it is bad (no rows: a
                   carry-over-only day)
      3. merge     the kernel through an engine (local or Spark) -> pool(t) in a temp dir,
                   and the changed rows as runs (one a bucket, each sorted by id)
      4. write     offline day file (atomic; the runs one after the other, a row group at a
                   time, on a thread of its own while later buckets merge), then pool(t)
                   renamed into place, then metrics
      5. online    push day t's changed rows, remove expired entities (`push_online`)

The offline file is written before the pool, so a pool on disk always has its offline
rows; a crash anywhere leaves pool(t-1) untouched and a re-run of day t completes it.
Scratch files live under the work directory's staging area (`Workdir.staging`) for the
run only; a crash's leftovers are removed by the next run. Memory is bounded by a few
pool buckets, not by the day (BENCHMARKS.md, "Materialization as a whole process").
The online step only reads what steps 1-4 wrote, so `--online-only` replays it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from derm_features.core.atomic import atomic_dir, clean_stale_tmp, scratch_dir
from derm_features.core.provenance import ModelVersion, compatible
from derm_features.core.spec import join_key, view_name
from derm_features.core.workdir import Workdir, days_in_dir
from derm_features.feast.repo import check_ttl
from materialize import health
from materialize.engines import ENGINES, make_engine
from materialize.kernel import HEURISTICS, KernelParams
from materialize.memory import returning_memory_pool, small_pages
from materialize.storage import (
    VECTOR_PARQUET,
    ChangedRows,
    DailyInput,
    MaterializeError,
    buckets_for,
    offline_rows,
    offline_timestamp,
    pool_versions,
    read_offline_day,
    read_pool,
    scan_daily,
    split_daily,
    verify_pool,
    write_offline_day,
)


@dataclass(frozen=True)
class MaterializeConfig:
    """Everything `derm materialize` decides for one (model, entity, day)."""

    workdir: Workdir
    model: str
    entity: str
    day: dt.date
    # None: the spec's (workdir.spec); a value given here overrides it for this run
    heuristic: str | None = None
    w: float | None = None
    ttl_days: int | None = None
    renormalize: bool = True
    engine: str = "local"
    spark_master: str = "local[2]"
    online: bool = True
    allow_gap: bool = False
    reset_on_new_model: bool = False
    buckets: int | None = None  # None: from pool(t-1), else sized from the day's input
    # Also take the daily outputs of fold_from .. day-1 as day t's input (each entity keeps
    # its latest): after a window fit's back inference, the first pool then covers every
    # entity of the window, while its offline rows are stamped at the end of day t only,
    # so no event inside the window sees an embedding trained on its own future.
    fold_from: dt.date | None = None

    def __post_init__(self) -> None:
        spec = self.workdir.spec
        spec.check_model_entity(self.model, self.entity)
        for key in ("heuristic", "w", "ttl_days"):
            if getattr(self, key) is None:
                object.__setattr__(self, key, getattr(spec, key))
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got '{self.engine}'")
        if self.heuristic not in HEURISTICS:
            raise ValueError(f"heuristic must be one of {HEURISTICS}, got '{self.heuristic}'")
        if self.fold_from is not None and self.fold_from > self.day:
            raise ValueError(f"fold_from {self.fold_from} is after the day {self.day}")

    def daily_dirs(self) -> list[Path]:
        """The daily output directories read as day t's input, oldest first."""
        first = self.fold_from or self.day
        days = [first + dt.timedelta(days=i) for i in range((self.day - first).days + 1)]
        return [self.workdir.daily(self.model, self.entity, d) for d in days]

    @property
    def id_column(self) -> str:
        return join_key(self.entity)

    @property
    def view(self) -> str:
        return view_name(self.model, self.entity)

    def kernel_params(self) -> KernelParams:
        return KernelParams(
            day=self.day,
            id_column=self.id_column,
            heuristic=self.heuristic,
            w=self.w,
            ttl_days=self.ttl_days,
            renormalize=self.renormalize,
        )


@dataclass(frozen=True)
class OnlineReport:
    pushed: int
    removed: int


@dataclass(frozen=True)
class DayReport:
    metrics: dict
    previous_day: dt.date | None
    pool_dir: Path
    offline_file: Path
    reset: bool
    online: OnlineReport | None = None


class OnlineError(RuntimeError):
    """The offline part is done but the online push failed; replay with --online-only."""


def plan_day(config: MaterializeConfig) -> dt.date | None:
    """The day of the pool that day t builds on, or None for a first day.

    Days go in order: a day older than the newest pool is refused; re-running the newest
    day rebuilds it from the pool before it; a day after a missing one needs `allow_gap`.
    """
    day, pools = config.day, days_in_dir(config.workdir.pool_dir(config.model, config.entity))
    if not pools:
        return None
    newest = pools[-1]
    if day < newest:
        raise MaterializeError(
            f"{day} is older than the newest pool ({newest}) of {config.model}/{config.entity}: "
            "days are materialized in order and only the newest day can be re-run"
        )
    earlier = [p for p in pools if p < day]
    previous = earlier[-1] if earlier else None
    if previous is not None and previous != day - dt.timedelta(days=1) and not config.allow_gap:
        raise MaterializeError(
            f"gap: no pool for {day - dt.timedelta(days=1)} (newest before {day} is {previous}); "
            "materialize the missing days first, or pass --allow-gap to build on "
            f"the pool of {previous}"
        )
    return previous


def materialize_offline(
    config: MaterializeConfig,
    spark=None,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> DayReport:
    """Steps 1-4: builds pool(t), the offline day file and the health row of day t.

    Raises MaterializeError before any work when the TTL differs from the registered views'.
    Arrow's freed memory goes back to the OS meanwhile (`memory.returning_memory_pool`),
    and NumPy's arrays use small pages (`memory.small_pages`).
    """
    with returning_memory_pool(), small_pages():
        return _materialize_offline(config, spark, progress, on_total)


def _materialize_offline(
    config: MaterializeConfig,
    spark,
    progress: Callable[[int], None] | None,
    on_total: Callable[[int], None] | None,
) -> DayReport:
    wd, key = config.workdir, config.id_column
    try:
        check_ttl(wd, config.ttl_days)
    except ValueError as exc:
        raise MaterializeError(str(exc)) from None
    previous = plan_day(config)
    previous_dir = wd.pool(config.model, config.entity, previous) if previous else None
    # pool(t-1) is checked against its manifest before any work (PoolIntegrityError).
    layout = verify_pool(previous_dir) if previous_dir is not None else None
    daily = scan_daily(config.daily_dirs(), key, config.model)
    pooled = pool_versions(previous_dir) if previous_dir is not None else []

    reset = False
    if daily.versions and pooled and not _same_space(pooled[0], daily.versions[0]):
        # A damaged pool can read as another model's: its checksums speak first.
        verify_pool(previous_dir, checksums=True)
        if not config.reset_on_new_model:
            raise MaterializeError(
                f"daily outputs of {config.day} come from model version "
                f"'{daily.versions[0]}', incompatible with pool {previous} "
                f"('{pooled[0]}': another lineage or D); averaging them is meaningless. "
                "Pass --reset-on-new-model to restart the pool from this day"
            )
        previous_dir, reset = None, True

    dim = _day_dim(config, daily, pooled)
    if layout is not None and previous_dir is not None:
        buckets = layout.buckets
    else:
        buckets = config.buckets or buckets_for(daily.rows, max(dim, 1))
    if on_total is not None:
        on_total(buckets)

    pool_dir = wd.pool(config.model, config.entity, config.day)
    offline_dir = wd.offline(config.model, config.entity)
    staging = wd.staging(config.model, config.entity)
    clean_stale_tmp(staging)
    params = config.kernel_params()
    engine = make_engine(config.engine, spark_master=config.spark_master, spark=spark)
    # The day's spill files and the changed rows' runs live in a scratch directory that
    # is removed when the run ends, whatever the outcome (a crash: by the next run).
    scratch = scratch_dir(staging) if engine.reads_split_day else contextlib.nullcontext()
    with scratch as spill_to:
        # Every row is validated here, before anything of day t is written.
        daily = split_daily(daily, dim, buckets, spill_to)
        offline_dir.mkdir(parents=True, exist_ok=True)
        clean_stale_tmp(pool_dir.parent)
        clean_stale_tmp(offline_dir)
        if reset and previous is not None:
            # Feast would keep serving the abandoned lineage's values (another embedding
            # space, maybe another D) to later events: a null row closes each of them.
            abandoned = _ids(wd.pool(config.model, config.entity, previous), key)
        else:
            abandoned = None
        changed = ChangedRows.streaming()

        def offline_groups() -> Iterator[pa.Table]:
            """The changed rows, run after run (bucket order) as the engine adds them, a
            row group at a time; then the abandoned entities' null rows."""
            size = VECTOR_PARQUET["row_group_size"]
            yield from (offline_rows(g, key, config.day) for g in changed.groups(size))
            if abandoned is not None:
                gone = abandoned.filter(
                    pc.invert(pc.is_in(abandoned, value_set=changed.id_array()))
                )
                schema = offline_rows(changed.schema.empty_table(), key, config.day).schema
                yield tombstone_rows(gone, key, config.day, schema)

        with atomic_dir(pool_dir) as tmp, ThreadPoolExecutor(1) as offline_writer:
            # The offline file is written while later buckets merge (Arrow's writer
            # releases the GIL); offline first: once pool(t) exists, its offline rows do too.
            offline = offline_writer.submit(
                write_offline_day, offline_dir, config.day, offline_groups()
            )
            try:
                stats = engine.merge(
                    previous_dir, daily, params, dim, buckets, tmp, changed,
                    progress or (lambda n: None),
                )  # fmt: skip
            except BaseException:
                changed.abort()  # the writer stops and leaves no offline file
                wait([offline])
                raise
            changed.close()
            offline_file = offline.result()
    metrics = health.day_metrics(stats, config.model, config.entity, config.day)
    if abandoned is not None:
        # Entities of the abandoned pool are gone from pool(t) like expired ones.
        metrics["expired"] = len(abandoned)
    health.record(wd.metrics, metrics)
    return DayReport(metrics, previous, pool_dir, offline_file, reset)


def tombstone_rows(ids: pa.Array, key: str, day: dt.date, schema: pa.Schema) -> pa.Table:
    """Offline rows that end the abandoned lineage of `ids` at the end of `day`: a null
    embedding, which a point-in-time join reads as "no embedding" (has_<view> = 0)."""
    stamp = pa.array([offline_timestamp(day)] * len(ids), schema.field("event_timestamp").type)
    columns = {key: ids.cast(schema.field(key).type), "event_timestamp": stamp}
    return pa.table(
        {f.name: columns.get(f.name, pa.nulls(len(ids), f.type)) for f in schema}, schema=schema
    )


def _same_space(pooled: str, daily: str) -> bool:
    """`compatible`, and False for a pool version that does not parse."""
    try:
        return compatible(pooled, daily)
    except ValueError:
        return False


def _day_dim(config: MaterializeConfig, daily: DailyInput, pooled: list[str]) -> int:
    """D of day t: the daily outputs', or for a day without rows (a carry-over-only day:
    every entity is carried, TTL applies) pool(t-1)'s. A day without rows and without a
    pool to carry has nothing to materialize and is refused."""
    if daily.rows:
        return daily.dim
    if pooled:
        return ModelVersion.parse(pooled[-1]).dim
    raise MaterializeError(
        f"the daily outputs of {config.model}/{config.entity} {config.day} have no rows and "
        "there is no earlier pool to carry over: nothing to materialize (infer a day with "
        "rows first)"
    )


def _ids(pool_dir: Path, key: str) -> pa.Array:
    return read_pool(pool_dir, [key])[key].combine_chunks()


def dropped_ids(config: MaterializeConfig) -> pa.Array:
    """Entities in the pool before day t and not in pool(t): expired, or reset away."""
    wd, key = config.workdir, config.id_column
    pools = days_in_dir(wd.pool_dir(config.model, config.entity))
    earlier = [p for p in pools if p < config.day]
    if not earlier:
        return pa.array([], pa.int64())
    before = _ids(wd.pool(config.model, config.entity, earlier[-1]), key)
    after = _ids(wd.pool(config.model, config.entity, config.day), key)
    return before.filter(pc.invert(pc.is_in(before, value_set=after)))


def push_online(config: MaterializeConfig, store=None) -> OnlineReport:
    """Step 5: day t's changed rows into Redis, expired entities out of this view.

    Reads only the offline day file and the two pools, so it can be replayed at any time
    for the newest day (`--online-only`).
    """
    wd = config.workdir
    pools = days_in_dir(wd.pool_dir(config.model, config.entity))
    if config.day not in pools:
        raise MaterializeError(
            f"no pool for {config.day}: run `derm materialize` for that day before --online-only"
        )
    if pools[-1] != config.day:
        raise MaterializeError(
            f"online replay of {config.day} would overwrite the newer day {pools[-1]} in Redis; "
            "replay the newest day instead"
        )
    rows = read_offline_day(wd.offline(config.model, config.entity), config.day)
    rows = rows.filter(pc.is_valid(rows["embedding"]))  # tombstones: removed below instead
    dropped = dropped_ids(config)
    try:
        from derm_features.feast.online_store import push_rows, remove_entities

        if store is None:
            from derm_features.feast.repo import feature_store

            store = feature_store(wd)
        pushed = push_rows(store, config.view, rows)
        removed = remove_entities(store, config.view, dropped) if len(dropped) else 0
    except Exception as exc:
        raise OnlineError(
            f"offline part of {config.model}/{config.entity} {config.day} is complete, but the "
            f"online push failed: {type(exc).__name__}: {exc}\n"
            f"replay it with: derm materialize --workdir {wd.root} --model {config.model} "
            f"--entity {config.entity} --date {config.day} --online-only (or --resync when "
            "Redis lost its data: a restart without persistence)"
        ) from exc
    return OnlineReport(pushed, removed)


def materialize_day(config: MaterializeConfig, spark=None, store=None) -> DayReport:
    """Steps 1-5 for one day (step 5 only when `config.online`)."""
    report = materialize_offline(config, spark=spark)
    if not config.online:
        return report
    online = push_online(config, store=store)
    return DayReport(
        report.metrics,
        report.previous_day,
        report.pool_dir,
        report.offline_file,
        report.reset,
        online,
    )
