"""The downstream ranking networks of paper section 3.2 and appendix D.

Both read the batch contract of `trainers/features/encoding.py` (the log's own features, by
tower) plus three tensors from `trainers/downstream/data.py`:

    derm          [B, sum(D_k)]  the chosen DERM embeddings, concatenated (zeros if missing)
    derm_present  [B, K]         1 where embedding k was found in Feast, else 0
    counts        [B, C]         point-in-time count features (`counts.FEATURES`; C = 0 off)

With `id_features` the user and Pin ids are hashed categorical features too. Ids and counts
are what production rankers have (the paper's downstream models do), so the no-DERM model
is a baseline a team would ship and DERM's lift is measured against it.

The log's features become tokens with the upstream `FeatureTokens` (one hashed table,
dense, pretrained and sequence encoders; the user's recent-Pins sequence goes through a
Transformer encoder), so both models see the same inputs as the upstream towers, minus
the DERM embeddings' own knowledge.

    CTRModel  concat(tokens, DERM block) -> MMoE of low-rank DCNv2 experts -> one MLP tower
              per task (click, conversion), plus by default a wide linear term over the
              hashed sparse inputs (`WideLinear`, Wide & Deep; Cheng et al. 2016)
    CVRModel  tokens + DERM tokens -> DHEN -> one MLP head per task (conversion)

The DERM block (`DermInputs`) is the embeddings and their presence flags, optionally
through the projection layer of appendix D.1 (`projection_dim`), which trades a little
quality for a narrower input to the O(d^2) crossing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from trainers.features.config import ModelConfig
from trainers.features.tokens import TOWERS, FeatureTokens, TowerLayout
from trainers.modules.crossnet import LowRankCrossNet
from trainers.modules.dhen import DHEN
from trainers.modules.mlp import MLP
from trainers.modules.moe import MultiGateMixtureOfExperts


@dataclass(frozen=True)
class NetworkConfig:
    """Sizes of the downstream networks (both models read the fields they need)."""

    token_dim: int = 16
    num_buckets: int = 2**14
    seq_len: int = 20
    num_heads: int = 2
    dropout: float = 0.1
    id_features: bool = True  # user_id and pin_id as hashed categoricals
    count_features: bool = True  # the point-in-time counts of counts.py
    projection_dim: int | None = None  # appendix D.1; None feeds the embeddings as they are
    # Wide & Deep: a linear term per task over the logistic regression's sparse inputs
    # (`WideLinear`), added to the deep logit; its L2 is `DownstreamConfig.wide_l2`. None:
    # the task's default (`job.WIDE`: on for ctr); the models read None as off.
    wide: bool | None = None
    # CTR: mixture of low-rank DCNv2 experts
    num_experts: int = 3
    cross_layers: int = 2
    cross_rank: int = 32
    tower_hidden: tuple[int, ...] = (64,)
    # CVR: DHEN layers, one (module, module) pair per layer
    dhen_layers: tuple[tuple[str, ...], ...] = (("masknet", "transformer"),)
    mlp_hidden: int = 64

    def __post_init__(self) -> None:
        if self.projection_dim is not None and self.projection_dim < 1:
            raise ValueError(f"--projection-dim must be >= 1, got {self.projection_dim}")

    def feature_config(self, tasks: Sequence[str]) -> ModelConfig:
        """The upstream ModelConfig that drives the shared batch encoder and FeatureTokens.

        id_features follows this config: ids as hashed categoricals, like production rankers.
        """
        return ModelConfig(
            token_dim=self.token_dim,
            num_buckets=self.num_buckets,
            seq_len=self.seq_len,
            num_heads=self.num_heads,
            seq_layers=1,
            dropout=self.dropout,
            id_features=self.id_features,
            tasks=tuple(tasks),
        )


class DermInputs(nn.Module):
    """The DERM block: embeddings, presence flags and user-Pin scores; the embeddings
    optionally projected (appendix D.1).

    The scores are u_m . p_m of each upstream model m whose user and Pin embeddings are
    both read (`data.select_embeddings`): the quantity the upstream towers were trained to
    rank by (paper 3.1), which a crossing layer would otherwise have to rebuild from 2D
    products.

    Args:
        dims (Sequence[int]): D_k of each embedding, in batch order (may be empty).
        projection_dim (int | None): P; None keeps the raw width.
        num_scores (int): S, user-Pin scores in the batch.

    Call args:
        derm (Tensor): [B, sum(dims)]
        present (Tensor): [B, K], K = len(dims)
        scores (Tensor): [B, S]

    Returns:
        Tensor: [B, out_features]; out_features = (P if projected else sum(dims)) + K + S.
    """

    def __init__(
        self, dims: Sequence[int], projection_dim: int | None = None, num_scores: int = 0
    ) -> None:
        super().__init__()
        total = sum(dims)
        self.project = (
            nn.Linear(total, projection_dim) if projection_dim and total else nn.Identity()
        )
        width = projection_dim if projection_dim and total else total
        self.num_scores = num_scores
        self.out_features = width + len(dims) + num_scores

    def forward(self, derm: Tensor, present: Tensor, scores: Tensor | None = None) -> Tensor:
        parts = [self.project(derm), present.to(derm.dtype)]
        if self.num_scores:
            parts.append(scores)
        return torch.cat(parts, dim=-1)


class WideLinear(nn.Module):
    """The wide part of Wide & Deep: one weight per hashed bucket and task over exactly the
    sparse inputs of the logistic regression baseline (`baselines.design_matrix`): each
    categorical's bucket with weight 1, each sequence's buckets with weight 1 / length.

    Args:
        num_buckets (int): the encoder's bucket space (the encoder's ids are already in it;
            others are reduced mod num_buckets, as `HashedEmbedding` does).
        num_tasks (int): T, one linear term per task.

    Call args:
        batch (dict[str, Tensor]): `{tower}_cat` [B, n_cat] and `{tower}_seq` [B, n_seq, L]
            bucket ids (0 in a sequence is padding).

    Returns:
        Tensor: [B, T] logits, zero at the start (weights start at 0, as a fresh LR's).
    """

    def __init__(self, num_buckets: int, num_tasks: int) -> None:
        super().__init__()
        self.num_buckets = num_buckets
        self.weight = nn.Embedding(num_buckets, num_tasks)
        nn.init.zeros_(self.weight.weight)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        out = 0.0
        for tower in TOWERS:
            cat = batch.get(f"{tower}_cat")
            if cat is not None and cat.shape[1]:
                out = out + self.weight(torch.remainder(cat, self.num_buckets)).sum(1)
            seq = batch.get(f"{tower}_seq")
            if seq is not None and seq.numel():
                seq = seq.flatten(1)
                keep = (seq > 0).to(self.weight.weight.dtype)
                length = keep.sum(1, keepdim=True).clamp(min=1.0)
                rows = self.weight(torch.remainder(seq, self.num_buckets))
                out = out + (rows * (keep / length).unsqueeze(-1)).sum(1)
        return out


def init_output_bias(heads: nn.ModuleList, priors: Sequence[float]) -> None:
    """Starts each head's output bias at logit(prior), its task's training positive rate.

    A head that starts at logit 0 predicts 0.5 for a 1 % event and spends its first steps
    (and, on a small set, its calibration) learning the base rate.
    """
    for head, prior in zip(heads, priors, strict=True):
        last = [m for m in head.modules() if isinstance(m, nn.Linear)][-1]
        p = min(max(float(prior), 1e-6), 1 - 1e-6)
        nn.init.constant_(last.bias, math.log(p / (1 - p)))


def _feature_tokens(layouts: dict[str, TowerLayout], cfg: ModelConfig) -> tuple[FeatureTokens, int]:
    tokens = FeatureTokens(layouts, cfg)
    return tokens, sum(tokens.num_tokens(t) for t in TOWERS)


def _all_tokens(features: FeatureTokens, batch: dict[str, Tensor]) -> Tensor:
    """[B, N, d]: the tokens of every tower that has features."""
    parts = [features(batch, t) for t in TOWERS if features.num_tokens(t)]
    return torch.cat(parts, dim=1)


class CTRModel(nn.Module):
    """Multi-task CTR model: concatenation layer -> MMoE of low-rank DCNv2 -> task towers.

    Args:
        layouts (dict[str, TowerLayout]): the batch layout (`tower_layout`) of the log.
        derm_dims (Sequence[int]): D_k of the DERM embeddings it reads, in batch order.
        tasks (Sequence[str]): label names, one tower each (e.g. ("click", "conversion")).
        cfg (NetworkConfig): sizes.
        num_counts (int): C, the width of `counts` (0: none).
        num_scores (int): S, the user-Pin scores in `derm_score` (`DermInputs`).

    Call args:
        batch (dict[str, Tensor]): tower tensors + `derm` [B, sum D] + `derm_present` [B, K]
            + `derm_score` [B, S] + `counts` [B, C].

    Returns:
        Tensor: [B, T] one logit per task.
    """

    def __init__(
        self,
        layouts: dict[str, TowerLayout],
        derm_dims: Sequence[int],
        tasks: Sequence[str],
        cfg: NetworkConfig,
        num_counts: int = 0,
        num_scores: int = 0,
    ) -> None:
        super().__init__()
        self.features, num_tokens = _feature_tokens(layouts, cfg.feature_config(tasks))
        self.derm = DermInputs(derm_dims, cfg.projection_dim, num_scores)
        self.num_counts = num_counts
        width = num_tokens * cfg.token_dim + self.derm.out_features + num_counts
        self.input_norm = nn.LayerNorm(width)
        experts = [
            LowRankCrossNet(width, cfg.cross_layers, cfg.cross_rank) for _ in range(cfg.num_experts)
        ]
        self.moe = MultiGateMixtureOfExperts(experts, width, num_tasks=len(tasks))
        self.towers = nn.ModuleList(
            MLP(width, [*cfg.tower_hidden, 1], dropout=cfg.dropout, activate_last=False)
            for _ in tasks
        )
        self.wide = WideLinear(cfg.num_buckets, len(tasks)) if cfg.wide else None

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        tokens = _all_tokens(self.features, batch).flatten(1)
        parts = [tokens, self.derm(batch["derm"], batch["derm_present"], batch.get("derm_score"))]
        if self.num_counts:
            parts.append(batch["counts"])
        x = self.input_norm(torch.cat(parts, -1))
        mixed = self.moe(x)  # [B, T, width]
        logits = torch.cat([tower(mixed[:, t]) for t, tower in enumerate(self.towers)], dim=-1)
        return logits + self.wide(batch) if self.wide is not None else logits

    def init_output_bias(self, priors: Sequence[float]) -> None:
        init_output_bias(self.towers, priors)


class CVRModel(nn.Module):
    """DHEN-based CVR model: feature tokens and DERM tokens -> DHEN -> task heads.

    The DERM block becomes K tokens of width d (a linear map), one per embedding, and the
    count features one more token, so the DHEN's Transformer and MaskNet modules cross them
    with the other features. The counts are standardised per feature (batch norm: a per-row
    LayerNorm over 10 unlike features blurred the per-Pin rate), and a linear term over them
    is added to each logit, as the logistic regression has; without both the model scored
    below that regression and below the per-Pin rate alone (BENCHMARKS.md, "CVR's counts").

    Args, call args and returns: as CTRModel.
    """

    def __init__(
        self,
        layouts: dict[str, TowerLayout],
        derm_dims: Sequence[int],
        tasks: Sequence[str],
        cfg: NetworkConfig,
        num_counts: int = 0,
        num_scores: int = 0,
    ) -> None:
        super().__init__()
        self.features, num_tokens = _feature_tokens(layouts, cfg.feature_config(tasks))
        d = cfg.token_dim
        self.count_norm = nn.BatchNorm1d(num_counts) if num_counts else None
        self.counts = nn.Linear(num_counts, d) if num_counts else None
        # starts at 0, so the logit starts at the head's prior-initialised bias
        self.count_linear = nn.Linear(num_counts, len(tasks), bias=False) if num_counts else None
        if self.count_linear is not None:
            nn.init.zeros_(self.count_linear.weight)
        num_tokens += 1 if num_counts else 0
        self.num_derm_tokens = len(derm_dims)
        self.derm = DermInputs(derm_dims, cfg.projection_dim, num_scores) if derm_dims else None
        self.derm_tokens = (
            nn.Linear(self.derm.out_features, self.num_derm_tokens * d) if derm_dims else None
        )
        n = num_tokens + self.num_derm_tokens
        self.dhen = DHEN(
            n, d, cfg.dhen_layers, hidden_dim=cfg.mlp_hidden, num_heads=cfg.num_heads,
            dropout=cfg.dropout,
        )  # fmt: skip
        self.heads = nn.ModuleList(
            MLP(n * d, [*cfg.tower_hidden, 1], dropout=cfg.dropout, activate_last=False)
            for _ in tasks
        )
        self.wide = WideLinear(cfg.num_buckets, len(tasks)) if cfg.wide else None
        self.token_dim = d

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        tokens = _all_tokens(self.features, batch)
        if self.derm is not None:
            block = self.derm(batch["derm"], batch["derm_present"], batch.get("derm_score"))
            extra = self.derm_tokens(block).view(-1, self.num_derm_tokens, self.token_dim)
            tokens = torch.cat([tokens, extra], dim=1)
        counts = self.count_norm(batch["counts"]) if self.count_norm is not None else None
        if counts is not None:
            tokens = torch.cat([tokens, self.counts(counts).unsqueeze(1)], dim=1)
        h = self.dhen(tokens).flatten(1)
        logits = torch.cat([head(h) for head in self.heads], dim=-1)
        if counts is not None:
            logits = logits + self.count_linear(counts)
        return logits + self.wide(batch) if self.wide is not None else logits

    def init_output_bias(self, priors: Sequence[float]) -> None:
        init_output_bias(self.heads, priors)


MODELS = {"ctr": CTRModel, "cvr": CVRModel}
