"""The SDE terms of a Conv2d taken of sigma_max of its operator A (the map on images of the layer's real input
size, lipbench.torch.conv_operator), not of the reshaped kernel matrix (docs/science.md, "The SDE terms of a
convolution").

A is linear in the kernel W, so a kernel perturbation e is the operator perturbation A(e) = conv(.; e). With
sigma, u (output image), v (input image) the top singular triple of A:

- the kernel gradient of sigma is D = d<u, conv(v; W)>/dW (the "weight gradient" of output u and input v), so
  mu = -lr <D, drift> and a sample's projection is <g_i, D> = <delta_i, conv(x_i; D)>;
- Q(e) = d^2/dt^2 sigma_max(A(W + t e)) needs only matvecs: with E = A(e), lam1 = sigma^2 and
  r = P_{v-perp}(sigma E^T u + A^T E v) (the first-order change of A^T A applied to v),

      Q(e) = ( |E v|^2 - (u^T E v)^2 + r^T (lam1 I - A^T A)^+ r ) / sigma

  (second-order perturbation of lam1 of A^T A, then sigma = sqrt(lam1)).

Two ways to apply the pseudo-inverse, chosen by the input size n = C*H*W:

- n <= DENSE_MAX (the quick ConvNet at 1x8x8: n = 64, 512, 256): A is unrolled (`dense`) and A^T A (n x n)
  eigendecomposed; sigma, u, v and the sum over eigenpairs are exact. The noise-curvature trace
  sum_a Q(conv(.; e_a)) over the kernel basis is exact too: for j >= 2,
  sum_a (v_j . r_a)^2 = |sigma D(u, v_j) + D(A v_j, v)|^2, with D(a, b) = d<a, conv(b; W)>/dW the weight
  gradient of output a and input b.
- larger n: sigma, u, v by `top_singular_pair` (Lanczos, warm-started from `OperatorState.v`), the solve by
  conjugate gradients on v-perp batched over all right-hand sides (each step one convolution and one transposed
  convolution of the batch), and the noise trace by Hutchinson's estimator, the mean of Q(conv(.; z)) over
  NOISE_PROBES Rademacher kernels z (unbiased: E[z z^T] = I). This path works in float64.

Cost per record, one CPU core (shared, so noisy), the ConvNet with b = 32, medians: at 1x8x8 (all three conv
layers exact) 108 ms against 31 ms for the reshaped-kernel terms and 12 ms for a training step (3.5x the
reshaped probe; 5x with the exact noise trace); at 1x28x28 (conv 2 and 3 by conjugate gradients, about 70
steps of 33 images each) 6.4 s against 0.1 s, most of it conv 2's solve. Accuracy: both paths agree with the
dense operator's autograd Hessian to 1e-6 (tests/test_sde_conv.py, float64); in float32 the quick ConvNet's
terms (mu, beta^2, eps) are within 1e-5 of float64, disc within 1e-4.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from lipbench.torch.conv_operator import ConvGeometry, dense, operator, top_singular_pair

__all__ = ["DENSE_MAX", "NOISE_PROBES", "OperatorParts", "OperatorState", "operator_parts"]

DENSE_MAX = 1024  # input sizes up to this are eigendecomposed exactly (an n x n eigh: about 30 ms at 512)
NOISE_PROBES = 8  # Hutchinson probes of the noise-curvature trace, above DENSE_MAX
CG_CHECK_EVERY = 8  # the conjugate-gradient loop syncs with the host once per this many steps
CG_MAX_ITER = 400
CG_TOL = 1e-7  # relative residual; r^T y is then exact to about CG_TOL^2 * lam1 / (lam1 - lam2)
KRYLOV, LANCZOS_MAX_ITER = 64, 1024  # the matvec path's Lanczos: vectors per cycle, steps in all


@dataclass
class OperatorState:
    """What a caller keeps between records: each layer's last v (the Lanczos warm start, by parameter name) and
    the generator of the Hutchinson probes (fresh probes at every record, reproducible per run). Mutated by
    `measure_sde_terms`; only the matvec path (n > DENSE_MAX) uses it."""

    v: dict[str, torch.Tensor] = field(default_factory=dict)
    generator: torch.Generator | None = None


@dataclass(frozen=True)
class OperatorParts:
    """What the SDE terms need of one conv operator, in its kernel's dtype (0-dim tensors unless noted)."""

    sigma: torch.Tensor
    proj: torch.Tensor  # (b,): <g_i, D>
    q: torch.Tensor  # (b,): Q(g_i - G)
    drift_proj: torch.Tensor  # <drift, D>
    drift_q: torch.Tensor  # Q(drift)
    grad_sq: torch.Tensor  # |D|^2: Var<z, D> per unit of i.i.d. kernel noise
    noise_q: torch.Tensor  # sum_a Q(conv(.; e_a)): E[Q(z)] per unit of i.i.d. kernel noise (0 when not asked)


def _unfold(images: torch.Tensor, geom: ConvGeometry) -> torch.Tensor:
    """(B, C, H, W) -> (B, in*kh*kw, positions): the patches each output position sees, in the kernel's order."""
    return F.unfold(images, geom.kernel, geom.dilation, geom.padding, geom.stride)


@dataclass(frozen=True)
class _Spectrum:
    kernel: torch.Tensor  # out x in x kh x kw
    geom: ConvGeometry
    sigma: torch.Tensor
    u: torch.Tensor  # m
    v: torch.Tensor  # n
    matrix: torch.Tensor | None = None  # m x n: the dense path
    lam: torch.Tensor | None = None  # n, descending: eigenvalues of A^T A
    basis: torch.Tensor | None = None  # n x n, columns v_j

    def gram(self, x: torch.Tensor) -> torch.Tensor:
        """A^T A x for x (B, n)."""
        matvec, rmatvec = operator(self.kernel, self.geom)
        return rmatvec(matvec(x))


def _spectrum(kernel: torch.Tensor, geom: ConvGeometry, warm: torch.Tensor | None) -> _Spectrum:
    if geom.in_numel > DENSE_MAX:
        # mu is first order in v's error, which is the residual over the spectral gap: a tight tolerance, and
        # 64 Krylov vectors per cycle (16 stall on the 28x28 ConvNet's nearly degenerate first two layers).
        tol = max(1e-12, 100 * torch.finfo(kernel.dtype).eps)
        sigma, u, v = top_singular_pair(kernel, geom, warm, tol=tol, max_iter=LANCZOS_MAX_ITER, krylov=KRYLOV)
        return _Spectrum(kernel, geom, sigma, u.flatten(), v.flatten())
    A = dense(kernel, geom)
    gram = A.mT @ A
    # A diverged layer makes eigh raise: it gets sigma = NaN instead (no host sync here).
    finite = torch.isfinite(gram).all()
    lam, basis = torch.linalg.eigh(torch.where(finite, gram, 0.0))
    lam, basis = lam.flip(0), basis.flip(1)
    sigma = torch.where(finite, lam[0].clamp_min(0).sqrt(), torch.nan)
    v = basis[:, 0]
    return _Spectrum(kernel, geom, sigma, A @ v / sigma, v, A, lam, basis)


def _solve(sp: _Spectrum, r: torch.Tensor) -> torch.Tensor:
    """(lam1 I - A^T A)^+ r for r (B, n) orthogonal to v: conjugate gradients on v-perp, batched.

    lam1 I - A^T A is positive semi-definite there; its condition number is lam1 / (lam1 - lam2). Deflating a
    Krylov space of the eigenvectors next to v (deflated CG) was tried and left out: the top of a convolution's
    spectrum is nearly continuous, so 32 deflated directions cut the 28x28 ConvNet's second layer from 72 to 48
    steps and 128 only to 40, about a quarter of the solve's time for 50 more lines.
    """
    lam1, v = sp.sigma.square(), sp.v
    tol = CG_TOL

    def op(p: torch.Tensor) -> torch.Tensor:
        y = lam1 * p - sp.gram(p)
        return y - (y @ v)[:, None] * v

    x, res = torch.zeros_like(r), r.clone()
    p, rs = res.clone(), res.square().sum(dim=1)
    stop = tol**2 * rs
    for step in range(CG_MAX_ITER):
        mp = op(p)
        curvature = (p * mp).sum(dim=1)
        live = (curvature > 0) & (rs > stop)  # a converged column stops: its rounding noise is not amplified
        alpha = torch.where(live, rs / torch.where(live, curvature, 1.0), 0.0)
        x, res = x + alpha[:, None] * p, res - alpha[:, None] * mp
        rs_next = res.square().sum(dim=1)
        p = res + torch.where(live, rs_next / torch.where(live, rs, 1.0), 0.0)[:, None] * p
        rs = rs_next
        if (step + 1) % CG_CHECK_EVERY == 0 and bool(((rs <= stop) | rs.isnan()).all()):  # host sync
            break
    return x


def _quad(sp: _Spectrum, e1: torch.Tensor, e2: torch.Tensor) -> torch.Tensor:
    """Q of operator perturbations E from e1 = E v (B, m) and e2 = E^T u (B, n) (the module's formula)."""
    at_e1 = e1 @ sp.matrix if sp.matrix is not None else operator(sp.kernel, sp.geom)[1](e1)
    r = sp.sigma * e2 + at_e1
    r = r - (r @ sp.v)[:, None] * sp.v
    if sp.basis is not None:
        inv = ((r @ sp.basis[:, 1:]).square() / (sp.lam[0] - sp.lam[1:])).sum(dim=1)
    else:
        inv = (r * _solve(sp, r)).sum(dim=1)
    return (e1.square().sum(dim=1) - (e1 @ sp.u).square() + inv) / sp.sigma


def _noise_trace_exact(sp: _Spectrum, chunk: int = 128) -> torch.Tensor:
    """sum_a Q(conv(.; e_a)) over the kernel basis, from the full eigendecomposition (module docstring).

    With U = u (out x P), Pv = v's patches (K x P), Pj = v_j's patches and Aj = A v_j (out x P), the j-th term
    needs |sigma U Pj^T + Aj Pv^T|^2 (an out x K kernel), or the same as P x P contractions when P is small:
    sigma^2 <U^T U, Pj^T Pj> + 2 sigma <U^T Aj, Pj^T Pv> + <Aj^T Aj, Pv^T Pv>.
    """
    geom, out = sp.geom, sp.kernel.shape[0]
    U = sp.u.reshape(out, -1)  # out x P
    Pv = _unfold(sp.v.reshape(1, *geom.in_shape), geom)[0]  # K x P
    positions, kernel_size = U.shape[1], Pv.shape[0]
    uu, vv = U.mT @ U, Pv.mT @ Pv
    ev = out * vv.trace()  # sum_a |A_a v|^2
    uev = (uu * vv).sum()  # sum_a (u^T A_a v)^2 = |D|^2
    by_positions = positions * (out + kernel_size) < out * kernel_size  # the cheaper contraction
    inv = torch.zeros((), dtype=sp.sigma.dtype, device=sp.sigma.device)
    for cols in torch.arange(1, geom.in_numel, device=sp.v.device).split(chunk):
        vj = sp.basis[:, cols].mT  # (J, n)
        Pj = _unfold(vj.reshape(-1, *geom.in_shape), geom)  # (J, K, P)
        Aj = (vj @ sp.matrix.mT).reshape(len(cols), out, -1)  # (J, out, P)
        if by_positions:
            sq = (
                sp.sigma.square() * (uu * (Pj.mT @ Pj)).sum(dim=(1, 2))
                + 2 * sp.sigma * ((U.mT @ Aj) * (Pj.mT @ Pv)).sum(dim=(1, 2))
                + ((Aj.mT @ Aj) * vv).sum(dim=(1, 2))
            )
        else:
            sq = (sp.sigma * (U @ Pj.mT) + Aj @ Pv.mT).square().sum(dim=(1, 2))
        inv = inv + (sq / (sp.lam[0] - sp.lam[cols])).sum()
    return (ev - uev + inv) / sp.sigma


def operator_parts(
    kernel: torch.Tensor,
    geom: ConvGeometry,
    G: torch.Tensor,
    delta: torch.Tensor,
    xin: torch.Tensor,
    drift: torch.Tensor,
    *,
    noise: bool,
    state: OperatorState | None = None,
    name: str = "",
) -> OperatorParts:
    """The parts of one conv layer's terms: kernel (out, in, kh, kw); G and drift (out, in*kh*kw); the factors
    delta (b, t, out) and xin (b, t, in*kh*kw) of g_i = sum_t delta_it xin_it^T. `noise`: compute the noise
    trace. `state` (by `name`) carries the warm start and the probes' generator between calls.

    The matvec path works in float64 whatever the layer's dtype (results in the kernel's dtype): its iterations
    lose what float32 cannot resolve of a nearly degenerate top pair (the quick ConvNet's first layer at 1x8x8 has
    sigma_2 / sigma_1 = 0.99997 at init: its eps came out 2x off in float32 conjugate gradients, 1e-15 in float64).
    """
    dtype = kernel.dtype
    if geom.in_numel > DENSE_MAX:
        kernel, G, delta, xin, drift = (t.to(torch.float64) for t in (kernel, G, delta, xin, drift))
    warm = state.v.get(name) if state is not None else None
    sp = _spectrum(kernel, geom, warm)
    if state is not None and sp.basis is None:
        state.v[name] = sp.v.reshape(geom.in_shape).detach()
    U = sp.u.reshape(geom.out_shape[0], -1)  # out x P
    Pv = _unfold(sp.v.reshape(1, *geom.in_shape), geom)[0]  # K x P: v's patches
    D = U @ Pv.mT  # out x K: the kernel gradient of sigma
    # The per-sample kernels g_i = sum_t delta_it xin_it^T are never formed: conv(v; g_i) = g_i Pv and the
    # patches of conv^T(u; g_i) = g_i^T U come from the factors (b x out x K would dominate the cost).
    b = delta.shape[0]
    gv = delta.mT @ (xin @ Pv)  # (b, out, P)
    gu = xin.mT @ (delta @ U)  # (b, K, P)
    kernels = [drift.unsqueeze(0)]
    if noise and sp.basis is None:  # Hutchinson: Rademacher kernels
        if state is not None and state.generator is None:
            state.generator = torch.Generator(kernel.device).manual_seed(0)
        gen = state.generator if state is not None else torch.Generator(kernel.device).manual_seed(0)
        signs = torch.randint(0, 2, (NOISE_PROBES, *G.shape), generator=gen, device=kernel.device)
        kernels.append((2 * signs - 1).to(G.dtype))
    E = torch.cat(kernels)  # (1 + probes, out, K)
    e1 = torch.cat([gv - G @ Pv, E @ Pv]).flatten(1)  # E v = conv(v; e)
    e2 = F.fold(  # E^T u: the transposed convolution of u, as the fold of its patches
        torch.cat([gu - G.mT @ U, E.mT @ U]), geom.in_shape[1:], geom.kernel, geom.dilation, geom.padding, geom.stride
    )
    q = _quad(sp, e1, e2.flatten(1))
    if not noise:
        noise_q = torch.zeros_like(sp.sigma)
    elif sp.basis is None:
        noise_q = q[b + 1 :].mean()
    else:
        noise_q = _noise_trace_exact(sp)
    parts = {
        "sigma": sp.sigma,
        "proj": (gv * U).sum(dim=(1, 2)),  # <g_i, D> = <g_i Pv, U> = <delta_i, conv(x_i; D)>
        "q": q[:b],
        "drift_proj": (drift * D).sum(),
        "drift_q": q[b],
        "grad_sq": D.square().sum(),
        "noise_q": noise_q,
    }
    return OperatorParts(**{key: value.to(dtype) for key, value in parts.items()})
