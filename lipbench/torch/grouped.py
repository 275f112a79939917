"""M stacked ConvNets as one network: members are the groups of grouped convolutions.

The ensemble's ConvNet path (`lipbench.torch.ensemble`). Feature maps are laid out b x (M * C) x H x W, so that
member m's channels are group m: a Conv2d becomes one grouped `conv2d` (the member kernels stacked along the
output channels, as `lipbench.torch.conv_operator.apply` does), ReLU and max-pooling act per channel anyway,
and BatchNorm2d without running statistics normalises each channel of the grouped tensor over the batch and
the map: per member and channel, as each member's own layer would. After the flatten the activations are
M x b x features and the Linear layers are batched matmuls. Autograd differentiates it as it stands.

Why not `vmap` over one module: vmap also ends in grouped convolutions, but in the default memory layout,
where a CPU's grouped convolution and max-pooling go plane by plane; here the grouped tensor is kept
channels-last. Measured (model-steps per second against a naive per-run loop, one thread on the shared
2-core CPU, two comparisons; benchmarks/README.md): at 1x8x8 (batch 32, 5 runs) grouped 1.78-1.82x, vmap
1.24-1.67x; at 1x28x28 1.01-1.25x and 0.85-0.96x; at 3x32x32 1.10-1.45x and 0.85-0.99x. The convolutions'
FLOPs stay those of the loop: the larger the maps, the less of a step the ensemble can save.

Dropout: each member draws its masks from its own generator, seeded as engine.train seeds torch's global
generator for that run, in the order engine.train's forward pass draws them; on the CPU (where dropout is a
plain Bernoulli mask) the masks are engine.train's, and a member's masks do not depend on which other members
share its ensemble.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lipbench.torch.models import ConvNet

__all__ = ["grouped_forward", "groups"]


def groups(model: nn.Module) -> bool:
    """Whether `grouped_forward` runs this model: the built-in ConvNet."""
    return isinstance(model, ConvNet)


def grouped_forward(
    base: ConvNet,
    params: dict[str, torch.Tensor],
    x: torch.Tensor,
    masks: Sequence[torch.Generator] | None,
) -> torch.Tensor:
    """Logits M x b x classes of M stacked ConvNets on their own inputs x (M x b x C x H x W).

    `params`: the module's parameter names, each stacked along a leading member axis (M x out x in x kh x kw
    for a conv kernel, M x out x in for a Linear weight). `masks`: one generator per member for dropout, or
    None in eval mode (no dropout).
    """
    M, b = x.shape[:2]
    h = x.transpose(0, 1).reshape(b, M * x.shape[2], *x.shape[3:])  # member m's channels are group m
    h = h.contiguous(memory_format=torch.channels_last)  # grouped convolutions and pooling are faster so on a CPU
    grouped = True
    # Sequential positions, not named_modules(): the ConvNet's one Dropout module sits in two places.
    layers = [(f"{part}.{i}", m) for part in ("features", "classifier") for i, m in enumerate(getattr(base, part))]
    for name, module in layers:
        if isinstance(module, nn.Conv2d):
            kernel, bias = params[f"{name}.weight"], params[f"{name}.bias"]
            h = F.conv2d(
                h,
                kernel.reshape(-1, *kernel.shape[2:]),
                bias.reshape(-1),
                module.stride,
                module.padding,
                module.dilation,
                groups=M,
            )
        elif isinstance(module, nn.BatchNorm2d):
            weight, bias = params[f"{name}.weight"], params[f"{name}.bias"]
            h = F.batch_norm(h, None, None, weight.reshape(-1), bias.reshape(-1), True, 0.0, module.eps)
        elif isinstance(module, nn.MaxPool2d):
            h = F.max_pool2d(h, module.kernel_size, module.stride, module.padding, module.dilation, module.ceil_mode)
        elif isinstance(module, nn.ReLU):
            h = F.relu(h)
        elif isinstance(module, nn.Flatten):
            h = h.reshape(b, M, -1).transpose(0, 1)  # M x b x features
            grouped = False
        elif isinstance(module, nn.Linear):
            weight, bias = params[f"{name}.weight"], params[f"{name}.bias"]
            h = torch.baddbmm(bias.unsqueeze(1), h, weight.mT)
        elif isinstance(module, nn.Dropout):
            if masks is not None and module.p > 0:
                h = h * _dropout_mask(h, M, module.p, masks, grouped)
        else:
            raise TypeError(f"grouped_forward has no rule for {type(module).__name__} ({name})")
    return h


def _dropout_mask(
    h: torch.Tensor, M: int, p: float, generators: Sequence[torch.Generator], grouped: bool
) -> torch.Tensor:
    """Each member's inverted-dropout mask, drawn as nn.Dropout draws it on one member's activations."""
    if len(generators) != M:
        raise ValueError(f"dropout needs one generator per member: {M} members, {len(generators)} generators")
    shape = (h.shape[0], h.shape[1] // M, *h.shape[2:]) if grouped else h.shape[1:]
    draws = [torch.empty(shape, device=h.device, dtype=h.dtype).bernoulli_(1 - p, generator=g) for g in generators]
    mask = torch.stack(draws, dim=1).flatten(1, 2) if grouped else torch.stack(draws)
    return mask.div_(1 - p)
