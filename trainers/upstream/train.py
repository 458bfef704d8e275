"""`derm train`: fit the upstream model on a window, or warm-start it for one more day.

    window fit   (start..end)  fresh weights and estimator -> checkpoints/<model>/<end>.ckpt
    incremental  (date)        weights, temperature and estimator of the newest snapshot
                               before `date`, a FRESH optimiser and epoch counter (paper B.2)
                               -> checkpoints/<model>/<date>.ckpt

Validation runs on the day after the trained range when the log has it (a held-out day),
else on the last trained day; the result says which ("eval_day", "eval_held_out").
"""

from __future__ import annotations

import datetime as dt
import math
import warnings
from pathlib import Path

import pyarrow.compute as pc

from derm_features.core.logs import Log, open_log
from derm_features.core.provenance import ModelVersion, new_lineage
from derm_features.core.workdir import Workdir
from trainers.upstream.config import ModelConfig, TrainConfig


def label_counts(log: Log, start: dt.date, end: dt.date, task: str) -> tuple[int, int]:
    """(rows, positives) of label column `task` within [start, end], streamed."""
    rows = positives = 0
    for batch in log.scanner(start, end, columns=[task]).to_batches():
        rows += batch.num_rows
        positives += int(pc.sum(pc.cast(batch.column(task), "int64")).as_py() or 0)
    return rows, positives


def eval_range(log: Log, end: dt.date) -> tuple[tuple[dt.date, dt.date], bool]:
    """The validation day: end + 1 if the log has rows then (held out), else end."""
    after = end + dt.timedelta(days=1)
    if log.scanner(after, after, columns=["ts"]).count_rows():
        return (after, after), True
    return (end, end), False


# Fewer optimiser steps than this (or than min_steps) in one fit and the towers barely move.
FEW_STEPS = 10


def make_trainer(cfg: TrainConfig, workdir: Workdir, run_name: str, epochs: int):
    """The Lightning Trainer of a run: seeded, deterministic where possible, CSV curves;
    `epochs` passes, validated once at the end."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from trainers import progress_bars, quiet_lightning

    logger = CSVLogger(save_dir=workdir.metrics / "upstream", name=cfg.model, version=run_name)
    quiet_lightning()
    return L.Trainer(
        max_epochs=epochs,
        check_val_every_n_epoch=epochs,  # the held-out day is scored once, after the last pass
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        strategy=cfg.strategy,
        deterministic="warn",  # deterministic kernels where torch has them
        logger=logger,
        log_every_n_steps=10,
        enable_checkpointing=False,  # we save our own snapshot (see checkpoint.py)
        enable_progress_bar=cfg.progress,
        callbacks=progress_bars(cfg.progress),
        enable_model_summary=False,
        reload_dataloaders_every_n_epochs=1,  # reseeds the shuffle buffer every epoch
        num_sanity_val_steps=0,
    )


def train(cfg: TrainConfig) -> dict:
    """Runs one `derm train` and returns the metrics dict it prints (see module doc)."""
    import lightning as L
    import torch

    from trainers.upstream.checkpoint import (
        check_fits,
        load_snapshot,
        newest_before,
        save_snapshot,
    )
    from trainers.upstream.data import UpstreamDataModule, check_tasks
    from trainers.upstream.system import UpstreamSystem

    log = open_log(cfg.logs, labels=cfg.spec.labels)
    workdir = Workdir.resolve(cfg.workdir)
    start, end = cfg.train_range
    if cfg.incremental:
        start, end = cfg.incremental_range(lambda d: log.scanner(d, d, columns=["ts"]).count_rows())

    snapshot = None
    if cfg.incremental:
        snapshot = load_snapshot(newest_before(workdir, cfg.model, cfg.date))
        check_fits(snapshot, log.schema, log.path, cfg.model, cfg.model_cfg)
        model_cfg = cfg.model_cfg or snapshot.model_cfg
    else:
        model_cfg = cfg.model_cfg or ModelConfig.for_spec(cfg.spec)
    check_tasks(log.columns(), model_cfg, log.path)
    primary = model_cfg.primary_task(cfg.model, cfg.spec.models)

    rows, positives = label_counts(log, start, end, primary)
    summary = {"model": cfg.model, "train_start": str(start), "train_end": str(end)}
    if rows == 0:
        raise ValueError(f"{log.path}: no impressions between {start} and {end}")
    if positives == 0:
        return summary | {
            "skipped": True,
            "reason": f"no '{primary}' positives in {rows} rows between {start} and {end}: "
            f"the {cfg.model} model has nothing to learn from; no checkpoint written",
        }
    (val_day, _), held_out = eval_range(log, end)
    epochs, steps = cfg.steps_policy(rows)
    if steps < max(cfg.min_steps, FEW_STEPS):
        warnings.warn(
            f"{cfg.model} {start}..{end}: {rows} rows give only {steps} optimiser steps at "
            f"batch size {cfg.batch_size} over {epochs} epoch(s); the towers will be undertrained. "
            "Raise train.max_epochs or train.replay_days, or lower train.batch_size",
            stacklevel=2,
        )

    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    system = UpstreamSystem(
        log.schema,
        model_cfg,
        cfg.model,
        cfg.lr,
        cfg.weight_decay,
        cfg.recall_k,
        models=cfg.spec.models,
    )
    if snapshot is not None:
        # weights + temperature + estimator buffers; the optimiser starts fresh
        system.load_state_dict(snapshot.state_dict)
        version = snapshot.version.next_day(cfg.date)
    else:
        lineage = new_lineage(cfg.model, cfg.seed, str(start), str(end), model_cfg.to_dict())
        version = ModelVersion(cfg.model, lineage, model_cfg.embedding_dim, end)

    data = UpstreamDataModule(
        log.path,
        log.schema,
        model_cfg,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        shuffle_buffer=cfg.shuffle_buffer,
        num_workers=cfg.num_workers,
        train_range=(start, end),
        val_range=(val_day, val_day),
    )
    run_name = f"{start}_{end}" if not cfg.incremental else str(cfg.date)
    trainer = make_trainer(cfg, workdir, run_name, epochs)
    trainer.fit(system, datamodule=data)

    val = system.last_val
    metrics = summary | {
        "mode": "incremental" if cfg.incremental else "window",
        "model_version": str(version),
        "eval_day": str(val_day),
        "eval_held_out": held_out,
        "task": primary,
        "roc_auc": val.get(f"{primary}/roc_auc"),
        "pr_auc": val.get(f"{primary}/pr_auc"),
        "tower_roc_auc": val.get("tower_roc_auc"),  # u.p alone, the embeddings' own ranking
        "ssl_recall_at_k": val.get("ssl_recall_at_k"),
        "k": cfg.recall_k,
        "train_rows": rows,
        "train_positives": positives,
        "epochs": epochs,
        "steps": trainer.global_step,  # this process's optimizer steps (per rank under DDP)
        "eval_rows": _count(val.get(f"{primary}/rows")),
        "eval_positives": _count(val.get(f"{primary}/positives")),
        "per_task": {
            t: {"roc_auc": val.get(f"{t}/roc_auc"), "pr_auc": val.get(f"{t}/pr_auc")}
            for t in model_cfg.tasks
        },
        "checkpoint": str(workdir.checkpoint(cfg.model, end)),
        "warm_start": str(snapshot.path) if snapshot else None,
    }
    metrics = {k: _json_safe(v) for k, v in metrics.items()}
    if trainer.is_global_zero:
        save_snapshot(
            workdir.checkpoint(cfg.model, end),
            cfg.model,
            version,
            model_cfg,
            system.model.feature_signature(),
            (start, end),
            system.state_dict(),
            cfg.seed,
            {k: v for k, v in metrics.items() if k != "per_task"},
        )
    return metrics


def _count(value: float | None) -> int | None:
    return None if value is None else int(value)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value
