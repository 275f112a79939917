"""A conv layer's sigma: the operator norm's estimate, its certified bound and the reshaped kernel, in order;
and what the engines record under each `scenario.lipschitz.conv`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import scenario_from
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from torch import nn

from lipbench.errors import LipbenchError
from lipbench.suite import RunSpec, load_claim
from lipbench.torch import conv_operator, tracking
from lipbench.torch.conv_operator import ConvGeometry, certified_bound, conv_geometries, dense, top_singular_pair
from lipbench.torch.data import load_dataset
from lipbench.torch.engine import train
from lipbench.torch.ensemble import train_ensemble
from lipbench.torch.models import ConvNet, initialise, lipschitz_layers
from lipbench.torch.recorder import Recorder

#: Every (kernel, stride, padding, dilation) the built-in models use, and a few they do not.
LAYERS = [(3, 1, 1, 1), (3, 2, 1, 1), (1, 1, 0, 1), (2, 1, 0, 1), (3, 2, 0, 1), (3, 1, 2, 2), (2, 2, 1, 1)]


def exact(kernel: torch.Tensor, geom: ConvGeometry) -> float:
    """The unrolled operator's sigma_max in float64 (a large one through its smaller Gram matrix, for speed)."""
    A = dense(kernel.double(), geom)
    if A.numel() < 10**6:
        return torch.linalg.matrix_norm(A, 2).item()
    return torch.linalg.eigvalsh(A @ A.T if A.shape[0] <= A.shape[1] else A.T @ A)[-1].sqrt().item()


def fft_bound(kernel: torch.Tensor, geom: ConvGeometry, monkeypatch) -> float:
    """The circular-FFT bound alone, also where the layer is small enough to be certified exactly."""
    with monkeypatch.context() as m:
        m.setattr(conv_operator, "DENSE_SIDE", 0)
        return certified_bound(kernel, geom).item()


def trained_kernel(geom_args: tuple[int, int, int, int], cin: int, cout: int, n: int, seed: int) -> torch.Tensor:
    """A kernel after 30 SGD steps of a one-conv network on random data: structure that random kernels lack."""
    k, s, p, d = geom_args
    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(cin, cout, k, stride=s, padding=p, dilation=d).double()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g, dtype=torch.float64) / math.sqrt(cin * k * k))
    head = nn.LazyLinear(3).double()
    x, y = torch.randn(64, cin, n, n, generator=g, dtype=torch.float64), torch.randint(0, 3, (64,), generator=g)
    head(conv(x).relu().flatten(1))
    opt = torch.optim.SGD([*conv.parameters(), *head.parameters()], lr=0.5)
    for _ in range(30):
        loss = nn.functional.cross_entropy(head(conv(x).relu().flatten(1)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return conv.weight.detach()


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    layer=st.sampled_from(LAYERS),
    cin=st.integers(1, 4),
    cout=st.integers(1, 5),
    n=st.integers(1, 9),
    trained=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_estimate_exact_bound_and_reshaped_are_in_order(layer, cin, cout, n, trained, seed) -> None:
    k, s, p, d = layer
    if n + 2 * p < d * (k - 1) + 1:
        return  # no output: not a layer
    geom = ConvGeometry.of(nn.Conv2d(cin, cout, k, stride=s, padding=p, dilation=d), (cin, n, n))
    if trained:
        kernel = trained_kernel(layer, cin, cout, n, seed)
    else:
        kernel = torch.randn(cout, cin, k, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    truth = exact(kernel, geom)
    estimate, u, v = top_singular_pair(kernel, geom)
    assert estimate.item() <= truth * (1 + 1e-9) and estimate.item() == pytest.approx(truth, rel=1e-6)
    assert torch.linalg.vector_norm(conv_operator.apply(kernel, v[None], geom)[0] - estimate * u) <= 1e-4 * truth
    bound = certified_bound(kernel, geom).item()
    with pytest.MonkeyPatch.context() as mp:
        fft = fft_bound(kernel, geom, mp)
    assert truth <= bound <= fft * (1 + 1e-9)
    reshaped = torch.linalg.matrix_norm(kernel.flatten(1), 2).item()
    if s == 1:
        assert fft <= math.sqrt(k * k) * reshaped * (1 + 1e-6)
    if reads_a_whole_patch(geom):  # the reshaped kernel's top vector, placed there, is an input
        assert reshaped <= truth * (1 + 1e-9)


def test_a_small_map_can_put_the_reshaped_kernel_above_the_operator() -> None:
    """The quick ConvNet's third layer (2x2 map, stride 2): the surrogate is neither a lower nor an upper bound."""
    model = ConvNet((1, 8, 8), 10)
    initialise(model, torch.Generator().manual_seed(0))
    geom = conv_geometries(model, (1, 8, 8))["features.6"]
    kernel = model.features[6].weight.detach()
    assert torch.linalg.matrix_norm(kernel.flatten(1), 2).item() > 1.2 * exact(kernel, geom)


def test_members_are_measured_as_one_stack_and_non_finite_gives_nan() -> None:
    geom = ConvGeometry.of(nn.Conv2d(3, 4, 3, stride=2, padding=1), (3, 7, 7))
    kernels = torch.randn(3, 4, 3, 3, 3, generator=torch.Generator().manual_seed(2))
    kernels[1, 0, 0, 0, 0] = math.nan
    sigma, u, v = top_singular_pair(kernels, geom)
    bound = certified_bound(kernels, geom)
    assert sigma.shape == bound.shape == (3,) and u.shape == (3, *geom.out_shape) and v.shape == (3, *geom.in_shape)
    assert math.isnan(sigma[1]) and math.isnan(bound[1])
    for m in (0, 2):
        assert sigma[m].item() == pytest.approx(exact(kernels[m], geom), rel=1e-5)
        assert certified_bound(kernels[m], geom).item() == pytest.approx(bound[m].item(), rel=1e-6)


def test_the_polyphase_rewrite_is_the_strided_layer() -> None:
    """The stride-1 convolution of the padded input's phases with the rewritten kernel gives the layer's outputs."""
    g = torch.Generator().manual_seed(3)
    for k, s, p, d, n in [(3, 2, 1, 1, 8), (3, 2, 1, 1, 7), (3, 3, 2, 2, 11), (2, 2, 0, 1, 6), (3, 1, 1, 2, 5)]:
        kernel = torch.randn(2, 3, k, k, generator=g, dtype=torch.float64)
        geom = ConvGeometry.of(nn.Conv2d(3, 2, k, stride=s, padding=p, dilation=d), (3, n, n))
        x = torch.randn(1, 3, n, n, generator=g, dtype=torch.float64)
        phased, _ = conv_operator.polyphase(kernel, geom)
        length = s * (-(-(p + n) // s) + phased.shape[-1])  # the padded input, a whole number of phases long
        padded = nn.functional.pad(x, (p, length - p - n, p, length - p - n))
        phases = padded.reshape(1, 3, length // s, s, length // s, s).permute(0, 1, 3, 5, 2, 4)
        full = nn.functional.conv2d(phases.reshape(1, 3 * s * s, length // s, length // s), phased)
        rows, cols = geom.out_shape[1:]
        torch.testing.assert_close(full[..., :rows, :cols], conv_operator.apply(kernel, x, geom))


def reads_a_whole_patch(geom: ConvGeometry) -> bool:
    """Whether some output pixel reads a receptive field lying wholly inside the (unpadded) input map."""
    (k, _), (s, _), (p, _), (d, _), n = geom.kernel, geom.stride, geom.padding, geom.dilation, geom.in_shape[1]
    return any(s * i - p >= 0 and s * i - p + d * (k - 1) <= n - 1 for i in range(geom.out_shape[1]))


# ---------------------------------------------------------------- what the engines record

DIGITS_CONVNET = {
    "model": {"name": "convnet"},
    "dataset": {"name": "digits"},
    "optimizer": {"lr": 0.05, "batch_size": 32},
    "steps": 30,
    "record_every": 10,
}


@pytest.fixture
def seen(monkeypatch) -> list[tuple[list[torch.Tensor], torch.Tensor]]:
    """Every (weights, recorded sigmas) the tracker saw and gave, under any engine."""
    calls: list[tuple[list[torch.Tensor], torch.Tensor]] = []
    original = tracking.SigmaTracker.__call__

    def spy(self, weights, alive, given=None):
        sigmas = original(self, weights, alive, given)
        calls.append(([w.detach().clone() for w in weights], sigmas.clone()))
        return sigmas

    monkeypatch.setattr(tracking.SigmaTracker, "__call__", spy)
    return calls


def geometries_of(shape: tuple[int, int, int]) -> list[ConvGeometry | None]:
    return tracking.layer_geometries(ConvNet(shape, 10), shape)


@pytest.mark.parametrize("engine", ["per-run", "ensemble"])
def test_the_engines_record_the_dense_operators_norm_never_above_the_bound(seen, engine: str) -> None:
    sc = scenario_from(DIGITS_CONVNET, steps=40, record_every=5)  # checks at the first and last record only
    data = load_dataset("digits")
    specs = [RunSpec("claim", f"run{i}", sc, None, i, i) for i in range(2)]
    records = [train(s, data) for s in specs] if engine == "per-run" else train_ensemble(specs, data)
    geoms = geometries_of((1, 8, 8))
    assert sum(sigmas.shape[0] for _, sigmas in seen) == sum(len(r.steps) for r in records)  # every record
    for weights, sigmas in seen:
        for layer, (W, geom) in enumerate(zip(weights, geoms, strict=True)):
            for m in range(W.shape[0]):
                truth = exact(W[m], geom) if geom else torch.linalg.matrix_norm(W[m].double(), 2).item()
                assert sigmas[m, layer].item() == pytest.approx(truth, rel=1e-4)
                if geom:
                    assert sigmas[m, layer].item() <= certified_bound(W[m], geom).item()
    for record in records:
        assert record.summary["sigma_rel_err"] < 1e-4
        assert all(0 <= record.summary[f"sigma_bracket_{layer}"] < 1e-5 for layer in range(3))  # exact at 8x8


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_the_tracker_records_the_dense_norm_of_a_layer_that_fits_at_full_size(shape) -> None:
    """The third conv layer (7x7 or 8x8 map, stride 2: its dense matrix fits), at init and after a change."""
    model = ConvNet(shape, 10)
    initialise(model, torch.Generator().manual_seed(0))
    geom = conv_geometries(model, shape)["features.6"]
    tracker = tracking.SigmaTracker(
        [geom], "operator", 1, 2, torch.device("cpu"), lanczos_steps=12, exact_every=10, exact_matrices=True
    )
    kernel = model.features[6].weight.detach()
    alive = torch.ones(1, dtype=torch.bool)
    for row, W in enumerate([kernel, kernel * 1.01 + 0.002 * torch.randn(kernel.shape)]):
        sigma = tracker([W[None]], alive)[0, 0].item()
        truth = exact(W, geom)
        assert sigma == pytest.approx(truth, rel=1e-4), row
        assert sigma <= certified_bound(W, geom).item()
    [summary] = tracker.summaries()
    assert summary["sigma_rel_err"] < 1e-4 and 0 < summary["sigma_bracket_0"] < 0.05


def test_reshaped_keeps_the_kernel_matrix_and_bound_lies_above_the_operator() -> None:
    data = load_dataset("digits")
    runs = {
        conv: train(RunSpec("c", "r", scenario_from(DIGITS_CONVNET, lipschitz={"conv": conv}), None, 0, 0), data)
        for conv in ("operator", "reshaped", "bound")
    }
    model = ConvNet((1, 8, 8), 10)
    initialise(model, torch.Generator().manual_seed(0))
    kernels = [m.weight.detach() for _, m in lipschitz_layers(model)][:3]
    for layer, kernel in enumerate(kernels):
        reshaped = torch.linalg.matrix_norm(kernel.flatten(1), 2).item()
        assert runs["reshaped"].metrics[f"sigma_{layer}"][0] == pytest.approx(reshaped, rel=1e-5)
        ops, bounds = runs["operator"].metrics[f"sigma_{layer}"], runs["bound"].metrics[f"sigma_{layer}"]
        assert np.all(bounds >= ops) and np.all(bounds <= ops * (1 + 1e-4))  # at 8x8 the bound is exact
    assert "sigma_bracket_0" not in runs["reshaped"].summary and "sigma_rel_err" not in runs["reshaped"].summary
    assert "sigma_bracket_2" in runs["bound"].summary


def test_the_setting_defaults_to_the_operator_and_refuses_a_bound_under_the_sde_probe() -> None:
    assert scenario_from(DIGITS_CONVNET).lipschitz.conv == "operator"
    with pytest.raises(ValidationError, match=r"certified upper bound.*lipschitz\.conv: operator"):
        scenario_from(DIGITS_CONVNET, record=["sigma", "K", "sde"], lipschitz={"conv": "bound"})
    scenario_from(DIGITS_CONVNET, record=["sigma", "K", "sde"], lipschitz={"conv": "reshaped"})


def test_a_run_functions_recorder_records_the_operator_norm() -> None:
    sc = scenario_from(DIGITS_CONVNET)
    model = ConvNet((1, 8, 8), 10)
    initialise(model, torch.Generator().manual_seed(0))
    recorder = Recorder(RunSpec("c", "r", sc, None, 0, 0), [0], torch.device("cpu"), input_shape=(1, 8, 8))
    recorder.record(0, model, loss=1.0)
    geom = conv_geometries(model, (1, 8, 8))["features.3"]
    assert recorder.buffer[0, 1].item() == pytest.approx(exact(model.features[3].weight.detach(), geom), rel=1e-4)


def test_under_the_sde_probe_the_conv_terms_are_of_the_operator_the_engine_records(monkeypatch) -> None:
    """engine.train hands the probe the conv layers' geometries under `operator`, none under `reshaped`."""
    from lipbench.torch import engine

    handed: list[object] = []
    original = engine.measure_sde_terms

    def spy(*args, **kwargs):
        handed.append(kwargs.get("operators"))
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "measure_sde_terms", spy)
    data = load_dataset("digits")
    sde = {"record": ["sigma", "K", "sde"], "steps": 4, "record_every": 2}
    for conv in ("operator", "reshaped"):
        handed.clear()
        record = train(
            RunSpec("c", "r", scenario_from(DIGITS_CONVNET, **sde, lipschitz={"conv": conv}), None, 0, 0), data
        )
        assert record.ok and np.isfinite(record.metrics["sde_mu_1"]).all()
        if conv == "operator":
            assert handed and all(
                sorted(ops) == ["features.0.weight", "features.3.weight", "features.6.weight"] for ops in handed
            )
        else:
            assert handed and not any(handed)  # no layer as an operator


def test_a_grouped_conv_of_ones_own_model_asks_for_reshaped() -> None:
    model = nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.Flatten(), nn.Linear(64, 3))
    sc = scenario_from(DIGITS_CONVNET)
    recorder = Recorder(RunSpec("c", "r", sc, None, 0, 0), [0], torch.device("cpu"), "pkg:train", (2, 6, 6))
    with pytest.raises(LipbenchError, match=r"pkg:train: .*groups=2.*set lipschitz\.conv: reshaped"):
        recorder.record(0, model, loss=1.0)
    reshaped = Recorder(
        RunSpec("c", "r", scenario_from(DIGITS_CONVNET, lipschitz={"conv": "reshaped"}), None, 0, 0),
        [0],
        torch.device("cpu"),
        "pkg:train",
        (2, 6, 6),
    )
    assert reshaped.record(0, model, loss=1.0)


def test_the_default_setting_keeps_scenario_hashes_and_another_changes_them() -> None:
    suite = Path(__file__).parent.parent / "suites" / "implications" / "unbounded_growth.yaml"
    plain = load_claim(suite, "quick").scenario_hash()
    assert load_claim(suite, "quick", ["scenario.lipschitz.conv=operator"]).scenario_hash() == plain
    assert load_claim(suite, "quick", ["scenario.lipschitz.conv=reshaped"]).scenario_hash() != plain
