"""The validation machinery: the probe's update-aware terms, and the assertions that judge the theory.

Every new assertion passes on data where its claim holds and FAILS on a planted break.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from builders import float64_mlp, weight_names
from pydantic import TypeAdapter, ValidationError
from torch import nn

from lipbench import cli
from lipbench.assertions import (
    AssertionDataError,
    AssertionSpec,
    InitScaling,
    MonotoneTrend,
    SDEAgreement,
    VariancePrediction,
    VarianceScaling,
)
from lipbench.design import check_design
from lipbench.errors import SuiteError
from lipbench.suite import load_claim
from lipbench.torch.sde import hessian_quadratic_form, hessian_trace, measure_sde_terms

DT = torch.float64
SUITES = Path(__file__).resolve().parents[1] / "suites"


# --------------------------------------------------------------------------------------------
# The probe: trace, discrete term, the update's scale / noise / sampling, batch statistics
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(7, 4), (4, 7), (5, 5)], ids=["tall", "wide", "square"])
def test_hessian_trace_is_the_sum_of_q_over_a_basis(shape):
    W = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=DT)
    basis = torch.eye(shape[0] * shape[1], dtype=DT).reshape(-1, *shape)
    torch.testing.assert_close(hessian_trace(W), hessian_quadratic_form(W, basis).sum())


def test_discrete_term_is_the_full_batch_steps_second_order_change():
    # Full batch: no noise, so sigma(W - lr G) - sigma(W) = mu + lr^2/2 Q(G) + O(lr^3), per layer. The
    # probe treats its batch as a sample: disc = lr^2/2 Q(G) less the noise's share, eps b/(b - 1).
    model = float64_mlp((6, 5, 4, 3), seed=1)
    x = torch.randn(12, 6, generator=torch.Generator().manual_seed(1), dtype=DT)
    y = torch.randint(0, 3, (12,), generator=torch.Generator().manual_seed(2))
    names, lr, b = weight_names(model), 1e-2, 12
    terms = measure_sde_terms(model, names, x, y, F.cross_entropy, lr)
    F.cross_entropy(model(x), y).backward()
    params = dict(model.named_parameters())
    for t, n in zip(terms.layers, names, strict=True):
        W, G = params[n].detach(), params[n].grad
        curvature = lr**2 / 2 * hessian_quadratic_form(W, G)
        torch.testing.assert_close(t.disc + t.eps * b / (b - 1), curvature)
        change = torch.linalg.matrix_norm(W - lr * G, ord=2) - torch.linalg.matrix_norm(W, ord=2)
        assert abs(change - (t.mu + curvature)) <= 0.05 * curvature  # O(lr^3) remainder
        assert abs(change - t.mu) >= 0.5 * curvature  # the term is resolved
    sig = torch.stack([t.sigma for t in terms.layers])
    mu = torch.stack([t.mu for t in terms.layers])
    beta2 = torch.stack([t.beta2 for t in terms.layers])
    want = (torch.stack([t.disc for t in terms.layers]) / sig - (mu**2 - beta2) / (2 * sig**2)).sum()
    torch.testing.assert_close(terms.disc, want)


def test_discrete_term_is_unbiased_over_all_mini_batches():
    # Exact expectation over all N^b ordered batches drawn with replacement: the mean of the probe's
    # disc is lr^2/2 Q(G) of the whole data, and of its log form sum_l Q-term/sigma - mu^2/(2 sigma^2):
    # neither counts eps or beta^2 (the batch noise) a second time.
    model = float64_mlp((5, 4, 3), seed=3)
    N, b, lr = 5, 3, 0.1
    x = torch.randn(N, 5, generator=torch.Generator().manual_seed(11), dtype=DT)
    y = torch.randint(0, 3, (N,), generator=torch.Generator().manual_seed(12))
    names = weight_names(model)
    batches = [list(idx) for idx in itertools.product(range(N), repeat=b)]
    probes = [measure_sde_terms(model, names, x[i], y[i], F.cross_entropy, lr) for i in batches]
    full = measure_sde_terms(model, names, x, y, F.cross_entropy, lr)
    F.cross_entropy(model(x), y).backward()
    params = dict(model.named_parameters())
    want_net = 0.0
    for layer, n in enumerate(names):
        W, G = params[n].detach(), params[n].grad
        curvature = lr**2 / 2 * hessian_quadratic_form(W, G)
        got = torch.stack([p.layers[layer].disc for p in probes]).mean()
        torch.testing.assert_close(got, curvature, rtol=1e-9, atol=1e-15)
        t = full.layers[layer]
        want_net = want_net + curvature / t.sigma - t.mu**2 / (2 * t.sigma**2)
    torch.testing.assert_close(torch.stack([p.disc for p in probes]).mean(), want_net, rtol=1e-9, atol=1e-15)


def test_gradient_scale_noise_and_population_enter_in_closed_form():
    model = float64_mlp((6, 5, 4, 3), seed=2)
    x = torch.randn(10, 6, generator=torch.Generator().manual_seed(3), dtype=DT)
    y = torch.randint(0, 3, (10,), generator=torch.Generator().manual_seed(4))
    names, lr, a, v, N = weight_names(model), 0.05, 0.5, 1e-4, 40
    base = measure_sde_terms(model, names, x, y, F.cross_entropy, lr)
    got = measure_sde_terms(
        model, names, x, y, F.cross_entropy, lr, gradient_scale=a, gradient_noise_var=v, population=N
    )
    fpc = (N - 10) / (N - 1)
    params = dict(model.named_parameters())
    for b0, g, n in zip(base.layers, got.layers, names, strict=True):
        W = params[n].detach()
        torch.testing.assert_close(g.mu, a * b0.mu)
        torch.testing.assert_close(g.beta2, a**2 * fpc * b0.beta2 + lr**2 * v)
        torch.testing.assert_close(g.eps, a**2 * fpc * b0.eps + lr**2 / 2 * v * hessian_trace(W))
        noise_share = b0.eps * 10 / 9  # lr^2/2 tr(H Sigma)/b, debiased out of disc; fpc scales it
        torch.testing.assert_close(g.disc, a**2 * (b0.disc + (1 - fpc) * noise_share))


def test_injected_noise_terms_match_monte_carlo():
    # beta2 and eps of pure i.i.d. noise: Var(u1^T N v1) = v, E[Q(N)] = v tr H.
    W = torch.randn(6, 4, generator=torch.Generator().manual_seed(5), dtype=DT)
    N = torch.randn(20000, 6, 4, generator=torch.Generator().manual_seed(6), dtype=DT) * 0.1
    q = hessian_quadratic_form(W, N).mean()
    torch.testing.assert_close(q, 0.01 * hessian_trace(W), rtol=0.03, atol=0)


def _convnet(batch_norm: bool) -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(3, 4, 3, stride=2),
        *([nn.BatchNorm2d(4, track_running_stats=False)] if batch_norm else []),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, 3),
    ).to(DT)


def test_contributions_equal_per_sample_gradients_without_batch_statistics():
    model = _convnet(batch_norm=False)
    x = torch.randn(9, 1, 6, 6, generator=torch.Generator().manual_seed(7), dtype=DT)
    y = torch.randint(0, 3, (9,), generator=torch.Generator().manual_seed(8))
    names = weight_names(model)
    a = measure_sde_terms(model, names, x, y, F.cross_entropy, 0.05)
    b = measure_sde_terms(model, names, x, y, F.cross_entropy, 0.05, batch_stats="contributions")
    for k, v in a.as_dict().items():
        torch.testing.assert_close(b.as_dict()[k], v, rtol=1e-9, atol=1e-15)


def test_batch_norm_error_and_contributions_whose_mean_is_the_batch_gradient():
    model = _convnet(batch_norm=True)
    x = torch.randn(9, 1, 6, 6, generator=torch.Generator().manual_seed(9), dtype=DT)
    y = torch.randint(0, 3, (9,), generator=torch.Generator().manual_seed(10))
    names, lr = weight_names(model), 0.05
    with pytest.raises(ValueError, match="BatchNorm"):
        measure_sde_terms(model, names, x, y, F.cross_entropy, lr)
    terms = measure_sde_terms(model, names, x, y, F.cross_entropy, lr, batch_stats="contributions")
    F.cross_entropy(model(x), y).backward()  # the batch gradient, BN statistics included
    params = dict(model.named_parameters())
    for t, n in zip(terms.layers, names, strict=True):
        W, G = params[n].detach().reshape(params[n].shape[0], -1), params[n].grad.reshape(params[n].shape[0], -1)
        U, _, Vh = torch.linalg.svd(W)
        torch.testing.assert_close(t.mu, -lr * U[:, 0] @ G @ Vh[0])  # mean of the shares = G exactly
        assert t.beta2 > 0 and t.eps > 0
    # After the last BN the shares are the per-sample gradients: the Linear layer's terms match a loop.
    head_loop = []
    for i in range(9):
        model.zero_grad()
        logits = model(x)  # BN statistics of the whole batch, gradient of sample i's loss alone
        F.cross_entropy(logits[i : i + 1], y[i : i + 1]).backward()
        head_loop.append(params["6.weight"].grad.clone())
    g = torch.stack(head_loop)
    U, _, Vh = torch.linalg.svd(params["6.weight"].detach())
    proj = torch.einsum("m,bmn,n->b", U[:, 0], g, Vh[0])
    torch.testing.assert_close(terms.layers[-1].beta2, lr**2 * proj.var() / 9)


# --------------------------------------------------------------------------------------------
# Synthetic records: log K follows the SDE exactly (or a planted break)
# --------------------------------------------------------------------------------------------


def _sde_records(
    runs: int,
    *,
    mu: float = 2e-3,
    eps: float = 5e-4,
    beta2: float = 1e-5,
    steps: int = 200,
    every: int = 10,
    drift_factor: float = 1.0,
    noise_factor: float = 1.0,
    sweep: float | None = None,
    seed: int = 0,
    init_seeds: int = 1,
) -> pd.DataFrame:
    """Runs whose log K is an Euler path of d log K = (mu + eps - beta2/2) dt + beta dB, scaled by the factors."""
    rng = np.random.default_rng(seed)
    grid = np.arange(0, steps + 1, every)
    frames = []
    for i in range(init_seeds):
        for j in range(runs):
            inc = drift_factor * (mu + eps - beta2 / 2) + noise_factor * math.sqrt(beta2) * rng.standard_normal(steps)
            path = np.concatenate([[0.0], np.cumsum(inc)])[grid] + 0.3 * i
            frames.append(
                pd.DataFrame(
                    {
                        "run": f"s{sweep}-i{i}-r{j}",
                        "step": grid,
                        "sweep_value": np.nan if sweep is None else sweep,
                        "init_seed": i,
                        "sampling_seed": j,
                        "log_K": path,
                        "K": np.exp(path),
                        "sde_mu": mu,
                        "sde_eps": eps,
                        "sde_beta2": beta2,
                        "sde_drift": mu + eps - beta2 / 2,
                        "sde_disc": 1e-5,
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def test_sde_agreement_passes_when_log_k_follows_the_drift():
    res = SDEAgreement().evaluate(_sde_records(5))
    assert res.passed, res.sentence
    assert abs(res.statistic) < 0.1 and res.n == 5
    assert "discrete-time term" in res.sentence and res.effect_size is not None
    assert res.to_dict()["details"]["groups"][0]["int_eps"] == pytest.approx(5e-4 * 200)


@pytest.mark.parametrize("factor", [2.0, 0.5, 1 / 1.6])
def test_sde_agreement_fails_when_the_drift_is_off(factor):
    res = SDEAgreement().evaluate(_sde_records(5, drift_factor=factor))
    assert not res.passed, res.sentence


def test_sde_agreement_fails_when_eps_is_left_out():
    # The measured terms miss a real eps as large as mu (our small-batch finding): 50% error.
    rec = _sde_records(5, mu=1e-3, eps=1e-3)
    rec["sde_drift"] = rec["sde_mu"] - rec["sde_beta2"] / 2
    assert not SDEAgreement().evaluate(rec).passed


def test_sde_agreement_design_and_data_errors():
    assert check_design(SDEAgreement(), sweep_values=1, init_seeds=2, sampling_seeds=1, records_per_run=10)
    assert check_design(SDEAgreement(), sweep_values=1, init_seeds=4, sampling_seeds=1, records_per_run=10) is None
    with pytest.raises(AssertionDataError, match="sde_drift"):
        SDEAgreement().evaluate(_sde_records(3).drop(columns="sde_drift"))


def test_sde_agreement_with_a_sweep_judges_every_value():
    good, bad = _sde_records(4, sweep=1.0), _sde_records(4, sweep=2.0, drift_factor=3.0, seed=1)
    res = SDEAgreement().evaluate(pd.concat([good, bad], ignore_index=True))
    assert not res.passed and "sweep values" in res.sentence


def test_variance_prediction_passes_when_the_variance_is_as_predicted():
    res = VariancePrediction().evaluate(_sde_records(30, beta2=4e-5, seed=3))
    assert res.passed, res.sentence
    assert 0.5 < res.statistic < 2


@pytest.mark.parametrize("noise", [0.1, 10.0])
def test_variance_prediction_fails_two_orders_of_magnitude_off(noise):
    res = VariancePrediction().evaluate(_sde_records(30, beta2=4e-5, noise_factor=noise, seed=4))
    assert not res.passed, res.sentence


def test_variance_prediction_pools_init_seeds_and_checks_its_design():
    res = VariancePrediction().evaluate(_sde_records(8, beta2=4e-5, init_seeds=2, seed=5))
    assert 7 < res.details["groups"][0]["df"] <= 14  # crossed design: Satterthwaite df between one and two inits
    assert check_design(VariancePrediction(), sweep_values=1, init_seeds=1, sampling_seeds=3, records_per_run=5)
    # 8 seeds of one init reach power 0.76 once the interval also holds under skewed K (the jackknife); 12 reach 0.8
    assert check_design(VariancePrediction(), sweep_values=1, init_seeds=1, sampling_seeds=8, records_per_run=5)
    twelve = check_design(VariancePrediction(), sweep_values=1, init_seeds=1, sampling_seeds=12, records_per_run=5)
    assert twelve is None


def _scaling_records(observed_exponent: float, predicted_exponent: float, seed: int = 0) -> pd.DataFrame:
    frames = []
    for k, b in enumerate([16, 32, 64, 128, 256]):
        beta2 = 1e-4 * (b / 16) ** predicted_exponent
        noise = math.sqrt((b / 16) ** observed_exponent / (b / 16) ** predicted_exponent)
        frames.append(_sde_records(40, beta2=beta2, noise_factor=noise, sweep=float(b), seed=seed + k))
    return pd.concat(frames, ignore_index=True)


def test_variance_scaling_passes_when_both_scale_like_one_over_b():
    res = VarianceScaling().evaluate(_scaling_records(-1, -1))
    assert res.passed, res.sentence
    assert res.statistic == pytest.approx(-1, abs=0.4) and res.effect_size == pytest.approx(-1, abs=0.1)


@pytest.mark.parametrize(("obs", "pred"), [(0.0, -1.0), (-1.0, 0.0), (-2.5, -1.0)])
def test_variance_scaling_fails_when_either_does_not(obs, pred):
    res = VarianceScaling().evaluate(_scaling_records(obs, pred, seed=10))
    assert not res.passed, res.sentence


def _init_records(ratio: float, runs: int = 12, sd: float = 0.01, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(runs):
        theory = [3.0, 2.0, 1.5]
        for step in (0, 1):
            row = {"run": f"r{r}", "step": step, "sweep_value": float(r % 4), "init_seed": r, "sampling_seed": 0}
            for i, t in enumerate(theory):
                row[f"sigma_{i}"] = t * (ratio + sd * rng.standard_normal()) * (1 + step)  # step 1 must not count
                row[f"sigma_init_theory_{i}"] = t
            rows.append(row)
    return pd.DataFrame(rows)


def test_init_scaling_passes_on_the_theory_and_fails_off_it():
    ok = InitScaling().evaluate(_init_records(0.98))
    assert ok.passed, ok.sentence
    for off in (0.9, 1.08):
        res = InitScaling().evaluate(_init_records(off))
        assert not res.passed, res.sentence
    with pytest.raises(AssertionDataError, match="init"):
        InitScaling().evaluate(_init_records(1.0).drop(columns=[f"sigma_init_theory_{i}" for i in range(3)]))


def test_monotone_trend_at_initial_reads_the_first_record():
    rows = []
    for r, v in enumerate([1.0, 1.0, 2.0, 2.0, 3.0, 3.0]):
        final = 10 - v + 0.01 * r  # the two init seeds' blocks differ (identical blocks are one draw: an error)
        rows += [
            {"run": f"r{r}", "step": 0, "sweep_value": v, "init_seed": r % 2, "sampling_seed": 0, "K": v + 0.1 * r},
            {"run": f"r{r}", "step": 5, "sweep_value": v, "init_seed": r % 2, "sampling_seed": 0, "K": final},
        ]
    rec = pd.DataFrame(rows)
    initial = MonotoneTrend(direction="increasing", at="initial", alpha=0.05).evaluate(rec)
    assert initial.passed and initial.sentence.startswith("Initial K")
    assert not MonotoneTrend(direction="increasing", alpha=0.05).evaluate(rec).passed


def test_new_tests_are_registered_and_validated():
    adapter = TypeAdapter(AssertionSpec)
    for name in ("sde_agreement", "variance_prediction", "variance_scaling", "init_scaling"):
        assert adapter.validate_python({"test": name}).test == name
    with pytest.raises(ValidationError):
        adapter.validate_python({"test": "sde_agreement", "tolerance": -1})
    with pytest.raises(ValidationError):
        adapter.validate_python({"test": "variance_prediction", "factor": 1.0})


# --------------------------------------------------------------------------------------------
# Suite files
# --------------------------------------------------------------------------------------------


def test_every_suite_validates():
    assert cli.main(["validate", str(SUITES)]) == 0


def test_a_test_that_reads_sde_terms_needs_sde_recorded(tmp_path):
    text = (SUITES / "validation" / "sde_agreement.yaml").read_text()
    path = tmp_path / "no_sde.yaml"
    path.write_text(text.replace("record: [sigma, K, loss, accuracy, sde]", "record: [sigma, K]"))
    with pytest.raises(SuiteError, match=r"needs \['sde'\] in scenario.record"):
        load_claim(path, "quick")


def test_sde_figure_draws_the_decomposition_or_returns_none(tmp_path):
    from lipbench.outcome import ClaimOutcome, Verdict
    from lipbench.records import RunRecord
    from lipbench.sde_plots import sde_figure

    claim = load_claim(SUITES / "validation" / "sde_agreement.yaml", "quick")
    frame = _sde_records(3)
    records = [
        RunRecord(claim.name, run, None, 0, j, g["step"].to_numpy(), {c: g[c].to_numpy(float) for c in g.columns[5:]})
        for j, (run, g) in enumerate(frame.groupby("run"))
    ]
    path = sde_figure(ClaimOutcome(claim, Verdict.PASS, records), tmp_path / "sde.png")
    assert path is not None and path.stat().st_size > 10_000
    plain = [RunRecord(claim.name, "r", None, 0, 0, np.arange(3), {"K": np.ones(3), "log_K": np.zeros(3)})]
    assert sde_figure(ClaimOutcome(claim, Verdict.PASS, plain), tmp_path / "none.png") is None
