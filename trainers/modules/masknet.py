"""MaskNet: instance-guided masks (Wang, She and Zhang 2021, arXiv 2102.07619).

A MaskBlock multiplies its input element-wise by a mask computed from the feature embedding
itself (the "instance"), so each example re-weights its own features before a feed-forward
layer. MaskNet chains blocks serially (each block masks the previous block's output with a
mask from the embedding) or runs them in parallel on the embedding and concatenates.
"""

from __future__ import annotations

import torch
from torch import nn


class MaskBlock(nn.Module):
    """One mask block: ``out = ReLU(LN(W (mask(e) * h)))``, ``mask(e) = W2 ReLU(W1 e)``.

    Args:
        embedding_dim (int): width of the feature embedding e that the mask is computed from.
        input_dim (int): width of the masked input h (equal to embedding_dim in the first block).
        output_dim (int): width of the block output.
        reduction_ratio (float): the mask generator's hidden width is
            ``reduction_ratio * embedding_dim`` (the paper's aggregation layer).

    Call args:
        embedding (torch.Tensor): [B, embedding_dim]
        hidden (torch.Tensor): [B, input_dim]

    Returns:
        torch.Tensor: [B, output_dim]
    """

    def __init__(
        self, embedding_dim: int, input_dim: int, output_dim: int, reduction_ratio: float = 1.0
    ) -> None:
        super().__init__()
        mask_hidden = max(1, int(round(reduction_ratio * embedding_dim)))
        self.mask = nn.Sequential(
            nn.Linear(embedding_dim, mask_hidden),
            nn.ReLU(),
            nn.Linear(mask_hidden, input_dim),
        )
        self.hidden = nn.Linear(input_dim, output_dim, bias=False)
        self.norm = nn.LayerNorm(output_dim)

    def forward(self, embedding: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.norm(self.hidden(self.mask(embedding) * hidden)))


class MaskNet(nn.Module):
    """A stack of MaskBlocks over a flat feature embedding.

    Args:
        input_dim (int): width of the (flattened) feature embedding.
        hidden_dim (int): output width of each MaskBlock.
        num_blocks (int): number of MaskBlocks.
        mode (str): "serial" (block k masks block k-1's output) or "parallel" (every block
            masks the layer-normalised embedding; outputs are concatenated).
        reduction_ratio (float): see MaskBlock.

    Call args:
        x (torch.Tensor): [B, input_dim]

    Returns:
        torch.Tensor: [B, output_dim] with output_dim = hidden_dim (serial) or
        num_blocks * hidden_dim (parallel); also available as `self.output_dim`.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        num_blocks: int = 1,
        mode: str = "serial",
        reduction_ratio: float = 1.0,
    ) -> None:
        super().__init__()
        if mode not in ("serial", "parallel"):
            raise ValueError(f"MaskNet mode must be 'serial' or 'parallel', got {mode!r}")
        if num_blocks < 1:
            raise ValueError("MaskNet needs at least one block")
        self.mode = mode
        # the paper layer-normalises the embedding before the first mask is applied to it
        self.embedding_norm = nn.LayerNorm(input_dim)
        self.blocks = nn.ModuleList(
            MaskBlock(
                input_dim,
                input_dim if (mode == "parallel" or i == 0) else hidden_dim,
                hidden_dim,
                reduction_ratio,
            )
            for i in range(num_blocks)
        )
        self.output_dim = hidden_dim * (num_blocks if mode == "parallel" else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = self.embedding_norm(x)
        if self.mode == "parallel":
            return torch.cat([block(x, normed) for block in self.blocks], dim=-1)
        hidden = normed
        for block in self.blocks:
            hidden = block(x, hidden)
        return hidden
