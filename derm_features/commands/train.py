"""`derm train` and `derm infer`: thin typer shells over trainers.upstream.train / .infer.

torch and Lightning are imported inside the command bodies so `derm --help` stays fast.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from derm_features.commands.options import LogsOption, WorkdirOption

ModelOption = Annotated[
    str,
    typer.Option(
        "--model", help="Upstream model: 'ctr' (trains on clicks) or 'cvr' (conversions)."
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
    start: Annotated[
        str | None, typer.Option(help="Window fit: first day (YYYY-MM-DD), with --end.")
    ] = None,
    end: Annotated[
        str | None,
        typer.Option(help="Window fit: last day; the snapshot is saved as <end>.ckpt."),
    ] = None,
    date: Annotated[
        str | None,
        typer.Option(
            help="Incremental day: warm-start from the newest snapshot before DATE (fresh "
            "optimiser), train on DATE, save <DATE>.ckpt."
        ),
    ] = None,
    epochs: Annotated[
        int, typer.Option(help="At least this many passes over the training days.")
    ] = 1,
    min_steps: Annotated[
        int,
        typer.Option(
            help="Steps a fit should take: an incremental day replays earlier days "
            "(--replay-days), then any fit adds passes (up to --max-epochs); a small day is "
            "otherwise one or two steps."
        ),
    ] = 30,
    max_epochs: Annotated[int, typer.Option(help="The cap on passes that --min-steps adds.")] = 10,
    replay_days: Annotated[
        int,
        typer.Option(
            help="Incremental day: reach --min-steps by also training on up to this many days "
            "before --date (the fewest that suffice), before adding passes."
        ),
    ] = 6,
    batch_size: Annotated[
        int, typer.Option(help="Rows per batch (also SSL in-batch negatives).")
    ] = 1024,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 2e-3,
    seed: Annotated[int, typer.Option(help="Seeds weights, shuffle and dropout.")] = 0,
    shuffle_buffer: Annotated[
        int, typer.Option(help="Rows shuffled together (bounds memory); 0 keeps log order.")
    ] = 65_536,
    num_workers: Annotated[
        int, typer.Option(help="DataLoader worker processes decoding Parquet (0: in-process).")
    ] = 0,
    threads: Annotated[
        int | None,
        typer.Option(help="torch CPU threads (default: torch's choice; 1 on a busy machine)."),
    ] = None,
    embedding_dim: Annotated[
        int | None,
        typer.Option(help="D of the tower outputs (window fit; default 64, or the snapshot's)."),
    ] = None,
    accelerator: Annotated[
        str, typer.Option(help="Lightning accelerator: auto, cpu, gpu.")
    ] = "auto",
    devices: Annotated[
        str, typer.Option(help="Lightning devices: auto, a count, or ids.")
    ] = "auto",
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
) -> None:
    """Train the upstream DERM model: a window fit (--start/--end) or one incremental day (--date).

    Prints, as its last line, one JSON object of validation metrics (roc_auc, pr_auc of the
    model's own task, ssl_recall_at_k) on the day after the trained range when the log has
    it ("eval_held_out": true), else on the last trained day.
    """
    from derm_features.core.logs import LogContractError
    from trainers.upstream.config import ModelConfig, TrainConfig

    try:
        model_cfg = None
        if embedding_dim is not None:
            model_cfg = ModelConfig(embedding_dim=embedding_dim)
        cfg = TrainConfig(
            model=model,
            logs=logs,
            workdir=workdir,
            start=_day(start, "--start"),
            end=_day(end, "--end"),
            date=_day(date, "--date"),
            batch_size=batch_size,
            lr=lr,
            epochs=epochs,
            min_steps=min_steps,
            max_epochs=max_epochs,
            replay_days=replay_days,
            seed=seed,
            shuffle_buffer=shuffle_buffer,
            num_workers=num_workers,
            threads=threads,
            accelerator=accelerator,
            devices=int(devices) if devices.isdigit() else devices,
            progress=progress,
            model_cfg=model_cfg,
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
        typer.secho(f"skipped: {metrics['reason']}", fg=typer.colors.YELLOW, err=True)
    typer.echo(json.dumps(metrics))


def infer_cmd(
    model: ModelOption,
    logs: LogsOption,
    date: Annotated[str, typer.Option(help="Snapshot day D: runs checkpoints/<model>/<D>.ckpt.")],
    workdir: WorkdirOption = None,
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
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
) -> None:
    """Write daily tower outputs (user and Pin embeddings) of snapshot D over day D's logs.

    Output: <workdir>/daily/<model>/<user|pin>/ds=<day>/part-0.parquet, one row per
    impression (<entity>_id, ts, embedding, model_version); each day replaced atomically.
    """
    from derm_features.core.logs import LogContractError
    from trainers.upstream.config import InferConfig

    try:
        cfg = InferConfig(
            model=model,
            logs=logs,
            date=_day(date, "--date"),
            workdir=workdir,
            back_inference=back_inference,
            start=_day(start, "--start"),
            batch_size=batch_size,
            progress=progress,
        )
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if cfg.back_inference:
        typer.secho(
            f"warning: back inference rewrites {cfg.start}..{cfg.date} with snapshot "
            f"{cfg.date}: those embeddings have seen labels from after their day (leakage; "
            "paper B.3). Keep them out of point-in-time evaluation.",
            fg=typer.colors.YELLOW,
            err=True,
        )

    from trainers.upstream.checkpoint import CheckpointError
    from trainers.upstream.infer import infer

    try:
        summary = infer(cfg)
    except (LogContractError, CheckpointError, ValueError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(json.dumps(summary))
