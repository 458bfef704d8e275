"""One downstream run (`derm downstream`): training sets from Feast -> Lightning -> eval metrics.

    train days ──time_split──► train part ──fit──► best epoch by val log loss (early stop)
                        └────► validation part (the last train day) ──┘
    eval days  ──────────────────────────────────────────► predictions -> metrics, intervals

`run_downstream` trains one model (cfg.embeddings); `compare_downstream` scores, on the same
eval rows, the baselines (`baselines.py`), the model without DERM and with cfg.embeddings,
with bootstrap intervals and the paired lift (`evaluation.compare`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from derm_features.core.workdir import Workdir
from trainers.downstream.models import NetworkConfig
from trainers.downstream.training_set import (
    TrainingSet,
    TrainingSetConfig,
    TrainingSetError,
    build_training_set,
    check_file_format,
    embedding_view,
)

if TYPE_CHECKING:
    from torch import Tensor

    from derm_features.core.logs import LogSchema
    from trainers.features.config import ModelConfig

# (max epochs, batch size) per task; early stopping picks the epoch. CVR trains on clicks
# only, a few thousand rows, so it needs smaller batches and more passes.
TASK_DEFAULTS = {"ctr": (20, 1024), "cvr": (40, 256)}
NO_DERM, WITH_DERM = "derm model", "derm model + DERM"
# L2 weight on the hashed embedding tables per task (`system.embedding_penalty`): without
# it rare ids keep their random start and early stopping ends at the first epoch. CTR: the
# logistic regression's L2 at the C it picks on the demo log, 1 / (2 C n) with C = 0.1 and
# n = 90k rows (measured in BENCHMARKS.md, "Model quality"). CVR: with DENSE_L2 below.
EMBEDDING_L2 = {"ctr": 5.6e-5, "cvr": 1e-2}
# CTR: an L2 on every other weight matrix (`system.dense_penalty`) and a Wide & Deep term
# over the logistic regression's sparse inputs with that regression's own L2 had the lowest
# validation log loss of the settings swept (`benchmarks/downstream_lift.py --sweep`,
# BENCHMARKS.md "Model quality"). CVR (1,726 training clicks on the demo log): 1e-2 on both
# had the lowest validation log loss of the settings swept over 5 seeds, with and without
# DERM (within about one seed's spread), and no run's eval log loss above the best constant's
# beyond the noise (without it, one of 5 with DERM was): a model short of conversions kept
# near its prior (BENCHMARKS.md, "CVR's L2").
DENSE_L2 = {"ctr": 1e-4, "cvr": 1e-2}
WIDE = {"ctr": True, "cvr": False}
WIDE_L2 = {"ctr": 5.6e-5, "cvr": 0.0}


def task_defaults(task: str) -> tuple[int, int]:
    if task not in TASK_DEFAULTS:
        raise TrainingSetError(f"--task must be one of {sorted(TASK_DEFAULTS)}, got '{task}'")
    return TASK_DEFAULTS[task]


@dataclass(frozen=True)
class DownstreamConfig:
    """Everything one downstream run depends on; filled from the CLI."""

    task: str  # "ctr" | "cvr"
    logs: Path
    workdir: Workdir | Path  # a Workdir carries the DERM spec
    train_start: dt.date
    train_end: dt.date
    eval_start: dt.date
    eval_end: dt.date
    embeddings: tuple[str, ...] = ()
    seed: int = 0
    epochs: int = 20  # at most; early stopping on the validation day's log loss
    batch_size: int = 1024
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 2  # validation checks without a better log loss before stopping
    embedding_l2: float | None = None  # None: the task's EMBEDDING_L2
    dense_l2: float | None = None  # every other weight matrix; None: the task's DENSE_L2
    wide_l2: float | None = None  # the Wide & Deep term; None: the task's WIDE_L2
    # Fraction of the training days' rows (train and validation parts alike) the model and
    # the baselines learn from, drawn per seed; the eval rows are always all of them. < 1
    # mimics a downstream team with less data than the upstream models (paper 1, 4.1).
    sample_fraction: float = 1.0
    val_checks_per_epoch: int = 1  # 4 measured no better (BENCHMARKS.md)
    resamples: int = 1000  # bootstrap replicates of the intervals
    # torch intra-op threads. 1 by default: on a shared or oversubscribed CPU, OpenMP
    # threads spin-wait and a step gets many times slower (measured here: 13x at 2 threads).
    threads: int = 1
    network: NetworkConfig = field(default_factory=NetworkConfig)
    set_format: str = "parquet"  # the training sets' files: training_set.FILE_FORMATS

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
        for name, value in (
            ("--epochs", self.epochs),
            ("--batch-size", self.batch_size),
            ("--patience", self.patience),
            ("--val-checks-per-epoch", self.val_checks_per_epoch),
            ("--resamples", self.resamples),
        ):
            if value < 1:
                raise TrainingSetError(f"{name} must be >= 1, got {value}")
        for name, value in (
            ("embedding_l2", self.embedding_l2),
            ("dense_l2", self.dense_l2),
            ("wide_l2", self.wide_l2),
        ):
            if value is not None and not value >= 0:
                raise TrainingSetError(f"{name} must be >= 0, got {value}")
        check_file_format(self.set_format, "--set-format")
        if not 0 < self.sample_fraction <= 1:
            raise TrainingSetError(
                f"--sample-fraction must be in (0, 1], got {self.sample_fraction}"
            )

    @property
    def table_l2(self) -> float:
        """The embedding tables' L2 weight of this run: embedding_l2, else the task's."""
        return EMBEDDING_L2[self.task] if self.embedding_l2 is None else self.embedding_l2

    @property
    def matrix_l2(self) -> float:
        """The other weight matrices' L2 weight: dense_l2, else the task's DENSE_L2."""
        return DENSE_L2[self.task] if self.dense_l2 is None else self.dense_l2

    @property
    def wide_part(self) -> tuple[bool, float]:
        """(Wide & Deep term on, its L2): network.wide and wide_l2, else the task's."""
        on = WIDE[self.task] if self.network.wide is None else self.network.wide
        return on, WIDE_L2[self.task] if self.wide_l2 is None else self.wide_l2

    def training_sets(
        self, embeddings: tuple[str, ...] | None = None
    ) -> tuple[TrainingSetConfig, ...]:
        keys = self.embeddings if embeddings is None else embeddings
        return tuple(
            TrainingSetConfig(self.logs, self.workdir, a, b, keys, file_format=self.set_format)
            for a, b in ((self.train_start, self.train_end), (self.eval_start, self.eval_end))
        )


@dataclass
class Encoded:
    """The train, validation and eval rows of one task as tensors, every embedding included.

    dims: D of each encoded embedding, in column order (`data.select_embeddings` narrows).
    """

    train: dict[str, Tensor]
    val: dict[str, Tensor]
    eval: dict[str, Tensor]
    dims: dict[str, int]
    schema: LogSchema
    feature_cfg: ModelConfig  # drives the shared batch encoder


def encode(cfg: DownstreamConfig, train_set: TrainingSet, eval_set: TrainingSet) -> Encoded:
    """Encodes both sets once (features, counts, every embedding of cfg.embeddings) and
    splits the training days by time into train and validation (`data.time_split`)."""
    from derm_features.core.logs import LogSchema, open_log
    from trainers.downstream.counts import CountHistory
    from trainers.downstream.data import TASKS, encode_training_set, time_split
    from trainers.features.encoding import BatchEncoder

    spec = TASKS[cfg.task]
    schema = LogSchema.from_dict(train_set.meta["schema"])
    feature_cfg = cfg.network.feature_config(spec.tasks)
    encoder = BatchEncoder(schema, feature_cfg)
    counts = None
    if cfg.network.count_features:
        labels = Workdir.resolve(cfg.workdir).spec.labels
        log = open_log(cfg.logs, labels=labels)
        counts = CountHistory(log, cfg.eval_end + dt.timedelta(days=1))
    keys = cfg.embeddings
    train = encode_training_set(train_set, encoder, keys, spec.clicked_only, counts)
    evaluation = encode_training_set(eval_set, encoder, keys, spec.clicked_only, counts)
    train, val = time_split(train)
    dims = {k: train_set.dim(k) for k in keys}
    return sample(Encoded(train, val, evaluation, dims, schema, feature_cfg), cfg)


def sample(enc: Encoded, cfg: DownstreamConfig) -> Encoded:
    """enc with each train and validation row kept with probability cfg.sample_fraction
    (a Bernoulli draw seeded by cfg.seed, so every model of one seed sees the same rows);
    the eval rows untouched. enc itself when the fraction is 1."""
    import torch

    if cfg.sample_fraction >= 1:
        return enc
    generator = torch.Generator().manual_seed(7_919 * cfg.seed + 17)
    parts = []
    for rows in (enc.train, enc.val):
        keep = torch.rand(len(rows["labels"]), generator=generator) < cfg.sample_fraction
        parts.append({k: v[keep] for k, v in rows.items()})
    return replace(enc, train=parts[0], val=parts[1])


def fit(cfg: DownstreamConfig, enc: Encoded, keys: tuple[str, ...], progress: bool = True):
    """Trains the cfg.task model on `keys`; returns (system, info) with the best epoch's
    weights loaded. info: best_epoch (1-based), epochs_run, val_logloss."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import EarlyStopping

    from trainers import progress_bars, quiet_lightning
    from trainers.downstream.data import TASKS, DownstreamDataModule, select_embeddings
    from trainers.downstream.models import MODELS
    from trainers.downstream.system import BestWeights, DownstreamSystem
    from trainers.features.tokens import tower_layout

    spec = TASKS[cfg.task]
    torch.set_num_threads(cfg.threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    train = select_embeddings(enc.train, enc.dims, keys)
    val = select_embeddings(enc.val, enc.dims, keys)
    wide, wide_l2 = cfg.wide_part
    model = MODELS[cfg.task](
        tower_layout(enc.schema, enc.feature_cfg),
        [enc.dims[k] for k in keys],
        spec.tasks,
        replace(cfg.network, wide=wide),
        num_counts=train["counts"].shape[1],
        num_scores=train["derm_score"].shape[1],
    )
    labels, mask = train["labels"], train["label_mask"]
    priors = [float(labels[mask[:, j], j].mean()) if mask[:, j].any() else 0.5
              for j in range(len(spec.tasks))]  # fmt: skip
    model.init_output_bias(priors)
    system = DownstreamSystem(
        model, spec.tasks, spec.primary, lr=cfg.lr, weight_decay=cfg.weight_decay,
        embedding_l2=cfg.table_l2, dense_l2=cfg.matrix_l2, wide_l2=wide_l2,
    )  # fmt: skip
    best = BestWeights("val_logloss")
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
        val_check_interval=1.0 / cfg.val_checks_per_epoch,
        callbacks=[
            EarlyStopping("val_logloss", patience=cfg.patience, mode="min"),
            best,
            *progress_bars(progress),
        ],
    )
    trainer.fit(system, datamodule=DownstreamDataModule(train, val, cfg.batch_size, cfg.seed))
    info = {
        "best_epoch": best.best_epoch + 1,
        "best_step": best.best_step,
        "epochs_run": best.epochs_run,
        "val_logloss": best.best,
        "train_rows": len(train["labels"]),
        "val_rows": len(val["labels"]),
    }
    return system, info


def predict(cfg: DownstreamConfig, system, enc: Encoded, keys: tuple[str, ...]):
    """(labels, probabilities) [n] of the primary task on the labelled eval rows."""
    from trainers.downstream.data import select_embeddings, sequential_batches

    rows = select_embeddings(enc.eval, enc.dims, keys)
    labels, probs = system.predict(sequential_batches(rows, cfg.batch_size * 4))
    return labels.double().numpy(), probs.double().numpy()


def _sets(cfg: DownstreamConfig, train_set, eval_set, progress: bool):
    if train_set is not None and eval_set is not None:
        return train_set, eval_set
    wrap = None
    if progress:
        from tqdm import tqdm

        def wrap(days):
            return tqdm(days, desc="training set (days)", unit="day")

    train_cfg, eval_cfg = cfg.training_sets()
    return build_training_set(train_cfg, progress=wrap), build_training_set(eval_cfg, progress=wrap)


def run_downstream(
    cfg: DownstreamConfig,
    train_set: TrainingSet | None = None,
    eval_set: TrainingSet | None = None,
    progress: bool = True,
    encoded: Encoded | None = None,
    return_predictions: bool = False,
):
    """Trains the cfg.task model on cfg.embeddings and returns its eval metrics.

    Returns: dict with roc_auc, pr_auc, logloss (eval days), best_epoch, epochs_run,
    val_logloss, train/val/eval rows, eval_positives, eval_positive_rate, task, embeddings,
    seed; with `return_predictions`, (metrics, labels [n], probabilities [n]).
    The training sets are built from Feast unless given (or `encoded` is given).
    """
    from trainers.downstream.evaluation import point_metrics

    if encoded is None:
        encoded = encode(cfg, *_sets(cfg, train_set, eval_set, progress))
    system, info = fit(cfg, encoded, cfg.embeddings, progress)
    labels, probs = predict(cfg, system, encoded, cfg.embeddings)
    metrics = {
        **point_metrics(labels, probs),
        **info,
        "task": cfg.task,
        "embeddings": ",".join(cfg.embeddings) or "none",
        "seed": cfg.seed,
        "eval_rows": len(labels),
        "eval_positives": int(labels.sum()),
        "eval_positive_rate": float(labels.mean()) if len(labels) else 0.0,
    }
    return (metrics, labels, probs) if return_predictions else metrics


def score_baselines(cfg: DownstreamConfig, enc: Encoded, embedding_sets) -> dict:
    """The baselines' eval probabilities (labelled eval rows, `predict`'s order): the prior,
    the per-Pin rate (with count features on) and one logistic regression per embedding set
    in `embedding_sets` ("logistic regression", "... + DERM" for a non-empty one), each
    fitted on the train part with C picked on the validation part. Returns name -> [n]."""
    from trainers.downstream import baselines
    from trainers.downstream.data import TASKS, select_embeddings

    spec = TASKS[cfg.task]
    i = spec.tasks.index(spec.primary)
    mask = enc.train["label_mask"][:, i]
    eval_mask = enc.eval["label_mask"][:, i]
    train_labels = enc.train["labels"][:, i][mask].double().numpy()
    out = {"prior": baselines.prior(train_labels, int(eval_mask.sum()))}
    if cfg.network.count_features:
        out["pin rate"] = baselines.pin_rate(enc.eval["counts"][eval_mask], spec.primary)
    for keys in embedding_sets:
        (out["logistic regression" + (" + DERM" if keys else "")],), _ = (
            baselines.logistic_regression(
                select_embeddings(enc.train, enc.dims, keys),
                select_embeddings(enc.val, enc.dims, keys),
                [select_embeddings(enc.eval, enc.dims, keys)],
                i,
                enc.feature_cfg.num_buckets,
                seed=cfg.seed,
            )
        )
    return out


def compare_downstream(
    cfg: DownstreamConfig,
    train_set: TrainingSet | None = None,
    eval_set: TrainingSet | None = None,
    progress: bool = True,
    encoded: Encoded | None = None,
) -> dict:
    """Baselines, the model without DERM and with cfg.embeddings, on the same eval rows.

    `encoded`: the sets already encoded at sample fraction 1 (`encode`), reused across seeds
    and fractions; cfg.sample_fraction is drawn from it here.
    Returns `evaluation.compare`'s dict (models: prior, pin rate, logistic regression
    [+ DERM], derm model [+ DERM]; lifts paired against the derm model without DERM) plus
    "runs": each trained model's `run_downstream` metrics.
    """
    from trainers.downstream.evaluation import compare

    if encoded is not None:
        enc = sample(encoded, cfg)
    else:
        enc = encode(cfg, *_sets(cfg, train_set, eval_set, progress))
    runs, predictions = {}, {}
    variants = [(NO_DERM, ())] + ([(WITH_DERM, cfg.embeddings)] if cfg.embeddings else [])
    for name, keys in variants:
        run = replace(cfg, embeddings=keys)
        runs[name], labels, predictions[name] = run_downstream(
            run, encoded=enc, progress=progress, return_predictions=True
        )
    out = score_baselines(cfg, enc, [keys for _, keys in variants]) | predictions
    result = compare(labels, out, reference=NO_DERM, resamples=cfg.resamples, seed=cfg.seed)
    result["runs"] = runs
    result["task"] = cfg.task
    return result
