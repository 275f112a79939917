"""The SDE terms of PAPER.md §2: drift mu, diffusion beta^2 and noise-curvature eps per layer.

For one layer with SVD W = sum_j s_j u_j v_j^T and per-sample gradients g_i (G = mean_i g_i):

    mu    = -lr * u1^T G v1
    beta2 = lr^2 * Var_i(u1^T g_i v1) / b          (unbiased variance over the b samples)
    eps   = lr^2 / (2b) * mean_i Q(g_i - G)

Q(E) = d^2/dt^2 sigma_max(W + tE) at t = 0, the full second directional derivative (second-order
perturbation theory of the symmetric dilation [[0, W], [W^T, 0]]), so PAPER.md's formula needs no
extra factor. Everything here stays on the weights' device: no host syncs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from lipbench.lipschitz import layer_matrix

__all__ = [
    "LayerTerms",
    "SDETerms",
    "hessian_quadratic_form",
    "layer_matrix",
    "measure_sde_terms",
    "per_sample_grads",
    "predicted_moments",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------------------------
# The operator-norm Hessian quadratic form
# --------------------------------------------------------------------------------------------


def _q_from_projections(s: torch.Tensor, a: torch.Tensor, c: torch.Tensor, null_sq: torch.Tensor) -> torch.Tensor:
    """Q from a_j = u_j^T E v1, c_j = u1^T E v_j (..., r) and the null-space energy (...)."""
    s1, sj = s[0], s[1:]
    aj, cj = a[..., 1:], c[..., 1:]
    spectral = (s1 * (aj.square() + cj.square()) + 2 * sj * aj * cj) / (s1.square() - sj.square())
    return spectral.sum(dim=-1) + null_sq / s1


def _null_energy(y: torch.Tensor, basis: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """||(I - B B^T) y||^2 for y (..., d), B (d, r) with coords = y @ B, or 0 when B is square."""
    if basis.shape[0] == basis.shape[1]:
        return y.new_zeros(y.shape[:-1])
    return (y - coords @ basis.T).square().sum(dim=-1)  # project explicitly: no cancellation


def _quad_form(U: torch.Tensor, s: torch.Tensor, Vh: torch.Tensor, E: torch.Tensor) -> torch.Tensor:
    """Q(E) for E (..., m, n) given the thin SVD U (m x r), s (r), Vh (r x n) of W."""
    u1, v1, V = U[:, 0], Vh[0], Vh.T
    Ev1 = E @ v1  # (..., m)
    Etu1 = u1 @ E  # (..., n) = E^T u1
    a, c = Ev1 @ U, Etu1 @ V  # (..., r)
    return _q_from_projections(s, a, c, _null_energy(Ev1, U, a) + _null_energy(Etu1, V, c))


def hessian_quadratic_form(W: torch.Tensor, E: torch.Tensor) -> torch.Tensor:
    """Q(E) = E^T H E for H the Hessian of sigma_max at W (m x n), from a full SVD of W.

    E is one perturbation (m x n) -> 0-dim tensor, or a batch (B, m, n) -> (B,). Works in W's
    dtype; assumes a simple top singular value (s1 > s2), else Q is unbounded.
    """
    if W.ndim != 2 or E.ndim not in (2, 3) or E.shape[-2:] != W.shape:
        raise ValueError(f"E must have shape {tuple(W.shape)} or (B, *{tuple(W.shape)}), not {tuple(E.shape)}")
    return _quad_form(*torch.linalg.svd(W, full_matrices=False), E)


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


@dataclass
class SDETerms:
    """Per-layer terms and the network terms of d log K (PAPER.md §2, network level)."""

    layers: list[LayerTerms]
    mu: torch.Tensor  # sum_l mu_l / sigma_l
    beta2: torch.Tensor  # sum_l beta_l^2 / sigma_l^2
    eps: torch.Tensor  # sum_l eps_l / sigma_l

    @property
    def drift(self) -> torch.Tensor:
        """The drift of log K: mu + eps - beta^2 / 2."""
        return self.mu + self.eps - self.beta2 / 2

    def as_dict(self) -> dict[str, torch.Tensor]:
        """Flat record keys: sde_mu, sde_beta2, sde_eps, sde_drift and sde_{mu,beta2,eps}_{l}."""
        out = {"sde_mu": self.mu, "sde_beta2": self.beta2, "sde_eps": self.eps, "sde_drift": self.drift}
        for i, t in enumerate(self.layers):
            out |= {f"sde_mu_{i}": t.mu, f"sde_beta2_{i}": t.beta2, f"sde_eps_{i}": t.eps}
        return out


def predicted_moments(
    K0: float | torch.Tensor, drift_integral: torch.Tensor | float, beta2_integral: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    """E[K_T] and Var[K_T] of PAPER.md §2 from the integrals of (mu + eps) and beta^2.

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


def _linear_factors(
    model: nn.Module, linears: dict[str, nn.Linear], x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, torch.Tensor]]:
    """For each Linear: (delta, xin) with g_i = sum_t delta[i, t] xin[i, t]^T, and G = mean_i g_i.

    delta is the per-sample loss gradient w.r.t. the layer's output: b times the batch-mean loss's
    output gradient. Extra input dims (and repeated calls of a shared layer) become the t axis.
    """
    b = x.shape[0]
    inputs: dict[str, list[torch.Tensor]] = {n: [] for n in linears}
    out_grads: dict[str, dict[int, torch.Tensor]] = {n: {} for n in linears}

    def forward_hook(name: str):
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            if args[0].shape[0] != b:
                raise ValueError(f"layer {name!r} got a batch of {args[0].shape[0]}, expected dim 0 = {b}")
            call = len(inputs[name])
            inputs[name].append(args[0].detach().reshape(b, -1, args[0].shape[-1]))  # b x t x in

            def grad_hook(g: torch.Tensor) -> None:
                out_grads[name][call] = g.detach().reshape(b, -1, g.shape[-1])  # b x t x out

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
    return factors, dict(zip(linears, grads, strict=True))


# --------------------------------------------------------------------------------------------
# The terms
# --------------------------------------------------------------------------------------------


def _linear_terms(W: torch.Tensor, G: torch.Tensor, delta: torch.Tensor, xin: torch.Tensor, lr: float) -> LayerTerms:
    # Algebra: g_i = sum_t d_it x_it^T, so every projection is a product of projections of the
    # factors and no b x m x n tensor is formed:
    #   u1^T g_i v1 = sum_t (u1.d_it)(x_it.v1)
    #   a_ij = u_j^T (g_i - G) v1 = sum_t (u_j.d_it)(x_it.v1) - u_j^T G v1
    #   c_ij = u1^T (g_i - G) v_j = sum_t (u1.d_it)(x_it.v_j) - u1^T G v_j
    #   (g_i - G) v1 = sum_t d_it (x_it.v1) - G v1,  (g_i - G)^T u1 = sum_t x_it (u1.d_it) - G^T u1
    # and the null-space terms project the last two off U and V.
    b = delta.shape[0]
    U, s, Vh = torch.linalg.svd(W, full_matrices=False)
    u1, v1, V = U[:, 0], Vh[0], Vh.T
    du1, xv1 = delta @ u1, xin @ v1  # b x t
    proj = (du1 * xv1).sum(dim=1)  # b: u1^T g_i v1
    Gv1, Gtu1 = G @ v1, u1 @ G  # m, n
    Ev1 = torch.einsum("btm,bt->bm", delta, xv1) - Gv1  # b x m: (g_i - G) v1
    Etu1 = torch.einsum("btn,bt->bn", xin, du1) - Gtu1  # b x n: (g_i - G)^T u1
    a, c = Ev1 @ U, Etu1 @ V  # b x r
    q = _q_from_projections(s, a, c, _null_energy(Ev1, U, a) + _null_energy(Etu1, V, c))
    return LayerTerms(
        sigma=s[0],
        mu=-lr * (u1 @ Gv1),
        beta2=lr**2 * proj.var(correction=1) / b,
        eps=lr**2 / (2 * b) * q.mean(),
    )


def _matrix_terms(W: torch.Tensor, g: torch.Tensor, lr: float) -> LayerTerms:
    """Terms from explicit per-sample gradient matrices g (b x m x n)."""
    b = g.shape[0]
    G = g.mean(dim=0)
    U, s, Vh = torch.linalg.svd(W, full_matrices=False)
    proj = torch.einsum("m,bmn,n->b", U[:, 0], g, Vh[0])  # b: u1^T g_i v1
    q = _quad_form(U, s, Vh, g - G)
    return LayerTerms(
        sigma=s[0],
        mu=-lr * (U[:, 0] @ G @ Vh[0]),
        beta2=lr**2 * proj.var(correction=1) / b,
        eps=lr**2 / (2 * b) * q.mean(),
    )


def measure_sde_terms(
    model: nn.Module, layer_names: list[str], x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn, lr: float
) -> SDETerms:
    """mu, beta^2, eps of PAPER.md §2 for the named layer weights on the batch (x, y).

    b = x.shape[0] plays both roles: the samples the moments are estimated from and the SGD
    batch size in the 1/b of beta^2 and eps. loss_fn must be the batch-mean loss. nn.Linear
    weights use the closed form g_i = delta_i x_i^T; other layers (convolutions) use
    `per_sample_grads` and their `layer_matrix`. Parameter .grad fields are left untouched.
    """
    b = x.shape[0]
    if b < 2:
        raise ValueError(f"x must hold at least 2 samples for the gradient variance, not {b}")
    _check_no_batch_stats(model)
    named = dict(model.named_parameters())
    _check_names(named, layer_names)
    linears: dict[str, nn.Linear] = {}
    for n in layer_names:
        prefix, _, attr = n.rpartition(".")
        module = model.get_submodule(prefix)
        if isinstance(module, nn.Linear) and attr == "weight":
            linears[n] = module
    others = [n for n in layer_names if n not in linears]

    terms: dict[str, LayerTerms] = {}
    if linears:
        factors, G = _linear_factors(model, linears, x, y, loss_fn)
        for n in linears:
            terms[n] = _linear_terms(named[n].detach(), G[n], *factors[n], lr)
    if others:
        grads = per_sample_grads(model, others, x, y, loss_fn)
        for n in others:
            g = grads[n].reshape(b, named[n].shape[0], -1)  # b x out x (in*kh*kw)
            terms[n] = _matrix_terms(layer_matrix(named[n].detach()), g, lr)

    layers = [terms[n] for n in layer_names]
    sig = torch.stack([t.sigma for t in layers])
    return SDETerms(
        layers=layers,
        mu=(torch.stack([t.mu for t in layers]) / sig).sum(),
        beta2=(torch.stack([t.beta2 for t in layers]) / sig.square()).sum(),
        eps=(torch.stack([t.eps for t in layers]) / sig).sum(),
    )
