"""`derm daily`, `derm backfill`, `derm status`, `derm report` and `derm demo`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from derm_features.commands.options import (
    ConfigOption,
    LogsOption,
    PlainWorkdirOption,
    ProgressOption,
    WorkdirOption,
    run_or_exit,
    show_progress,
)

ModelsOption = Annotated[
    str | None,
    typer.Option(
        "--models",
        help="The spec's upstream models to run (default: all of them), e.g. ctr,cvr.",
        show_default=False,
    ),
]
HeuristicOption = Annotated[
    str | None,
    typer.Option(
        "--heuristic",
        help="Aggregation: ma, acc or ap (default: the spec's, ma).",
        show_default=False,
    ),
]
WOption = Annotated[
    float | None,
    typer.Option(
        "--w",
        help="Moving-average weight of the past (default: the spec's, 0.8).",
        show_default=False,
    ),
]
TtlOption = Annotated[
    int | None,
    typer.Option(
        "--ttl-days",
        help="Pool TTL in days (default: the spec's, 90). Must equal the registered views' "
        "TTL: to change it, edit derm.yaml's spec: and run `derm apply`.",
        show_default=False,
    ),
]
EngineOption = Annotated[
    str | None,
    typer.Option(
        "--engine", help="Materialization engine: local (default) or spark.", show_default=False
    ),
]
OnlineOption = Annotated[
    bool | None,
    typer.Option(
        "--online/--no-online",
        help="Push each day's changes to Redis (default: derm.yaml, else on).",
        show_default=False,
    ),
]
IndexOption = Annotated[
    bool | None,
    typer.Option(
        "--index/--no-index",
        help="Build the Pin ANN index each day (default: derm.yaml, else on).",
        show_default=False,
    ),
]
ThreadsOption = Annotated[
    int | None,
    typer.Option(
        "--threads", help="torch threads for training (default: torch's).", show_default=False
    ),
]


MinStepsOption = Annotated[
    int | None,
    typer.Option(
        "--min-steps",
        help="Upstream fits take at least this many optimiser steps: incremental days replay "
        "earlier days, then passes are added up to --max-epochs (default 30).",
        show_default=False,
    ),
]
MaxEpochsOption = Annotated[
    int | None,
    typer.Option("--max-epochs", help="Cap on those passes (default 10).", show_default=False),
]
ReplayDaysOption = Annotated[
    int | None,
    typer.Option(
        "--replay-days",
        help="Incremental days reach --min-steps by replaying up to this many earlier days "
        "first (default 6).",
        show_default=False,
    ),
]


def _pipeline_config(given: dict):
    """PipelineConfig from derm.yaml, the environment and a command's flags (`given`),
    every value checked before any work (`resolve_settings`)."""
    from derm_features.commands.settings import resolve_settings

    own = ("config", "workdir", "logs", "date", "start", "end", "allow_gap", "force", "progress")
    flags = {k: v for k, v in given.items() if k not in own}
    settings = resolve_settings(given["config"], given["workdir"], **flags)
    from derm_features.feast.repo import check_ttl  # heavier imports after the checks
    from derm_features.jobs.pipeline import PipelineConfig

    ttl_source = "--ttl-days" if given.get("ttl_days") is not None else "the spec's ttl_days"
    check_ttl(settings.workdir, settings.spec.ttl_days, ttl_source)  # before any training
    return PipelineConfig(
        logs=Path(given["logs"]),
        workdir=settings.workdir,
        train=settings.train,
        model=settings.model,
        **settings.pipeline,
        **settings.materialize,
        allow_gap=bool(given.get("allow_gap")),
        force=bool(given.get("force")),
        progress=show_progress(given.get("progress")),
    )


def daily_cmd(
    logs: LogsOption,
    date: Annotated[str, typer.Option("--date", help="The day to process, YYYY-MM-DD.")],
    workdir: WorkdirOption = None,
    config: ConfigOption = None,
    models: ModelsOption = None,
    heuristic: HeuristicOption = None,
    w: WOption = None,
    ttl_days: TtlOption = None,
    engine: EngineOption = None,
    online: OnlineOption = None,
    index: IndexOption = None,
    threads: ThreadsOption = None,
    progress: ProgressOption = None,
    min_steps: MinStepsOption = None,
    max_epochs: MaxEpochsOption = None,
    replay_days: ReplayDaysOption = None,
    allow_gap: Annotated[
        bool,
        typer.Option(
            "--allow-gap",
            help="Build on the newest pool even when days before DATE never ran (they can "
            "then never enter the pools).",
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Recompute DATE's steps even when they are done (after the day's log was "
            "corrected); DATE must be the newest materialized day or the next one.",
        ),
    ] = False,
) -> None:
    """Run one day for every upstream model: train, infer, materialize, push, index.

    Incremental training from the newest snapshot, the day's tower outputs, materialization
    of users and Pins (pool, offline rows, Redis push) and the Pin ANN index. Each step is
    skipped (and says so) when its marker for the day exists, so a re-run after a crash
    resumes where it stopped; a day whose log changed since is reported (--force redoes it).

    Before any training: settings checked, the Feast views registered if they are not, Redis
    reachable when pushing (else exit 3), no earlier day missing from the pools (else exit 2,
    see --allow-gap), and no other run on the work directory (else exit 4).
    """
    given = dict(locals())  # the flags, before anything else is bound
    from derm_features.commands.options import parse_day_option

    day = parse_day_option(date, "--date")
    cfg = run_or_exit(lambda: _pipeline_config(given))
    from derm_features.jobs.pipeline import daily

    rerun = f"derm daily --date {day}"
    result = run_or_exit(lambda: daily(cfg, day), rerun)
    typer.echo(json.dumps(_summary(result), default=str))


def backfill_cmd(
    logs: LogsOption,
    start: Annotated[str, typer.Option("--start", help="First day of the window fit, YYYY-MM-DD.")],
    end: Annotated[str, typer.Option("--end", help="Last day to process, YYYY-MM-DD.")],
    workdir: WorkdirOption = None,
    config: ConfigOption = None,
    window_days: Annotated[
        int | None,
        typer.Option("--window-days", help="Days of the from-scratch fit (7).", show_default=False),
    ] = None,
    models: ModelsOption = None,
    heuristic: HeuristicOption = None,
    w: WOption = None,
    ttl_days: TtlOption = None,
    engine: EngineOption = None,
    online: OnlineOption = None,
    index: IndexOption = None,
    threads: ThreadsOption = None,
    progress: ProgressOption = None,
    min_steps: MinStepsOption = None,
    max_epochs: MaxEpochsOption = None,
    replay_days: ReplayDaysOption = None,
) -> None:
    """Fit the window from scratch, then run `derm daily` for every later day.

    The window is the first --window-days days from --start. The fitted model infers every
    window day, and the first pool (the window's last day) takes each entity's latest
    embedding of the window; its offline rows are stamped at the window's end. Every day
    after it up to --end runs the daily steps. Resumable like `derm daily`.
    """
    given = dict(locals())  # the flags, before anything else is bound
    from derm_features.commands.options import parse_day_option

    first, last = parse_day_option(start, "--start"), parse_day_option(end, "--end")
    cfg = run_or_exit(lambda: _pipeline_config(given))
    from derm_features.jobs.pipeline import backfill

    result = run_or_exit(lambda: backfill(cfg, first, last), "derm backfill")
    typer.echo(json.dumps({day: _summary(r) for day, r in result.items()}, default=str))


def _summary(per_model: dict) -> dict:
    """A one-line view of a day's results: AUC and pool sizes per model."""
    out = {}
    for model, steps in per_model.items():
        train = steps.get("train", {})
        if train.get("skipped"):
            out[model] = {"skipped": train.get("reason")}
            continue
        out[model] = {
            "roc_auc": train.get("roc_auc"),
            "model_version": train.get("model_version"),
            **{
                f"live_{e}": steps.get(f"materialize_{e}", {}).get("metrics", {}).get("live")
                for e in ("user", "pin")
            },
        }
    return out


def status_cmd(
    workdir: WorkdirOption = None,
    config: ConfigOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object (for schedulers and scripts).")
    ] = False,
    online: Annotated[
        bool,
        typer.Option(
            "--online/--no-online",
            help="Also sample each newest pool against Redis: 'found/sampled' far below "
            "sampled means Redis lost data (re-sync with `derm materialize --resync`).",
        ),
    ] = True,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Also check every file of each newest pool against its manifest's crc32 "
            "(reads every byte of them; without it: sizes, footers and unlisted files).",
        ),
    ] = False,
) -> None:
    """Show per model and entity which days are trained, inferred, materialized and online.

    Also the live pool size of the newest day and the newest model version. Exits 2 when
    the work directory does not exist (a mistyped --workdir is not an empty one).
    """
    import dataclasses

    from derm_features.commands.options import require_workdir, run_or_exit, settings_or_exit
    from derm_features.jobs.pipeline import status

    wd = settings_or_exit(config, workdir).workdir
    require_workdir(wd.root)
    from derm_features.feast.repo import has_registry

    reader, online_note = None, ""
    if online and has_registry(wd):
        from derm_features.feast.online_store import EmbeddingReader, check_reachable
        from derm_features.feast.repo import feature_store

        store = feature_store(wd)
        try:
            check_reachable(store, "derm status")
            reader = EmbeddingReader(store)
        except RuntimeError as exc:  # OnlineStoreUnavailable
            online_note = f"online: not checked ({exc})"
    states = run_or_exit(lambda: status(wd, reader, verify))  # a damaged pool: exit 2, named
    if as_json:
        rows = [dataclasses.asdict(s) for s in states]
        typer.echo(json.dumps({"workdir": str(wd.root), "views": rows, "note": online_note}))
        return

    def days(values: list[str]) -> str:
        if not values:
            return "-"
        return values[0] if len(values) == 1 else f"{values[0]}..{values[-1]} ({len(values)})"

    typer.echo(f"work directory {wd.root}")
    columns = ("trained", "inferred", "materialized", "online")
    typer.echo(
        f"{'model':5} {'entity':6} "
        + " ".join(f"{c:>26}" for c in columns)
        + f" {'live':>8} {'in Redis':>9}  version"
    )
    for s in states:
        st = s.steps
        typer.echo(
            f"{s.model:5} {s.entity:6} {days(st['trained']):>26} {days(st['inferred']):>26} "
            f"{days(st['materialized']):>26} {days(st['online']):>26} "
            f"{s.live if s.live is not None else '-':>8} {s.online_found or '-':>9}  "
            f"{s.model_version or '-'}"
        )
        found, _, sampled = (s.online_found or "").partition("/")
        if sampled and int(found) < int(sampled):
            logging.getLogger("derm.status").warning(
                f"{s.model} {s.entity}: Redis holds only {found} of {sampled} sampled live "
                f"entities; re-sync: derm materialize --workdir {wd.root} --model {s.model} "
                f"--entity {s.entity} --date {s.pool_days[-1]} --resync"
            )
    if verify:
        checked = [s.verified_files for s in states if s.verified_files is not None]
        unchecked = sum(1 for s in states if s.pool_days and s.verified_files is None)
        line = (
            f"verified: {sum(checked)} file(s) of {len(checked)} newest pool(s) match their "
            "manifests' crc32"
        )
        if unchecked:
            line += f"; {unchecked} without a manifest (written before manifests) not checked"
        typer.echo(line)
    if online_note:
        logging.getLogger("derm.status").warning(online_note)


def report_cmd(workdir: WorkdirOption = None, config: ConfigOption = None) -> None:
    """Write a static HTML report under the work directory and print its path.

    Training curves with each model's validation AUC on its own label (the spec's), embedding
    health and stability over days, and the downstream lift tables.
    """
    from derm_features.commands.options import settings_or_exit
    from derm_features.jobs.report import write_report

    typer.echo(str(write_report(settings_or_exit(config, workdir).workdir)))


def demo_cmd(
    workdir: PlainWorkdirOption = None,
    days: Annotated[int, typer.Option("--days", help="Days of generated log.")] = 14,
    users: Annotated[int, typer.Option("--users", help="Users in the generated world.")] = 20_000,
    pins: Annotated[int, typer.Option("--pins", help="Pins in the generated world.")] = 5_000,
    impressions_per_day: Annotated[
        int, typer.Option("--impressions-per-day", help="Impressions per generated day.")
    ] = 30_000,
    window_days: Annotated[int, typer.Option("--window-days", help="Days of the window fit.")] = 7,
    seed: Annotated[int, typer.Option("--seed", help="Seed of everything.")] = 0,
    threads: ThreadsOption = None,
    progress: ProgressOption = None,
) -> None:
    """Run everything end to end on a generated log and print the lift table.

    Generate a log, feast apply, backfill (train, infer, materialize, push, index), then
    downstream CTR and CVR with and without DERM beside the prior, the per-Pin rate and
    logistic regressions, with 95 % bootstrap intervals; prints those tables and the path of
    the HTML report. Resumable: a second run reuses what the first finished.
    """
    from derm_features.core.workdir import Workdir
    from derm_features.jobs.demo import DemoConfig, run_demo

    cfg = DemoConfig(
        workdir=Workdir.resolve(workdir),
        days=days,
        users=users,
        pins=pins,
        impressions_per_day=impressions_per_day,
        window_days=window_days,
        seed=seed,
        threads=threads,
        progress=show_progress(progress),
    )
    result = run_or_exit(lambda: run_demo(cfg), "derm demo")
    typer.echo(result["table"])
    typer.echo(f"report: {result['report']}")
