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


# ---------------------------------------------------------------- batched tracking (lipbench.ensemble)


@torch.no_grad()
def power_iteration(
    mats: list[torch.Tensor], vs: list[torch.Tensor], iters: int = 2
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Warm-started power iteration on stacks of layer matrices; no host sync.

    `mats[l]` is (..., m_l, n_l) (e.g. members x out x in), `vs[l]` its right vectors (..., n_l),
    kept between calls. Returns the estimates (..., L) and the new vectors. The estimate is
    ||W^T u|| with u = W v / ||W v||: never above sigma_max, and its error is quadratic in the
    angle between v and the top right singular vector, so near-degenerate top directions cost
    little accuracy. A zero matrix gives 0 and zero vectors.
    """
    sigmas, out = [], []
    for W, v in zip(mats, vs):
        s = v.new_zeros(v.shape[:-1])
        for _ in range(max(1, iters)):
            u = torch.nn.functional.normalize((W @ v.unsqueeze(-1)).squeeze(-1), dim=-1)  # (..., m)
            w = (W.mT @ u.unsqueeze(-1)).squeeze(-1)  # (..., n)
            s = w.norm(dim=-1)
            v = w / s.unsqueeze(-1).clamp_min(torch.finfo(w.dtype).tiny)
        sigmas.append(s)
        out.append(v)
    return torch.stack(sigmas, dim=-1), out


@torch.no_grad()
def top_singular(mats: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Exact sigma_max (..., L) and top right singular vectors of stacks of matrices (one SVD each).

    Non-finite matrices give NaN (LAPACK is never handed a NaN) and zero vectors.
    """
    sigmas, vs = [], []
    for W in mats:
        finite = torch.isfinite(W).flatten(-2).all(dim=-1)
        _, s, vh = torch.linalg.svd(torch.where(finite[..., None, None], W, 0.0), full_matrices=False)
        sigmas.append(torch.where(finite, s[..., 0], torch.nan))
        vs.append(vh[..., 0, :] * finite[..., None])
    return torch.stack(sigmas, dim=-1), vs


@torch.no_grad()
def exact_spectral_norms(mats: list[torch.Tensor]) -> torch.Tensor:
    """sigma_max (..., L) of stacks of matrices, as `spectral_norms` computes it; NaN for non-finite ones."""
    out = []
    for W in mats:
        finite = torch.isfinite(W).flatten(-2).all(dim=-1)
        s = torch.linalg.matrix_norm(torch.where(finite[..., None, None], W, 0.0), ord=2)
        out.append(torch.where(finite, s, torch.nan))
    return torch.stack(out, dim=-1)
