"""A multi-layer perceptron: Linear -> activation (-> dropout) per layer."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """Stacked Linear layers with an activation after each one.

    Args:
        in_features (int): width of the input.
        layer_sizes (Sequence[int]): width of each layer; the last one is the output width.
        activation (Callable[[], nn.Module]): builds the activation module of a layer.
        dropout (float): dropout after each activation (not after an unactivated last layer).
        activate_last (bool): apply the activation to the last layer too. False gives a plain
            linear output, as a prediction head needs (logits).

    Call args:
        x (torch.Tensor): [..., in_features]

    Returns:
        torch.Tensor: [..., layer_sizes[-1]]

    Example::

        head = MLP(64, [32, 1], activate_last=False)
        logits = head(torch.randn(8, 64))  # [8, 1]
    """

    def __init__(
        self,
        in_features: int,
        layer_sizes: Sequence[int],
        activation: Callable[[], nn.Module] = nn.ReLU,
        dropout: float = 0.0,
        activate_last: bool = True,
    ) -> None:
        super().__init__()
        if not layer_sizes:
            raise ValueError("MLP needs at least one layer")
        layers: list[nn.Module] = []
        sizes = [in_features, *layer_sizes]
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(layer_sizes) - 1 or activate_last:
                layers.append(activation())
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
        self.layers = nn.Sequential(*layers)
        self.out_features = sizes[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
