"""Log features -> tokens: the tower layout of a log and the encoders of each kind.

    tower_layout(schema, cfg)   which columns feed which tower, by contract kind
    FeatureTokens               categorical, dense, sequence and pretrained features of one
                                tower -> tokens [B, N, d] (d = ModelConfig.token_dim)

Shared by the upstream towers (`trainers.upstream.model`) and the downstream models
(`trainers.downstream.models`), which encode the same log features the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from derm_features.core.logs import CATEGORICAL, DENSE, PRETRAINED, SEQUENCE, LogSchema
from trainers.features.config import ModelConfig
from trainers.modules.encoders import (
    DenseEncoder,
    HashedEmbedding,
    PretrainedEncoder,
    SequenceEncoder,
)

TOWERS = ("user", "pin", "ctx")


@dataclass(frozen=True)
class TowerLayout:
    """Which log columns fill a tower's batch tensors, in column order."""

    cat_columns: tuple[str, ...]
    dense_columns: tuple[str, ...]
    seq_columns: tuple[str, ...]
    pre_columns: tuple[str, ...]
    pre_dims: tuple[int, ...]

    @property
    def n_cat(self) -> int:
        return len(self.cat_columns)

    @property
    def n_dense(self) -> int:
        return len(self.dense_columns)

    @property
    def n_seq(self) -> int:
        return len(self.seq_columns)

    @property
    def num_features(self) -> int:
        return self.n_cat + self.n_dense + self.n_seq + len(self.pre_dims)

    def to_dict(self) -> dict:
        return {
            "cat_columns": list(self.cat_columns),
            "dense_columns": list(self.dense_columns),
            "seq_columns": list(self.seq_columns),
            "pre_columns": list(self.pre_columns),
            "pre_dims": list(self.pre_dims),
        }


def tower_layout(schema: LogSchema, cfg: ModelConfig) -> dict[str, TowerLayout]:
    """The batch layout of each tower: batch[f"{tower}_cat"] holds `cat_columns` in order, etc.

    Categorical order: the id column first (user/pin towers, if cfg.id_features), then the
    tower's categorical features in schema order, then `surface` last in ctx (if the log has it).
    """
    layouts = {}
    for tower in TOWERS:
        specs = schema.tower(tower)
        cat = [f.name for f in specs if f.kind == CATEGORICAL]
        if tower in ("user", "pin") and cfg.id_features:
            cat.insert(0, f"{tower}_id")
        if tower == "ctx" and schema.has_surface:
            cat.append("surface")
        pre = [f for f in specs if f.kind == PRETRAINED]
        layouts[tower] = TowerLayout(
            cat_columns=tuple(cat),
            dense_columns=tuple(f.name for f in specs if f.kind == DENSE),
            seq_columns=tuple(f.name for f in specs if f.kind == SEQUENCE),
            pre_columns=tuple(f.name for f in pre),
            pre_dims=tuple(f.dim for f in pre),
        )
    return layouts


class FeatureTokens(nn.Module):
    """Encodes each tower's features into tokens of width d, by contract kind.

    One hashed embedding table serves every categorical and sequence feature of the model
    (each feature has its own salt, `slot`), which keeps memory at num_buckets * d.

    Call args:
        batch (dict[str, Tensor]): the tower's `{tower}_cat` [B, n_cat], `{tower}_dense`
            [B, n_dense], `{tower}_seq` [B, n_seq, L] and `{tower}_pre` [B, sum(pre_dims)].
        tower (str): "user", "pin" or "ctx".

    Returns:
        Tensor: [B, num_tokens(tower), d], tokens in the order cat, dense, seq, pre.
    """

    def __init__(self, layouts: dict[str, TowerLayout], cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.token_dim
        self.layouts = layouts
        self.embedding = HashedEmbedding(cfg.num_buckets, d)
        self.dense = nn.ModuleDict()
        self.sequence = nn.ModuleDict()
        self.pretrained = nn.ModuleDict()
        next_slot = 0
        for tower, lay in layouts.items():
            # salts for this tower's categorical columns, then its sequence columns
            self.register_buffer(
                f"{tower}_cat_slots", torch.arange(next_slot, next_slot + lay.n_cat), False
            )
            next_slot += lay.n_cat
            self.register_buffer(
                f"{tower}_seq_slots", torch.arange(next_slot, next_slot + lay.n_seq), False
            )
            next_slot += lay.n_seq
            if lay.n_dense:
                self.dense[tower] = DenseEncoder(lay.n_dense, d)
            if lay.n_seq:
                self.sequence[tower] = nn.ModuleList(
                    SequenceEncoder(d, cfg.seq_len, cfg.num_heads, cfg.seq_layers, cfg.dropout)
                    for _ in range(lay.n_seq)
                )
            if lay.pre_dims:
                self.pretrained[tower] = PretrainedEncoder(lay.pre_dims, d)

    def num_tokens(self, tower: str) -> int:
        return self.layouts[tower].num_features  # one token per feature

    def forward(self, batch: dict[str, Tensor], tower: str) -> Tensor:
        lay = self.layouts[tower]
        tokens = []
        if lay.n_cat:
            tokens.append(
                self.embedding(batch[f"{tower}_cat"], getattr(self, f"{tower}_cat_slots"))
            )
        if lay.n_dense:
            tokens.append(self.dense[tower](batch[f"{tower}_dense"].float()))
        if lay.n_seq:
            ids = batch[f"{tower}_seq"]  # [B, n_seq, L], 0 = padding
            slots = getattr(self, f"{tower}_seq_slots")
            for i, encoder in enumerate(self.sequence[tower]):
                emb = self.embedding(ids[:, i], slots[i])  # [B, L, d]
                tokens.append(encoder(emb, ids[:, i] == 0).unsqueeze(1))
        if lay.pre_dims:
            tokens.append(self.pretrained[tower](batch[f"{tower}_pre"].float()))
        if not tokens:
            raise ValueError(f"tower {tower!r} has no features")
        return torch.cat(tokens, dim=1)
