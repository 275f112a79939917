"""Layer spectral norms and the network bound K = prod_l sigma_max(W_l) (PAPER.md §1)."""

from __future__ import annotations

import torch
from torch import nn


def layer_matrix(weight: torch.Tensor) -> torch.Tensor:
    """A layer's weight as a matrix: conv kernels out x in x kh x kw become out x (in*kh*kw)."""
    return weight.reshape(weight.shape[0], -1)


@torch.no_grad()
def spectral_norms(layers: list[nn.Module]) -> torch.Tensor:
    """sigma_max of each layer's matrix, as one tensor on the layers' device (no host sync)."""
    return torch.stack([torch.linalg.matrix_norm(layer_matrix(m.weight), ord=2) for m in layers])


def log_bound(sigmas: torch.Tensor) -> torch.Tensor:
    """log K = sum_l log sigma_l; stays finite where the product K would overflow."""
    return sigmas.log().sum(dim=-1)
