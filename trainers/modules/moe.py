"""Multi-gate Mixture of Experts (Ma et al. 2018, "MMoE", KDD).

Every task mixes the same experts with its own softmax gate over the input, so tasks share
what helps them all and specialise through their gates:

    y_t = sum_e softmax(G_t x)_e * expert_e(x)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MultiGateMixtureOfExperts(nn.Module):
    """Experts shared by all tasks, one gate per task.

    Args:
        experts (Sequence[nn.Module]): each maps [B, N] -> [B, M] (the same M for all).
        in_features (int): N, the width of the input the gates read.
        num_tasks (int): T, number of gates (one mixture per task).

    Call args:
        x (torch.Tensor): [B, N]

    Returns:
        torch.Tensor: [B, T, M], the mixture of each task.

    Example::

        moe = MultiGateMixtureOfExperts([nn.Linear(8, 4) for _ in range(3)], 8, num_tasks=2)
        y = moe(torch.randn(5, 8))  # [5, 2, 4]
    """

    def __init__(self, experts: Sequence[nn.Module], in_features: int, num_tasks: int) -> None:
        super().__init__()
        if not experts:
            raise ValueError("a mixture of experts needs at least one expert")
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        self.experts = nn.ModuleList(experts)
        self.gates = nn.Linear(in_features, num_tasks * len(experts))
        self.num_tasks = num_tasks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = torch.stack([expert(x) for expert in self.experts], dim=1)  # [B, E, M]
        logits = self.gates(x).view(x.shape[0], self.num_tasks, len(self.experts))
        gates = torch.softmax(logits, dim=-1)  # [B, T, E]
        return torch.bmm(gates, outs)  # [B, T, M]
