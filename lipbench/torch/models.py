"""The paper's networks (its appendix; docs/science.md), built from a scenario's model section.

Every Lipschitz layer (a Linear or a Conv2d) is followed by a 1-Lipschitz activation or
pooling, so the network bound is the product of the layers' spectral norms. Batch norm is
not 1-Lipschitz in general; the bound then covers the linear layers only, as in the paper.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from lipbench.registry import MODELS

MLP_DROPOUT = 0.2  # the paper gives no MLP rate; the ConvNet's conv-block rate


class MLP(nn.Module):
    """Linear(in, h1)-ReLU-...-Linear(h_last, classes); the paper uses hidden = (512, 256)."""

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvNet(nn.Module):
    """The paper's five-layer ConvNet; the flatten size follows the input (1x28x28, 3x32x32, 1x8x8 ...)."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        dropout: float = 0.0,
        batch_norm: bool = False,
        width: int = 32,
    ):
        super().__init__()
        channels, height, width_px = input_shape
        c1, c2, c3, hidden = width, 2 * width, 4 * width, 8 * width
        drop = [nn.Dropout(0.2)] if dropout > 0 else []
        norm = [nn.BatchNorm2d(c3, track_running_stats=False)] if batch_norm else []
        self.features = nn.Sequential(
            nn.Conv2d(channels, c1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            *drop,
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1, stride=2),
            *drop,
            *norm,
            nn.ReLU(),
        )
        with torch.no_grad():
            # A batch of 2: batch norm in training mode needs more than one value per channel (1x8x8 input).
            flat = self.features(torch.zeros(2, channels, height, width_px))[0].numel()  # 128*4*4 for CIFAR
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, hidden),
            nn.ReLU(),
            *([nn.Dropout(0.3)] if dropout > 0 else []),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build_model(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    hidden: Sequence[int] = (512, 256),
    width: int = 32,
    dropout: bool = False,
    batch_norm: bool = False,
) -> nn.Module:
    """Build a model by registry name; parameters are left for `initialise` to set.

    `dropout` is a switch (the scenario's `model.dropout: true`); the rates are fixed, as in the paper.
    """
    if name == "mlp":
        if batch_norm:
            raise ValueError("model.batch_norm applies to the convnet only; the paper's MLP has none")
        # A switch, not a rate: nn.Dropout(True) would drop every activation (p = 1).
        return MLP(math.prod(input_shape), hidden, num_classes, MLP_DROPOUT if dropout else 0.0)
    if name == "convnet":
        return ConvNet(input_shape, num_classes, dropout=dropout, batch_norm=batch_norm, width=width)
    raise ValueError(f"model must be one of {', '.join(MODELS)}, not {name!r}")


def lipschitz_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs whose weights enter the bound, in forward order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


@torch.no_grad()
def initialise(model: nn.Module, generator: torch.Generator, scheme: str = "default", std: float = 0.01) -> None:
    """Set every parameter from `generator` alone, so an init seed fixes the weights bit for bit.

    "default" draws what PyTorch's own reset_parameters draws (Kaiming-uniform weights,
    uniform biases); "normal" draws i.i.d. N(0, std^2) weights and zero biases (the paper, §8.2).
    """
    for _, layer in lipschitz_layers(model):
        weight, bias = layer.weight, layer.bias
        fan_in = weight[0].numel()
        if scheme == "default":
            bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform_(a=sqrt(5)) reduces to this bound
            weight.uniform_(-bound, bound, generator=generator)
            if bias is not None:
                bias.uniform_(-bound, bound, generator=generator)
        elif scheme == "normal":
            weight.normal_(0.0, std, generator=generator)
            if bias is not None:
                bias.zero_()
        else:
            raise ValueError(f"init scheme must be 'default' or 'normal', not {scheme!r}")
