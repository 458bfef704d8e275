"""Configuration of the upstream DERM job: TrainConfig (a fit) and InferConfig (inference).

The network's own config, ModelConfig, lives with the feature encoders it sizes
(`trainers.features.config`) and is imported from here too."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from derm_features.core.spec import DermSpec
from derm_features.core.workdir import Workdir
from trainers.features.config import ModelConfig

__all__ = ["InferConfig", "ModelConfig", "TrainConfig"]


# Rows shuffled together in training; bounds memory (~0.4 KB a row of the demo log). A
# whole 7-day demo window (210k rows) in one buffer gave towers u.p ROC-AUC 0.621 +- 0.006
# over 3 seeds against 0.588 +- 0.032 with 65k-row buffers (BENCHMARKS.md, "towers").
SHUFFLE_BUFFER = 262_144

# Lightning strategies derm's data loading supports: one process, or data-parallel
# processes that each read their own slots of the log (`LogBatches`).
STRATEGIES = ("auto", "single_device", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true")


@dataclass
class TrainConfig:
    """One `derm train` run: a window fit (start..end) or one incremental day (date).

    model_cfg None means: ModelConfig() for a window fit, the snapshot's own config for an
    incremental day (a given one must match the snapshot's D and features).
    """

    model: str  # "ctr" | "cvr"
    logs: Path
    workdir: Workdir | Path | None = None  # a Workdir carries its spec and Redis
    start: dt.date | None = None
    end: dt.date | None = None
    date: dt.date | None = None
    batch_size: int = 1024
    lr: float = 2e-3
    weight_decay: float = 1e-4
    # The step policy (`incremental_range`, `steps_policy`): a fit takes `min_steps`
    # optimiser steps where it can, an incremental day first by also training on up to
    # `replay_days` days before it, then (any fit) by more passes, up to `max_epochs`.
    # 2: on the demo log a second pass lifted the towers' u.p ROC-AUC from 0.59 to 0.63 and
    # DERM's downstream CTR lift from +1.8 % to +6 % (BENCHMARKS.md, "towers"); a third overfits
    epochs: int = 2
    min_steps: int = 30
    max_epochs: int = 10
    replay_days: int = 6
    seed: int = 0
    shuffle_buffer: int = SHUFFLE_BUFFER
    num_workers: int = 0  # DataLoader worker processes (0: decode in the training process)
    # torch intra-op threads; None = torch's default. On a machine shared with other jobs,
    # 1 avoids OpenMP threads spinning against each other (20x slower steps seen on 2 cores).
    threads: int | None = None
    recall_k: int = 10
    accelerator: str = "auto"
    devices: int | str = "auto"
    # Lightning's strategy: "auto", or "ddp" to train on several processes (CPU: gloo; each
    # rank reads its own slots of the shuffled log, `LogBatches`)
    strategy: str = "auto"
    progress: bool = True
    model_cfg: ModelConfig | None = None

    @property
    def spec(self) -> DermSpec:
        """The DERM spec of the work directory (the default one for a plain path)."""
        return Workdir.resolve(self.workdir).spec

    def __post_init__(self) -> None:
        models = self.spec.models
        if self.model not in models:
            raise ValueError(f"--model must be one of {sorted(models)}, got '{self.model}'")
        window = self.start is not None or self.end is not None
        if window and self.date is not None:
            raise ValueError("give either --start and --end (window fit) or --date (incremental)")
        if window and (self.start is None or self.end is None):
            raise ValueError("a window fit needs both --start and --end")
        if not window and self.date is None:
            raise ValueError("give --start and --end (window fit) or --date (incremental day)")
        if window and self.start > self.end:
            raise ValueError(f"--start {self.start} is after --end {self.end}")
        for flag, value in (
            ("--batch-size", self.batch_size),
            ("--epochs", self.epochs),
            ("--max-epochs", self.max_epochs),
            ("--recall-k", self.recall_k),
        ):
            if value < 1:
                raise ValueError(f"{flag} must be >= 1, got {value}")
        for flag, value in (("--min-steps", self.min_steps), ("--replay-days", self.replay_days)):
            if value < 0:
                raise ValueError(f"{flag} must be >= 0, got {value}")
        if self.max_epochs < self.epochs:
            raise ValueError(f"--max-epochs {self.max_epochs} is below --epochs {self.epochs}")
        if self.lr <= 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")
        if self.shuffle_buffer < 0 or self.num_workers < 0:
            raise ValueError("--shuffle-buffer and --num-workers must be >= 0")
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"--strategy must be one of {', '.join(STRATEGIES)}, got '{self.strategy}'"
            )

    @classmethod
    def check_settings(cls, **settings) -> None:
        """Raises the ValueError (naming the flag) that a run with these training settings
        (derm.yaml's train: keys) would, without a run: settings are checked before any work."""
        cls(model="ctr", logs=Path("."), date=dt.date(2000, 1, 1), **settings)

    @property
    def incremental(self) -> bool:
        return self.date is not None

    @property
    def train_range(self) -> tuple[dt.date, dt.date]:
        """start..end, or date..date (before `incremental_range` adds replayed days)."""
        return (self.date, self.date) if self.incremental else (self.start, self.end)

    def incremental_range(self, day_rows: Callable[[dt.date], int]) -> tuple[dt.date, dt.date]:
        """The days an incremental fit trains on: `date` and the fewest days before it (at
        most `replay_days`, stopping at the first day without rows) whose rows make
        `min_steps` steps in one pass. Replaying recent days beats passing over one small day
        again (measured in BENCHMARKS.md: repeated passes over the day overfit it).

        `day_rows(day)` gives a day's row count.
        """
        start, rows = self.date, day_rows(self.date)
        while (self.date - start).days < self.replay_days and (
            math.ceil(rows / self.batch_size) < self.min_steps
        ):
            before = day_rows(start - dt.timedelta(days=1))
            if not before:
                break
            start, rows = start - dt.timedelta(days=1), rows + before
        return start, self.date

    def steps_policy(self, rows: int) -> tuple[int, int]:
        """(epochs, optimiser steps) of a fit over `rows` rows.

        epochs = clamp(ceil(min_steps / ceil(rows / batch_size)), epochs, max_epochs): a day
        of 500 rows at batch 1024 is one step an epoch, so one epoch would barely move the
        model; a day of 1M rows already takes ~1,000 steps in its one pass.
        """
        per_epoch = max(1, math.ceil(rows / self.batch_size))
        epochs = min(self.max_epochs, max(self.epochs, math.ceil(self.min_steps / per_epoch)))
        return epochs, epochs * per_epoch


@dataclass
class InferConfig:
    """One `derm infer` run: snapshot `date` over day `date` (or, back inference, start..date)."""

    model: str
    logs: Path
    date: dt.date
    workdir: Workdir | Path | None = None  # a Workdir carries its spec and Redis
    back_inference: bool = False
    start: dt.date | None = None
    batch_size: int = 4096
    progress: bool = True

    @property
    def spec(self) -> DermSpec:
        """The DERM spec of the work directory (the default one for a plain path)."""
        return Workdir.resolve(self.workdir).spec

    def __post_init__(self) -> None:
        models = self.spec.models
        if self.model not in models:
            raise ValueError(f"--model must be one of {sorted(models)}, got '{self.model}'")
        if self.back_inference and self.start is None:
            raise ValueError("--back-inference needs --start (the first day to rewrite)")
        if self.start is not None and not self.back_inference:
            raise ValueError("--start is only used with --back-inference")
        if self.start is not None and self.start > self.date:
            raise ValueError(f"--start {self.start} is after --date {self.date}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")

    @property
    def days(self) -> list[dt.date]:
        first = self.start if self.back_inference else self.date
        return [first + dt.timedelta(days=i) for i in range((self.date - first).days + 1)]
