"""A convolution as the linear operator the paper's bound is about: images of the layer's real input size in,
images out, with the layer's padding, stride and dilation (docs/science.md, "What K is").

The operator's matrix (the doubly block-Toeplitz unrolling) is never built in training: `apply` and `adjoint`
are `conv2d` and `conv_transpose2d` (with the `output_padding` that maps back onto the input's exact size).
Both take a stack of members: kernels `(..., out, in, kh, kw)` and images `(..., B, C, H, W)` with the same
leading member axes; members become the groups of one grouped convolution, so a whole ensemble costs one call.
`dense` unrolls the operator for tests and small layers. `top_singular_pair` gives the operator's top singular
value and images (Lanczos on A^T A with apply/adjoint, warm-startable).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvGeometry", "adjoint", "apply", "conv_geometries", "dense", "top_singular_pair"]


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


@dataclass(frozen=True)
class ConvGeometry:
    """Where a Conv2d acts: its input image shape (C, H, W), its output shape, and its stride, padding, dilation.

    `output_padding` is what `conv_transpose2d` needs so that the adjoint of an output image has the input's
    exact size (a stride-2 layer on an odd map drops a row the transpose would otherwise not restore).
    """

    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]

    @classmethod
    def of(cls, conv: nn.Conv2d, in_shape: tuple[int, int, int]) -> ConvGeometry:
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(
                "the operator norm covers Conv2d layers with groups=1, zero padding and numeric padding; "
                f"this layer has groups={conv.groups}, padding_mode={conv.padding_mode!r}, padding={conv.padding!r}"
            )
        kernel, stride, padding, dilation = (
            _pair(v) for v in (conv.kernel_size, conv.stride, conv.padding, conv.dilation)
        )
        c, h, w = in_shape
        out_hw = tuple(
            (n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, p, d, k, s in zip((h, w), padding, dilation, kernel, stride, strict=True)
        )
        return cls((c, h, w), (conv.out_channels, *out_hw), kernel, stride, padding, dilation)

    @property
    def output_padding(self) -> tuple[int, int]:
        return tuple(
            n - ((m - 1) * s - 2 * p + d * (k - 1) + 1)
            for n, m, s, p, d, k in zip(
                self.in_shape[1:],
                self.out_shape[1:],
                self.stride,
                self.padding,
                self.dilation,
                self.kernel,
                strict=True,
            )
        )

    @property
    def in_numel(self) -> int:
        return math.prod(self.in_shape)

    @property
    def out_numel(self) -> int:
        return math.prod(self.out_shape)


def conv_geometries(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, ConvGeometry]:
    """The geometry of every Conv2d of `model` (by module name) on inputs of `input_shape` (C, H, W).

    Found by one forward pass of two zero images on a CPU copy of the shapes only (batch norm in training mode
    needs more than one value per channel); the model's mode is restored.
    """
    found: dict[str, ConvGeometry] = {}

    def record(name: str, module: nn.Module, args: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        found.setdefault(name, ConvGeometry.of(module, tuple(args[0].shape[1:])))  # the first call's input

    hooks = [
        module.register_forward_hook(functools.partial(record, name))
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d)
    ]
    was_training = model.training
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None else torch.float32
        with torch.no_grad():
            model.train()
            model(torch.zeros(2, *input_shape, device=device, dtype=dtype))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return found


def _grouped(kernel: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(..., out, in, kh, kw) -> (members * out, in, kh, kw) and the number of members."""
    members = math.prod(kernel.shape[:-4])
    return kernel.reshape(members * kernel.shape[-4], *kernel.shape[-3:]), members


def _as_groups(images: torch.Tensor, members: int, batch: int) -> torch.Tensor:
    """(..., B, C, H, W) -> B x (members * C) x H x W: member m's images meet member m's kernel (group m)."""
    stacked = images.reshape(members, batch, *images.shape[-3:]).transpose(0, 1)
    return stacked.reshape(batch, members * images.shape[-3], *images.shape[-2:])


def apply(kernel: torch.Tensor, x: torch.Tensor, geom: ConvGeometry) -> torch.Tensor:
    """The operator on images: kernels (..., out, in, kh, kw), x (..., B, C, H, W) -> (..., B, out, H', W')."""
    lead = kernel.shape[:-4]
    weight, members = _grouped(kernel)
    batch = x.shape[len(lead)]
    stacked = (
        x.reshape(members, batch, *x.shape[-3:]).transpose(0, 1).reshape(batch, members * x.shape[-3], *x.shape[-2:])
    )
    y = F.conv2d(stacked, weight, None, geom.stride, geom.padding, geom.dilation, groups=members)
    y = y.reshape(batch, members, -1, *y.shape[-2:]).transpose(0, 1)
    return y.reshape(*lead, batch, *y.shape[-3:])


def adjoint(kernel: torch.Tensor, y: torch.Tensor, geom: ConvGeometry) -> torch.Tensor:
    """The transpose of `apply`: kernels (..., out, in, kh, kw), y (..., B, out, H', W') -> (..., B, C, H, W)."""
    lead = kernel.shape[:-4]
    weight, members = _grouped(kernel)
    batch = y.shape[len(lead)]
    stacked = (
        y.reshape(members, batch, *y.shape[-3:]).transpose(0, 1).reshape(batch, members * y.shape[-3], *y.shape[-2:])
    )
    x = F.conv_transpose2d(
        stacked, weight, None, geom.stride, geom.padding, geom.output_padding, groups=members, dilation=geom.dilation
    )
    x = x.reshape(batch, members, -1, *x.shape[-2:]).transpose(0, 1)
    return x.reshape(*lead, batch, *x.shape[-3:])


def dense(kernel: torch.Tensor, geom: ConvGeometry) -> torch.Tensor:
    """The unrolled operator, a matrix (out*H'*W') x (C*H*W), of one kernel (no member axes): tests, small maps."""
    basis = torch.eye(geom.in_numel, dtype=kernel.dtype, device=kernel.device).reshape(-1, *geom.in_shape)
    return apply(kernel, basis, geom).reshape(geom.in_numel, geom.out_numel).T


def top_singular_pair(
    kernel: torch.Tensor,
    geom: ConvGeometry,
    v0: torch.Tensor | None = None,
    *,
    tol: float = 1e-7,
    max_iter: int = 500,
    krylov: int = 16,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The operator's top singular value and images: kernels (..., out, in, kh, kw) -> sigma (...),
    u (..., out, H', W'), v (..., C, H, W), with A v = sigma u, |u| = |v| = 1, in the kernel's dtype; member axes
    are vectorised.

    Lanczos on A^T A (one `apply` and one `adjoint` per step, full reorthogonalisation), restarted from the Ritz
    vector every `krylov` steps, from v0 (..., C, H, W) when given (the previous record's v: a warm start) or a
    fixed random image. A cycle ends with the one host sync the loop has: every member's Ritz residual
    |A^T A v - sigma^2 v| (Lanczos' estimate) at most tol * sigma^2, or `max_iter` steps in all, ends it. Where a
    kernel is not finite (or overflows), sigma, u and v are NaN; nothing raises. sigma is exact to about tol^2 / gap
    (relative), the vectors to about tol / gap, gap = 1 - sigma_2^2 / sigma^2: callers that need the vectors
    (the SDE terms' first-order terms) pass a tighter tol.
    """
    lead = kernel.shape[:-4]
    members, n = math.prod(lead), geom.in_numel
    kern = kernel.reshape(members, *kernel.shape[-4:])
    bad = ~torch.isfinite(kern).flatten(1).all(dim=1)  # (M,)
    kern = torch.where(bad[:, None, None, None, None], 0.0, kern)
    if v0 is None:
        v0 = torch.randn(members, n, generator=torch.Generator().manual_seed(0), dtype=kernel.dtype)
    v = v0.to(kernel.device, kernel.dtype).reshape(members, n)
    v = torch.where(torch.isfinite(v).all(dim=1, keepdim=True), v, 1.0)  # a NaN warm start is no start

    def gram(x: torch.Tensor) -> torch.Tensor:  # (M, n) -> A^T A x
        ax = apply(kern, x.reshape(members, 1, *geom.in_shape), geom)
        return adjoint(kern, ax, geom).reshape(members, n)

    k = min(krylov, n)
    tiny, eps = torch.finfo(kernel.dtype).tiny, torch.finfo(kernel.dtype).eps
    for _ in range(max(1, -(-max_iter // k))):
        basis = torch.zeros(members, k, n, dtype=kernel.dtype, device=kernel.device)
        alpha = torch.zeros(members, k, dtype=kernel.dtype, device=kernel.device)
        beta = torch.zeros_like(alpha)
        q = v / v.norm(dim=1, keepdim=True).clamp_min(tiny)
        for j in range(k):
            basis[:, j] = q
            w = gram(q)
            bad = bad | ~torch.isfinite(w).all(dim=1)
            w = torch.where(bad[:, None], 0.0, w)
            alpha[:, j] = (w * q).sum(dim=1)
            for _ in range(2):  # full reorthogonalisation, twice (Kahan's "twice is enough")
                w = w - torch.einsum("mk,mkn->mn", torch.einsum("mkn,mn->mk", basis[:, : j + 1], w), basis[:, : j + 1])
            norm = w.norm(dim=1)
            # An exhausted Krylov space (an invariant subspace found) leaves rounding noise that is no new
            # direction: it ends with beta = 0 and q = 0, so T decouples and its top Ritz pair is exact.
            live = norm > 64 * eps * alpha[:, : j + 1].abs().amax(dim=1)
            beta[:, j] = torch.where(live, norm, 0.0)
            q = torch.where(live[:, None], w / norm[:, None].clamp_min(tiny), 0.0)
        tri = torch.diag_embed(alpha) + torch.diag_embed(beta[:, :-1], 1) + torch.diag_embed(beta[:, :-1], -1)
        theta, vecs = torch.linalg.eigh(tri)
        top, coef = theta[:, -1], vecs[:, :, -1]
        v = torch.einsum("mk,mkn->mn", coef, basis)
        residual = (beta[:, -1] * coef[:, -1]).abs()
        if k == n or bool(((residual <= tol * top.abs()) | bad).all()):  # host sync, once per cycle
            break
    v = v / v.norm(dim=1, keepdim=True).clamp_min(tiny)
    av = apply(kern, v.reshape(members, 1, *geom.in_shape), geom).reshape(members, -1)
    sigma = av.norm(dim=1)
    u = av / sigma[:, None].clamp_min(tiny)
    nan = torch.full_like(sigma, torch.nan)
    sigma, u, v = (
        torch.where(bad, nan, sigma),
        torch.where(bad[:, None], nan[:, None], u),
        torch.where(bad[:, None], nan[:, None], v),
    )
    return sigma.reshape(lead), u.reshape(*lead, *geom.out_shape), v.reshape(*lead, *geom.in_shape)
