"""The daily job a platform team runs: train, infer, materialize, push, index — resumable.

For each day and upstream model (ctr, cvr) the steps are

    train        incremental fit from the newest snapshot (the window fit on backfill)
    infer        that day's tower outputs for users and Pins
    materialize  user and Pin pools, offline rows, Redis push (one step per entity)
    index        the Pin ANN index of the day's Pin pool

Each step writes its outputs atomically and then a marker,
``<workdir>/steps/<model>/<step>/<YYYY-MM-DD>.json`` (the step's summary and a fingerprint
of the day's log), last. A step whose marker exists is skipped and says so, so a run killed
anywhere resumes where it stopped; a step killed half-way is simply run again (every step is
idempotent). A day whose log changed since its steps ran is reported; `force` recomputes it.

Before any training a run holds the work directory's pipeline lock (`core.locks`), checks
that the spec's Feast views are registered (registering them if not) with the spec's TTL,
that Redis answers when the push is on, and that no earlier day is missing from the pools.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from derm_features.core.atomic import write_text_atomic
from derm_features.core.logs import open_log
from derm_features.core.workdir import Workdir, days_in_dir

STEPS = ("train", "infer", "materialize_user", "materialize_pin", "index")

log = logging.getLogger("derm.pipeline")


@dataclass(frozen=True)
class PipelineConfig:
    """Everything `derm daily` / `derm backfill` decide; filled from derm.yaml and flags.

    The work directory carries the DERM spec: its models, D, heuristic, w and TTL.
    """

    logs: Path
    workdir: Workdir
    models: tuple[str, ...] | None = None  # None: every model of the spec
    window_days: int = 7  # backfill: days of the from-scratch window fit
    seed: int = 0
    # upstream training (TrainConfig fields) and model shape (ModelConfig fields)
    train: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    # materialization (heuristic, w and the TTL are the spec's)
    renormalize: bool = True
    engine: str = "local"
    online: bool = True
    index: bool = True
    progress: bool = True
    allow_gap: bool = False  # daily: build on the newest pool when earlier days are missing
    force: bool = False  # daily: recompute the day's steps even when their markers exist

    def __post_init__(self) -> None:
        spec_models = self.workdir.spec.model_names
        if self.models is None:
            object.__setattr__(self, "models", spec_models)
        unknown = set(self.models) - set(spec_models)
        if unknown or not self.models:
            raise ValueError(
                f"--models must be a non-empty subset of {spec_models}, got {self.models}"
            )
        if self.window_days < 1:
            raise ValueError(f"--window-days must be >= 1, got {self.window_days}")


def marker(workdir: Workdir, model: str, step: str, day: dt.date) -> Path:
    """The completion marker of one step of one model on one day."""
    return workdir.root / "steps" / model / step / f"{day.isoformat()}.json"


def read_marker(workdir: Workdir, model: str, step: str, day: dt.date) -> dict | None:
    path = marker(workdir, model, step, day)
    return json.loads(path.read_text()) if path.is_file() else None


class GapError(ValueError):
    """Days between the newest pool and the day to run were never materialized."""


def log_fingerprint(log, day: dt.date) -> str:
    """A digest of the files holding `day`'s rows (path within the log, size, modification
    time): a corrected or re-delivered log of the day changes it; spelling the log's path
    another way (relative, absolute, through a link) does not."""
    files = [f for f in log.files if not log.partitioned or f"ds={day.isoformat()}" in f.parts]
    root = log.path if log.path.is_dir() else log.path.parent
    stats = [
        (f.relative_to(root).as_posix(), s.st_size, s.st_mtime_ns)
        for f in files
        for s in [f.stat()]
    ]
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:16]


def run_step(
    workdir: Workdir,
    model: str,
    step: str,
    day: dt.date,
    work: Callable[[], dict],
    inputs: str | None = None,
    force: bool = False,
) -> tuple[dict, bool]:
    """Runs `work` unless its marker exists (or `force`); returns (summary, ran).

    inputs: the fingerprint of the step's inputs, kept in the marker; a marker whose
    fingerprint differs is reported on stderr (the step is not recomputed without `force`).
    """
    done = read_marker(workdir, model, step, day)
    if done is not None and not force:
        recorded = done.get("inputs")
        if inputs is not None and recorded is not None and recorded != inputs:
            log.warning(
                f"{model} {step} {day}: its input changed since it ran (log fingerprint "
                f"{recorded} -> {inputs}); kept the old result. Recompute the day with "
                "`derm daily --force`"
            )
        return done, False
    summary = work()
    if inputs is not None:
        summary = {**summary, "inputs": inputs}
    write_text_atomic(json.dumps(summary, default=str, indent=1), marker(workdir, model, step, day))
    return summary, True


def _model_cfg(cfg: PipelineConfig):
    """The window fit's network: the spec's D and labels, then derm.yaml's model: fields."""
    from trainers.upstream.config import ModelConfig

    return ModelConfig.for_spec(cfg.workdir.spec, cfg.model)


def _train(cfg: PipelineConfig, model: str, **when) -> dict:
    from trainers.upstream.config import TrainConfig
    from trainers.upstream.train import train

    model_cfg = _model_cfg(cfg) if "start" in when else None  # a day keeps its snapshot's
    return train(
        TrainConfig(
            model=model,
            logs=cfg.logs,
            workdir=cfg.workdir,
            seed=cfg.seed,
            progress=cfg.progress,
            model_cfg=model_cfg,
            **cfg.train,
            **when,
        )
    )


def _infer(cfg: PipelineConfig, model: str, day: dt.date, back_from: dt.date | None) -> dict:
    """Inference of `day`; after a window fit (`back_from` set), back inference of every
    day of the window, so that the first pool can cover all the window's entities."""
    from trainers.upstream.config import InferConfig
    from trainers.upstream.infer import infer

    back = back_from is not None and back_from < day  # a one-day window has nothing before
    return infer(
        InferConfig(
            model=model,
            logs=cfg.logs,
            date=day,
            workdir=cfg.workdir,
            progress=cfg.progress,
            back_inference=back,
            start=back_from if back else None,
        )
    )


def _materialize(
    cfg: PipelineConfig, model: str, entity: str, day: dt.date, fold_from: dt.date | None
) -> dict:
    from derm_features.core.locks import hold
    from materialize.job import MaterializeConfig, materialize_day

    # A day after a model was skipped (no snapshot) builds on the newest pool there is.
    job = MaterializeConfig(
        workdir=cfg.workdir,
        model=model,
        entity=entity,
        day=day,
        renormalize=cfg.renormalize,
        engine=cfg.engine,
        online=cfg.online,
        allow_gap=True,
        fold_from=fold_from,
    )
    with hold(cfg.workdir, f"materialize_{model}_{entity}", f"derm daily {day}"):
        report = materialize_day(job)
    online = report.online
    return {
        "metrics": report.metrics,
        "pool": str(report.pool_dir),
        "online": None if online is None else {"pushed": online.pushed, "removed": online.removed},
    }


def _index(cfg: PipelineConfig, model: str, day: dt.date) -> dict:
    from derm_features.serving.ann import IndexConfig, build_index

    index = build_index(IndexConfig(workdir=cfg.workdir, model=model, day=day, logs=cfg.logs))
    return {"pins": index.manifest.count, "model_version": index.manifest.model_version}


def _has_snapshot_before(workdir: Workdir, model: str, day: dt.date) -> bool:
    from trainers.upstream.checkpoint import snapshot_days

    return any(d < day for d in snapshot_days(workdir, model))


def upstream_day(
    cfg: PipelineConfig,
    model: str,
    day: dt.date,
    window_start: dt.date | None,
    inputs: str | None = None,
):
    """Train and infer one model's day; `window_start` set means the from-scratch fit.

    Returns the steps' summaries; only {"train": ...} when training was skipped.
    """
    wd = cfg.workdir
    step = _stepper(cfg, model, day, inputs)
    when = {"start": window_start, "end": day} if window_start else {"date": day}
    if window_start is None and not _has_snapshot_before(wd, model, day):
        # e.g. the window fit was skipped for lack of positives; not a marker: a later
        # window fit makes this day runnable
        reason = f"no {model} snapshot before {day} to warm-start from (window fit skipped?)"
        return {"train": {"skipped": True, "reason": reason}}
    trained = step("train", lambda: _train(cfg, model, **when))
    if trained.get("skipped"):
        step.report()
        return {"train": trained}
    inferred = step("infer", lambda: _infer(cfg, model, day, window_start))
    step.report()
    return {"train": trained, "infer": inferred}


class _stepper:
    """Runs one model-day's steps through `run_step`, and says in one line which were
    already done."""

    def __init__(self, cfg: PipelineConfig, model: str, day: dt.date, inputs: str | None):
        self.cfg, self.model, self.day, self.inputs = cfg, model, day, inputs
        self.skipped: list[str] = []

    def __call__(self, name: str, work: Callable[[], dict]) -> dict:
        cfg = self.cfg
        summary, ran = run_step(
            cfg.workdir, self.model, name, self.day, work, self.inputs, cfg.force
        )
        if not ran:
            self.skipped.append(name)
        return summary

    def report(self) -> None:
        if self.skipped:
            log.info(
                f"{self.day} {self.model}: {', '.join(self.skipped)} already done (skipped; "
                "`derm daily --force` recomputes a day)"
            )
            self.skipped = []


def run_model_day(
    cfg: PipelineConfig,
    model: str,
    day: dt.date,
    window_start: dt.date | None,
    inputs: str | None = None,
):
    """All steps of one model for one day: `upstream_day`, then materialize and index."""
    wd = cfg.workdir
    out = upstream_day(cfg, model, day, window_start, inputs)
    if "infer" not in out:
        return out
    step = _stepper(cfg, model, day, inputs)
    for entity in wd.spec.entity_names:
        out[f"materialize_{entity}"] = step(
            f"materialize_{entity}",
            lambda e=entity: _materialize(cfg, model, e, day, window_start),
        )
    if cfg.index:
        out["index"] = step("index", lambda: _index(cfg, model, day))
    step.report()
    return out


def prepare(cfg: PipelineConfig) -> None:
    """Checks and set-up before any training (each failure is one clear error):

    - the spec's Feast views are registered in the work directory (registered now if not:
      `apply` is idempotent); a TTL unlike theirs is refused by `derm daily` before it
      reads the log, and by each materialization (`feast.repo.check_ttl`);
    - when the push is on, Redis answers (OnlineStoreUnavailable otherwise).
    """
    from derm_features.feast.repo import apply, registered_ttl_days

    wd = cfg.workdir
    if set(registered_ttl_days(wd)) != {view for _, _, view in wd.spec.views()}:
        apply(wd, quiet=True)
    if cfg.online:
        from derm_features.feast.online_store import check_reachable
        from derm_features.feast.repo import feature_store

        check_reachable(feature_store(wd), "derm daily")


def check_no_gap(cfg: PipelineConfig, day: dt.date) -> None:
    """Refuses (GapError) a day whose model pools end before the previous day, unless
    `cfg.allow_gap`: the days in between could never enter the pools later. A day on which
    a model was skipped for lack of positives is not a gap."""
    if cfg.allow_gap:
        return
    wd = cfg.workdir
    for model in cfg.models:
        for entity in wd.spec.entity_names:
            before = [d for d in days_in_dir(wd.pool_dir(model, entity)) if d < day]
            if not before:
                continue
            missing = [
                d
                for d in _days(before[-1] + dt.timedelta(days=1), day - dt.timedelta(days=1))
                if not (read_marker(wd, model, "train", d) or {}).get("skipped")
            ]
            if missing:
                raise GapError(
                    f"the {model} {entity} pool ends on {before[-1]}, but {missing[0]}"
                    f"{'..' + str(missing[-1]) if len(missing) > 1 else ''} never ran: run "
                    "`derm daily` for those days first (or `derm backfill`), or pass "
                    f"--allow-gap to build on the pool of {before[-1]} and leave them out"
                )


def check_force(cfg: PipelineConfig, day: dt.date) -> None:
    """`force` redoes only the newest day: a pool of a later day was built on this day's,
    and recomputing it under that pool would leave the later days inconsistent."""
    if not cfg.force:
        return
    wd = cfg.workdir
    for model in cfg.models:
        for entity in wd.spec.entity_names:
            later = [d for d in days_in_dir(wd.pool_dir(model, entity)) if d > day]
            if later:
                raise ValueError(
                    f"--force recomputes only the newest day, but the {model} {entity} pool "
                    f"already has {later[-1]}, built on {day}'s: re-run {day}..{later[-1]} in "
                    "a fresh work directory (derm backfill) instead"
                )


def daily(cfg: PipelineConfig, day: dt.date) -> dict:
    """`derm daily`: every step of every model for `day`, skipping what is already done.

    Raises LockHeld, GapError, OnlineStoreUnavailable, LogContractError or ValueError
    before any training when the run cannot succeed.
    """
    from derm_features.core.locks import hold

    log = open_log(cfg.logs, labels=cfg.workdir.spec.labels)  # the contract, before any work
    if not log.scanner(day, day, columns=["ts"]).count_rows():  # that day's files only
        raise ValueError(f"{cfg.logs}: no impressions on {day}")
    with hold(cfg.workdir, "pipeline", f"derm daily {day}"):
        check_no_gap(cfg, day)
        check_force(cfg, day)
        prepare(cfg)
        inputs = log_fingerprint(log, day)
        return {model: run_model_day(cfg, model, day, None, inputs) for model in cfg.models}


def backfill(cfg: PipelineConfig, start: dt.date, end: dt.date) -> dict:
    """`derm backfill`: the window fit on the first `window_days` days, then the daily loop."""
    from tqdm.auto import tqdm

    if start > end:
        raise ValueError(f"--start {start} is after --end {end}")
    log = open_log(cfg.logs, labels=cfg.workdir.spec.labels)
    have = set(log.days())
    missing = [d for d in _days(start, end) if d not in have]
    if missing:
        raise ValueError(
            f"{cfg.logs}: no impressions on {', '.join(map(str, missing[:5]))}"
            f"{' ...' if len(missing) > 5 else ''} (backfill needs every day of {start}..{end})"
        )
    window_end = min(end, start + dt.timedelta(days=cfg.window_days - 1))
    results = {}
    days = [window_end, *_days(window_end + dt.timedelta(days=1), end)]
    from derm_features.core.locks import hold

    with hold(cfg.workdir, "pipeline", f"derm backfill {start}..{end}"):
        prepare(cfg)
        for day in tqdm(days, desc="backfill", unit="day", disable=not cfg.progress):
            window_start = start if day == window_end else None
            inputs = log_fingerprint(log, day)
            results[str(day)] = {
                m: run_model_day(cfg, m, day, window_start, inputs) for m in cfg.models
            }
    return results


def _days(first: dt.date, last: dt.date) -> list[dt.date]:
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


@dataclass(frozen=True)
class ModelStatus:
    model: str
    entity: str
    steps: dict[str, list[str]]  # step -> days done
    pool_days: list[str]
    live: int | None
    model_version: str | None
    # Of a sample of the newest pool's entities, how many Redis holds ("found/sampled");
    # None when not checked. Far below sampled: Redis lost data (`derm materialize --resync`).
    online_found: str | None = None
    # With `verify`: how many files of the newest pool matched their manifest's crc32 (all
    # of them, or status raised); None when not asked, or for a pool without a manifest.
    verified_files: int | None = None


def status(workdir: Workdir, reader=None, verify: bool = False) -> list[ModelStatus]:
    """What `derm status` prints: per model and entity, which days each step has done.

    reader: an `EmbeddingReader` to also sample the newest pools against Redis.
    verify: also check every file of each newest pool against its manifest's crc32 (reads
    every byte); otherwise sizes, footers and unlisted files only.
    """
    from materialize.resync import online_coverage
    from materialize.storage import pool_rows, verify_pool

    out = []
    for model in workdir.spec.model_names:
        steps = {}
        for step in STEPS:
            directory = workdir.root / "steps" / model / step
            steps[step] = (
                sorted(p.stem for p in directory.glob("*.json")) if directory.is_dir() else []
            )
        version = None
        if steps["train"]:
            version = read_marker(
                workdir, model, "train", dt.date.fromisoformat(steps["train"][-1])
            ).get("model_version")
        for entity in workdir.spec.entity_names:
            pools = days_in_dir(workdir.pool_dir(model, entity))
            live = verified = None
            if pools:  # a damaged pool raises PoolIntegrityError, naming it and the fix
                newest = workdir.pool(model, entity, pools[-1])
                layout = verify_pool(newest, checksums=verify)
                live = pool_rows(newest, layout)
                if verify and layout.files is not None:
                    verified = len(layout.files)
            out.append(
                ModelStatus(
                    model=model,
                    entity=entity,
                    steps={
                        "trained": steps["train"],
                        "inferred": steps["infer"],
                        "materialized": steps[f"materialize_{entity}"],
                        "online": [
                            d
                            for d in steps[f"materialize_{entity}"]
                            if (
                                read_marker(
                                    workdir,
                                    model,
                                    f"materialize_{entity}",
                                    dt.date.fromisoformat(d),
                                )
                                or {}
                            ).get("online")
                        ],
                    },
                    pool_days=[d.isoformat() for d in pools],
                    live=live,
                    model_version=version,
                    online_found=None
                    if reader is None or not pools
                    else "{}/{}".format(*online_coverage(workdir, model, entity, reader)),
                    verified_files=verified,
                )
            )
    return out


def with_overrides(cfg: PipelineConfig, **overrides) -> PipelineConfig:
    """`cfg` with the given fields replaced, skipping None (flags the user did not pass)."""
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
