"""One downstream run (`derm downstream`): training sets from Feast -> Lightning -> eval metrics."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from trainers.downstream.models import NetworkConfig
from trainers.downstream.training_set import (
    TrainingSet,
    TrainingSetConfig,
    TrainingSetError,
    build_training_set,
    embedding_view,
)

# (epochs, batch size) per task: CVR trains on clicks only, a few thousand rows, so it
# needs smaller batches and more passes to take as many optimiser steps.
TASK_DEFAULTS = {"ctr": (2, 1024), "cvr": (8, 256)}


def task_defaults(task: str) -> tuple[int, int]:
    if task not in TASK_DEFAULTS:
        raise TrainingSetError(f"--task must be one of {sorted(TASK_DEFAULTS)}, got '{task}'")
    return TASK_DEFAULTS[task]


@dataclass(frozen=True)
class DownstreamConfig:
    """Everything one downstream run depends on; filled from the CLI."""

    task: str  # "ctr" | "cvr"
    logs: Path
    workdir: Path
    train_start: dt.date
    train_end: dt.date
    eval_start: dt.date
    eval_end: dt.date
    embeddings: tuple[str, ...] = ()
    seed: int = 0
    epochs: int = 2
    batch_size: int = 1024
    lr: float = 2e-3
    # torch intra-op threads. 1 by default: on a shared or oversubscribed CPU, OpenMP
    # threads spin-wait and a step gets many times slower (measured here: 13x at 2 threads).
    threads: int = 1
    network: NetworkConfig = field(default_factory=NetworkConfig)

    def __post_init__(self) -> None:
        from trainers.downstream.data import TASKS

        if self.task not in TASKS:
            raise TrainingSetError(f"--task must be one of {sorted(TASKS)}, got '{self.task}'")
        if self.train_end < self.train_start:
            raise TrainingSetError(
                f"--train-end {self.train_end} is before --train-start {self.train_start}"
            )
        if self.eval_end < self.eval_start:
            raise TrainingSetError(
                f"--eval-end {self.eval_end} is before --eval-start {self.eval_start}"
            )
        if self.eval_start <= self.train_end:
            raise TrainingSetError(
                f"--eval-start {self.eval_start} must come after --train-end {self.train_end}: "
                "evaluating on training days would overstate every model"
            )
        for key in self.embeddings:
            embedding_view(key)
        for name, value in (("--epochs", self.epochs), ("--batch-size", self.batch_size)):
            if value < 1:
                raise TrainingSetError(f"{name} must be >= 1, got {value}")

    def training_sets(
        self, embeddings: tuple[str, ...] | None = None
    ) -> tuple[TrainingSetConfig, ...]:
        keys = self.embeddings if embeddings is None else embeddings
        return (
            TrainingSetConfig(self.logs, self.workdir, self.train_start, self.train_end, keys),
            TrainingSetConfig(self.logs, self.workdir, self.eval_start, self.eval_end, keys),
        )


def run_downstream(
    cfg: DownstreamConfig,
    train_set: TrainingSet | None = None,
    eval_set: TrainingSet | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Trains the cfg.task model and returns its eval metrics (roc_auc, pr_auc, logloss, ...).

    The training sets are built from Feast unless given (the experiment runner builds them
    once with every embedding and passes them to each run, which reads only its subset).
    """
    import lightning as L
    import torch

    from derm_features.logs import LogSchema
    from trainers import quiet_lightning
    from trainers.downstream.data import TASKS, DownstreamDataModule, positive_rate
    from trainers.downstream.models import MODELS
    from trainers.downstream.system import DownstreamSystem
    from trainers.upstream.data import BatchEncoder
    from trainers.upstream.model import tower_layout

    if train_set is None or eval_set is None:
        wrap = None
        if progress:
            from tqdm import tqdm

            def wrap(days):
                return tqdm(days, desc="training set (days)", unit="day")

        train_cfg, eval_cfg = cfg.training_sets()
        train_set = build_training_set(train_cfg, progress=wrap)
        eval_set = build_training_set(eval_cfg, progress=wrap)

    spec = TASKS[cfg.task]
    schema = LogSchema.from_dict(train_set.meta["schema"])
    feature_cfg = cfg.network.feature_config(spec.tasks)
    encoder = BatchEncoder(schema, feature_cfg)
    torch.set_num_threads(cfg.threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    data = DownstreamDataModule(
        train_set, eval_set, schema, encoder, cfg.embeddings, spec, cfg.batch_size, cfg.seed
    )
    dims = [train_set.dim(k) for k in cfg.embeddings]
    model = MODELS[cfg.task](tower_layout(schema, feature_cfg), dims, spec.tasks, cfg.network)
    system = DownstreamSystem(model, spec.tasks, spec.primary, lr=cfg.lr)
    torch.use_deterministic_algorithms(True, warn_only=True)
    quiet_lightning()
    trainer = L.Trainer(
        max_epochs=cfg.epochs,
        accelerator="cpu",
        devices=1,
        deterministic=True,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        reload_dataloaders_every_n_epochs=1,
        check_val_every_n_epoch=cfg.epochs,  # metrics of the final model only
    )
    trainer.fit(system, datamodule=data)
    i = spec.tasks.index(spec.primary)
    return {
        **system.eval_metrics,
        "task": cfg.task,
        "embeddings": ",".join(cfg.embeddings) or "none",
        "seed": cfg.seed,
        "train_rows": len(data.train["labels"]),
        "eval_rows": len(data.eval["labels"]),
        "eval_positive_rate": positive_rate(data.eval, i),
    }
