"""The assertions' error rates, measured by simulating the shipped designs (each case failed before
the assertions were rebuilt on their units of replication), plus I/O and degenerate-data checks."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from pydantic import TypeAdapter, ValidationError

from lipbench.assertions import (
    ASSERTIONS,
    AssertionDataError,
    AssertionResult,
    AssertionSpec,
    Design,
    GrowthTrend,
    InitScaling,
    Invariance,
    MonotoneTrend,
    PowerLaw,
)
from lipbench.assertions.base import wilson
from lipbench.calibration import false_alarm_rate
from lipbench.design import check_design

REPS = 1000
PAPER_BATCH = Design((32, 64, 96, 128, 160, 192, 224, 256), 3, 12, 11, 2000)
OLD_PAPER_BATCH = Design((32, 64, 96, 128, 160, 192, 224, 256), 2, 8, 11, 2000)


def rate(passed: np.ndarray) -> tuple[float, float, float]:
    low, high = wilson(int(np.sum(passed)), int(np.size(passed)))
    return float(np.mean(passed)), low, high


def frame(y: np.ndarray, x: list[float] | None, quantity: str = "K", steps: int = 3) -> pd.DataFrame:
    """Records of y[sweep, init, sampling] as the final record of each run (earlier records are noise)."""
    rng = np.random.default_rng(1)
    rows = []
    for s in range(y.shape[0]):
        for i in range(y.shape[1]):
            for j in range(y.shape[2]):
                for k in range(steps):
                    value = float(y[s, i, j]) if k == steps - 1 else float(rng.uniform(0.1, 100))
                    rows.append(
                        {
                            "run": f"s{s}-i{i}-j{j}",
                            "step": 10 * k,
                            "sweep_value": np.nan if x is None else x[s],
                            "init_seed": i,
                            "sampling_seed": j,
                            quantity: value,
                            "log_K": math.log(abs(value)),
                        }
                    )
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0)


# --------------------------------------------------------------------------- power_law: an equivalence test


@pytest.mark.parametrize("true_k", [-1.5, -0.5])
def test_power_law_does_not_pass_another_exponent(true_k: float) -> None:
    spec = PowerLaw()
    params = {**spec.default_model(PAPER_BATCH), "exponent": true_k}
    data = spec.simulate(PAPER_BATCH, params, np.random.default_rng(0), REPS, "normal")
    assert (
        rate(spec.decide(data).passed)[1] <= spec.alpha
    )  # was 47% (k = -1.5) and 30% (k = -0.5) with "the CI contains -1"


def test_power_law_has_power_at_minus_one_on_the_shipped_design() -> None:
    spec = PowerLaw()
    data = spec.simulate(PAPER_BATCH, spec.default_model(PAPER_BATCH), np.random.default_rng(0), REPS, "normal")
    assert rate(spec.decide(data).passed)[2] >= 0.8


def test_power_law_refuses_designs_that_cannot_confirm() -> None:
    spec = PowerLaw()
    assert "at least 4 sweep values" in check_design(
        spec, sweep_values=(32, 64, 128), init_seeds=2, sampling_seeds=8, records_per_run=5
    )
    assert "power" in check_design(
        spec, sweep_values=OLD_PAPER_BATCH.sweep, init_seeds=2, sampling_seeds=8, records_per_run=5
    )
    design = {"init_seeds": 3, "sampling_seeds": 12, "records_per_run": 5}
    assert check_design(spec, sweep_values=PAPER_BATCH.sweep, **design) is None


def test_power_law_zero_spread_is_an_error() -> None:
    y = np.ones((4, 2, 3))
    with pytest.raises(AssertionDataError, match="every sampling seed gives the same"):
        PowerLaw().evaluate(frame(y, [8.0, 16.0, 32.0, 64.0]))


# --------------------------------------------------------------------------- invariance: an upper bound that covers


def test_invariance_at_the_limit_passes_at_most_alpha() -> None:
    spec = Invariance()
    design = Design(None, 3, 5, 11)
    params = {**spec.default_model(design), "cv": spec.max_relative_spread}
    data = spec.simulate(design, params, np.random.default_rng(0), REPS, "normal")
    assert rate(spec.decide(data).passed)[1] <= spec.alpha  # the BCa bound passed 18.5% at nominal 2.5%


def test_invariance_without_any_sampling_effect_is_an_error() -> None:
    y = np.repeat(np.array([[[10.0], [12.0], [14.0]]]), 5, axis=2)  # every sampling seed gives the same K
    with pytest.raises(AssertionDataError, match="sampling stream"):
        Invariance().evaluate(frame(y, None))


def test_invariance_passes_a_small_spread() -> None:
    rng = np.random.default_rng(3)
    y = np.array([10.0, 13.0, 16.0])[None, :, None] * (1 + 0.01 * rng.standard_normal((1, 3, 5)))
    assert Invariance().evaluate(frame(y, None)).passed


# --------------------------------------------------------------------------- init_scaling: the init draw is the unit


def _init_frame(ratios: np.ndarray, stds: list[float]) -> pd.DataFrame:
    """Runs over init stds whose sigma / theory depends only on the init seed (weights = std x Z(seed))."""
    rows = []
    for std in stds:
        for i, r in enumerate(ratios):
            rows.append(
                {
                    "run": f"{std}-{i}",
                    "step": 0,
                    "sweep_value": std,
                    "init_seed": i,
                    "sampling_seed": 0,
                    "sigma_0": std * 40 * r,
                    "sigma_init_theory_0": std * 40,
                    "K": 1.0,
                }
            )
    return pd.DataFrame(rows)


def test_init_scaling_counts_init_draws_not_runs() -> None:
    rng = np.random.default_rng(0)
    covered = []
    for _ in range(300):
        ratios = 1 + 0.024 * rng.standard_normal(3)
        res = InitScaling().evaluate(_init_frame(ratios, [0.01, 0.02, 0.05, 0.1]))
        covered.append(res.ci_low <= 1.0 <= res.ci_high)
        assert res.n == 3
    assert rate(np.array(covered))[2] >= 0.95  # was 54%: 12 runs counted where 3 draws exist


def test_init_scaling_with_one_init_seed_is_an_error() -> None:
    with pytest.raises(AssertionDataError, match="repeat one init draw"):
        InitScaling().evaluate(_init_frame(np.array([1.0]), [0.01, 0.02, 0.05, 0.1]))


def test_init_scaling_at_the_band_edge_passes_at_most_alpha() -> None:
    spec = InitScaling()
    design = Design((0.01, 0.02, 0.05, 0.1), 10, 1, 2)
    params = spec.scenarios(spec.default_model(design))["null"]
    data = spec.simulate(design, params, np.random.default_rng(0), REPS, "normal")
    assert rate(spec.decide(data).passed)[1] <= (1 - spec.confidence) / 2  # was 22%


# --------------------------------------------------------------------------- growth_trend: runs as units


def _growth(paths: np.ndarray) -> dict:
    return {"paths": paths[None], "steps": np.arange(paths.shape[-1]) * 40.0, "x": [None] * paths.shape[0]}


def test_growth_rejects_a_saturating_curve() -> None:
    t = np.linspace(0, 1, 26)
    rng = np.random.default_rng(0)
    paths = np.stack([2 + 1e-5 * t + 1e-7 * rng.standard_normal(26) for _ in range(5)])[None]
    assert not GrowthTrend().decide(_growth(paths)).passed[0]  # passed with p = 3e-8 before


def test_growth_one_run_of_three_growing_does_not_pass() -> None:
    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, 26)
    passes = []
    for _ in range(300):
        growing = 0.3 * t + 0.01 * rng.standard_normal(26)
        flat = [0.01 * rng.standard_normal(26) for _ in range(2)]
        passes.append(GrowthTrend().decide(_growth(np.stack([growing, *flat])[None])).passed[0])
    assert rate(np.array(passes))[1] <= 0.01  # passed 42% before


@pytest.mark.parametrize("phi", [0.5, 0.8])
def test_growth_persistent_driftless_noise_passes_at_most_alpha(phi: float) -> None:
    spec = GrowthTrend()
    design = Design(None, 5, 1, 51)
    params = {"growth": 0.0, "growth_sd": 0.0, "noise_sd": 0.05, "phi": phi, "T": 26}
    data = spec.simulate(design, params, np.random.default_rng(0), REPS, "normal")
    assert rate(spec.decide(data).passed)[1] <= spec.alpha  # AR(1) increments passed 9% / 20% before


# --------------------------------------------------------------------------- monotone_trend: blocked by init seed


def test_monotone_is_exact_with_strong_init_effects() -> None:
    spec = MonotoneTrend(direction="decreasing", alpha=0.05, min_abs_rho=0.0)
    design = Design((0.0, 0.2, 0.4, 0.6, 0.8), 3, 1, 11)
    params = {"means": [0.0] * 5, "init_sd": 1.0, "run_sd": 0.05}
    _, low, high = rate(spec.decide(spec.simulate(design, params, np.random.default_rng(0), 4000, "normal")).passed)
    assert low <= 0.05 <= high + 0.01  # the pooled permutation rejected 1% at nominal 5%


def test_monotone_does_not_require_strictly_monotone_means() -> None:
    spec = MonotoneTrend(direction="increasing", min_effect=2.0)  # steps of 0.5 run-sd
    design = Design((1.0, 2.0, 3.0, 4.0, 5.0), 3, 1, 11)
    params = spec.scenarios({"means": [0.0] * 5, "init_sd": 0.5, "run_sd": 1.0})["alternative"]
    data = spec.simulate(design, params, np.random.default_rng(0), REPS, "normal")
    means = data["y"].mean(axis=(2, 3))
    strict = np.mean(np.all(np.diff(np.log(means), axis=1) > 0, axis=1))
    assert rate(spec.decide(data).passed)[0] > strict + 0.2  # strict means held only ~20% of the time


def test_monotone_fit_of_a_deterministic_relation_keeps_a_null_without_ties() -> None:
    """K_0 = s^2 x draw: runs of one init seed differ only by rounding; the fitted null must still be exact."""
    spec = MonotoneTrend(direction="increasing")
    draws = np.array([1.0, 1.3, 0.8])
    y = (np.array([0.005, 0.01, 0.02, 0.04]) ** 2)[:, None] * draws[None, :]  # [sweep, blocks]
    params = spec.fit({"y": y.tolist()})
    design = Design((0.005, 0.01, 0.02, 0.04), 3, 1, 2)
    data = spec.simulate(design, spec.scenarios(params)["null"], np.random.default_rng(1), 20000, "normal")
    assert rate(spec.decide(data).passed)[1] <= spec.alpha  # 1.3% at alpha = 1% with ties from a 4e-16 spread


# --------------------------------------------------------------------------- baseline comparison when only seeds change


@pytest.mark.parametrize(
    ("spec", "design"),
    [
        (MonotoneTrend(direction="decreasing"), Design((0.0, 0.2, 0.4, 0.6, 0.8), 3, 1, 11)),
        (GrowthTrend(), Design(None, 5, 1, 51)),
        (Invariance(), Design(None, 3, 5, 11)),
        (PowerLaw(), Design((16, 32, 64, 128, 256), 3, 8, 5)),
    ],
)
def test_seeds_only_false_alarm_is_at_most_half_a_percent(spec, design) -> None:
    params = spec.scenarios(spec.default_model(design))["alternative"]
    alarms = false_alarm_rate(spec, design, params, np.random.default_rng(0), 600, "normal")
    assert alarms.low <= 0.005  # growth slope 4.9%, monotone log ratio 2.9%, CV 6.3% before


# --------------------------------------------------------------------------- I/O


def test_every_assertion_validates_and_round_trips() -> None:
    adapter = TypeAdapter(AssertionSpec)
    for name in ASSERTIONS:
        body = {"test": name, **({"direction": "increasing"} if name == "monotone_trend" else {})}
        assert adapter.validate_python(body).test == name
    with pytest.raises(ValidationError):
        adapter.validate_python({"test": "power_law", "margin": float("nan")})
    with pytest.raises(ValidationError):
        adapter.validate_python({"test": "power_law", "max_ci_width": 3})


def test_result_round_trips_through_json() -> None:
    rng = np.random.default_rng(2)
    y = np.exp(-np.arange(5))[:, None, None] * (1 + 0.05 * rng.standard_normal((5, 3, 1)))
    res = MonotoneTrend(direction="decreasing").evaluate(frame(y, [0, 0.2, 0.4, 0.6, 0.8]))
    assert res.passed and res.tracked
    again = AssertionResult.from_dict(json.loads(json.dumps(res.to_dict())))
    assert again == res


def test_non_finite_final_value_is_an_error() -> None:
    y = np.ones((3, 3, 1))
    y[1, 1, 0] = np.inf
    with pytest.raises(AssertionDataError, match="finite"):
        MonotoneTrend(direction="decreasing").evaluate(frame(y, [0.0, 0.5, 1.0]))
