"""`derm train` and `derm infer`: thin typer shells over trainers.upstream.train / .infer.

torch and Lightning are imported inside the command bodies so `derm --help` stays fast.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated

import typer

from derm_features.commands.options import (
    ConfigOption,
    LogsOption,
    ProgressOption,
    WorkdirOption,
    settings_or_exit,
    show_progress,
)

ModelOption = Annotated[
    str,
    typer.Option(
        "--model",
        help="Upstream model of the DERM spec, e.g. 'ctr' (trains on clicks) or 'cvr' "
        "(conversions).",
    ),
]


def _day(value: str | None, flag: str):
    from derm_features.commands.options import parse_day_option

    return None if value is None else parse_day_option(value, flag)


def _fail(message: str) -> typer.Exit:
    from derm_features.commands.options import fail

    return fail(message)


def train_cmd(
    model: ModelOption,
    logs: LogsOption,
    workdir: WorkdirOption = None,
    config: ConfigOption = None,
    start: Annotated[
        str | None, typer.Option(help="Window fit: first day (YYYY-MM-DD), with --end.")
    ] = None,
    end: Annotated[
        str | None,
        typer.Option(help="Window fit: last day; the snapshot is saved as `<end>.ckpt`."),
    ] = None,
    date: Annotated[
        str | None,
        typer.Option(
            help="Incremental day: warm-start from the newest snapshot before DATE (fresh "
            "optimiser), train on DATE, save `<DATE>.ckpt`."
        ),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(help="At least this many passes over the training days [default: 2]."),
    ] = None,
    min_steps: Annotated[
        int | None,
        typer.Option(
            help="Steps a fit should take: an incremental day replays earlier days "
            "(--replay-days), then any fit adds passes (up to --max-epochs); a small day is "
            "otherwise one or two steps [default: 30]."
        ),
    ] = None,
    max_epochs: Annotated[
        int | None, typer.Option(help="The cap on passes that --min-steps adds [default: 10].")
    ] = None,
    replay_days: Annotated[
        int | None,
        typer.Option(
            help="Incremental day: reach --min-steps by also training on up to this many days "
            "before --date (the fewest that suffice), before adding passes [default: 6]."
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(help="Rows per batch (also SSL in-batch negatives) [default: 1024]."),
    ] = None,
    lr: Annotated[float | None, typer.Option(help="AdamW learning rate [default: 0.002].")] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seeds weights, shuffle and dropout [default: 0].")
    ] = None,
    shuffle_buffer: Annotated[
        int | None,
        typer.Option(
            help="Rows shuffled together (bounds memory); 0 keeps log order [default: 262144]."
        ),
    ] = None,
    num_workers: Annotated[
        int | None,
        typer.Option(
            help="DataLoader worker processes decoding Parquet (0: in-process) [default: 0]."
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(help="torch CPU threads (default: torch's choice; 1 on a busy machine)."),
    ] = None,
    embedding_dim: Annotated[
        int | None,
        typer.Option(
            help="D of the tower outputs (window fit; default: the spec's embedding_dim, 64)."
        ),
    ] = None,
    accelerator: Annotated[
        str | None, typer.Option(help="Lightning accelerator: auto, cpu, gpu [default: auto].")
    ] = None,
    devices: Annotated[
        str | None, typer.Option(help="Lightning devices: auto, a count, or ids [default: auto].")
    ] = None,
    strategy: Annotated[
        str | None,
        typer.Option(
            help="Lightning strategy: auto, or ddp for several processes (`--accelerator cpu "
            "--devices 2 --strategy ddp` trains on two CPU processes) [default: auto]."
        ),
    ] = None,
    progress: ProgressOption = None,
) -> None:
    """Train the upstream DERM model: a window fit (--start/--end) or one incremental day (--date).

    Prints, as its last line, one JSON object of validation metrics (roc_auc, pr_auc of the
    model's own task; tower_roc_auc, the ROC-AUC of the embeddings' dot product u.p alone;
    ssl_recall_at_k) on the day after the trained range when the log has
    it ("eval_held_out": true), else on the last trained day.
    """
    from derm_features.core.logs import LogContractError
    from trainers.upstream.config import ModelConfig, TrainConfig

    flags = {
        "epochs": epochs, "min_steps": min_steps, "max_epochs": max_epochs,
        "replay_days": replay_days, "batch_size": batch_size, "lr": lr,
        "shuffle_buffer": shuffle_buffer, "num_workers": num_workers, "threads": threads,
        "accelerator": accelerator, "strategy": strategy,
        "devices": None if devices is None else int(devices) if devices.isdigit() else devices,
    }  # fmt: skip
    settings = settings_or_exit(config, workdir, model=model, threads=threads, seed=seed)
    train_values = {**settings.train, **{k: v for k, v in flags.items() if v is not None}}
    try:
        model_cfg = None
        if start is not None or embedding_dim is not None:  # a day keeps its snapshot's
            dim = {} if embedding_dim is None else {"embedding_dim": embedding_dim}
            model_cfg = ModelConfig.for_spec(settings.spec, {**settings.model, **dim})
        cfg = TrainConfig(
            model=model,
            logs=logs,
            workdir=settings.workdir,
            start=_day(start, "--start"),
            end=_day(end, "--end"),
            date=_day(date, "--date"),
            seed=settings.pipeline.get("seed", 0),
            progress=show_progress(progress),
            model_cfg=model_cfg,
            **train_values,
        )
    except ValueError as exc:
        raise _fail(str(exc)) from None

    from trainers.upstream.checkpoint import CheckpointError
    from trainers.upstream.train import train

    try:
        metrics = train(cfg)
    except (LogContractError, CheckpointError, ValueError) as exc:
        raise _fail(str(exc)) from None
    if metrics.get("skipped"):
        logging.getLogger("derm.train").warning(f"skipped: {metrics['reason']}")
    typer.echo(json.dumps(metrics))


def infer_cmd(
    model: ModelOption,
    logs: LogsOption,
    date: Annotated[str, typer.Option(help="Snapshot day D: runs `checkpoints/<model>/<D>.ckpt`.")],
    workdir: WorkdirOption = None,
    config: ConfigOption = None,
    back_inference: Annotated[
        bool,
        typer.Option(
            help="Also rewrite days --start..D with snapshot D (paper B.3). Leaks: those "
            "embeddings have seen later labels."
        ),
    ] = False,
    start: Annotated[
        str | None, typer.Option(help="First day to rewrite (with --back-inference).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Rows per inference batch.")] = 4096,
    progress: ProgressOption = None,
) -> None:
    """Write daily tower outputs (user and Pin embeddings) of snapshot D over day D's logs.

    Output: `<workdir>/daily/<model>/<user|pin>/ds=<day>/part-0.parquet`, one row per
    impression (`<entity>_id`, ts, embedding, model_version); each day replaced atomically.
    """
    from derm_features.core.logs import LogContractError
    from trainers.upstream.config import InferConfig

    settings = settings_or_exit(config, workdir, model=model)
    try:
        cfg = InferConfig(
            model=model,
            logs=logs,
            date=_day(date, "--date"),
            workdir=settings.workdir,
            back_inference=back_inference,
            start=_day(start, "--start"),
            batch_size=batch_size,
            progress=show_progress(progress),
        )
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if cfg.back_inference:
        logging.getLogger("derm.infer").warning(
            f"back inference rewrites {cfg.start}..{cfg.date} with snapshot {cfg.date}: those "
            "embeddings have seen labels from after their day (leakage; paper B.3). Keep them "
            "out of point-in-time evaluation."
        )

    from trainers.upstream.checkpoint import CheckpointError
    from trainers.upstream.infer import infer

    try:
        summary = infer(cfg)
    except (LogContractError, CheckpointError, ValueError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(json.dumps(summary))
