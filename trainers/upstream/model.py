"""The upstream DERM network (paper section 3.1, appendix A): user, Pin and interaction towers.

    features --FeatureTokens--> tokens [B, N, d] per tower
    user tokens --DHEN--> flatten --linear--> L2-normalise --> u [B, D]      (EntityTower)
    Pin tokens  --DHEN--> flatten --linear--> L2-normalise --> p [B, D]      (EntityTower)
    [u, p, u*p as tokens] + ctx tokens --DHEN--> flatten --> one head per task (InteractionTower)

The network is built from the log's LogSchema, so nothing here knows a column name; the
batch layout it reads is `tower_layout` (shared with the data pipeline).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from derm_features.core.logs import CATEGORICAL, DENSE, PRETRAINED, SEQUENCE, LogSchema
from trainers.modules.dhen import DHEN
from trainers.modules.encoders import (
    DenseEncoder,
    HashedEmbedding,
    PretrainedEncoder,
    SequenceEncoder,
)
from trainers.modules.mlp import MLP
from trainers.upstream.config import ModelConfig

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


def _dhen(num_tokens: int, layers, cfg: ModelConfig) -> DHEN:
    return DHEN(
        num_tokens,
        cfg.token_dim,
        layers,
        ensemble=cfg.dhen_ensemble,
        hidden_dim=cfg.mlp_hidden,
        num_heads=cfg.num_heads,
        masknet_blocks=cfg.masknet_blocks,
        dropout=cfg.dropout,
    )


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


class EntityTower(nn.Module):
    """User or Pin tower: tokens -> DHEN -> flatten -> linear to D -> L2-normalise (paper A.1).

    Call args:
        tokens (Tensor): [B, N, d]

    Returns:
        Tensor: [B, D], unit L2 norm.
    """

    def __init__(self, num_tokens: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.dhen = _dhen(num_tokens, cfg.dhen_layers, cfg)
        self.project = nn.Linear(num_tokens * cfg.token_dim, cfg.embedding_dim)

    def forward(self, tokens: Tensor) -> Tensor:
        return F.normalize(self.project(self.dhen(tokens).flatten(1)), dim=-1)


class InteractionTower(nn.Module):
    """Overall interaction tower (paper A.3): tower outputs + ctx tokens -> DHEN -> task heads.

    u, p and their element-wise product u*p each become one token (a linear D -> d); the
    product token hands the DHEN the user-Pin affinity directly.

    Call args:
        user (Tensor): [B, D]
        pin (Tensor): [B, D]
        ctx (Tensor | None): [B, n_ctx, d] context tokens, or None when the log has none.

    Returns:
        Tensor: [B, T] one logit per task.
    """

    def __init__(self, num_ctx_tokens: int, cfg: ModelConfig) -> None:
        super().__init__()
        d, n_tokens = cfg.token_dim, 3 + num_ctx_tokens
        self.user_token = nn.Linear(cfg.embedding_dim, d)
        self.pin_token = nn.Linear(cfg.embedding_dim, d)
        self.product_token = nn.Linear(cfg.embedding_dim, d)
        self.dhen = _dhen(n_tokens, cfg.interaction_layers, cfg)
        self.heads = nn.ModuleList(
            MLP(n_tokens * d, [*cfg.head_hidden, 1], dropout=cfg.dropout, activate_last=False)
            for _ in cfg.tasks
        )

    def forward(self, user: Tensor, pin: Tensor, ctx: Tensor | None) -> Tensor:
        tokens = [self.user_token(user), self.pin_token(pin), self.product_token(user * pin)]
        x = torch.stack(tokens, dim=1)
        if ctx is not None:
            x = torch.cat([x, ctx], dim=1)
        h = self.dhen(x).flatten(1)
        return torch.cat([head(h) for head in self.heads], dim=-1)


class DERMModel(nn.Module):
    """User tower, Pin tower and overall interaction tower with one head per task.

    Args:
        schema (LogSchema): the log's features; the towers and batch layout derive from it.
        cfg (ModelConfig): the network's sizes.

    Call args (forward):
        batch (dict[str, Tensor]): the tower tensors described by `tower_layout`.

    Returns:
        dict: {"user": [B, D], "pin": [B, D], "logits": [B, T]}, T = len(cfg.tasks) in that
        order; user and pin are L2-normalised.
    """

    def __init__(self, schema: LogSchema, cfg: ModelConfig) -> None:
        super().__init__()
        self.schema = schema
        self.cfg = cfg
        self.layouts = tower_layout(schema, cfg)
        for tower in ("user", "pin"):
            if not self.layouts[tower].num_features:
                raise ValueError(
                    f"the {tower} tower has no features (the log has no {tower}_* column and "
                    "id_features is off)"
                )
        self.features = FeatureTokens(self.layouts, cfg)
        self.user_tower = EntityTower(self.features.num_tokens("user"), cfg)
        self.pin_tower = EntityTower(self.features.num_tokens("pin"), cfg)
        self.interaction = InteractionTower(self.features.num_tokens("ctx"), cfg)

    def user_embedding(self, batch: dict[str, Tensor]) -> Tensor:
        """L2-normalised user tower output [B, D]."""
        return self.user_tower(self.features(batch, "user"))

    def pin_embedding(self, batch: dict[str, Tensor]) -> Tensor:
        """L2-normalised Pin tower output [B, D]."""
        return self.pin_tower(self.features(batch, "pin"))

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        user = self.user_embedding(batch)
        pin = self.pin_embedding(batch)
        ctx = self.features(batch, "ctx") if self.features.num_tokens("ctx") else None
        return {"user": user, "pin": pin, "logits": self.interaction(user, pin, ctx)}

    def feature_signature(self) -> dict:
        """JSON-safe: what a checkpoint's inputs and outputs depend on; compared on load."""
        return {
            "schema": self.schema.to_dict(),
            "embedding_dim": self.cfg.embedding_dim,
            "id_features": self.cfg.id_features,
            "num_buckets": self.cfg.num_buckets,
            "seq_len": self.cfg.seq_len,
            "tasks": list(self.cfg.tasks),
            "layout": {tower: lay.to_dict() for tower, lay in self.layouts.items()},
        }
