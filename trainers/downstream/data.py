"""Training sets -> batches for the downstream models.

A training set (see training_set/) is encoded once, day by day, into compact tensors:
the log's features through the upstream `BatchEncoder` (the same hashing and batch layout
as the upstream towers), plus the chosen DERM embeddings and their presence flags:

    derm          [N, sum(D_k)] float32, in the order of `embeddings`
    derm_present  [N, K]        float32 0/1
    counts        [N, C]        float32 point-in-time counts (`counts.py`; C = 0 when off)
    ts            [N]           int64 event time, microseconds since the epoch (UTC)

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

from trainers.downstream.counts import CountHistory
from trainers.downstream.training_set import (
    TrainingSet,
    embedding_column,
    embedding_matrix,
    presence_column,
)
from trainers.features.encoding import BatchEncoder


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
    counts: CountHistory | None = None,
    chunk_rows: int = 65_536,
) -> dict[str, Tensor]:
    """All rows of `training_set` as one batch dict (see module docstring).

    `counts` (built over the log up to the set's last day) adds the count features.
    """
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
    columns = list(dict.fromkeys(columns + ["click", "ts"]))
    parts: list[dict[str, Tensor]] = []
    for batch in training_set.dataset().to_batches(columns=columns, batch_size=chunk_rows):
        rows = pa.Table.from_batches([batch])
        if clicked_only:
            rows = rows.filter(pc.equal(rows.column("click"), 1))
        if rows.num_rows == 0:
            continue
        encoded = encoder.encode(rows, with_ts=True)
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
        encoded["counts"] = torch.from_numpy(
            counts.features(rows) if counts is not None else np.zeros((n, 0), np.float32)
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


def time_split(tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(train, validation) by time: the last day of a multi-day set validates, else the last
    20 % of a single day's events by `ts`. Validation never precedes what trains."""
    ts = tensors["ts"]
    day = torch.div(ts, 86_400_000_000, rounding_mode="floor")
    last = int(day.max())
    if int(day.min()) < last:
        val = day == last
    else:
        val = ts >= torch.quantile(ts.double(), 0.8).to(ts.dtype)
    if val.all() or not val.any():  # every event at one instant: nothing to split by time
        raise ValueError(
            "the training days hold too few distinct event times for a validation split"
        )
    return ({k: v[~val] for k, v in tensors.items()}, {k: v[val] for k, v in tensors.items()})


def select_embeddings(
    tensors: dict[str, Tensor], dims: dict[str, int], keys: Sequence[str]
) -> dict[str, Tensor]:
    """`tensors` (encoded with every key of `dims`, in its order) narrowed to `keys`, plus
    `derm_score` [N, S]: u_m . p_m for each model m whose `m_user` and `m_pin` are in keys
    (zero where either is missing, as the missing vectors are zeros)."""
    order = list(dims)
    offsets = np.cumsum([0, *dims.values()])

    def block(k: str) -> Tensor:
        i = order.index(k)
        return tensors["derm"][:, offsets[i] : offsets[i + 1]]

    models = [k[: -len("_user")] for k in keys if k.endswith("_user")]
    scores = [(block(f"{m}_user") * block(f"{m}_pin")).sum(1) for m in models if f"{m}_pin" in keys]
    n = len(tensors["derm"])
    return {
        **tensors,
        "derm": torch.cat([block(k) for k in keys], 1) if keys else tensors["derm"][:, :0],
        "derm_present": tensors["derm_present"][:, [order.index(k) for k in keys]],
        "derm_score": torch.stack(scores, 1) if scores else torch.zeros(n, 0),
    }


class DownstreamDataModule(L.LightningDataModule):
    """Train and validation loaders over encoded tensors (`encode_training_set`).

    Args:
        train, val (dict[str, Tensor]): encoded rows (e.g. the two parts of `time_split`).
        batch_size (int), seed (int): batches and their seeded shuffle.
    """

    def __init__(
        self, train: dict[str, Tensor], val: dict[str, Tensor], batch_size: int, seed: int
    ) -> None:
        super().__init__()
        self.batch_size, self.seed = batch_size, seed
        self.train, self.val = train, val

    def train_dataloader(self) -> DataLoader:
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        data = TensorBatches(self.train)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        sampler = BatchSampler(RandomSampler(data, generator=generator), self.batch_size, False)
        return DataLoader(data, sampler=sampler, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return sequential_batches(self.val, self.batch_size * 4)


def sequential_batches(tensors: dict[str, Tensor], batch_size: int) -> DataLoader:
    """The rows of `tensors` in order, `batch_size` at a time."""
    data = TensorBatches(tensors)
    return DataLoader(
        data, sampler=BatchSampler(SequentialSampler(data), batch_size, False), batch_size=None
    )
