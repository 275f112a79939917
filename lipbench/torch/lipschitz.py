"""Layer spectral norms and the network bound K = prod_l sigma_max(W_l) (docs/science.md)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn


def layer_matrix(weight: torch.Tensor) -> torch.Tensor:
    """A layer's weight as a matrix: conv kernels out x in x kh x kw become out x (in*kh*kw)."""
    return weight.reshape(weight.shape[0], -1)


@torch.no_grad()
def spectral_norms(layers: list[nn.Module]) -> torch.Tensor:
    """sigma_max of each layer's matrix (a conv kernel reshaped: `layer_matrix`), one tensor on the layers' device."""
    return matrix_norms([layer_matrix(m.weight) for m in layers])


@torch.no_grad()
def matrix_norms(mats: list[torch.Tensor]) -> torch.Tensor:
    """sigma_max (..., L) of stacks of matrices (..., m, n) by LAPACK, in their precision; no host sync.

    A non-finite matrix (a diverged run) gives NaN: LAPACK's SVD would raise on it.
    """
    out = []
    for W in mats:
        finite = torch.isfinite(W).flatten(-2).all(dim=-1)
        sigma = torch.linalg.matrix_norm(torch.where(finite[..., None, None], W, 0.0), ord=2)
        out.append(torch.where(finite, sigma, torch.nan))
    return torch.stack(out, dim=-1)


def log_bound(sigmas: torch.Tensor) -> torch.Tensor:
    """log K = sum_l log sigma_l; stays finite where the product K would overflow."""
    return sigmas.log().sum(dim=-1)


# ---------------------------------------------------------------- batched tracking (lipbench.torch.ensemble)


def _matvec(W: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """W @ x for stacks W (..., m, n), x (..., n). On the CPU one torch.mv per matrix: a batched
    matmul with a single column runs there at a fraction of the memory bandwidth."""
    if W.device.type != "cpu":
        return (W @ x.unsqueeze(-1)).squeeze(-1)
    flat_w, flat_x = W.reshape(-1, *W.shape[-2:]), x.reshape(-1, x.shape[-1])
    return torch.stack([torch.mv(w, v) for w, v in zip(flat_w, flat_x, strict=True)]).reshape(
        *x.shape[:-1], W.shape[-2]
    )


def _top_eigenpair(C: torch.Tensor, squarings: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Top eigenvalue and a unit eigenvector of small symmetric PSD matrices C (..., p, p), without LAPACK.

    Repeated squaring (trace-normalised) turns C into the projector on its top eigenvector; the
    value is the Rayleigh quotient of its largest column. Unlike torch.linalg on CUDA, it checks
    no error flag, so it never waits for the device. Near-degenerate top eigenvalues mix their
    vectors, which moves the Rayleigh quotient by (contamination)^2 x gap: negligible.
    """

    def normalise(A: torch.Tensor) -> torch.Tensor:
        trace = A.diagonal(dim1=-2, dim2=-1).sum(-1)
        return A / trace.clamp_min(torch.finfo(A.dtype).tiny)[..., None, None]

    A = normalise(C)
    for _ in range(squarings):
        A = normalise(A @ A)
    column = A.norm(dim=-2).argmax(dim=-1)  # (...,): the column most aligned with the top vector
    v, _ = _unit(A.gather(-1, column[..., None, None].expand(*A.shape[:-1], 1)).squeeze(-1))
    return (v * (C @ v.unsqueeze(-1)).squeeze(-1)).sum(-1), v


def _unit(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x / |x| along the last axis (0 for 0) and |x|."""
    norm = x.norm(dim=-1, keepdim=True)
    return x / norm.clamp_min(torch.finfo(x.dtype).tiny), norm.squeeze(-1)


def _orthogonalise(x: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """x (..., d) minus its projection on the rows of basis (..., r, d); zero rows are harmless."""
    for _ in range(2):  # twice is enough in float32
        coords = (basis * x.unsqueeze(-2)).sum(-1)  # (..., r): a CPU bmm with one column is slow
        x = x - (basis * coords.unsqueeze(-1)).sum(-2)
    return x


#: A linear map W given by its products on stacks of flat vectors: (v (..., n) -> W v (..., m), u -> W^T u).
Operator = tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


def matrix_operator(W: torch.Tensor) -> Operator:
    """A stack of matrices W (..., m, n) as an Operator."""
    return functools.partial(_matvec, W), functools.partial(_matvec, W.mT)


def bidiagonalise(
    op: Operator, v: torch.Tensor, steps: int, *, exhaust: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Krylov core every sigma_max iteration of lipbench runs on: Golub-Kahan-Lanczos steps of the operator
    `op` from the start vectors v (..., n), with full reorthogonalisation; vectorised over the leading axes, no
    host sync.

    k = min(steps, m - 1, n - 1) steps (at least 1), each one matvec and one rmatvec (the cost of a power
    iteration step); with `exhaust`, min(steps, n), so that B[..., :k] can span the whole Krylov space of A^T A
    (at most n vectors; a 1 x n operator needs 2). Returns U (..., k, m) and V (..., k + 1, n), orthonormal
    rows, and the upper bidiagonal B = U A V^T (..., k, k + 1): alpha_j on the diagonal, beta_j above.
    B[..., :k] is A projected on the first k right vectors, and its Gram matrix the Lanczos tridiagonal of
    A^T A over them, whose residual for a Ritz vector y is alpha_k beta_k |y_k|. An exhausted Krylov space
    (an invariant subspace found) leaves only rounding noise, no new direction: a vector under 64 eps times the
    largest entry of B so far becomes 0 with its entry, so B decouples and its Ritz pairs stay exact.
    Non-finite products propagate (NaN stays NaN).
    """
    matvec, rmatvec = op
    v, _ = _unit(v)
    u = matvec(v)  # (..., m)
    (m, n), batch = (u.shape[-1], v.shape[-1]), v.shape[:-1]
    k = max(1, min(steps, n) if exhaust else min(steps, m - 1, n - 1))
    V = v.new_zeros(*batch, k + 1, n)  # right Lanczos vectors, as rows
    U = v.new_zeros(*batch, k, m)  # left Lanczos vectors, as rows
    B = v.new_zeros(*batch, k, k + 1)
    V[..., 0, :] = v
    floor = 64 * torch.finfo(v.dtype).eps
    scale = v.new_zeros(batch)  # the largest entry of B so far

    def step(x: torch.Tensor, basis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, norm = _unit(_orthogonalise(x, basis))
        dead = norm <= floor * scale  # False for NaN: a diverged operator stays NaN
        return torch.where(dead[..., None], 0.0, x), torch.where(dead, 0.0, norm)

    for j in range(k):
        u, alpha = step(u, U)
        scale = torch.maximum(scale, alpha)
        U[..., j, :] = u
        w, beta = step(rmatvec(u) - alpha.unsqueeze(-1) * V[..., j, :], V)
        scale = torch.maximum(scale, beta)
        V[..., j + 1, :] = w
        B[..., j, j], B[..., j, j + 1] = alpha, beta
        if j + 1 < k:
            u = matvec(w) - beta.unsqueeze(-1) * u
    return U, V, B


@torch.no_grad()
def lanczos_spectral_norms(
    ops: list[Operator], vs: list[torch.Tensor], steps: int = 16
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Warm-started sigma_max of stacks of linear operators: a Krylov-accelerated power iteration; no host sync.

    `ops[l]` is a (matvec, rmatvec) pair on stacks of flat vectors (`matrix_operator` of members x out x in
    matrices, or `conv_operator.operator` of a convolution on images), `vs[l]` its start vectors (..., n_l),
    kept between calls: the returned vectors (the top Ritz vectors) warm-start the next call.
    Each call runs `steps` Golub-Kahan-Lanczos steps from v (`bidiagonalise`) and returns sigma_max of the
    bidiagonal B = U^T W V (all k + 1 right vectors), a Rayleigh-Ritz value that never exceeds the
    true sigma_max. Plain power iteration converges like (s2/s1)^(2k): after a record interval
    early in training, where the top directions of a bulk spectrum change, it is off by 1e-2 and
    more; the Krylov space over the same products is not. Returns (..., L) estimates and vectors.
    """
    sigmas, out = [], []
    for op, v in zip(ops, vs, strict=True):
        _, V, B = bidiagonalise(op, v, steps)
        lam, ritz = _top_eigenpair(B.double().mT @ B.double())  # sigma_max(B)^2 and its right vector
        sigmas.append(lam.clamp_min(0).sqrt().to(v.dtype))
        out.append((ritz.to(v.dtype).unsqueeze(-2) @ V).squeeze(-2))  # the top Ritz vector, the next warm start
    return torch.stack(sigmas, dim=-1), out


@torch.no_grad()
def converged_top_pair(
    op: Operator, v: torch.Tensor, *, tol: float, max_iter: int, krylov: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """sigma_max (...) and the top right singular vector (..., n) of a stack of operators, to a residual test.

    Restarted `bidiagonalise`: cycles of `krylov` steps, each restarted from the last cycle's top Ritz vector
    of B[..., :k] (Lanczos on A^T A over the same space, in the operator's dtype). A cycle ends with the one
    host sync of the loop: every member's Ritz residual |A^T A v - sigma^2 v| = alpha_k beta_k |y_k| at most
    tol * sigma^2, or `max_iter` steps in all, ends it. A member whose products are not finite is marked and
    gives NaN; nothing raises. sigma is exact to about tol^2 / gap (relative), v to about tol / gap.
    """
    v = torch.where(torch.isfinite(v).all(dim=-1, keepdim=True), v, 1.0)  # a NaN warm start is no start
    bad = torch.zeros(v.shape[:-1], dtype=torch.bool, device=v.device)
    for _ in range(max(1, -(-max_iter // krylov))):
        _, V, B = bidiagonalise(op, v, krylov, exhaust=True)
        k = B.shape[-2]
        bad = bad | ~torch.isfinite(B).flatten(-2).all(dim=-1)
        square = torch.where(bad[..., None, None], 0.0, B[..., :k])
        theta, vecs = per_matrix(torch.linalg.eigh, square.mT @ square)
        top, y = theta[..., -1], vecs[..., -1]
        v = (y.unsqueeze(-2) @ torch.where(bad[..., None, None], 0.0, V[..., :k, :])).squeeze(-2)
        residual = (B[..., k - 1, k - 1] * B[..., k - 1, k] * y[..., -1]).abs()
        if bool(((residual <= tol * top.abs()) | bad).all()):  # host sync, once per cycle
            break
    nan = torch.full_like(top, torch.nan)
    return torch.where(bad, nan, top.clamp_min(0).sqrt()), torch.where(bad[..., None], nan[..., None], v)


def per_matrix(fn: Callable, A: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """fn on a stack of matrices; on the CPU one LAPACK call at a time (a batched call there can run
    many times slower when the cores are shared)."""
    if A.device.type != "cpu" or A.dim() == 2:
        return fn(A)
    flat = A.reshape(-1, *A.shape[-2:])
    parts = [fn(a) for a in flat]
    if isinstance(parts[0], torch.Tensor):
        return torch.stack(parts).reshape(*A.shape[:-2], *parts[0].shape)
    return tuple(torch.stack(p).reshape(*A.shape[:-2], *p[0].shape) for p in zip(*parts, strict=True))


def _gram(W: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The Gram matrix of the smaller side (W W^T if m <= n, else W^T W) in float64, and whether it is W W^T.

    Formed in W's precision (float32: sigma_max to about 1e-6 relative; a float64 product costs
    several times more on most devices), then solved in float64.
    """
    left = W.shape[-2] <= W.shape[-1]
    return (W @ W.mT if left else W.mT @ W).double(), left


@torch.no_grad()
def top_singular(mats: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Exact sigma_max (..., L) and top right singular vectors of stacks of matrices.

    From the top eigenpair of the float64 Gram matrix of the smaller side (a few times faster than
    an SVD on the CPU; sigma_max to about 1e-6 relative). Non-finite matrices give NaN.
    """
    sigmas, vs = [], []
    for W in mats:
        finite = torch.isfinite(W).flatten(-2).all(dim=-1)
        W = torch.where(finite[..., None, None], W, 0.0)
        evals, evecs = per_matrix(torch.linalg.eigh, _gram(W)[0])
        top = evecs[..., -1]
        if W.shape[-2] <= W.shape[-1]:  # top is u: v = W^T u / |W^T u|
            top = torch.nn.functional.normalize((W.double().mT @ top.unsqueeze(-1)).squeeze(-1), dim=-1)
        sigma = evals[..., -1].clamp_min(0).sqrt().to(W.dtype)
        sigmas.append(torch.where(finite, sigma, torch.nan))
        vs.append(top.to(W.dtype))
    return torch.stack(sigmas, dim=-1), vs


@torch.no_grad()
def top_right_vector(W: torch.Tensor) -> torch.Tensor:
    """The top right singular vector (..., n) of a stack of matrices (..., m, n), without LAPACK: the top
    eigenvector of the float64 Gram matrix of the smaller side by `_top_eigenpair` (no host sync). NaN for a
    non-finite matrix."""
    gram, left = _gram(W)
    _, top = _top_eigenpair(gram)
    if left:  # top is u: v = W^T u / |W^T u|
        top, _ = _unit((W.double().mT @ top.unsqueeze(-1)).squeeze(-1))
    return top.to(W.dtype)


@torch.no_grad()
def exact_spectral_norms(mats: list[torch.Tensor]) -> torch.Tensor:
    """sigma_max (..., L) of stacks of matrices, exact: the top eigenvalue of the Gram matrix.

    Agrees with `spectral_norms` (a float32 SVD) to about 1e-6; NaN for non-finite matrices.
    """
    out = []
    for W in mats:
        finite = torch.isfinite(W).flatten(-2).all(dim=-1)
        gram, _ = _gram(torch.where(finite[..., None, None], W, 0.0))
        sigma = per_matrix(torch.linalg.eigvalsh, gram)[..., -1].clamp_min(0).sqrt().to(W.dtype)
        out.append(torch.where(finite, sigma, torch.nan))
    return torch.stack(out, dim=-1)
