"""The SDE terms of a conv layer taken of its operator on images, against the dense unrolled operator (float64).

The oracle: sigma_max of `dense(W)` by torch.linalg, its kernel gradient and kernel-space Hessian by (double)
autograd, and the terms' formulas (docs/science.md) written out from those. Both of lipbench's ways of solving
Q are checked: the exact eigendecomposition (small inputs) and conjugate gradients on the operator (forced here
by DENSE_MAX = 0).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.functional import hessian, jacobian

from lipbench.torch import sde_conv
from lipbench.torch.conv_operator import ConvGeometry, conv_geometries, dense
from lipbench.torch.models import ConvNet
from lipbench.torch.sde import measure_sde_terms
from lipbench.torch.sde_conv import OperatorState, operator_parts

DT = torch.float64
MODES = ["eigh", "cg"]
GEOMETRIES = [  # (in, out, stride, map): the ConvNet's 3x3 kernels with padding 1, stride 1 and 2
    (2, 3, 1, 5),
    (2, 3, 2, 7),
    (3, 2, 2, 6),
    (1, 3, 1, 8),
    (4, 6, 2, 4),  # few positions, many channels (the ConvNet's last layer): the noise trace's P x P contraction
]


@pytest.fixture(params=MODES)
def mode(request, monkeypatch) -> str:
    if request.param == "cg":
        monkeypatch.setattr(sde_conv, "DENSE_MAX", 0)
    return request.param


def _sigma_of(shape: torch.Size, geom: ConvGeometry):
    return lambda w: torch.linalg.matrix_norm(dense(w.reshape(shape), geom), 2)


def _oracle(kernel: torch.Tensor, geom: ConvGeometry) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """sigma, its kernel gradient and its kernel-space Hessian, by autograd through torch.linalg."""
    f, w = _sigma_of(kernel.shape, geom), kernel.flatten()
    return f(w), jacobian(f, w), hessian(f, w, vectorize=True)


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


@pytest.mark.parametrize(("cin", "cout", "s", "n"), GEOMETRIES)
def test_operator_parts_match_the_dense_operator(cin, cout, s, n, mode) -> None:
    torch.manual_seed(n)
    conv = nn.Conv2d(cin, cout, 3, stride=s, padding=1).to(DT)
    geom = ConvGeometry.of(conv, (cin, n, n))
    W = conv.weight.detach()
    sigma, grad, H = _oracle(W, geom)
    t = geom.out_shape[1] * geom.out_shape[2]
    delta, xin = torch.randn(6, t, cout, dtype=DT), torch.randn(6, t, cin * 9, dtype=DT)
    g = torch.einsum("bto,btk->bok", delta, xin)
    G = g.mean(dim=0)
    drift = G + 0.1 * W.reshape(G.shape)
    parts = operator_parts(W, geom, G, delta, xin, drift, noise=mode == "eigh")
    dev = (g - G).flatten(1)
    want = {
        "sigma": sigma,
        "proj": g.flatten(1) @ grad,
        "q": torch.einsum("bi,ij,bj->b", dev, H, dev),
        "drift_proj": drift.flatten() @ grad,
        "drift_q": drift.flatten() @ H @ drift.flatten(),
        "grad_sq": grad.square().sum(),
    }
    if mode == "eigh":  # exact; the cg path estimates it (test below)
        want["noise_q"] = H.trace()
    for key, value in want.items():
        assert _rel(getattr(parts, key), value) < 1e-6, key


def test_the_cg_noise_trace_is_unbiased(monkeypatch) -> None:
    # Hutchinson's estimate: the mean over many records' probes converges on the exact trace.
    torch.manual_seed(1)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1).to(DT)
    geom = ConvGeometry.of(conv, (2, 7, 7))
    W = conv.weight.detach()
    trace = hessian(_sigma_of(W.shape, geom), W.flatten(), vectorize=True).trace()
    monkeypatch.setattr(sde_conv, "DENSE_MAX", 0)
    delta, xin, G = torch.zeros(2, 16, 3, dtype=DT), torch.zeros(2, 16, 18, dtype=DT), torch.zeros(3, 18, dtype=DT)
    state = OperatorState()
    draws = torch.stack(
        [operator_parts(W, geom, G, delta, xin, G, noise=True, state=state, name="w").noise_q for _ in range(60)]
    )
    stderr = draws.std() / len(draws) ** 0.5
    assert stderr < 0.05 * trace  # the test can tell a 20 % bias
    assert abs(draws.mean() - trace) < 4 * stderr
    assert draws.std() > 0  # fresh probes at every call with a state
    assert set(state.v) == {"w"} and state.v["w"].shape == geom.in_shape


class _TinyConvNet(nn.Module):
    """The ConvNet's layer kinds at toy size: conv 3x3 p1 s1, conv 3x3 p1 s2, optional batch norm, linear."""

    def __init__(self, batch_norm: bool = False):
        super().__init__()
        norm = [nn.BatchNorm2d(4, track_running_stats=False)] if batch_norm else []
        self.features = nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3, padding=1, stride=2), *norm, nn.Tanh()
        )
        self.head = nn.Linear(4 * 3 * 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


NAMES = ["features.0.weight", "features.2.weight", "head.weight"]


def _brute_force(model, x, y, lr, *, scale, wd, noise_var, population) -> tuple[list[dict], dict]:
    """Every term from per-sample gradients (a loop of backward passes) and each layer's dense operator."""
    params = dict(model.named_parameters())
    geoms = {f"{n}.weight": g for n, g in conv_geometries(model, tuple(x.shape[1:])).items()}
    b = x.shape[0]
    grads = {n: [] for n in NAMES}
    for i in range(b):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        for n in NAMES:
            grads[n].append(params[n].grad.flatten().clone())
    model.zero_grad()
    sampling = scale**2 * ((population - b) / (population - 1)) / b
    layers = []
    for n in NAMES:
        W = params[n].detach()
        if n in geoms:
            sigma, grad, H = _oracle(W, geoms[n])
        else:
            f = lambda w, shape=W.shape: torch.linalg.matrix_norm(w.reshape(shape), 2)  # noqa: E731
            sigma, grad, H = f(W.flatten()), jacobian(f, W.flatten()), hessian(f, W.flatten())
        g = torch.stack(grads[n])
        G = g.mean(dim=0)
        drift = scale * G + wd * W.flatten()
        proj = g @ grad
        q = torch.einsum("bi,ij,bj->b", g - G, H, g - G)
        mu, mu_var = -lr * drift @ grad, lr**2 * sampling * proj.var()
        disc = lr**2 / 2 * (drift @ H @ drift - sampling * q.sum() / (b - 1))
        layers.append(
            {
                "sigma": sigma,
                "mu": mu,
                "beta2": mu_var + lr**2 * noise_var * grad.square().sum(),
                "eps": lr**2 / 2 * (sampling * q.mean() + noise_var * H.trace()),
                "disc": disc,
                "log_disc": disc / sigma - (mu**2 - mu_var) / (2 * sigma**2),
            }
        )
    sig = torch.stack([t["sigma"] for t in layers])
    network = {
        "mu": (torch.stack([t["mu"] for t in layers]) / sig).sum(),
        "beta2": (torch.stack([t["beta2"] for t in layers]) / sig**2).sum(),
        "eps": (torch.stack([t["eps"] for t in layers]) / sig).sum(),
        "disc": torch.stack([t["log_disc"] for t in layers]).sum(),
    }
    return layers, network


def test_measure_sde_terms_on_the_operators_matches_brute_force(mode) -> None:
    torch.manual_seed(7)
    model = _TinyConvNet().to(DT)
    x, y = torch.randn(8, 2, 6, 6, dtype=DT), torch.randint(0, 3, (8,))
    settings = {"scale": 0.7, "wd": 0.01, "noise_var": 1e-3 if mode == "eigh" else 0.0, "population": 50}
    got = measure_sde_terms(
        model,
        NAMES,
        x,
        y,
        F.cross_entropy,
        0.05,
        gradient_scale=settings["scale"],
        weight_decay=settings["wd"],
        gradient_noise_var=settings["noise_var"],
        population=settings["population"],
        operators=conv_geometries(model, (2, 6, 6)),  # by module name; weight names work too
    )
    layers, network = _brute_force(model, x, y, 0.05, **settings)
    for t, want in zip(got.layers, layers, strict=True):
        for key, value in want.items():
            assert _rel(getattr(t, key), value) < 1e-6, key
    for key, value in network.items():
        assert _rel(getattr(got, key), value) < 1e-6, key
    # the operator, not the reshaped kernel: sigma differs from the matrix norm of the reshaped kernel
    reshaped = torch.linalg.matrix_norm(model.features[0].weight.detach().flatten(1), 2)
    assert abs(got.layers[0].sigma - reshaped) > 0.05 * reshaped


def test_batch_statistics_contributions_on_the_operators() -> None:
    # With batch norm the g_i are the batch gradient's shares; their mean is the batch gradient exactly, so mu
    # (and sigma) are checked against autograd of the whole batch and the dense operator.
    torch.manual_seed(8)
    model = _TinyConvNet(batch_norm=True).to(DT).train()
    x, y = torch.randn(8, 2, 6, 6, dtype=DT), torch.randint(0, 3, (8,))
    geoms = conv_geometries(model, (2, 6, 6))
    got = measure_sde_terms(model, NAMES, x, y, F.cross_entropy, 0.05, batch_stats="contributions", operators=geoms)
    batch_grads = torch.autograd.grad(
        F.cross_entropy(model(x), y), [model.features[0].weight, model.features[2].weight]
    )
    for t, (name, geom), G in zip(got.layers, geoms.items(), batch_grads, strict=False):
        W = model.get_submodule(name).weight.detach()
        sigma, grad, _ = _oracle(W, geom)
        assert _rel(t.sigma, sigma) < 1e-10 and _rel(t.mu, -0.05 * G.flatten() @ grad) < 1e-8
        assert torch.isfinite(torch.stack([t.beta2, t.eps, t.disc])).all() and t.eps > 0


def test_warm_start_state(monkeypatch) -> None:
    monkeypatch.setattr(sde_conv, "DENSE_MAX", 0)
    torch.manual_seed(9)
    model = _TinyConvNet().to(DT)
    x, y = torch.randn(8, 2, 6, 6, dtype=DT), torch.randint(0, 3, (8,))
    state, geoms = OperatorState(), conv_geometries(model, (2, 6, 6))
    first = measure_sde_terms(model, NAMES, x, y, F.cross_entropy, 0.05, operators=geoms, operator_state=state)
    assert set(state.v) == {"features.0.weight", "features.2.weight"}
    again = measure_sde_terms(model, NAMES, x, y, F.cross_entropy, 0.05, operators=geoms, operator_state=state)
    assert _rel(again.mu, first.mu) < 1e-10 and _rel(again.eps, first.eps) < 1e-8


def test_a_diverged_kernel_gives_nan_without_raising(mode) -> None:
    torch.manual_seed(9)
    model = _TinyConvNet().to(DT)
    x, y = torch.randn(8, 2, 6, 6, dtype=DT), torch.randint(0, 3, (8,))
    with torch.no_grad():
        model.features[2].weight[0, 0, 0, 0] = torch.nan
    geoms = conv_geometries(model, (2, 6, 6))
    broken = measure_sde_terms(
        model, NAMES, x, y, F.cross_entropy, 0.05, operators=geoms, gradient_noise_var=1e-3
    )  # does not raise
    assert broken.layers[1].sigma.isnan() and broken.eps.isnan()


def test_operators_on_a_linear_layer_is_a_clear_error() -> None:
    model = _TinyConvNet().to(DT)
    x, y = torch.randn(4, 2, 6, 6, dtype=DT), torch.randint(0, 3, (4,))
    geom = conv_geometries(model, (2, 6, 6))["features.0"]
    with pytest.raises(ValueError, match=r"operators\['head.weight'\]: only the weight of a Conv2d"):
        measure_sde_terms(model, NAMES, x, y, F.cross_entropy, 0.05, operators={"head.weight": geom})


def test_float32_terms_of_the_quick_convnet_match_float64(mode) -> None:
    # The probe runs in the weights' float32. The quick ConvNet's first layer at 1x8x8 has a nearly degenerate
    # top pair (sigma_2 / sigma_1 ~ 0.99997 at init), where float32 conjugate gradients were 2x off.
    torch.manual_seed(10)
    model = ConvNet((1, 8, 8), 10)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    names = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    geoms = conv_geometries(model, (1, 8, 8))
    got = measure_sde_terms(model, names, x, y, F.cross_entropy, 0.05, operators=geoms)
    want = measure_sde_terms(model.double(), names, x.double(), y, F.cross_entropy, 0.05, operators=geoms)
    for t, ref in zip(got.layers, want.layers, strict=True):
        for key in ("sigma", "mu", "beta2", "eps"):
            assert _rel(getattr(t, key).double(), getattr(ref, key)) < 1e-4, key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(mode) -> None:
    torch.manual_seed(11)
    model = _TinyConvNet().to(DT)
    x, y = torch.randn(8, 2, 6, 6, dtype=DT), torch.randint(0, 3, (8,))
    geoms = conv_geometries(model, (2, 6, 6))
    kw = {"gradient_noise_var": 1e-3 if mode == "eigh" else 0.0, "operators": geoms}
    cpu = measure_sde_terms(model, NAMES, x, y, F.cross_entropy, 0.05, **kw).as_dict()
    state = OperatorState()
    gpu = measure_sde_terms(
        model.cuda(), NAMES, x.cuda(), y.cuda(), F.cross_entropy, 0.05, operator_state=state, **kw
    ).as_dict()
    for k, v in cpu.items():
        assert gpu[k].device.type == "cuda"
        torch.testing.assert_close(gpu[k].cpu(), v, rtol=1e-8, atol=1e-14)
    if mode == "cg":  # Hutchinson's probes come from a generator on the device
        noisy = measure_sde_terms(
            model,
            NAMES,
            x.cuda(),
            y.cuda(),
            F.cross_entropy,
            0.05,
            operators=geoms,
            operator_state=state,
            gradient_noise_var=1e-3,
        )
        assert torch.isfinite(noisy.eps) and state.generator.device.type == "cuda"
