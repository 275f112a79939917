"""The SDE terms of the paper (docs/science.md): drift mu, diffusion beta^2 and noise-curvature eps per layer.

For one layer with SVD W = sum_j s_j u_j v_j^T and per-sample gradients g_i (G = mean_i g_i):

    mu    = -lr * u1^T G v1
    beta2 = lr^2 * Var_i(u1^T g_i v1) / b          (unbiased variance over the b samples)
    eps   = lr^2 / (2b) * mean_i Q(g_i - G)

Q(E) = d^2/dt^2 sigma_max(W + tE) at t = 0, the full second directional derivative (second-order
perturbation theory of the symmetric dilation [[0, W], [W^T, 0]]), so the eps formula above needs no
extra factor. Everything here stays on the weights' device: no host syncs.

Beside the SDE's terms, each layer reports the discrete-time correction the SDE omits:

    disc  = lr^2 / 2 * Q(G)                        (E[d sigma] = mu + eps + disc + O(lr^3))

and the network its log-K form, sum_l disc_l / sigma_l - mu_l^2 / (2 sigma_l^2) (the deterministic
second-order terms of E[d log K]; the noise's -beta^2/2 is the SDE's own Ito term). The batch's
own G is noisy, so Q(G) and mu^2 are debiased by the noise's share (see `_terms`): disc estimates
the expected step's curvature without counting eps or beta^2 twice.

The terms describe the update SGD really applies, W <- W - lr (scale * g_hat + noise + wd * W):
`gradient_scale`, `gradient_noise_var` (i.i.d. noise per entry) and `weight_decay` enter mu, beta2,
eps and disc in closed form; `population` applies the without-replacement factor (N - b)/(N - 1)
to the sampling noise.

A Conv2d listed in `operators` is measured as the linear map on images of its real input size (its padding,
stride and dilation; lipbench.torch.conv_operator), not as its reshaped kernel: sigma, u (output image) and
v (input image) are that operator's, d sigma/dW = D is the kernel gradient of <u, conv(v; W)>, and Q is the
second derivative of the operator's sigma_max along conv(.; e). For any layer the terms are the same functions
of d sigma/dW and Q (see `_terms`):

    mu    = -lr <D, drift>        beta2 = lr^2 (a^2 f / b) Var_i <g_i, D> + lr^2 v |D|^2
    eps   = lr^2 / 2 ((a^2 f / b) mean_i Q(g_i - G) + v E[Q(z)])   (z: i.i.d. unit noise per kernel entry)

with D = u1 v1^T (|D| = 1) for a matrix. How Q is solved for the operator (an exact eigendecomposition of
A^T A for small inputs, Lanczos and conjugate gradients on convolutions above) is in lipbench.torch.sde_conv.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from lipbench.torch.conv_operator import ConvGeometry
from lipbench.torch.lipschitz import layer_matrix
from lipbench.torch.sde_conv import OperatorState, operator_parts

__all__ = [
    "LayerTerms",
    "OperatorState",
    "SDETerms",
    "hessian_quadratic_form",
    "hessian_trace",
    "layer_matrix",
    "measure_sde_terms",
    "per_sample_grads",
    "predicted_moments",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------------------------
# The operator-norm Hessian quadratic form
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spectrum:
    """What Q and tr H need of W (m x n): the eigendecomposition of its smaller Gram matrix.

    With r = min(m, n) and W_s = W if m <= n else W^T (r x N), W_s W_s^T = sum_j lam_j b_j b_j^T,
    lam descending, sigma_j = sqrt(lam_j). No right singular vectors and no SVD: an r x r `eigh`
    costs a fraction of a full SVD of W (about 4x less for the paper's 512 x 784 layer on a CPU).
    """

    Ws: torch.Tensor  # r x N
    lam: torch.Tensor  # r, descending
    basis: torch.Tensor  # r x r, columns b_j
    s1: torch.Tensor
    u1: torch.Tensor  # m: W's top left singular vector
    v1: torch.Tensor  # n: W's top right singular vector
    flipped: bool  # W_s = W^T (m > n)


def _spectrum(W: torch.Tensor) -> _Spectrum:
    flipped = W.shape[0] > W.shape[1]
    Ws = W.mT if flipped else W
    gram = Ws @ Ws.mT
    # A diverged layer (non-finite, or overflowing its Gram matrix) makes eigh raise: it gets
    # sigma = NaN instead, which the training loop reports as divergence (no host sync here).
    finite = torch.isfinite(gram).all()
    lam, basis = torch.linalg.eigh(torch.where(finite, gram, 0.0))
    lam, basis = lam.flip(0), basis.flip(1)
    s1 = torch.where(finite, lam[0].clamp_min(0).sqrt(), torch.nan)
    b1 = basis[:, 0]
    w1 = F.normalize(b1 @ Ws, dim=0)  # the top singular vector of the other side
    u1, v1 = (w1, b1) if flipped else (b1, w1)
    return _Spectrum(Ws, lam, basis, s1, u1, v1, flipped)


def _quad(sp: _Spectrum, Ev1: torch.Tensor, Etu1: torch.Tensor) -> torch.Tensor:
    """Q(E) from E v1 (..., m) and E^T u1 (..., n) alone.

    Q is the second derivative of the top eigenvalue s1 of the dilation A = [[0, W], [W^T, 0]]
    along [[0, E], [E^T, 0]]: Q = z^T (s1 I - A)^+ z for z = (E v1, E^T u1) with its component
    along the top eigenvector (u1, v1)/sqrt(2) removed (this is the sum over j of docs/science.md, the null
    spaces included). Eliminating one block, in W_s's orientation (a on its r side, c on its N side):

        Q = ( |c|^2 + sum_{j>=2} (b_j . (s1 a + W_s c))^2 / (lam_1 - lam_j) ) / s1.
    """
    a, c = (Etu1, Ev1) if sp.flipped else (Ev1, Etu1)
    b1, w1 = (sp.v1, sp.u1) if sp.flipped else (sp.u1, sp.v1)
    k = ((a @ b1 + c @ w1) / 2).unsqueeze(-1)
    a, c = a - k * b1, c - k * w1  # z minus its component along the top eigenvector
    proj = (sp.s1 * a + c @ sp.Ws.mT) @ sp.basis[:, 1:]
    return (c.square().sum(dim=-1) + (proj.square() / (sp.lam[0] - sp.lam[1:])).sum(dim=-1)) / sp.s1


def _trace(sp: _Spectrum) -> torch.Tensor:
    # Sum of Q over the basis e_a e_b^T: each j >= 2 adds 2 s1 / (lam_1 - lam_j), each of the
    # N - r directions W_s does not reach adds 1 / s1.
    r, N = sp.Ws.shape
    return (2 * sp.s1 / (sp.lam[0] - sp.lam[1:])).sum() + (N - r) / sp.s1


def _quad_of(sp: _Spectrum, E: torch.Tensor) -> torch.Tensor:
    return _quad(sp, E @ sp.v1, sp.u1 @ E)


def hessian_quadratic_form(W: torch.Tensor, E: torch.Tensor) -> torch.Tensor:
    """Q(E) = E^T H E for H the Hessian of sigma_max at W (m x n), without forming H.

    E is one perturbation (m x n) -> 0-dim tensor, or a batch (B, m, n) -> (B,). Works in W's
    dtype (float64 for the most accurate values); assumes a simple top singular value (s1 > s2),
    else Q is unbounded. The sum over the SVD (docs/science.md), from the eigendecomposition of W's smaller
    Gram matrix (see `_quad`).
    """
    if W.ndim != 2 or E.ndim not in (2, 3) or E.shape[-2:] != W.shape:
        raise ValueError(f"E must have shape {tuple(W.shape)} or (B, *{tuple(W.shape)}), not {tuple(E.shape)}")
    return _quad_of(_spectrum(W), E)


def hessian_trace(W: torch.Tensor) -> torch.Tensor:
    """tr H of sigma_max at W (m x n): E[Q(N)] / v for N with i.i.d. entries of variance v.

    tr H = sum_{j=2..r} 2 s1 / (s1^2 - s_j^2) + (m + n - 2r) / s1, from the singular values alone.
    """
    if W.ndim != 2:
        raise ValueError(f"W must be a matrix, not a tensor of shape {tuple(W.shape)}")
    return _trace(_spectrum(W))


# --------------------------------------------------------------------------------------------
# Result objects
# --------------------------------------------------------------------------------------------


@dataclass
class LayerTerms:
    """One layer's terms at one step (0-dim tensors on the device)."""

    sigma: torch.Tensor
    mu: torch.Tensor
    beta2: torch.Tensor
    eps: torch.Tensor
    disc: torch.Tensor  # lr^2/2 Q(G): the discrete step's own curvature, outside the SDE (unbiased estimate)
    log_disc: torch.Tensor  # disc / sigma - mu^2 / (2 sigma^2): the layer's discrete-time term of E[d log sigma]


@dataclass
class SDETerms:
    """Per-layer terms and the network terms of d log K (docs/science.md, network level)."""

    layers: list[LayerTerms]
    mu: torch.Tensor  # sum_l mu_l / sigma_l
    beta2: torch.Tensor  # sum_l beta_l^2 / sigma_l^2
    eps: torch.Tensor  # sum_l eps_l / sigma_l
    disc: torch.Tensor  # sum_l disc_l / sigma_l - mu_l^2 / (2 sigma_l^2): discrete-time terms of E[d log K]

    @property
    def drift(self) -> torch.Tensor:
        """The drift of log K: mu + eps - beta^2 / 2."""
        return self.mu + self.eps - self.beta2 / 2

    def as_dict(self) -> dict[str, torch.Tensor]:
        """Flat record keys: sde_{mu,beta2,eps,drift,disc} and sde_{mu,beta2,eps,disc}_{l}."""
        out = {"sde_mu": self.mu, "sde_beta2": self.beta2, "sde_eps": self.eps, "sde_drift": self.drift}
        out["sde_disc"] = self.disc
        for i, t in enumerate(self.layers):
            out |= {f"sde_mu_{i}": t.mu, f"sde_beta2_{i}": t.beta2, f"sde_eps_{i}": t.eps, f"sde_disc_{i}": t.disc}
        return out


def predicted_moments(
    K0: float | torch.Tensor, drift_integral: torch.Tensor | float, beta2_integral: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    """E[K_T] and Var[K_T] of the SDE model (docs/science.md) from the integrals of (mu + eps) and beta^2.

    `drift_integral` is int_0^T (mu + eps) dt -- not the log-K drift, whose -beta^2/2 Itô term
    cancels in the mean -- and `beta2_integral` is int_0^T beta^2 dt; the caller integrates.
    """
    drift_integral, beta2_integral, K0 = (
        v if isinstance(v, torch.Tensor) else torch.tensor(v, dtype=torch.float64)
        for v in (drift_integral, beta2_integral, K0)
    )
    mean = K0 * torch.exp(drift_integral)
    var = mean.square() * torch.expm1(beta2_integral)  # expm1: exact for the small integrals we see
    return mean, var


# --------------------------------------------------------------------------------------------
# Per-sample gradients
# --------------------------------------------------------------------------------------------


def _check_no_batch_stats(model: nn.Module) -> None:
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or not m.track_running_stats):
            raise ValueError(
                f"per-sample gradients are ill-defined for a model with BatchNorm using batch statistics "
                f"({name!r}): each sample's output depends on the whole batch"
            )


def _check_names(named: dict[str, torch.Tensor], names: list[str]) -> None:
    missing = [n for n in names if n not in named]
    if missing:
        raise ValueError(f"unknown parameter name(s) {missing}; the model has: {', '.join(named)}")


def per_sample_grads(
    model: nn.Module, params: list[str], x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn
) -> dict[str, torch.Tensor]:
    """Gradients of loss_fn on each sample alone, name -> (b, *param.shape), via torch.func.

    loss_fn(logits, y) is the batch-mean loss; it sees one sample at a time (batch of one).
    Dropout draws a different mask for each sample.
    """
    _check_no_batch_stats(model)
    named = dict(model.named_parameters())
    _check_names(named, params)
    wanted = {n: named[n].detach() for n in params}
    fixed = {n: p.detach() for n, p in named.items() if n not in wanted}
    fixed |= {n: b.detach() for n, b in model.named_buffers()}

    def sample_loss(w: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, (w, fixed), (xi.unsqueeze(0),))
        return loss_fn(logits, yi.unsqueeze(0))

    with torch.enable_grad():
        return vmap(grad(sample_loss), in_dims=(None, 0, 0), randomness="different")(wanted, x, y)


def _factorable(module: nn.Module) -> bool:
    """Layers whose per-sample gradient is sum_t delta_it x_it^T with x from the input alone."""
    if isinstance(module, nn.Linear):
        return True
    return (
        isinstance(module, nn.Conv2d)
        and module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)  # "same"/"valid": left to per_sample_grads
    )


def _layer_input(module: nn.Module, inp: torch.Tensor, b: int) -> torch.Tensor:
    """The layer's input as b x t x fan_in rows: Linear's extra dims, or a Conv2d's unfolded patches."""
    if isinstance(module, nn.Conv2d):
        patches = F.unfold(inp, module.kernel_size, module.dilation, module.padding, module.stride)
        return patches.transpose(1, 2)  # b x positions x (in * kh * kw), the order of layer_matrix
    return inp.reshape(b, -1, inp.shape[-1])  # b x t x in


def _layer_out_grad(module: nn.Module, g: torch.Tensor, b: int) -> torch.Tensor:
    if isinstance(module, nn.Conv2d):
        return g.reshape(b, g.shape[1], -1).transpose(1, 2)  # b x positions x out
    return g.reshape(b, -1, g.shape[-1])  # b x t x out


def _linear_factors(
    model: nn.Module, linears: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, torch.Tensor]]:
    """For each Linear or Conv2d: (delta, xin) with g_i = sum_t delta[i, t] xin[i, t]^T, and G = mean_i g_i.

    delta is the per-sample loss gradient w.r.t. the layer's output: b times the batch-mean loss's
    output gradient. Extra input dims, a convolution's positions (unfolded patches) and repeated
    calls of a shared layer become the t axis. Without batch statistics g_i is sample i's own
    gradient; with them (BatchNorm in training mode) it is sample i's share of the batch gradient,
    the statistics' dependence included, and still mean_i g_i = G exactly.
    """
    b = x.shape[0]
    inputs: dict[str, list[torch.Tensor]] = {n: [] for n in linears}
    out_grads: dict[str, dict[int, torch.Tensor]] = {n: {} for n in linears}

    def forward_hook(name: str):
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            if args[0].shape[0] != b:
                raise ValueError(f"layer {name!r} got a batch of {args[0].shape[0]}, expected dim 0 = {b}")
            call = len(inputs[name])
            inputs[name].append(_layer_input(module, args[0].detach(), b))

            def grad_hook(g: torch.Tensor) -> None:
                out_grads[name][call] = _layer_out_grad(module, g.detach(), b)

            out.register_hook(grad_hook)

        return hook

    handles = [m.register_forward_hook(forward_hook(n)) for n, m in linears.items()]
    try:
        with torch.enable_grad():
            loss = loss_fn(model(x), y)
            weights = [m.weight for m in linears.values()]
            grads = torch.autograd.grad(loss, weights)
    finally:
        for h in handles:
            h.remove()
    factors = {}
    for n in linears:
        calls = range(len(inputs[n]))
        delta = b * torch.cat([out_grads[n][k] for k in calls], dim=1)
        factors[n] = (delta, torch.cat(inputs[n], dim=1))
    G = {n: g.reshape(g.shape[0], -1) for n, g in zip(linears, grads, strict=True)}
    return factors, G


# --------------------------------------------------------------------------------------------
# The terms
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Update:
    """What SGD applies besides lr * g_hat: W <- W - lr (scale g_hat + noise + wd W)."""

    lr: float
    scale: float = 1.0
    weight_decay: float = 0.0
    noise_var: float = 0.0
    fpc: float = 1.0  # (N - b)/(N - 1) without replacement, else 1


def _terms(
    sigma: torch.Tensor,
    proj: torch.Tensor,
    q: torch.Tensor,
    drift_proj: torch.Tensor,
    drift_q: torch.Tensor,
    grad_sq: torch.Tensor | float,
    noise_q: torch.Tensor | float,
    up: _Update,
) -> LayerTerms:
    """LayerTerms for the update `up` from the projections of the gradient of sigma (d sigma / dW, for a matrix
    u1 v1^T): <g_i, d sigma/dW> (proj, b), Q(g_i - G) (q, b), <drift, d sigma/dW>, Q(drift), |d sigma/dW|^2 and
    E[Q(z)] for z with i.i.d. unit-variance entries (the noise's share; unused without injected noise)."""
    b, lr = proj.shape[0], up.lr
    sampling = up.scale**2 * up.fpc / b  # Cov[scale * g_hat] = scale^2 * fpc * Sigma / b
    mu = -lr * drift_proj
    mu_var = lr**2 * sampling * proj.var(correction=1)  # the sampling variance of this batch's mu
    # G here is the batch mean, so Q(drift) carries the noise's curvature too: E[Q(a g_hat)] =
    # Q(a G) + sampling tr(H Sigma), tr(H Sigma) estimated without bias by sum_i Q(g_i - g_hat)/(b - 1).
    # Subtracting it leaves an unbiased estimate of lr^2/2 Q(a G + wd W) (eps is the noise's share).
    disc = lr**2 / 2 * (drift_q - sampling * q.sum() / (b - 1))
    return LayerTerms(
        sigma=sigma,
        mu=mu,
        beta2=mu_var + lr**2 * up.noise_var * grad_sq,
        eps=lr**2 / 2 * (sampling * q.mean() + up.noise_var * noise_q),
        disc=disc,
        log_disc=disc / sigma - (mu.square() - mu_var) / (2 * sigma.square()),  # E[mu_hat^2] = mu^2 + mu_var
    )


def _drift(W: torch.Tensor, G: torch.Tensor, up: _Update) -> torch.Tensor:
    return up.scale * G + up.weight_decay * W if up.weight_decay else up.scale * G


def _matrix_parts(
    W: torch.Tensor, G: torch.Tensor, sp: _Spectrum, proj: torch.Tensor, q: torch.Tensor, up: _Update
) -> LayerTerms:
    """LayerTerms of a matrix layer from u1^T g_i v1 (b) and Q(g_i - G) (b); d sigma/dW = u1 v1^T has norm 1."""
    drift = _drift(W, G, up)
    noise_q = _trace(sp) if up.noise_var else 0.0
    return _terms(sp.s1, proj, q, sp.u1 @ drift @ sp.v1, _quad_of(sp, drift), 1.0, noise_q, up)


def _linear_terms(W: torch.Tensor, G: torch.Tensor, delta: torch.Tensor, xin: torch.Tensor, up: _Update) -> LayerTerms:
    # Algebra: g_i = sum_t d_it x_it^T, so Q's inputs are products of projections of the factors
    # and no b x m x n tensor is formed:
    #   u1^T g_i v1 = sum_t (u1.d_it)(x_it.v1)
    #   (g_i - G) v1 = sum_t d_it (x_it.v1) - G v1,  (g_i - G)^T u1 = sum_t x_it (u1.d_it) - G^T u1
    sp = _spectrum(W)
    du1, xv1 = delta @ sp.u1, xin @ sp.v1  # b x t
    proj = (du1 * xv1).sum(dim=1)  # b: u1^T g_i v1
    Ev1 = torch.einsum("btm,bt->bm", delta, xv1) - G @ sp.v1  # b x m: (g_i - G) v1
    Etu1 = torch.einsum("btn,bt->bn", xin, du1) - sp.u1 @ G  # b x n: (g_i - G)^T u1
    return _matrix_parts(W, G, sp, proj, _quad(sp, Ev1, Etu1), up)


def _matrix_terms(W: torch.Tensor, g: torch.Tensor, up: _Update) -> LayerTerms:
    """Terms from explicit per-sample gradient matrices g (b x m x n)."""
    G = g.mean(dim=0)
    sp = _spectrum(W)
    proj = torch.einsum("m,bmn,n->b", sp.u1, g, sp.v1)  # b: u1^T g_i v1
    return _matrix_parts(W, G, sp, proj, _quad_of(sp, g - G), up)


def _operator_terms(
    W: torch.Tensor,
    geom: ConvGeometry,
    G: torch.Tensor,
    factors: tuple[torch.Tensor, torch.Tensor],
    up: _Update,
    state: OperatorState | None,
    name: str,
) -> LayerTerms:
    """A Conv2d's terms taken of its operator on images (lipbench.torch.sde_conv)."""
    drift = _drift(W.reshape(G.shape), G, up)
    parts = operator_parts(W, geom, G, *factors, drift, noise=bool(up.noise_var), state=state, name=name)
    return _terms(parts.sigma, parts.proj, parts.q, parts.drift_proj, parts.drift_q, parts.grad_sq, parts.noise_q, up)


BatchStats = Literal["error", "contributions"]


def measure_sde_terms(
    model: nn.Module,
    layer_names: list[str],
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    lr: float,
    *,
    batch_stats: BatchStats = "error",
    weight_decay: float = 0.0,
    gradient_scale: float = 1.0,
    gradient_noise_var: float = 0.0,
    population: int | None = None,
    operators: dict[str, ConvGeometry] | None = None,
    operator_state: OperatorState | None = None,
) -> SDETerms:
    """mu, beta^2, eps (and the discrete term disc) of the SDE model for the named layer weights on (x, y).

    b = x.shape[0] plays both roles: the samples the moments are estimated from and the SGD
    batch size in the 1/b of beta^2 and eps. loss_fn must be the batch-mean loss; y may be class
    indices or soft targets (mixup). nn.Linear and nn.Conv2d weights use the closed form
    g_i = sum_t delta_it x_it^T (a convolution's t runs over its unfolded positions); other layers
    use `per_sample_grads` and their `layer_matrix`. Parameter .grad fields are left untouched.

    With BatchNorm using batch statistics per-sample gradients do not exist: `batch_stats="error"`
    raises; `"contributions"` measures every layer with the closed form on one forward pass of the
    whole batch, g_i being sample i's share of the batch gradient (see `_linear_factors`): exact
    per-sample gradients for layers after the last BatchNorm, and for the layers before it the
    spread of the shares stands in for the gradient noise (mean_i g_i = G still holds exactly).

    The update is W <- W - lr (gradient_scale * g_hat + noise + weight_decay * W), noise with
    i.i.d. entries of variance gradient_noise_var; `population` = N when batches are drawn
    without replacement from N samples (sampling noise times (N - b)/(N - 1)).

    `operators` maps a Conv2d's weight name (or its module name, as `conv_geometries` gives them) to the
    layer's geometry: that layer is measured as its operator on images (lipbench.torch.sde_conv), the others as
    their (reshaped) weight matrix. `operator_state`, kept by the caller across records, carries each operator's
    last v (the warm start of its Lanczos iteration) and the generator of the noise-trace probes.
    """
    b = x.shape[0]
    if b < 2:
        raise ValueError(f"x must hold at least 2 samples for the gradient variance, not {b}")
    if batch_stats not in ("error", "contributions"):
        raise ValueError(f"batch_stats must be 'error' or 'contributions', not {batch_stats!r}")
    if population is not None and population < b:
        raise ValueError(f"population ({population}) must be at least the batch size ({b})")
    if batch_stats == "error":
        _check_no_batch_stats(model)
    fpc = 1.0 if population is None or population == 1 else (population - b) / (population - 1)
    up = _Update(lr, gradient_scale, weight_decay, gradient_noise_var, fpc)
    named = dict(model.named_parameters())
    _check_names(named, layer_names)
    linears: dict[str, nn.Module] = {}
    for n in layer_names:
        prefix, _, attr = n.rpartition(".")
        module = model.get_submodule(prefix)
        if _factorable(module) and attr == "weight":
            linears[n] = module
    geoms = {}
    for n in layer_names:
        geom = (operators or {}).get(n) or (operators or {}).get(n.rpartition(".")[0])
        if geom is not None:
            if n not in linears or not isinstance(linears[n], nn.Conv2d):
                raise ValueError(f"operators[{n!r}]: only the weight of a Conv2d can be measured as an operator")
            geoms[n] = geom
    others = [n for n in layer_names if n not in linears]
    if others and batch_stats == "contributions":
        raise ValueError(f"batch_stats='contributions' needs Linear or Conv2d weights; {others} are neither")

    terms: dict[str, LayerTerms] = {}
    if linears:
        factors, G = _linear_factors(model, linears, x, y, loss_fn)
        for n in linears:
            W = named[n].detach()
            if n in geoms:
                terms[n] = _operator_terms(W, geoms[n], G[n], factors[n], up, operator_state, n)
            else:
                terms[n] = _linear_terms(layer_matrix(W), G[n], *factors[n], up)
    if others:
        grads = per_sample_grads(model, others, x, y, loss_fn)
        for n in others:
            g = grads[n].reshape(b, named[n].shape[0], -1)  # b x out x (in*kh*kw)
            terms[n] = _matrix_terms(layer_matrix(named[n].detach()), g, up)

    layers = [terms[n] for n in layer_names]
    sig = torch.stack([t.sigma for t in layers])
    return SDETerms(
        layers=layers,
        mu=(torch.stack([t.mu for t in layers]) / sig).sum(),
        beta2=(torch.stack([t.beta2 for t in layers]) / sig.square()).sum(),
        eps=(torch.stack([t.eps for t in layers]) / sig).sum(),
        disc=torch.stack([t.log_disc for t in layers]).sum(),
    )
