"""A convolution as the linear operator the paper's bound is about: images of the layer's real input size in,
images out, with the layer's padding, stride and dilation (docs/science.md, "What K is").

The operator's matrix (the doubly block-Toeplitz unrolling) is never built in training: `apply` and `adjoint`
are `conv2d` and `conv_transpose2d` (with the `output_padding` that maps back onto the input's exact size).
Both take a stack of members: kernels `(..., out, in, kh, kw)` and images `(..., B, C, H, W)` with the same
leading member axes; members become the groups of one grouped convolution, so a whole ensemble costs one call.
`dense` unrolls the operator for tests and small layers. `top_singular_pair` gives the operator's top singular
value and images (the shared Krylov core of lipbench.torch.lipschitz on apply/adjoint, warm-startable).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lipbench.torch.lipschitz import Operator, converged_top_pair, per_matrix

__all__ = [
    "ConvGeometry",
    "adjoint",
    "apply",
    "certified_bound",
    "conv_geometries",
    "dense",
    "operator",
    "polyphase",
    "top_singular_pair",
]


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

    Found by one forward pass of two zero images (batch norm in training mode needs more than one value per
    channel); the model's mode and buffers (batch norm's running statistics) are restored, and so is torch's
    global generator (the pass's dropout draws must not shift a run's dropout masks).
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
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None else torch.float32
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            model.train()
            model(torch.zeros(2, *input_shape, device=device, dtype=dtype))
    finally:
        model.train(was_training)
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
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


def _from_groups(images: torch.Tensor, lead: tuple[int, ...], members: int, batch: int) -> torch.Tensor:
    """The inverse of `_as_groups`: B x (members * C) x H x W -> (..., B, C, H, W)."""
    out = images.reshape(batch, members, -1, *images.shape[-2:]).transpose(0, 1)
    return out.reshape(*lead, batch, *out.shape[-3:])


def apply(kernel: torch.Tensor, x: torch.Tensor, geom: ConvGeometry) -> torch.Tensor:
    """The operator on images: kernels (..., out, in, kh, kw), x (..., B, C, H, W) -> (..., B, out, H', W')."""
    lead = kernel.shape[:-4]
    weight, members = _grouped(kernel)
    batch = x.shape[len(lead)]
    y = F.conv2d(_as_groups(x, members, batch), weight, None, geom.stride, geom.padding, geom.dilation, members)
    return _from_groups(y, lead, members, batch)


def adjoint(kernel: torch.Tensor, y: torch.Tensor, geom: ConvGeometry) -> torch.Tensor:
    """The transpose of `apply`: kernels (..., out, in, kh, kw), y (..., B, out, H', W') -> (..., B, C, H, W)."""
    lead = kernel.shape[:-4]
    weight, members = _grouped(kernel)
    batch = y.shape[len(lead)]
    x = F.conv_transpose2d(
        _as_groups(y, members, batch),
        weight,
        None,
        geom.stride,
        geom.padding,
        geom.output_padding,
        groups=members,
        dilation=geom.dilation,
    )
    return _from_groups(x, lead, members, batch)


def dense(kernel: torch.Tensor, geom: ConvGeometry) -> torch.Tensor:
    """The unrolled operator, a matrix (out*H'*W') x (C*H*W), of one kernel (no member axes): tests, small maps."""
    return _members_dense(kernel, geom)


def operator(kernel: torch.Tensor, geom: ConvGeometry) -> Operator:
    """The operator as a (matvec, rmatvec) pair on flat images: (..., C*H*W) -> (..., out*H'*W') and back.

    Member axes of `kernel` lead the vectors' axes, as in `apply` (for `lipschitz.lanczos_spectral_norms`).
    """
    lead = kernel.shape[:-4]

    def matvec(v: torch.Tensor) -> torch.Tensor:
        return apply(kernel, v.reshape(*lead, -1, *geom.in_shape), geom).reshape(*v.shape[:-1], geom.out_numel)

    def rmatvec(u: torch.Tensor) -> torch.Tensor:
        return adjoint(kernel, u.reshape(*lead, -1, *geom.out_shape), geom).reshape(*u.shape[:-1], geom.in_numel)

    return matvec, rmatvec


#: Float64 rounding of the FFT and of the small eigenproblems is below 1e-13 relative, and storing the
#: bound in float32 moves it by at most 6e-8: the certified bound is inflated by this factor to cover both.
ROUNDING_MARGIN = 1 + 1e-6


def polyphase(kernel: torch.Tensor, geom: ConvGeometry) -> tuple[torch.Tensor, tuple[int, int]]:
    """The layer as a stride-1, undilated convolution with in*sh*sw channels, and the phase maps' size.

    A stride-s convolution reads input pixel s*i + d*a - p for output i and tap a. Splitting the padded
    input into its s*s phases (pixel s*j + r of the shifted input is pixel j of phase r, a permutation)
    and the dilated kernel likewise (tap d*a = s*q + r) makes it sum_(r,q) K'[r, q] x_r[i + q]: a stride-1
    convolution of the phases, each a map of n_ph = floor((p+n-1)/s) - floor(p/s) + 1 pixels, with a kernel
    of ceil((d(k-1)+1)/s) taps. Returns K' (..., out, in*sh*sw, kh', kw') and (n_ph_h, n_ph_w).
    """
    *lead, out, cin, kh, kw = kernel.shape
    (dh, dw), (sh, sw), (ph, pw) = geom.dilation, geom.stride, geom.padding
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1  # the dilated kernel's extent
    qh, qw = -(-eh // sh), -(-ew // sw)
    dilated = kernel.new_zeros(*lead, out, cin, qh * sh, qw * sw)
    dilated[..., :eh:dh, :ew:dw] = kernel
    phases = dilated.reshape(-1, out, cin, qh, sh, qw, sw).permute(0, 1, 2, 4, 6, 3, 5)  # out, cin, sh, sw, qh, qw
    n_h, n_w = geom.in_shape[1:]
    maps = ((ph + n_h - 1) // sh - ph // sh + 1, (pw + n_w - 1) // sw - pw // sw + 1)
    return phases.reshape(*lead, out, cin * sh * sw, qh, qw), maps


@torch.no_grad()
def certified_bound(kernel: torch.Tensor, geom: ConvGeometry, grids: int = 2) -> torch.Tensor:
    """A certified upper bound (...,) of the operator norm, for kernels (..., out, in, kh, kw); NaN if non-finite.

    The layer (rewritten at stride 1 by `polyphase`) is a restriction of the full linear convolution of
    its input maps (n pixels a side, a kernel of q taps), which is a compression of the circular
    convolution on any grid of N >= n + q - 1 pixels (no wrap-around reaches a non-zero input): its norm is
    at most the circular one. The circular convolution is block-diagonalised by the 2-D DFT: its singular
    values are those of the out x in matrices K^(w) at the N_h*N_w frequencies (Sedghi, Gupta and Long,
    ICLR 2019). Computed in float64 (FFT, then sigma_max^2 as the top eigenvalue of each small Gram matrix),
    the smallest over `grids` grid sizes (each is a bound), times ROUNDING_MARGIN.

    On a small map the circular relaxation is loose (the quick ConvNet's third layer, 2x2 input: +59 %),
    so an operator whose smaller side is at most DENSE_SIDE is instead unrolled (`dense`) and its norm
    taken exactly in float64, which certifies it to the same rounding.
    """
    finite, dtype = torch.isfinite(kernel).flatten(-4).all(dim=-1), kernel.dtype
    kernel = torch.where(finite[..., None, None, None, None], kernel, 0.0).double()
    if min(geom.in_numel, geom.out_numel) <= DENSE_SIDE:
        best = _top_of_gram(_members_dense(kernel, geom))
    else:
        K, (mh, mw) = polyphase(kernel, geom)
        best = None
        for extra in range(grids):
            spectrum = torch.fft.fft2(K, s=(mh + K.shape[-2] - 1 + extra, mw + K.shape[-1] - 1 + extra))
            top = _top_of_gram(spectrum.movedim((-2, -1), (-4, -3)).flatten(-4, -3)).amax(dim=-1)  # over frequencies
            best = top if best is None else torch.minimum(best, top)
    return torch.where(finite, best * ROUNDING_MARGIN, torch.nan).to(dtype)


DENSE_SIDE = 512  # operators with a side this small get an exact float64 norm as their bound


def _top_of_gram(blocks: torch.Tensor) -> torch.Tensor:
    """sigma_max of each matrix of a stack (..., m, n), real or complex: the top eigenvalue of its smaller Gram."""
    gram = blocks @ blocks.mH if blocks.shape[-2] <= blocks.shape[-1] else blocks.mH @ blocks
    return per_matrix(torch.linalg.eigvalsh, gram)[..., -1].clamp_min(0).sqrt()


def _members_dense(kernel: torch.Tensor, geom: ConvGeometry) -> torch.Tensor:
    """The unrolled operators of stacked kernels (..., out, in, kh, kw): (..., out*H'*W', C*H*W)."""
    basis = torch.eye(geom.in_numel, dtype=kernel.dtype, device=kernel.device).reshape(-1, *geom.in_shape)
    columns = apply(kernel, basis.expand(*kernel.shape[:-4], *basis.shape), geom)
    return columns.reshape(*kernel.shape[:-4], geom.in_numel, geom.out_numel).mT


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

    `lipschitz.converged_top_pair` on `operator` (one `apply` and one `adjoint` per step), restarted every
    `krylov` steps, from v0 (..., C, H, W) when given (the previous record's v: a warm start) or a fixed random
    image; one host sync per cycle, where the Ritz residual |A^T A v - sigma^2 v| is tested against
    tol * sigma^2. Where a kernel is not finite (or overflows), sigma, u and v are NaN; nothing raises. sigma is
    exact to about tol^2 / gap (relative), the vectors to about tol / gap, gap = 1 - sigma_2^2 / sigma^2: callers
    that need the vectors (the SDE terms' first-order terms) pass a tighter tol.
    """
    lead = kernel.shape[:-4]
    members, n = math.prod(lead), geom.in_numel
    kern = kernel.reshape(members, *kernel.shape[-4:])
    if v0 is None:
        v0 = torch.randn(members, n, generator=torch.Generator().manual_seed(0), dtype=kernel.dtype)
    v = v0.to(kernel.device, kernel.dtype).reshape(members, n)
    sigma, v = converged_top_pair(operator(kern, geom), v, tol=tol, max_iter=max_iter, krylov=krylov)
    av = apply(kern, v.reshape(members, 1, *geom.in_shape), geom).reshape(members, -1)
    u = av / av.norm(dim=1, keepdim=True).clamp_min(torch.finfo(kernel.dtype).tiny)
    return sigma.reshape(lead), u.reshape(*lead, *geom.out_shape), v.reshape(*lead, *geom.in_shape)
