"""`derm materialize`: one day of one model's entity embeddings into Feast."""

from __future__ import annotations

from typing import Annotated

import typer

from derm_features.commands.options import (
    ConfigOption,
    WorkdirOption,
    run_or_exit,
    settings_or_exit,
)


def materialize_cmd(
    model: Annotated[
        str, typer.Option("--model", help="Upstream model of the DERM spec, e.g. ctr or cvr.")
    ],
    entity: Annotated[str, typer.Option("--entity", help="Entity: user or pin.")],
    date: Annotated[str, typer.Option("--date", help="The day to materialize, YYYY-MM-DD.")],
    workdir: WorkdirOption = None,
    config: ConfigOption = None,
    heuristic: Annotated[
        str | None,
        typer.Option(
            help="Aggregation: ma (moving average w*past + (1-w)*today), acc (keep "
            "the latest), ap (mean of the two latest daily embeddings; only ap keeps the "
            "previous daily embedding in the pool) [default: the spec's, ma]."
        ),
    ] = None,
    w: Annotated[
        float | None,
        typer.Option("--w", help="Weight of the past for ma [default: the spec's, 0.8]."),
    ] = None,
    ttl_days: Annotated[
        int | None,
        typer.Option(
            help="Drop entities not seen for more than this many days [default: the spec's, "
            "90]. Must equal the registered views' TTL: change it in the spec and `derm apply`."
        ),
    ] = None,
    engine: Annotated[
        str | None,
        typer.Option(help="local (one machine, bucket by bucket) or spark [default: local]."),
    ] = None,
    spark_master: Annotated[
        str, typer.Option(help="Spark master URL for --engine spark.")
    ] = "local[2]",
    online: Annotated[
        bool | None,
        typer.Option(
            "--online/--no-online",
            help="Push the day's changes to Redis [default: derm.yaml's, else on].",
            show_default=False,
        ),
    ] = None,
    online_only: Annotated[
        bool,
        typer.Option(
            "--online-only",
            help="Only replay the online push of the newest materialized day "
            "(after Redis was unreachable; exit code 3 names this option).",
        ),
    ] = False,
    resync: Annotated[
        bool,
        typer.Option(
            "--resync",
            help="Push the whole live pool of DATE (the newest day) to Redis: after Redis "
            "lost its data (a restart without persistence), when --online-only would restore "
            "only DATE's changes.",
        ),
    ] = False,
    allow_gap: Annotated[
        bool,
        typer.Option(
            "--allow-gap", help="Build on the newest earlier pool when day t-1 is missing."
        ),
    ] = False,
    reset_on_new_model: Annotated[
        bool,
        typer.Option(
            "--reset-on-new-model",
            help="Restart the pool when the day's model version is incompatible "
            "with the pool's (new lineage or D) instead of refusing.",
        ),
    ] = False,
    renormalize: Annotated[
        bool | None,
        typer.Option(
            "--renormalize/--no-renormalize",
            help="Scale aggregated embeddings back to unit L2 norm [default: on].",
            show_default=False,
        ),
    ] = None,
    fold_from: Annotated[
        str | None,
        typer.Option(
            "--fold-from",
            help="Also read the daily outputs from this day (YYYY-MM-DD) up to DATE as DATE's "
            "input, each entity keeping its latest: after a window fit's back inference "
            "(`derm infer --back-inference`), so the first pool covers the whole window; "
            "its offline rows are stamped at the end of DATE only.",
        ),
    ] = None,
) -> None:
    """Merge day DATE's tower outputs into the pool (dedup, ma|acc|ap, carry-over, TTL),
    write the changed rows to the Feast offline source and push them to Redis.

    Days go in order; re-running the newest day is idempotent. Prints the day's
    embedding-health metrics (also kept in WORKDIR/metrics/embedding_health.parquet).
    """
    from derm_features.commands.options import parse_day_option

    day = parse_day_option(date, "--date")
    settings = settings_or_exit(
        config, workdir, model=model, entity=entity, heuristic=heuristic, w=w,
        ttl_days=ttl_days, engine=engine, online=online, renormalize=renormalize,
    )  # fmt: skip
    from derm_features.commands.options import require_workdir

    require_workdir(settings.workdir.root, " (the day's tower outputs are read from it)")
    from tqdm import tqdm  # heavier imports once the settings are checked

    from materialize.health import format_metrics
    from materialize.job import (
        MaterializeConfig,
        materialize_offline,
        push_online,
    )
    from materialize.storage import MaterializeError

    spec, chosen = settings.spec, settings.materialize
    online = chosen.get("online", True)

    def build() -> MaterializeConfig:
        from derm_features.feast.repo import check_ttl

        flag = "--ttl-days" if ttl_days is not None else "spec ttl_days"
        check_ttl(settings.workdir, spec.ttl_days, flag)  # named as the user gave it
        return MaterializeConfig(
            workdir=settings.workdir,
            model=model,
            entity=entity,
            day=day,
            heuristic=spec.heuristic,
            w=spec.w,
            ttl_days=spec.ttl_days,
            renormalize=chosen.get("renormalize", True),
            engine=chosen.get("engine", "local"),
            spark_master=spark_master,
            online=online,
            allow_gap=allow_gap,
            reset_on_new_model=reset_on_new_model,
            fold_from=parse_day_option(fold_from, "--fold-from") if fold_from else None,
        )

    job = run_or_exit(build)

    def work() -> None:
        from derm_features.core.locks import hold

        with hold(settings.workdir, f"materialize_{model}_{entity}", f"derm materialize {day}"):
            if resync:
                from materialize.resync import newest_pool_day, resync_online

                newest = newest_pool_day(settings.workdir, model, entity)
                if newest != day:
                    raise MaterializeError(
                        f"--resync pushes the newest pool {newest}, not {day}: pass --date {newest}"
                    )
                pushed = resync_online(settings.workdir, model, entity)
                typer.echo(f"online: re-synced {pushed:,} live entities of the {day} pool")
                return
            if not online_only:
                # disable=None: no bar when stderr is not a terminal (a scheduler's log)
                with tqdm(
                    desc=f"materialize {model}/{entity} {day}", unit="bucket", disable=None
                ) as bar:
                    report = materialize_offline(
                        job, progress=bar.update, on_total=lambda n: setattr(bar, "total", n)
                    )
                typer.echo(format_metrics(report.metrics))
                typer.echo(f"pool: {report.pool_dir}\noffline: {report.offline_file}")
                if report.reset:
                    typer.echo(
                        "model version changed: the pool was restarted (--reset-on-new-model)"
                    )
            if online or online_only:
                result = push_online(job)
                typer.echo(f"online: pushed {result.pushed:,} rows, removed {result.removed:,}")

    run_or_exit(work)  # exit 2 refused (MaterializeError), 3 Redis, 4 another run
