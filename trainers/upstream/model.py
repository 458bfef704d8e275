"""The upstream DERM network (paper section 3.1, appendix A): user, Pin and interaction towers.

    features --FeatureTokens--> tokens [B, N, d] per tower
    user tokens --DHEN--> flatten --linear--> batch norm --> L2-normalise --> u [B, D]
    Pin tokens  --DHEN--> flatten --linear--> batch norm --> L2-normalise --> p [B, D]
                                                                            (EntityTower)
    [u, p, u*p as tokens] + ctx tokens --DHEN--> flatten --> one head per task (InteractionTower)

The network is built from the log's LogSchema, so nothing here knows a column name; the
batch layout it reads is `tower_layout` (shared with the data pipeline).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from derm_features.core.logs import LogSchema
from trainers.features.config import ModelConfig
from trainers.features.tokens import FeatureTokens, tower_layout
from trainers.modules.dhen import DHEN
from trainers.modules.mlp import MLP


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


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) that backpropagates: the gradient of a sum over ranks is the sum of
    the ranks' gradients. (torch.distributed.nn.functional.all_reduce does this but is
    deprecated in favour of a private module.)"""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        out = x.clone()
        torch.distributed.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        out = grad.clone()
        torch.distributed.all_reduce(out)
        return out


class BatchCentre(nn.BatchNorm1d):
    """BatchNorm1d without affine weights: z -> (z - mean) / std per dimension, [B, D].

    Batch statistics while training (running ones kept with momentum 0.1), the running ones
    in eval mode (inference) and for a training batch under `min_rows` rows, such as a day's
    last few rows, whose statistics would be noise and would pull the running ones.

    Under data-parallel training (several processes) the statistics are those of the global
    batch, summed over the ranks with a differentiable all-reduce, so `--devices 2
    --strategy ddp` normalises as one process would (torch's SyncBatchNorm needs a GPU).
    """

    def __init__(self, dim: int, min_rows: int = 32) -> None:
        super().__init__(dim, affine=False)
        self.min_rows = min_rows

    def forward(self, z: Tensor) -> Tensor:
        if self.training and _world_size() > 1:
            return self._global_batch(z)  # every rank must join, whatever its batch size
        if self.training and z.shape[0] < self.min_rows:
            return F.batch_norm(z, self.running_mean, self.running_var, eps=self.eps)
        return super().forward(z)

    def _global_batch(self, z: Tensor) -> Tensor:
        d = z.shape[1]
        local = torch.cat([z.sum(0), (z * z).sum(0), z.new_tensor([float(z.shape[0])])])
        total = _SumOverRanks.apply(local)  # [2D + 1]: sums of z and z^2, and the row count
        count = total[-1]
        mean = total[:d] / count
        var = (total[d : 2 * d] / count - mean * mean).clamp_min(0.0)
        if count < self.min_rows:
            mean, var = self.running_mean, self.running_var
        else:
            with torch.no_grad():  # unbiased, as BatchNorm keeps it
                m = self.momentum
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * var.detach() * count / (count - 1))
                self.num_batches_tracked.add_(1)
        return (z - mean) / torch.sqrt(var + self.eps)


class EntityTower(nn.Module):
    """User or Pin tower: tokens -> DHEN -> flatten -> linear to D -> batch norm ->
    L2-normalise (paper A.1; the batch norm is ours, `ModelConfig.tower_batch_norm`).

    The batch norm removes the direction every output shares: trained on the task loss,
    the outputs of a DHEN tower drift into nearly one direction (pairwise cosine 0.98 after
    a window fit on the demo log), where u.p / tau hardly varies within a batch and the
    sampled softmax learns almost nothing (BENCHMARKS.md, "towers"). Contrastive heads
    commonly normalise over the batch the same way (SimCLR's projection head; Chen et al.,
    2020).

    Call args:
        tokens (Tensor): [B, N, d]

    Returns:
        Tensor: [B, D], unit L2 norm.
    """

    def __init__(self, num_tokens: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.dhen = _dhen(num_tokens, cfg.dhen_layers, cfg)
        self.project = nn.Linear(num_tokens * cfg.token_dim, cfg.embedding_dim)
        self.centre = BatchCentre(cfg.embedding_dim) if cfg.tower_batch_norm else nn.Identity()

    def forward(self, tokens: Tensor) -> Tensor:
        return F.normalize(self.centre(self.project(self.dhen(tokens).flatten(1))), dim=-1)


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
