"""`derm downstream` and `derm experiment`: thin shells over job.py and experiments.py.

Heavy imports (torch, Lightning, Feast) stay inside the command bodies so `derm --help`
is instant. Registered at the bottom of derm_features/cli.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from derm_features.commands.options import (
    ConfigOption,
    PlainWorkdirOption,
    WorkdirOption,
    fail,
    parse_day_option,
    settings_or_exit,
)


def downstream_cmd(
    task: Annotated[
        str,
        typer.Option(
            help="Downstream task: ctr (impressions -> click) or cvr (clicks -> conversion)."
        ),
    ],
    logs: Annotated[
        Path, typer.Option(help="The ad log (Parquet file or directory, the log contract).")
    ],
    train_start: Annotated[str, typer.Option(help="First training day, YYYY-MM-DD.")],
    train_end: Annotated[str, typer.Option(help="Last training day (inclusive).")],
    eval_start: Annotated[str, typer.Option(help="First eval day; must be after --train-end.")],
    eval_end: Annotated[str, typer.Option(help="Last eval day (inclusive).")],
    workdir: WorkdirOption = None,
    config: ConfigOption = None,
    embeddings: Annotated[
        str,
        typer.Option(
            help="DERM embeddings to join from Feast: 'none' or a comma list of "
            "ctr_user,ctr_pin,cvr_user,cvr_pin."
        ),
    ] = "none",
    projection_dim: Annotated[
        int | None,
        typer.Option(help="Project the DERM embeddings to this width before crossing (paper D.1)."),
    ] = None,
    seed: Annotated[
        int,
        typer.Option(help="Seed of initialisation and shuffling; a seed gives the same metrics."),
    ] = 0,
    epochs: Annotated[
        int | None,
        typer.Option(
            help="At most this many epochs (default: 20 for ctr, 40 for cvr); early stopping "
            "on the validation day's log loss picks the epoch."
        ),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Rows per batch (default: 1024 for ctr, 256 for cvr).")
    ] = None,
    patience: Annotated[
        int,
        typer.Option(
            help="Validation checks (one an epoch) without a better log loss before stopping."
        ),
    ] = 2,
    baselines: Annotated[
        bool,
        typer.Option(
            help="Also train the model without DERM and score the prior, the per-Pin rate and "
            "logistic regressions on the same eval rows, with bootstrap intervals and the paired "
            "lift. --no-baselines trains only the --embeddings model."
        ),
    ] = True,
    id_features: Annotated[
        bool, typer.Option(help="user_id and pin_id as hashed categorical features.")
    ] = True,
    count_features: Annotated[
        bool,
        typer.Option(help="Point-in-time impression/click/conversion counts per user and Pin."),
    ] = True,
    sample_fraction: Annotated[
        float,
        typer.Option(
            help="Train the models and baselines on this seeded share of the training days' "
            "rows (eval rows unchanged): a downstream model with less data than the upstream "
            "ones, as in the paper."
        ),
    ] = 1.0,
    set_format: Annotated[
        str,
        typer.Option(
            help="Files of the training sets: parquet, or arrow (Arrow IPC, uncompressed: "
            "faster to write and memory-mapped on read, for large D)."
        ),
    ] = "parquet",
) -> None:
    """Train a downstream CTR or CVR model on point-in-time-correct Feast training sets.

    Builds the training sets of the train and eval days: log rows joined with the chosen
    DERM embeddings as of the start of each event's day (a missing one is zeros plus a
    `has_<view> = 0` flag). The last training day validates (early stopping, best epoch
    restored); the eval days are scored once at the end.

    With --baselines (the default) it prints a table of the prior, the per-Pin rate,
    logistic regressions and the model without and with DERM on the same eval rows, with
    95 % bootstrap intervals and the paired lift, and writes it under
    WORKDIR/metrics/downstream/. The last stdout line is one JSON object: the --embeddings
    model's eval roc_auc, pr_auc and logloss, the best constant's log loss, and the
    comparison under "comparison".
    """
    from derm_features.core.atomic import write_text_atomic

    settings = settings_or_exit(config, workdir)
    from derm_features.core.logs import LogContractError  # heavier imports after the checks
    from trainers.downstream.evaluation import markdown
    from trainers.downstream.job import (
        NO_DERM,
        WITH_DERM,
        DownstreamConfig,
        compare_downstream,
        run_downstream,
        task_defaults,
    )
    from trainers.downstream.models import NetworkConfig
    from trainers.downstream.training_set import TrainingSetError, parse_embeddings

    try:
        default_epochs, default_batch = task_defaults(task)
        cfg = DownstreamConfig(
            task=task,
            logs=logs,
            workdir=settings.workdir,
            train_start=parse_day_option(train_start, "--train-start"),
            train_end=parse_day_option(train_end, "--train-end"),
            eval_start=parse_day_option(eval_start, "--eval-start"),
            eval_end=parse_day_option(eval_end, "--eval-end"),
            embeddings=parse_embeddings(embeddings, spec=settings.spec),
            seed=seed,
            epochs=epochs or default_epochs,
            batch_size=batch_size or default_batch,
            patience=patience,
            sample_fraction=sample_fraction,
            set_format=set_format,
            network=NetworkConfig(
                projection_dim=projection_dim,
                id_features=id_features,
                count_features=count_features,
            ),
        )
        if not baselines:
            typer.echo(json.dumps(run_downstream(cfg), sort_keys=True))
            return
        comparison = compare_downstream(cfg)
    except (TrainingSetError, LogContractError, ValueError) as exc:
        raise fail(str(exc)) from None
    name = f"{task}_{'+'.join(cfg.embeddings) or 'none'}_s{seed}"
    table = markdown(comparison, name)
    out = settings.workdir.metrics / "downstream"
    write_text_atomic(table, out / f"{name}.md")
    write_text_atomic(json.dumps(comparison, indent=1, default=float), out / f"{name}.json")
    if comparison["warning"]:
        logging.getLogger("derm.downstream").warning(comparison["warning"])
    typer.echo(table)
    metrics = comparison["runs"][WITH_DERM if cfg.embeddings else NO_DERM]
    summary = {k: comparison[k] for k in ("best_constant_logloss", "warning", "reference")}
    typer.echo(
        json.dumps({**metrics, **summary, "comparison": comparison["models"]}, sort_keys=True)
    )


def experiment_cmd(
    table: Annotated[
        str,
        typer.Argument(
            help="table1 (aggregation heuristics, CVR), table2 (embedding subsets, CTR) "
            "or table4 (subsets, CVR)."
        ),
    ],
    seeds: Annotated[
        int,
        typer.Option(
            help="Seeds per configuration (mean, spread and a paired-bootstrap interval of the "
            "seed-mean lift are reported)."
        ),
    ] = 5,
    workdir: PlainWorkdirOption = None,
    users: Annotated[
        int | None, typer.Option(help="Generated log: users [default: the demo's, 20,000].")
    ] = None,
    pins: Annotated[
        int | None, typer.Option(help="Generated log: Pins [default: the demo's, 5,000].")
    ] = None,
    days: Annotated[
        int | None, typer.Option(help="Generated log: days [default: the demo's, 14].")
    ] = None,
    impressions_per_day: Annotated[
        int | None,
        typer.Option(help="Generated log: impressions a day [default: the demo's, 30,000]."),
    ] = None,
    log_seed: Annotated[int, typer.Option(help="Seed of the generated log.")] = 0,
    window_days: Annotated[
        int | None,
        typer.Option(help="Days of the upstream window fit [default: the demo's, 7]."),
    ] = None,
    eval_days: Annotated[int, typer.Option(help="Last days held out for downstream eval.")] = 2,
    upstream_epochs: Annotated[int, typer.Option(help="Epochs of each upstream fit.")] = 2,
    downstream_epochs: Annotated[
        int | None,
        typer.Option(help="Downstream max epochs (default: the task's, 20 ctr / 40 cvr)."),
    ] = None,
) -> None:
    """Run one of the paper's offline experiments end to end on a generated log.

    generate -> upstream train and infer (ctr, cvr) -> materialize the embedding views per
    day -> downstream runs with and without DERM embeddings, `--seeds` seeds each. Prints
    and writes (under `WORKDIR/experiments/<table>/`) a Markdown table of ROC-AUC and PR-AUC
    lift over the no-DERM baseline (mean and standard deviation across seeds) and a PNG chart.
    """
    from derm_features.core.workdir import Workdir
    from derm_features.jobs.experiments import TABLES, ExperimentConfig, run_experiment

    if table not in TABLES:
        raise fail(f"TABLE must be one of {sorted(TABLES)}, got '{table}'")
    try:
        log_shape = {
            "users": users,
            "pins": pins,
            "days": days,
            "impressions_per_day": impressions_per_day,
            "window_days": window_days,
        }  # None: ExperimentConfig's default, the demo's log
        cfg = ExperimentConfig(
            table=table,
            workdir=Workdir.resolve(workdir).root,
            seeds=seeds,
            log_seed=log_seed,
            eval_days=eval_days,
            upstream_epochs=upstream_epochs,
            downstream_epochs=downstream_epochs,
            **{k: v for k, v in log_shape.items() if v is not None},
        )
        result = run_experiment(cfg)
    except ValueError as exc:
        raise fail(str(exc)) from None
    typer.echo(result.markdown)
    typer.echo(f"wrote {result.markdown_path} and {result.chart_path}")
