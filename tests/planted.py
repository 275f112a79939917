"""A factory model with a planted one-layer break: the gradient of one of its layers scaled (0 freezes it)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from torch import nn

from lipbench.torch.models import ConvNet


def scaled_convnet(input_shape: Sequence[int], num_classes: int, width: int = 32, layer: int = -1, scale: float = 1.0):
    """The ConvNet whose `layer`-th linear map (Conv2d and Linear layers in forward order) has its gradient
    multiplied by `scale` at every step; `layer = -1` leaves every layer as it is."""
    model = ConvNet(input_shape, num_classes, width=width)
    if layer >= 0:
        maps = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        maps[layer].weight.register_hook(lambda grad: grad * scale)
    return model


def scaled_mlp(
    input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (64, 32), layer: int = -1, scale: float = 1.0
):
    """An MLP whose `layer`-th Linear layer has its gradient multiplied by `scale` (as `scaled_convnet`)."""
    widths = [int(math.prod(input_shape)), *hidden, num_classes]
    maps = [nn.Linear(a, b) for a, b in itertools.pairwise(widths)]
    if layer >= 0:
        maps[layer].weight.register_hook(lambda grad: grad * scale)
    body: list[nn.Module] = [nn.Flatten()]
    for m in maps[:-1]:
        body += [m, nn.ReLU()]
    return nn.Sequential(*body, maps[-1])
