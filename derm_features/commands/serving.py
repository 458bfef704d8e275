"""`derm index`, `derm retrieve`, `derm serve`: the serving side of the command line.

Thin shells over `derm_features.serving.ann` and `derm_features.serving.server`; heavy
imports (faiss, Feast, FastAPI) happen inside the command bodies so `derm --help` stays instant.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from derm_features.commands.options import ConfigOption, WorkdirOption, settings_or_exit

# prometheus_client's (values and the scrape-time collector) and the older name Feast reads
METRICS_DIR_VARIABLES = ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR")
# A service's metrics directory in the temp dir: derm-serve-metrics-<pid>-<random>
METRICS_DIR_PREFIX = "derm-serve-metrics-"


def remove_stale_metrics_dirs(root: Path | None = None) -> list[Path]:
    """Removes the metrics directories of `derm serve` processes that are gone; returns them.

    A service removes its directory when it stops, but one killed first (SIGKILL, or
    SIGTERM while it still imports) cannot, and under a supervisor that restarts it they
    would pile up. Each name carries its service's pid; a directory whose pid is alive (or
    belongs to another user) is kept. root: where to look (default: the temp dir).
    """
    import shutil

    removed = []
    for path in Path(root or tempfile.gettempdir()).glob(f"{METRICS_DIR_PREFIX}*-*"):
        pid = path.name[len(METRICS_DIR_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or not path.is_dir():
            continue
        try:
            os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        except (PermissionError, OverflowError):
            pass  # alive under another user, or no pid at all: not ours to judge
    return removed


ModelOption = Annotated[
    str, typer.Option("--model", help="Upstream model whose embeddings to use: ctr or cvr.")
]
BetaOverride = Annotated[
    float | None,
    typer.Option(
        "--beta",
        help="Weight of the Pins' log-popularity in the score cos(u, p) + beta * log_pop(p); "
        "default: the beta fitted into the index's manifest (0 = plain cosine).",
    ),
]


def index_cmd(
    date: Annotated[str, typer.Option("--date", help="Day (YYYY-MM-DD) of the Pin pool to index.")],
    workdir: WorkdirOption = None,
    config: ConfigOption = None,
    model: ModelOption = "ctr",
    kind: Annotated[
        str,
        typer.Option(
            "--kind",
            help="auto: exact (flat) below 10k Pins, else HNSW; or force flat / hnsw.",
        ),
    ] = "auto",
    hnsw_m: Annotated[int, typer.Option("--hnsw-m", help="HNSW graph degree.")] = 32,
    ef_construction: Annotated[
        int, typer.Option("--ef-construction", help="HNSW build beam width.")
    ] = 200,
    ef_search: Annotated[
        int, typer.Option("--ef-search", help="HNSW query beam width (keep it >= k).")
    ] = 256,
    logs: Annotated[
        str | None,
        typer.Option(
            "--logs",
            help="Log to count Pin popularity in (positives: clicks for ctr, conversions "
            "for cvr); default WORKDIR/logs, and no popularity column when that is absent.",
        ),
    ] = None,
    popularity_days: Annotated[
        int,
        typer.Option(
            "--popularity-days",
            min=0,
            help="Days of log, ending at --date, counted for popularity; 0: no popularity.",
        ),
    ] = 7,
    beta: Annotated[
        float | None,
        typer.Option(
            "--beta",
            help="Fix the popularity weight instead of fitting it (the fit: recall@--fit-k "
            "on --date, with the pools and popularity of the day before).",
        ),
    ] = None,
    fit_k: Annotated[int, typer.Option("--fit-k", min=1, help="Recall cut-off of the fit.")] = 100,
) -> None:
    """Build the Pin ANN index of one day's Pin pool, written atomically to
    `WORKDIR/index/<model>/ds=<date>/` (index, id map, manifest). It ranks by
    cos(u, p) + beta * log(1 + positives of p over the last --popularity-days days)."""
    from derm_features.commands.options import fail, parse_day_option
    from derm_features.serving.ann import AnnIndexError, IndexConfig, build_index

    try:
        settings = settings_or_exit(config, workdir, model=model)
        index_cfg = IndexConfig(
            settings.workdir,
            model,
            parse_day_option(date, "--date"),
            kind=kind,
            hnsw_m=hnsw_m,
            ef_construction=ef_construction,
            ef_search=ef_search,
            logs=Path(logs) if logs else None,
            popularity_days=popularity_days,
            beta=beta,
            fit_k=fit_k,
        )
        index = build_index(index_cfg)
    except (AnnIndexError, ValueError) as exc:
        raise fail(str(exc)) from None
    m = index.manifest
    typer.echo(
        f"index {index_cfg.workdir.index(model, index_cfg.day)}: {m.count} Pins, D={m.dim}, "
        f"{m.kind}, {m.model_version}"
        + (f" ({m.skipped_zero_norm} zero-norm rows skipped)" if m.skipped_zero_norm else "")
    )
    typer.echo(_popularity_line(m))


def _popularity_line(m) -> str:
    """One line on the index's popularity column and how its beta was chosen."""
    if not m.has_popularity:
        return "popularity: none (no log at hand, or --popularity-days 0): cosine only, beta 0"
    fit = m.beta_fit or {}
    recalls = fit.get("recall_at_k")
    if recalls:
        how = (
            f"fitted on {fit['validation_day']} over {fit['users']} users: "
            f"recall@{fit['k']} {recalls[str(m.beta)]:.4f} (beta 0: {recalls['0.0']:.4f})"
        )
    else:
        how = fit.get("note", "")
    return f"popularity: {m.popularity}; beta {m.beta:g} ({how})"


def retrieve_cmd(
    user: Annotated[int, typer.Option("--user", help="The user_id to retrieve Pins for.")],
    workdir: WorkdirOption = None,
    config: ConfigOption = None,
    model: ModelOption = "ctr",
    k: Annotated[int, typer.Option("--k", help="How many Pins.", min=1, max=10_000)] = 100,
    date: Annotated[
        str | None,
        typer.Option("--date", help="Index day (YYYY-MM-DD); default: the newest index."),
    ] = None,
    source: Annotated[
        str,
        typer.Option(
            "--from",
            help="Where the user vector comes from: 'pool' (the user pool of the index's "
            "day) or 'redis' (the online store, as `derm serve` reads it).",
        ),
    ] = "pool",
    beta: BetaOverride = None,
) -> None:
    """Print the top-k Pins (pin_id and score cos(u, p) + beta * log_pop(p), best first)
    for one user."""
    from derm_features.commands.options import fail, parse_day_option
    from derm_features.core.provenance import compatible
    from derm_features.core.workdir import parse_day
    from derm_features.serving.ann import AnnIndexError, load_index, pool_vector

    if source not in ("pool", "redis"):
        raise fail(f"--from must be 'pool' or 'redis', got '{source}'")
    wd = settings_or_exit(config, workdir, model=model).workdir
    try:
        index = load_index(wd, model, parse_day_option(date, "--date") if date else None)
        day = parse_day(index.manifest.day)
        if source == "pool":
            found = pool_vector(wd, model, "user", user, day)
            if found is None:
                raise fail(f"user {user} is not in the {model} user pool of {day}")
            vector, version = found
            if not compatible(version, index.manifest.model_version):
                raise fail(
                    f"user vector of {version} and index of {index.manifest.model_version} "
                    "are not in one embedding space"
                )
        else:
            vector = _online_user_vector(wd, model, user)
        pin_ids, scores = index.retrieve(vector[None, :], k, beta)
    except (AnnIndexError, ValueError) as exc:
        raise fail(str(exc)) from None
    used = index.manifest.beta if beta is None else beta
    typer.echo(
        f"# {k} Pins for user {user}: index {index.manifest.model_version} ({day}), beta {used:g}"
    )
    for pin_id, score in zip(pin_ids[0].tolist(), scores[0].tolist(), strict=True):
        if pin_id >= 0:
            typer.echo(f"{pin_id}\t{score:.6f}")


def _online_user_vector(wd, model: str, user: int):
    from derm_features.commands.options import fail
    from derm_features.core.spec import view_name
    from derm_features.feast.online_store import EmbeddingReader, OnlineStoreUnavailable
    from derm_features.feast.repo import feature_store

    view = view_name(model, "user")
    try:
        values, found = EmbeddingReader(feature_store(wd)).read([user], [], [view])[view]
    except OnlineStoreUnavailable as exc:
        raise fail(str(exc), code=1) from None
    if not found[0]:
        raise fail(f"user {user} has no {view} in the online store")
    return values[0]


def serve_cmd(
    workdir: WorkdirOption = None,
    config: ConfigOption = None,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to bind. Loopback by default; 0.0.0.0 exposes the service "
            "to the network (put TLS and auth in front of it).",
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.", min=1, max=65535)] = 8000,
    access_log: Annotated[
        bool, typer.Option("--access-log/--no-access-log", help="Log every request.")
    ] = False,
    beta: BetaOverride = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            help="Processes answering on the port. Above 1, gunicorn forks them after the "
            "indexes are loaded (they share that memory) and /metrics sums all of them.",
        ),
    ] = 1,
    metrics_dir: Annotated[str | None, typer.Option("--metrics-dir", hidden=True)] = None,
) -> None:
    """Serve embeddings (POST /embeddings), Pin retrieval (POST /retrieve), GET /health and
    GET /metrics (Prometheus) over HTTP. Redis comes from REDIS_URL (rediss:// for TLS;
    credentials only there); the newest Pin index of each model in WORKDIR is loaded at
    start."""
    from derm_features.commands.options import fail

    settings = settings_or_exit(config, workdir)  # a bad flag fails before the restart
    if metrics_dir is None:
        # prometheus_client reads PROMETHEUS_MULTIPROC_DIR once, at import, and Feast's import
        # points it at a directory of its own, or at one inherited from a parent process.
        # The command starts again (same pid) with a fresh directory of the service's own
        # rather than write os.environ; --metrics-dir marks the second start.
        remove_stale_metrics_dirs()
        directory = tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-")
        argv = [sys.executable, "-m", "derm_features.cli", "serve", "--metrics-dir", directory]
        argv += ["--workdir", str(workdir)] if workdir else []
        argv += ["--config", str(config)] if config else []
        argv += ["--host", host, "--port", str(port), "--workers", str(workers)]
        argv += ["--access-log" if access_log else "--no-access-log"]
        argv += ["--beta", repr(beta)] if beta is not None else []
        env = {**os.environ, **dict.fromkeys(METRICS_DIR_VARIABLES, directory)}
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, argv, env)

    if os.environ.get(METRICS_DIR_VARIABLES[0]) != metrics_dir:  # it is removed at exit
        raise fail("--metrics-dir is set by derm serve itself when it restarts")
    from derm_features.serving.ann import AnnIndexError
    from derm_features.serving.server import ServeConfig, run

    serve_cfg = ServeConfig(
        settings.workdir,
        host=host,
        port=port,
        access_log=access_log,
        beta=beta,
        workers=workers,
    )
    try:
        run(serve_cfg, metrics_dir_to_remove=metrics_dir)
    except AnnIndexError as exc:
        raise fail(str(exc)) from None
