"""Low-rank DCNv2 cross network (Wang et al. 2021, "DCN V2", arXiv 2008.13535).

In the style of torchrec's ``modules/crossnet.py`` (`LowRankCrossNet`). Layer l computes

    x_{l+1} = x_0 * (W_l (V_l x_l) + b_l) + x_l

with V_l: [r, N], W_l: [N, r], so a layer costs O(N r) instead of the full cross layer's
O(N^2): the feature crosses of DCNv2 at a rank r that keeps wide inputs affordable.
"""

from __future__ import annotations

import torch
from torch import nn


class LowRankCrossNet(nn.Module):
    """A stack of low-rank cross layers; input and output have the same width N.

    Args:
        in_features (int): N, the width of the input (and output).
        num_layers (int): number of cross layers.
        low_rank (int): r, the rank of each layer's weight W_l V_l.

    Call args:
        x (torch.Tensor): [B, N]

    Returns:
        torch.Tensor: [B, N]

    Example::

        cross = LowRankCrossNet(in_features=16, num_layers=3, low_rank=4)
        y = cross(torch.randn(8, 16))  # [8, 16]
    """

    def __init__(self, in_features: int, num_layers: int, low_rank: int = 1) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"LowRankCrossNet needs num_layers >= 1, got {num_layers}")
        if low_rank < 1:
            raise ValueError(f"LowRankCrossNet needs low_rank >= 1, got {low_rank}")
        self.num_layers = num_layers
        self.V = nn.ModuleList(
            nn.Linear(in_features, low_rank, bias=False) for _ in range(num_layers)
        )
        self.W = nn.ModuleList(
            nn.Linear(low_rank, in_features, bias=True) for _ in range(num_layers)
        )
        for v, w in zip(self.V, self.W, strict=True):
            nn.init.xavier_normal_(v.weight)
            nn.init.xavier_normal_(w.weight)
            nn.init.zeros_(w.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0, xl = x, x
        for v, w in zip(self.V, self.W, strict=True):
            xl = x0 * w(v(xl)) + xl
        return xl
