"""Log rows -> model batches: hash categoricals and sequences, densify, stack labels.

`BatchEncoder.encode` turns a slice of log rows (a pyarrow Table) into the batch dict both
the upstream towers and the downstream models read: per tower, `<tower>_cat` [B, Nc]
int64 bucket ids, `<tower>_dense` [B, Nd] float32, `<tower>_seq` [B, Ns, L] int64,
`<tower>_pre` [B, P] float32; `labels` and `label_mask` [B, T] for ModelConfig.tasks;
`user_id`, `pin_id` (and `ts`) when asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import Tensor

from derm_features.core.ids import hash_ids_to_int64, hash_to_buckets
from derm_features.core.logs import LogSchema
from trainers.features.config import ModelConfig
from trainers.features.tokens import TOWERS, TowerLayout, tower_layout

ID_COLUMNS = ("user_id", "pin_id")


@dataclass(frozen=True)
class BatchEncoder:
    """Turns a slice of log rows into the model's batch dict; pure given schema and config."""

    schema: LogSchema
    cfg: ModelConfig

    @property
    def layouts(self) -> dict[str, TowerLayout]:
        return tower_layout(self.schema, self.cfg)

    def columns(self, with_ts: bool = False) -> list[str]:
        """The log columns `encode` reads, each once."""
        cols = list(ID_COLUMNS) + (["ts"] if with_ts else []) + list(self.cfg.tasks)
        for layout in self.layouts.values():
            for name in (
                layout.cat_columns + layout.dense_columns + layout.seq_columns + layout.pre_columns
            ):
                if name not in cols:
                    cols.append(name)
        return cols

    def encode(self, rows: pa.Table, with_ts: bool = False) -> dict[str, Tensor]:
        return encode_batch(rows, self.schema, self.cfg, self.layouts, with_ts)


def check_tasks(schema_columns: list[str], cfg: ModelConfig, log_path: Path | str) -> None:
    """Every task head needs a 0/1 label column of that name in the log."""
    missing = [t for t in cfg.tasks if t not in schema_columns]
    if missing:
        raise ValueError(
            f"{log_path}: ModelConfig.tasks {list(cfg.tasks)} name label column(s) {missing} "
            "that the log does not have (each task needs a 0/1 column of the same name)"
        )


def _column(rows: pa.Table, name: str) -> pa.Array:
    col = rows.column(name)
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _sequence_buckets(values: pa.Array, salt: str, num_buckets: int, seq_len: int) -> np.ndarray:
    """[B, seq_len] bucket ids of list<int> values: the head of each list, 0 = padding."""
    head = pc.list_slice(values, 0, seq_len)
    flat = pc.list_flatten(head)
    out = np.zeros((len(values), seq_len), dtype=np.int64)
    if len(flat) == 0:
        return out
    parents = pc.list_parent_indices(head).to_numpy(zero_copy_only=False)
    lengths = pc.list_value_length(head).fill_null(0).to_numpy(zero_copy_only=False)
    starts = np.cumsum(lengths) - lengths
    positions = np.arange(len(flat)) - starts[parents]
    buckets = hash_to_buckets(flat, salt, num_buckets, reserve_zero=True)
    if flat.null_count:
        buckets[~np.asarray(pc.is_valid(flat), dtype=bool)] = 0
    out[parents, positions] = buckets
    return out


def _pretrained(values: pa.Array, dim: int) -> np.ndarray:
    """[B, dim] float32 vectors of a fixed_size_list<float> column, null -> zeros."""
    out = np.zeros((len(values), dim), dtype=np.float32)
    valid = np.asarray(pc.is_valid(values), dtype=bool)
    flat = pc.cast(values.flatten(), pa.float32()).fill_null(0.0)
    out[valid] = flat.to_numpy(zero_copy_only=False).reshape(-1, dim)
    return out


def _floats(values: pa.Array) -> np.ndarray:
    return pc.cast(values, pa.float32()).fill_null(0.0).to_numpy(zero_copy_only=False)


def encode_batch(
    rows: pa.Table,
    schema: LogSchema,
    cfg: ModelConfig,
    layouts: dict[str, TowerLayout],
    with_ts: bool = False,
) -> dict[str, Tensor]:
    """The batch contract (see trainers/upstream/model.py) for `rows`.

    Categorical columns are salted with their name; the id columns are first turned into
    int64 ids (string ids hashed) so training and inference agree on them.
    """
    n = rows.num_rows
    batch: dict[str, Tensor] = {}
    ids = {name: hash_ids_to_int64(_column(rows, name)) for name in ID_COLUMNS}
    for name, values in ids.items():
        batch[name] = torch.from_numpy(values)
    if with_ts:
        ts = pc.cast(_column(rows, "ts"), pa.timestamp("us", "UTC")).cast(pa.int64())
        batch["ts"] = torch.from_numpy(ts.to_numpy(zero_copy_only=False).astype(np.int64))

    labels = np.zeros((n, len(cfg.tasks)), dtype=np.float32)
    mask = np.zeros((n, len(cfg.tasks)), dtype=bool)
    for j, task in enumerate(cfg.tasks):
        col = _column(rows, task)
        if pa.types.is_null(col.type):
            continue
        mask[:, j] = np.asarray(pc.is_valid(col), dtype=bool)
        labels[:, j] = _floats(col)
    batch["labels"] = torch.from_numpy(labels)
    batch["label_mask"] = torch.from_numpy(mask)

    for tower in TOWERS:
        layout = layouts[tower]
        cat = np.zeros((n, layout.n_cat), dtype=np.int64)
        for j, name in enumerate(layout.cat_columns):
            values = pa.array(ids[name]) if name in ids else _column(rows, name)
            cat[:, j] = hash_to_buckets(values, name, cfg.num_buckets, reserve_zero=False)
        dense = np.zeros((n, layout.n_dense), dtype=np.float32)
        for j, name in enumerate(layout.dense_columns):
            dense[:, j] = _floats(_column(rows, name))
        seq = np.zeros((n, layout.n_seq, cfg.seq_len), dtype=np.int64)
        for j, name in enumerate(layout.seq_columns):
            seq[:, j] = _sequence_buckets(_column(rows, name), name, cfg.num_buckets, cfg.seq_len)
        pre = [
            _pretrained(_column(rows, name), dim)
            for name, dim in zip(layout.pre_columns, layout.pre_dims, strict=True)
        ]
        batch[f"{tower}_cat"] = torch.from_numpy(cat)
        batch[f"{tower}_dense"] = torch.from_numpy(dense)
        batch[f"{tower}_seq"] = torch.from_numpy(seq)
        batch[f"{tower}_pre"] = torch.from_numpy(
            np.concatenate(pre, axis=1) if pre else np.zeros((n, 0), dtype=np.float32)
        )
    return batch
