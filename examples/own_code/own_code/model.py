"""The package's own network: a small MLP with GELU activations."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn


class SmallNet(nn.Module):
    """Flatten, then Linear-GELU blocks of the given widths, then a Linear classifier."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, widths: Sequence[int] = (64, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for w in widths:
            layers += [nn.Linear(width, w), nn.GELU()]
            width = w
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)
