"""Training sets -> batches for the downstream models.

A training set (see training_set.py) is encoded once, day by day, into compact tensors:
the log's features through the upstream `BatchEncoder` (the same hashing and batch layout
as the upstream towers), plus the chosen DERM embeddings and their presence flags:

    derm          [N, sum(D_k)] float32, in the order of `embeddings`
    derm_present  [N, K]        float32 0/1

The encoded tensors live in memory (about 4 * (sum D + features) bytes a row: ~1.5 KB
with four 64-d embeddings), which suits the experiment scale; batches are drawn by a
seeded permutation per epoch, so a run is reproducible.

Row selection by task: CTR trains on every impression; CVR on clicked impressions
(post-click conversion, the paper's click-conversion rate), with rows whose conversion
label is unknown (null) masked out of the loss by the encoder's `label_mask`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import lightning as L
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from derm_features.logs import LogSchema
from trainers.downstream.training_set import (
    TrainingSet,
    embedding_column,
    embedding_matrix,
    presence_column,
)
from trainers.upstream.data import BatchEncoder


@dataclass(frozen=True)
class TaskSpec:
    """What a downstream task trains on: its label heads, the headline one and its rows."""

    tasks: tuple[str, ...]
    primary: str
    clicked_only: bool


TASKS = {
    "ctr": TaskSpec(tasks=("click", "conversion"), primary="click", clicked_only=False),
    "cvr": TaskSpec(tasks=("conversion",), primary="conversion", clicked_only=True),
}


def encode_training_set(
    training_set: TrainingSet,
    encoder: BatchEncoder,
    embeddings: Sequence[str],
    clicked_only: bool,
    chunk_rows: int = 65_536,
) -> dict[str, Tensor]:
    """All rows of `training_set` as one batch dict (see module docstring)."""
    missing = [k for k in embeddings if k not in training_set.embeddings]
    if missing:
        raise ValueError(
            f"training set {training_set.path} has no column for embedding(s) {missing}; "
            f"it holds {list(training_set.embeddings)}"
        )
    dims = [training_set.dim(k) for k in embeddings]
    columns = encoder.columns() + [
        c for k in embeddings for c in (embedding_column(k), presence_column(k))
    ]
    columns = list(dict.fromkeys(columns + ["click"]))
    parts: list[dict[str, Tensor]] = []
    for batch in training_set.dataset().to_batches(columns=columns, batch_size=chunk_rows):
        rows = pa.Table.from_batches([batch])
        if clicked_only:
            rows = rows.filter(pc.equal(rows.column("click"), 1))
        if rows.num_rows == 0:
            continue
        encoded = encoder.encode(rows)
        derm = [embedding_matrix(rows.column(embedding_column(k)), d, embedding_column(k))[0]
                for k, d in zip(embeddings, dims, strict=True)]  # fmt: skip
        present = [
            rows.column(presence_column(k)).to_numpy().astype(np.float32) for k in embeddings
        ]
        n = rows.num_rows
        encoded["derm"] = torch.from_numpy(
            np.concatenate(derm, axis=1) if derm else np.zeros((n, 0), np.float32)
        )
        encoded["derm_present"] = torch.from_numpy(
            np.stack(present, axis=1) if present else np.zeros((n, 0), np.float32)
        )
        parts.append(encoded)
    if not parts:
        raise ValueError(
            f"training set {training_set.path} has no rows for this task"
            + (" (no clicked impressions)" if clicked_only else "")
        )
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}


class TensorBatches(Dataset):
    """Index lists -> batch dicts over tensors that share their first dimension."""

    def __init__(self, tensors: dict[str, Tensor]) -> None:
        self.tensors = tensors
        self.num_rows = len(next(iter(tensors.values())))

    def __len__(self) -> int:
        return self.num_rows

    def __getitem__(self, index: list[int]) -> dict[str, Tensor]:
        idx = torch.as_tensor(index)
        return {k: v[idx] for k, v in self.tensors.items()}


def positive_rate(tensors: dict[str, Tensor], task_index: int) -> float:
    labels, mask = tensors["labels"][:, task_index], tensors["label_mask"][:, task_index]
    return float(labels[mask].mean()) if mask.any() else 0.0


class DownstreamDataModule(L.LightningDataModule):
    """Train and eval loaders over two encoded training sets.

    Args:
        train_set, eval_set (TrainingSet): built by `build_training_set`.
        schema (LogSchema): the log's features (the training sets' meta holds it).
        encoder (BatchEncoder): the shared log-feature encoder.
        embeddings (Sequence[str]): DERM embedding keys the model reads, in order.
        spec (TaskSpec): the task's rows and labels.
        batch_size (int), seed (int): batches and their seeded shuffle.
    """

    def __init__(
        self,
        train_set: TrainingSet,
        eval_set: TrainingSet,
        schema: LogSchema,
        encoder: BatchEncoder,
        embeddings: Sequence[str],
        spec: TaskSpec,
        batch_size: int,
        seed: int,
    ) -> None:
        super().__init__()
        self.schema = schema
        self.batch_size, self.seed = batch_size, seed
        self.train = encode_training_set(train_set, encoder, embeddings, spec.clicked_only)
        self.eval = encode_training_set(eval_set, encoder, embeddings, spec.clicked_only)

    def train_dataloader(self) -> DataLoader:
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        data = TensorBatches(self.train)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        sampler = BatchSampler(RandomSampler(data, generator=generator), self.batch_size, False)
        return DataLoader(data, sampler=sampler, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        data = TensorBatches(self.eval)
        sampler = BatchSampler(SequentialSampler(data), self.batch_size * 4, False)
        return DataLoader(data, sampler=sampler, batch_size=None)
