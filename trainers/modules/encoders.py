"""Feature encoders: each turns one kind of raw feature into tokens of width d.

HashedEmbedding     bucket ids                     -> one token per id
DenseEncoder        raw floats                     -> one token per feature
SequenceEncoder     a sequence of embeddings       -> one pooled token
PretrainedEncoder   concatenated pretrained vectors -> one token per vector
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


class HashedEmbedding(nn.Module):
    """One embedding table shared by several features; each feature gets its own salt.

    Row of (id, slot) = (id + slot * SALT) mod num_buckets. The salt spreads the features over
    the table, so the same small raw value of two features (age bucket 3, category 3) lands
    on different rows; no vocabulary pass over the data is needed.

    Args:
        num_buckets (int): rows of the table.
        dim (int): d, the token width.

    Call args:
        ids (torch.LongTensor): [...] bucket ids (any int64; reduced mod num_buckets).
        slot (torch.LongTensor): feature index of each id, broadcastable to ids.

    Returns:
        torch.Tensor: [..., d]
    """

    SALT = 0x9E3779B1  # golden-ratio spacing: distinct slots land far apart in the table

    def __init__(self, num_buckets: int, dim: int) -> None:
        super().__init__()
        self.num_buckets = num_buckets
        self.table = nn.Embedding(num_buckets, dim)
        nn.init.normal_(self.table.weight, std=dim**-0.5)

    def forward(self, ids: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        rows = torch.remainder(ids + slot * self.SALT, self.num_buckets)
        return self.table(rows)


class DenseEncoder(nn.Module):
    """Dense features: signed log1p, batch normalisation, then a per-feature linear to a token.

    Signed log1p (sign(x) * log(1 + |x|)) tames heavy-tailed counts; BatchNorm learns the
    scale from the data (its running statistics are saved with the model).

    Args:
        num_features (int): n, dense features.
        dim (int): d, the token width.

    Call args:
        x (torch.Tensor): [B, n] raw values.

    Returns:
        torch.Tensor: [B, n, d]
    """

    def __init__(self, num_features: int, dim: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(num_features)
        self.weight = nn.Parameter(torch.randn(num_features, dim))
        self.bias = nn.Parameter(torch.zeros(num_features, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.sign(x) * torch.log1p(x.abs())
        if self.training and x.shape[0] == 1:
            # a batch of one (a day's last partial batch) has no variance: use running stats
            z = F.batch_norm(
                z, self.norm.running_mean, self.norm.running_var, self.norm.weight,
                self.norm.bias, training=False, eps=self.norm.eps,
            )  # fmt: skip
        else:
            z = self.norm(z)
        return z.unsqueeze(-1) * self.weight + self.bias


class SequenceEncoder(nn.Module):
    """A Transformer encoder over a sequence of embeddings, mean-pooled over non-pad positions.

    Args:
        dim (int): d, the embedding and token width.
        max_len (int): longest sequence (learned position embeddings).
        num_heads (int): attention heads.
        num_layers (int): Transformer encoder layers.
        dropout (float): dropout inside the encoder.

    Call args:
        x (torch.Tensor): [B, L, d] embeddings, L <= max_len.
        pad_mask (torch.BoolTensor): [B, L], True at padding. Padded positions affect nothing:
            they are masked out of attention and of the pooling.

    Returns:
        torch.Tensor: [B, d]; the zero vector for a sequence that is all padding.
    """

    def __init__(
        self, dim: int, max_len: int, num_heads: int = 2, num_layers: int = 1, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.max_len = max_len
        self.position = nn.Parameter(torch.randn(max_len, dim) * dim**-0.5)
        layer = nn.TransformerEncoderLayer(
            dim, num_heads, dim_feedforward=2 * dim, dropout=dropout, batch_first=True,
            norm_first=True,
        )  # fmt: skip
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len {self.max_len}")
        empty = pad_mask.all(dim=1)
        # An all-padding row would make attention softmax over nothing (NaN); let it attend
        # to position 0 and zero its output below.
        attend_mask = pad_mask.clone()
        attend_mask[:, 0] &= ~empty
        h = self.encoder(x + self.position[:length], src_key_padding_mask=attend_mask)
        keep = (~pad_mask).unsqueeze(-1).to(h.dtype)
        # where() rather than multiply: padded outputs may be non-finite in fast paths
        pooled = torch.where(keep.bool(), h, torch.zeros_like(h)).sum(1)
        return pooled / keep.sum(1).clamp(min=1.0)


class PretrainedEncoder(nn.Module):
    """Pretrained embeddings: one linear projection per vector, to one token each.

    Args:
        dims (Sequence[int]): length of each pretrained vector, in input order.
        dim (int): d, the token width.

    Call args:
        x (torch.Tensor): [B, sum(dims)] the vectors concatenated.

    Returns:
        torch.Tensor: [B, len(dims), d]
    """

    def __init__(self, dims: Sequence[int], dim: int) -> None:
        super().__init__()
        self.dims = list(dims)
        self.projections = nn.ModuleList(nn.Linear(n, dim) for n in self.dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.dims, dim=-1)
        return torch.stack([p(v) for p, v in zip(self.projections, parts, strict=True)], dim=1)
