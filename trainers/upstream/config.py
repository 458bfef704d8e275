"""Configuration of the upstream DERM job: ModelConfig (the network) and TrainConfig (the run)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

# Which label each upstream model trains its SSL positives and headline metric on.
PRIMARY_TASKS = {"ctr": "click", "cvr": "conversion"}


@dataclass
class ModelConfig:
    """The upstream network. Saved in the checkpoint (`to_dict`) and rebuilt from it.

    token_dim is d, the width of every feature token; embedding_dim is D, the width of the
    user and Pin tower outputs (the same for both: the SSL loss takes their inner product).
    """

    token_dim: int = 32
    embedding_dim: int = 64
    # Hashed vocabulary of categorical and sequence features: one table shared by all
    # features of the model, each feature salted so equal raw ids of two features differ.
    num_buckets: int = 2**17
    seq_len: int = 20
    # One (m1, m2) pair per DHEN layer, each m in {"masknet", "transformer", "mlp"}.
    dhen_layers: tuple[tuple[str, str], ...] = (("masknet", "transformer"), ("mlp", "transformer"))
    interaction_layers: tuple[tuple[str, str], ...] = (
        ("masknet", "transformer"),
        ("mlp", "transformer"),
    )
    dhen_ensemble: str = "concat"  # "concat" (concat + linear) or "sum"
    id_features: bool = True  # user_id / pin_id become the first categorical of their tower
    tasks: tuple[str, ...] = ("click", "conversion")
    ssl_lambda: float = 0.1
    tau_init: float = 0.1
    tau_min: float = 0.01
    tau_max: float = 1.0
    freq_buckets: int = 2**16
    freq_alpha: float = 0.05
    dropout: float = 0.1
    num_heads: int = 2  # attention heads (DHEN transformer and sequence encoder)
    seq_layers: int = 1  # transformer layers of each sequence encoder
    mlp_hidden: int = 128  # hidden width of DHEN's MLP and MaskNet modules
    masknet_blocks: int = 1
    head_hidden: tuple[int, ...] = (64,)

    def __post_init__(self) -> None:
        # from_dict / JSON give lists; keep tuples so configs compare and hash the same
        self.dhen_layers = tuple(tuple(p) for p in self.dhen_layers)
        self.interaction_layers = tuple(tuple(p) for p in self.interaction_layers)
        self.tasks = tuple(self.tasks)
        self.head_hidden = tuple(self.head_hidden)
        if not self.tasks:
            raise ValueError("ModelConfig.tasks must name at least one task")
        if not 0 < self.tau_min <= self.tau_init <= self.tau_max:
            raise ValueError(
                f"need 0 < tau_min <= tau_init <= tau_max, got "
                f"{self.tau_min}, {self.tau_init}, {self.tau_max}"
            )
        if self.token_dim % self.num_heads:
            raise ValueError(
                f"token_dim {self.token_dim} must divide by num_heads {self.num_heads}"
            )

    def primary_task(self, model: str) -> str:
        """The label an upstream model trains on: "ctr" -> "click", "cvr" -> "conversion"."""
        if model not in PRIMARY_TASKS:
            raise ValueError(f"unknown model {model!r}: expected one of {sorted(PRIMARY_TASKS)}")
        task = PRIMARY_TASKS[model]
        if task not in self.tasks:
            raise ValueError(f"model {model!r} trains on {task!r}, not in tasks {self.tasks}")
        return task

    def to_dict(self) -> dict:
        """JSON-safe (lists for tuples), for checkpoint hparams."""
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = [list(x) if isinstance(x, tuple) else x for x in v]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {sorted(unknown)}")
        return cls(**d)


@dataclass
class TrainConfig:
    """One `derm train` run: a window fit (start..end) or one incremental day (date).

    model_cfg None means: ModelConfig() for a window fit, the snapshot's own config for an
    incremental day (a given one must match the snapshot's D and features).
    """

    model: str  # "ctr" | "cvr"
    logs: Path
    workdir: Path | None = None
    start: dt.date | None = None
    end: dt.date | None = None
    date: dt.date | None = None
    batch_size: int = 1024
    lr: float = 2e-3
    weight_decay: float = 1e-4
    # The step policy (`incremental_range`, `steps_policy`): a fit takes `min_steps`
    # optimiser steps where it can, an incremental day first by also training on up to
    # `replay_days` days before it, then (any fit) by more passes, up to `max_epochs`.
    epochs: int = 1
    min_steps: int = 30
    max_epochs: int = 10
    replay_days: int = 6
    seed: int = 0
    shuffle_buffer: int = 65_536  # rows shuffled together; bounds memory
    num_workers: int = 0  # DataLoader worker processes (0: decode in the training process)
    # torch intra-op threads; None = torch's default. On a machine shared with other jobs,
    # 1 avoids OpenMP threads spinning against each other (20x slower steps seen on 2 cores).
    threads: int | None = None
    recall_k: int = 10
    accelerator: str = "auto"
    devices: int | str = "auto"
    progress: bool = True
    model_cfg: ModelConfig | None = None

    def __post_init__(self) -> None:
        if self.model not in PRIMARY_TASKS:
            raise ValueError(f"--model must be one of {sorted(PRIMARY_TASKS)}, got '{self.model}'")
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
    workdir: Path | None = None
    back_inference: bool = False
    start: dt.date | None = None
    batch_size: int = 4096
    progress: bool = True

    def __post_init__(self) -> None:
        if self.model not in PRIMARY_TASKS:
            raise ValueError(f"--model must be one of {sorted(PRIMARY_TASKS)}, got '{self.model}'")
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
