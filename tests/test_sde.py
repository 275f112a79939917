"""lipbench.torch.sde against autograd and brute-force loops (float64, CPU; one CUDA check if present)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from builders import float64_mlp, weight_names
from torch import nn

from lipbench.torch.sde import (
    SDETerms,
    hessian_quadratic_form,
    layer_matrix,
    measure_sde_terms,
    per_sample_grads,
    predicted_moments,
)

DT = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _autograd_second_derivative(W: torch.Tensor, E: torch.Tensor) -> torch.Tensor:
    """d^2/dt^2 sigma_max(W + tE) at t = 0 by double backward through a scalar t."""
    t = torch.zeros((), dtype=W.dtype, requires_grad=True)
    s = torch.linalg.matrix_norm(W + t * E, ord=2)
    (d1,) = torch.autograd.grad(s, t, create_graph=True)
    (d2,) = torch.autograd.grad(d1, t)
    return d2


# --------------------------------------------------------------------------------------------
# Q(E)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(7, 4), (4, 7), (5, 5)], ids=["tall", "wide", "square"])
def test_quadratic_form_is_the_second_directional_derivative(shape):
    # docs/science.md's Q equals d^2/dt^2 sigma_max exactly (factor 1), not half of it.
    g = _gen(1)
    for _ in range(3):
        W = torch.randn(shape, generator=g, dtype=DT)
        for _ in range(4):
            E = torch.randn(shape, generator=g, dtype=DT)
            q, ref = hessian_quadratic_form(W, E), _autograd_second_derivative(W, E)
            assert q.ndim == 0
            assert abs(q - ref) <= 1e-6 * abs(ref)


@pytest.mark.parametrize("shape", [(7, 4), (4, 7), (5, 5), (1, 6), (6, 1)])
def test_quadratic_form_nonnegative_and_batched_equals_looped(shape):
    g = _gen(2)
    W = torch.randn(shape, generator=g, dtype=DT)
    E = torch.randn((64, *shape), generator=g, dtype=DT)
    batched = hessian_quadratic_form(W, E)
    looped = torch.stack([hessian_quadratic_form(W, e) for e in E])
    assert batched.shape == (64,)
    torch.testing.assert_close(batched, looped, rtol=1e-12, atol=1e-14)
    assert (batched >= -1e-12).all()


def test_quadratic_form_rank_one_direction_along_top_pair_is_zero():
    # sigma_max is linear along E = u1 v1^T, so the curvature vanishes there.
    W = torch.randn(5, 3, generator=_gen(3), dtype=DT)
    U, _, Vh = torch.linalg.svd(W)
    q = hessian_quadratic_form(W, torch.outer(U[:, 0], Vh[0]))
    assert abs(q) < 1e-12


def test_quadratic_form_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="E must have shape"):
        hessian_quadratic_form(torch.randn(3, 4), torch.randn(4, 3))


@pytest.mark.parametrize("shape", [(96, 160), (160, 96)], ids=["wide", "tall"])
def test_quadratic_form_in_float32_is_close_to_float64(shape):
    # The probe runs in the weights' float32: Q from a float32 Gram eigendecomposition must stay
    # within 1e-3 of the float64 value for a layer-sized matrix (relative gap of s1^2 - s2^2 about 5 %, init-like).
    g = _gen(4)
    W = torch.randn(shape, generator=g, dtype=DT) / shape[1] ** 0.5
    E = torch.randn((16, *shape), generator=g, dtype=DT)
    ref = hessian_quadratic_form(W, E)
    got = hessian_quadratic_form(W.float(), E.float()).double()
    assert ((got - ref).abs() / ref).max() < 1e-3
    s = torch.linalg.svdvals(W)
    assert (s[0] ** 2 - s[1] ** 2) / s[0] ** 2 > 0.01  # the check is not on a degenerate top pair


# --------------------------------------------------------------------------------------------
# Brute force: a python loop of backward passes, one sample at a time
# --------------------------------------------------------------------------------------------


def _loop_grads(model: nn.Module, names: list[str], x: torch.Tensor, y: torch.Tensor) -> dict:
    params = dict(model.named_parameters())
    out: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for i in range(x.shape[0]):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        for n in names:
            out[n].append(params[n].grad.clone())
    model.zero_grad()
    return {n: torch.stack(v) for n, v in out.items()}


def _brute_force_terms(model, names, x, y, lr):
    b = x.shape[0]
    grads = _loop_grads(model, names, x, y)
    params = dict(model.named_parameters())
    result = []
    for n in names:
        W = layer_matrix(params[n].detach())
        gs = [layer_matrix(g) for g in grads[n]]
        G = sum(gs) / b
        U, s, Vh = torch.linalg.svd(W)
        u1, v1 = U[:, 0], Vh[0]
        proj = [u1 @ g @ v1 for g in gs]
        mean = sum(proj) / b
        var = sum((p - mean) ** 2 for p in proj) / (b - 1)  # explicit unbiased variance
        q = [hessian_quadratic_form(W, g - G) for g in gs]
        result.append(
            {
                "sigma": s[0],
                "mu": -lr * (u1 @ G @ v1),
                "beta2": lr**2 * var / b,
                "eps": lr**2 / (2 * b) * sum(q) / b,
            }
        )
    return result


def _assert_terms_match(terms: SDETerms, ref: list[dict], rtol: float = 1e-5) -> None:
    for got, want in zip(terms.layers, ref, strict=True):
        for key in ("sigma", "mu", "beta2", "eps"):
            torch.testing.assert_close(getattr(got, key), want[key], rtol=rtol, atol=1e-14, msg=key)
    sig = torch.stack([r["sigma"] for r in ref])
    net_mu = (torch.stack([r["mu"] for r in ref]) / sig).sum()
    net_beta2 = (torch.stack([r["beta2"] for r in ref]) / sig**2).sum()
    net_eps = (torch.stack([r["eps"] for r in ref]) / sig).sum()
    torch.testing.assert_close(terms.mu, net_mu, rtol=rtol, atol=1e-14)
    torch.testing.assert_close(terms.beta2, net_beta2, rtol=rtol, atol=1e-14)
    torch.testing.assert_close(terms.eps, net_eps, rtol=rtol, atol=1e-14)


# widths (6,5,4,3): all wide; (3,7,7,2): tall 7x3, square 7x7, wide 2x7 -> both null spaces.
@pytest.mark.parametrize("widths", [(6, 5, 4, 3), (3, 7, 7, 2)])
def test_linear_closed_form_matches_brute_force(widths):
    model = float64_mlp(widths, seed=0)
    g = _gen(4)
    x = torch.randn(10, widths[0], generator=g, dtype=DT)
    y = torch.randint(0, widths[-1], (10,), generator=g)
    names = weight_names(model)
    lr = 0.05
    terms = measure_sde_terms(model, names, x, y, F.cross_entropy, lr)
    _assert_terms_match(terms, _brute_force_terms(model, names, x, y, lr))
    assert all(p.grad is None for p in model.parameters())  # .grad left untouched


class _SharedSeq(nn.Module):
    """A Linear applied on a (b, t, in) input and the same square Linear used twice."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 3)

    def forward(self, x):  # x: b x t x 4
        h = torch.relu(self.a(torch.relu(self.a(x))))
        return self.b(h.mean(dim=1))


def test_linear_with_sequence_input_and_weight_sharing_matches_brute_force():
    torch.manual_seed(5)
    model = _SharedSeq().to(DT)
    g = _gen(5)
    x = torch.randn(7, 3, 4, generator=g, dtype=DT)
    y = torch.randint(0, 3, (7,), generator=g)
    names = ["a.weight", "b.weight"]
    terms = measure_sde_terms(model, names, x, y, F.cross_entropy, 0.1)
    _assert_terms_match(terms, _brute_force_terms(model, names, x, y, 0.1))


# Conv2d(1,2,3): matrix 2 x 9 (wide); Conv2d(1,12,2): 12 x 4 (tall).
@pytest.mark.parametrize(("out_ch", "k"), [(2, 3), (12, 2)])
def test_conv_per_sample_path_matches_brute_force(out_ch, k):
    torch.manual_seed(6)
    side = 5
    flat = out_ch * (side - k + 1) ** 2
    model = nn.Sequential(nn.Conv2d(1, out_ch, k), nn.ReLU(), nn.Flatten(), nn.Linear(flat, 3)).to(DT)
    g = _gen(6)
    x = torch.randn(8, 1, side, side, generator=g, dtype=DT)
    y = torch.randint(0, 3, (8,), generator=g)
    names = ["0.weight", "3.weight"]
    terms = measure_sde_terms(model, names, x, y, F.cross_entropy, 0.05)
    _assert_terms_match(terms, _brute_force_terms(model, names, x, y, 0.05))


def test_per_sample_grads_match_loop():
    model = float64_mlp((6, 5, 4, 3), seed=7)
    g = _gen(7)
    x = torch.randn(5, 6, generator=g, dtype=DT)
    y = torch.randint(0, 3, (5,), generator=g)
    names = ["0.weight", "0.bias", "4.weight"]
    got = per_sample_grads(model, names, x, y, F.cross_entropy)
    want = _loop_grads(model, names, x, y)
    for n in names:
        assert got[n].shape == (5, *dict(model.named_parameters())[n].shape)
        torch.testing.assert_close(got[n], want[n], rtol=1e-10, atol=1e-12)


def test_batch_norm_and_bad_input_are_clear_errors():
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    with pytest.raises(ValueError, match=r"per-sample gradients are ill-defined.*BatchNorm"):
        per_sample_grads(model, ["0.weight"], x, y, F.cross_entropy)
    with pytest.raises(ValueError, match="BatchNorm"):
        measure_sde_terms(model, ["0.weight", "3.weight"], x, y, F.cross_entropy, 0.1)
    mlp = float64_mlp((4, 5, 3), seed=0).float()
    with pytest.raises(ValueError, match="unknown parameter"):
        measure_sde_terms(mlp, ["0.wieght"], x, y, F.cross_entropy, 0.1)
    with pytest.raises(ValueError, match="at least 2 samples"):
        measure_sde_terms(mlp, ["0.weight"], x[:1], y[:1], F.cross_entropy, 0.1)


# --------------------------------------------------------------------------------------------
# The terms against the realised SGD step
# --------------------------------------------------------------------------------------------


def test_mu_plus_eps_predict_the_expected_sgd_step_exactly_enumerated():
    """E over mini-batches of sigma(W - lr g_hat) - sigma(W) against mu + eps.

    The expectation is exact, not sampled: all N^b ordered mini-batches drawn with replacement
    (then Cov[g_hat] = Sigma/b holds exactly, Sigma the population covariance). Taylor to second
    order, E[dsigma] = mu + eps_b + lr^2/2 Q(G) + O(lr^3): the beta noise has zero mean, and
    lr^2/2 Q(G) is the curvature of the deterministic step, a discretisation term the SDE drops.
    measure_sde_terms on all N samples estimates eps with 1/N; eps_b = eps_N * N/b.
    Tolerance: the remainder is O(lr^3); at lr = 1e-2 it measured <= 1.1% of eps_b (and shrank
    10x with lr), so 5% of eps_b has margin while leaving eps out errs by ~100% of eps_b.
    Deterministic (float64, fixed seeds): not flaky.
    """
    model = float64_mlp((6, 5, 4, 3), seed=0)
    N, b, lr = 6, 3, 1e-2
    g = _gen(0)
    x = torch.randn(N, 6, generator=g, dtype=DT)
    y = torch.randint(0, 3, (N,), generator=g)
    names = weight_names(model)
    terms = measure_sde_terms(model, names, x, y, F.cross_entropy, lr)
    params = dict(model.named_parameters())
    W = {n: params[n].detach().clone() for n in names}
    sigma = {n: torch.linalg.matrix_norm(W[n], ord=2) for n in names}

    def step_change(idx: list[int]) -> torch.Tensor:
        model.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()  # the SGD step's g_hat
        return torch.stack([torch.linalg.matrix_norm(W[n] - lr * params[n].grad, ord=2) - sigma[n] for n in names])

    changes = torch.stack([step_change(list(idx)) for idx in itertools.product(range(N), repeat=b)])
    full_batch = step_change(list(range(N)))  # b = N without replacement: no noise at all
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    for layer, n in enumerate(names):
        t = terms.layers[layer]
        curvature_G = lr**2 / 2 * hessian_quadratic_form(W[n], params[n].grad)
        # Deterministic part: the full-batch step is mu + lr^2/2 Q(G) + O(lr^3).
        assert abs(full_batch[layer] - (t.mu + curvature_G)) <= 0.05 * curvature_G
        eps_b = t.eps * N / b
        expected = changes[:, layer].mean()
        assert abs(expected - (t.mu + eps_b + curvature_G)) <= 0.05 * eps_b
        assert abs(expected - (t.mu + curvature_G)) >= 0.5 * eps_b  # eps is resolved, not noise
        # Diffusion: Var over batches = lr^2 Var_pop(u1^T g_i v1)/b; beta2 used the unbiased
        # variance over N and 1/N: Var = beta2_N * (N - 1)/b, up to O(lr^3).
        torch.testing.assert_close(changes[:, layer].var(correction=0), t.beta2 * (N - 1) / b, rtol=0.05, atol=0)


# --------------------------------------------------------------------------------------------
# Records and moments
# --------------------------------------------------------------------------------------------


def test_as_dict_keys_and_drift():
    model = float64_mlp((6, 5, 4, 3), seed=0)
    x, y = torch.randn(8, 6, dtype=DT), torch.randint(0, 3, (8,))
    terms = measure_sde_terms(model, weight_names(model), x, y, F.cross_entropy, 0.1)
    d = terms.as_dict()
    assert set(d) == {"sde_mu", "sde_beta2", "sde_eps", "sde_drift", "sde_disc"} | {
        f"sde_{k}_{i}" for k in ("mu", "beta2", "eps", "disc") for i in range(3)
    }
    assert all(v.ndim == 0 for v in d.values())
    torch.testing.assert_close(d["sde_drift"], terms.mu + terms.eps - terms.beta2 / 2)
    assert d["sde_eps"] >= 0 and d["sde_beta2"] >= 0


def test_predicted_moments():
    mean, var = predicted_moments(2.0, 0.3, 0.04)
    torch.testing.assert_close(mean, torch.tensor(2.0 * torch.e**0.3, dtype=DT))
    torch.testing.assert_close(var, mean**2 * (torch.e**0.04 - 1))
    mean, var = predicted_moments(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.1]), torch.tensor([0.0, 0.2]))
    assert mean.shape == var.shape == (2,) and var[0] == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 3)
    ).to(DT)
    x, y = torch.randn(16, 1, 8, 8, dtype=DT), torch.randint(0, 3, (16,))
    names = ["0.weight", "3.weight", "5.weight"]
    cpu = measure_sde_terms(model, names, x, y, F.cross_entropy, 0.1).as_dict()
    gpu = measure_sde_terms(model.cuda(), names, x.cuda(), y.cuda(), F.cross_entropy, 0.1).as_dict()
    for k, v in cpu.items():
        assert gpu[k].device.type == "cuda"
        torch.testing.assert_close(gpu[k].cpu(), v, rtol=1e-8, atol=1e-14)
