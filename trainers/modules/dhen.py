"""DHEN: Deep and Hierarchical Ensemble Network (Zhang et al. 2022, arXiv 2203.11014).

A DHEN layer runs several feature-interaction modules side by side on the same set of tokens
and combines them, with a residual shortcut:

    X_{n+1} = LayerNorm(Ensemble(M_1(X_n), ..., M_k(X_n)) + ShortCut(X_n))

Stacking layers makes the interactions hierarchical: layer n+1 mixes what the modules of
layer n produced. Every module here maps tokens [B, N, d] to tokens [B, N_out, d]:

    "transformer"  a Transformer encoder layer over the N tokens (then a token projection
                   when N_out != N)
    "masknet"      MaskNet over the flattened tokens, projected back to N_out tokens
    "mlp"          an MLP over the flattened tokens, projected back to N_out tokens
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from trainers.modules.masknet import MaskNet
from trainers.modules.mlp import MLP

MODULE_KINDS = ("masknet", "transformer", "mlp")


class TokenProjection(nn.Module):
    """A learned linear map over the token axis (each output token mixes the input tokens).

    Args:
        num_tokens (int): N, input tokens.
        num_out_tokens (int): N_out, output tokens.

    Call args:
        x (torch.Tensor): [B, N, d]

    Returns:
        torch.Tensor: [B, N_out, d]
    """

    def __init__(self, num_tokens: int, num_out_tokens: int) -> None:
        super().__init__()
        self.linear = nn.Linear(num_tokens, num_out_tokens, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.transpose(1, 2)).transpose(1, 2)


class TransformerTokens(nn.Module):
    """Self-attention across tokens: one pre-norm Transformer encoder layer.

    Call args:
        x (torch.Tensor): [B, N, d]

    Returns:
        torch.Tensor: [B, N_out, d]
    """

    def __init__(
        self, num_tokens: int, num_out_tokens: int, dim: int, num_heads: int, dropout: float
    ) -> None:
        super().__init__()
        self.encoder = nn.TransformerEncoderLayer(
            dim, num_heads, dim_feedforward=2 * dim, dropout=dropout, batch_first=True,
            norm_first=True,
        )  # fmt: skip
        self.project = (
            nn.Identity()
            if num_out_tokens == num_tokens
            else TokenProjection(num_tokens, num_out_tokens)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.encoder(x))


class FlatTokens(nn.Module):
    """A module over the flattened tokens, projected back to tokens (MaskNet or MLP).

    Call args:
        x (torch.Tensor): [B, N, d]

    Returns:
        torch.Tensor: [B, N_out, d]
    """

    def __init__(self, body: nn.Module, body_out: int, num_out_tokens: int, dim: int) -> None:
        super().__init__()
        self.body = body
        self.out = nn.Linear(body_out, num_out_tokens * dim)
        self.num_out_tokens = num_out_tokens
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.out(self.body(x.flatten(1)))
        return y.view(x.shape[0], self.num_out_tokens, self.dim)


def interaction_module(
    kind: str,
    num_tokens: int,
    num_out_tokens: int,
    dim: int,
    hidden_dim: int = 128,
    num_heads: int = 2,
    masknet_blocks: int = 1,
    dropout: float = 0.0,
) -> nn.Module:
    """Builds one DHEN interaction module, [B, N, d] -> [B, N_out, d], by its kind name."""
    if kind == "transformer":
        return TransformerTokens(num_tokens, num_out_tokens, dim, num_heads, dropout)
    if kind == "masknet":
        masknet = MaskNet(num_tokens * dim, hidden_dim, num_blocks=masknet_blocks)
        return FlatTokens(masknet, masknet.output_dim, num_out_tokens, dim)
    if kind == "mlp":
        mlp = MLP(num_tokens * dim, [hidden_dim], dropout=dropout)
        return FlatTokens(mlp, hidden_dim, num_out_tokens, dim)
    raise ValueError(f"unknown DHEN module {kind!r}: expected one of {MODULE_KINDS}")


class DHENLayer(nn.Module):
    """One DHEN layer: an ensemble of interaction modules plus a shortcut, layer-normalised.

    Args:
        num_tokens (int): N, input tokens.
        dim (int): d, token width (in and out).
        modules (Sequence[str]): interaction module kinds, e.g. ("masknet", "transformer").
        num_out_tokens (int | None): N_out; None keeps N. The shortcut is the identity when
            N_out == N and a TokenProjection otherwise.
        ensemble (str): "concat" (concatenate module outputs per token, then a linear back to
            d) or "sum".
        hidden_dim, num_heads, masknet_blocks, dropout: passed to the modules.

    Call args:
        x (torch.Tensor): [B, N, d]

    Returns:
        torch.Tensor: [B, N_out, d]
    """

    def __init__(
        self,
        num_tokens: int,
        dim: int,
        modules: Sequence[str],
        num_out_tokens: int | None = None,
        ensemble: str = "concat",
        hidden_dim: int = 128,
        num_heads: int = 2,
        masknet_blocks: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not modules:
            raise ValueError("a DHEN layer needs at least one module")
        if ensemble not in ("concat", "sum"):
            raise ValueError(f"DHEN ensemble must be 'concat' or 'sum', got {ensemble!r}")
        n_out = num_tokens if num_out_tokens is None else num_out_tokens
        self.interactions = nn.ModuleList(
            interaction_module(
                kind, num_tokens, n_out, dim, hidden_dim, num_heads, masknet_blocks, dropout
            )
            for kind in modules
        )
        self.combine = nn.Linear(len(modules) * dim, dim) if ensemble == "concat" else None
        self.shortcut = nn.Identity() if n_out == num_tokens else TokenProjection(num_tokens, n_out)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [m(x) for m in self.interactions]
        if self.combine is not None:
            mixed = self.combine(torch.cat(outs, dim=-1))
        else:
            mixed = torch.stack(outs).sum(0)
        return self.norm(mixed + self.shortcut(x))


class DHEN(nn.Module):
    """A stack of DHEN layers, one per entry of `layers`.

    Args:
        num_tokens (int): N, input tokens.
        dim (int): d, token width.
        layers (Sequence[Sequence[str]]): the module kinds of each layer, e.g.
            (("masknet", "transformer"), ("mlp", "transformer")). Empty: the identity.
        num_out_tokens (int | None): N_out; the first layer maps N -> N_out, the others keep
            it. None keeps N.
        ensemble, hidden_dim, num_heads, masknet_blocks, dropout: see DHENLayer.

    Call args:
        x (torch.Tensor): [B, N, d]

    Returns:
        torch.Tensor: [B, N_out, d] (also `self.num_out_tokens`)
    """

    def __init__(
        self,
        num_tokens: int,
        dim: int,
        layers: Sequence[Sequence[str]],
        num_out_tokens: int | None = None,
        ensemble: str = "concat",
        hidden_dim: int = 128,
        num_heads: int = 2,
        masknet_blocks: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_tokens < 1:
            raise ValueError("DHEN needs at least one input token")
        n_out = num_tokens if num_out_tokens is None else num_out_tokens
        if not layers and n_out != num_tokens:
            raise ValueError("an empty DHEN cannot change the number of tokens")
        self.layers = nn.Sequential(
            *(
                DHENLayer(
                    num_tokens if i == 0 else n_out,
                    dim,
                    kinds,
                    n_out,
                    ensemble,
                    hidden_dim,
                    num_heads,
                    masknet_blocks,
                    dropout,
                )
                for i, kinds in enumerate(layers)
            )
        )
        self.num_out_tokens = n_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
