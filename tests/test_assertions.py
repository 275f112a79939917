"""Synthetic-data checks of the statistical assertions: power, false alarms, design checks, I/O."""

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
    GrowthTrend,
    Invariance,
    MonotoneTrend,
    PowerLaw,
)

SEEDS = [0, 1, 2, 3, 4]


def finals_frame(final: dict[tuple[float, int, int], float], rng: np.random.Generator, steps: int = 4) -> pd.DataFrame:
    """Records with `steps` rows per run; only the last row holds the given final K.

    Earlier rows hold unrelated values, so a test that does not take the final row fails.
    """
    rows = []
    for i, ((sweep, init, sampling), k) in enumerate(final.items()):
        for s in range(steps):
            last = s == steps - 1
            value = k if last else float(rng.uniform(0.1, 100.0))
            rows.append(
                {
                    "run": f"r{i:03d}",
                    "sweep_value": sweep,
                    "init_seed": init,
                    "sampling_seed": sampling,
                    "step": s * 100,
                    "K": value,
                    "log_K": math.log(value),
                    "loss": float(rng.uniform()),
                    "accuracy": float(rng.uniform()),
                }
            )
    frame = pd.DataFrame(rows)
    return frame.sample(frac=1.0, random_state=0)  # row order must not matter


def trajectories_frame(paths: dict[tuple[float, int], np.ndarray], every: int = 50) -> pd.DataFrame:
    """Records of log_K trajectories keyed by (sweep_value, init_seed)."""
    rows = []
    for i, ((sweep, init), path) in enumerate(paths.items()):
        for j, y in enumerate(path):
            rows.append(
                {
                    "run": f"r{i:03d}",
                    "sweep_value": sweep,
                    "init_seed": init,
                    "sampling_seed": 0,
                    "step": j * every,
                    "K": math.exp(y),
                    "log_K": float(y),
                    "loss": 0.0,
                    "accuracy": 0.0,
                }
            )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- monotone_trend

NOISE = [0.0, 0.1, 0.2, 0.3, 0.4]


def monotone_records(seed: int, slope: float, noise: float = 0.05) -> pd.DataFrame:
    """Final K = 10 * (1 - slope * p) * lognormal noise, 3 init x 2 sampling seeds per p."""
    rng = np.random.default_rng(seed)
    final = {
        (p, i, s): 10.0 * (1.0 - slope * p) * math.exp(rng.normal(0.0, noise))
        for p in NOISE
        for i in range(3)
        for s in range(2)
    }
    return finals_frame(final, rng)


@pytest.mark.parametrize("seed", SEEDS)
def test_monotone_passes_on_true_decrease(seed: int) -> None:
    records = monotone_records(seed, slope=1.5)
    records.attrs["sweep_name"] = "label_noise"
    res = MonotoneTrend(direction="decreasing").evaluate(records)
    assert res.passed, res.sentence
    assert res.statistic < -0.8 and res.pvalue < 0.01 and res.n == 30
    assert res.ci_low < res.statistic < res.ci_high
    assert res.effect_size < 0
    assert "label_noise" in res.sentence and res.sentence.endswith("PASS.")
    means = [g["mean"] for g in res.details["groups"]]
    assert means == sorted(means, reverse=True)


@pytest.mark.parametrize("seed", SEEDS)
def test_monotone_fails_without_trend(seed: int) -> None:
    res = MonotoneTrend(direction="decreasing").evaluate(monotone_records(seed, slope=0.0))
    assert not res.passed, res.sentence
    assert "FAIL" in res.sentence


def test_monotone_fails_on_reversed_trend() -> None:
    res = MonotoneTrend(direction="increasing").evaluate(monotone_records(0, slope=1.5))
    assert not res.passed
    assert res.statistic < 0 and res.pvalue > 0.5


def test_monotone_fails_on_weak_noisy_trend() -> None:
    res = MonotoneTrend(direction="decreasing").evaluate(monotone_records(0, slope=0.3, noise=0.5))
    assert not res.passed, res.sentence


def test_monotone_means_requirement() -> None:
    """A significant rank trend whose group means wiggle fails only when monotone_means is on."""
    rng = np.random.default_rng(0)
    centres = {0.0: 10.0, 0.1: 9.0, 0.2: 9.3, 0.3: 7.0, 0.4: 6.0}
    final = {(p, i, 0): c * math.exp(rng.normal(0.0, 0.01)) for p, c in centres.items() for i in range(6)}
    records = finals_frame(final, rng)
    strict = MonotoneTrend(direction="decreasing").evaluate(records)
    loose = MonotoneTrend(direction="decreasing", monotone_means=False).evaluate(records)
    assert strict.pvalue < 0.01 and not strict.passed
    assert "not monotone" in strict.sentence
    assert loose.passed


def test_monotone_small_sample_uses_permutation_p() -> None:
    """Three perfectly ordered runs give exact p = 1/6, not the t approximation's 0."""
    rng = np.random.default_rng(0)
    records = finals_frame({(float(p), 0, 0): 10.0 - p for p in range(3)}, rng)
    res = MonotoneTrend(direction="decreasing").evaluate(records)
    assert res.pvalue == pytest.approx(1 / 6)
    assert res.details["pvalue_method"] == "permutation"
    assert not res.passed


def test_monotone_check_design() -> None:
    model = MonotoneTrend(direction="increasing")
    design = {"init_seeds": 1, "sampling_seeds": 1, "records_per_run": 10}
    assert "sweep values" in model.check_design(sweep_values=1, **design)
    assert "never below alpha" in model.check_design(sweep_values=4, **design)  # best p = 1/24
    assert model.check_design(sweep_values=6, **design) is None  # best p = 1/720
    two = {"sampling_seeds": 1, "records_per_run": 10}
    assert model.check_design(sweep_values=2, init_seeds=3, **two) is not None  # best p = 1/20
    assert model.check_design(sweep_values=5, init_seeds=3, **two) is None


def test_monotone_errors_are_clear() -> None:
    records = monotone_records(0, slope=1.0)
    with pytest.raises(AssertionDataError, match="column"):
        MonotoneTrend(direction="increasing", quantity="sigma_9").evaluate(records)
    with pytest.raises(ValueError, match="needs a sweep"):
        MonotoneTrend(direction="increasing").evaluate(records.assign(sweep_value=np.nan))
    with pytest.raises(ValueError, match="at least 2 distinct sweep values"):
        MonotoneTrend(direction="increasing").evaluate(records.assign(sweep_value=1.0))
    with pytest.raises(ValueError, match="received no records"):
        MonotoneTrend(direction="increasing").evaluate(records.iloc[:0])


# --------------------------------------------------------------------------- growth_trend


def growth_paths(seed: int, drift: float, kind: str, runs: int = 3, n: int = 80) -> dict:
    """log_K paths: drift per record plus a random walk ('walk') or iid noise ('iid')."""
    rng = np.random.default_rng(seed)
    paths = {}
    for r in range(runs):
        noise = rng.normal(0.0, 0.01, n)
        shape = np.cumsum(noise) if kind == "walk" else noise
        paths[(math.nan, r)] = 1.0 + drift * np.arange(n) + shape
    return paths


@pytest.mark.parametrize("seed", SEEDS)
def test_growth_passes_on_steady_growth(seed: int) -> None:
    records = trajectories_frame(growth_paths(seed, drift=0.005, kind="walk"))
    res = GrowthTrend().evaluate(records)
    assert res.passed, res.sentence
    assert res.ci_low > 0 and res.pvalue < 0.01 and res.n == 40
    assert 0.03 < res.statistic < 0.2  # true drift: 0.005 per 50 steps = 0.1 per 1000
    assert res.effect_size_name == "relative_growth_of_K" and res.effect_size > 0


@pytest.mark.parametrize("seed", SEEDS)
def test_growth_fails_on_plateau_with_iid_noise(seed: int) -> None:
    records = trajectories_frame(growth_paths(seed, drift=0.0, kind="iid"))
    assert not GrowthTrend().evaluate(records).passed


def test_growth_fails_on_decrease() -> None:
    records = trajectories_frame(growth_paths(0, drift=-0.005, kind="walk"))
    res = GrowthTrend().evaluate(records)
    assert not res.passed and res.statistic < 0


def test_growth_rarely_passes_a_driftless_random_walk() -> None:
    """Mann–Kendall alone is fooled by random walks; the increments test keeps false passes rare."""
    mk_fooled = passes = 0
    for seed in range(50):
        res = GrowthTrend().evaluate(trajectories_frame(growth_paths(100 + seed, 0.0, "walk", runs=1)))
        passes += res.passed
        mk_fooled += res.details["groups"][0]["mann_kendall_pvalue"] < 0.01
    assert passes <= 2  # about alpha = 1%, allowed up to ~5%
    assert mk_fooled >= 10  # why the increments test exists


def test_growth_reports_worst_sweep_value() -> None:
    rng = np.random.default_rng(0)
    paths = {}
    for b, drift in ((32.0, 0.005), (64.0, 0.005), (128.0, 0.0)):
        for r in range(2):
            paths[(b, r)] = drift * np.arange(60) + rng.normal(0.0, 0.003, 60)
    records = trajectories_frame(paths)
    records.attrs["sweep_name"] = "batch_size"
    res = GrowthTrend().evaluate(records)
    assert not res.passed
    assert "batch_size = 128" in res.sentence
    assert [g["passed"] for g in res.details["groups"]] == [True, True, False]


def test_growth_window_and_check_design() -> None:
    model = GrowthTrend()
    design = {"sweep_values": 1, "init_seeds": 1, "sampling_seeds": 1}
    assert "never below alpha" in model.check_design(records_per_run=12, **design)  # 6 records
    assert model.check_design(records_per_run=16, **design) is None  # 8 records: p = 1/128
    assert "at least 3" in model.check_design(records_per_run=4, **design)
    records = trajectories_frame(growth_paths(0, drift=0.005, kind="walk", n=4))
    with pytest.raises(ValueError, match="late window"):
        model.evaluate(records)


def test_growth_needs_shared_step_grid() -> None:
    records = trajectories_frame(growth_paths(0, drift=0.005, kind="walk"))
    records = records.drop(records.index[(records["run"] == "r000") & (records["step"] == 500)])
    with pytest.raises(ValueError, match="share a step grid"):
        GrowthTrend().evaluate(records)


# --------------------------------------------------------------------------- power_law

BATCHES = [16.0, 32.0, 64.0, 128.0, 256.0, 512.0]


def power_records(
    seed: int,
    exponent: float,
    batches: list[float] = BATCHES,
    init_seeds: int = 4,
    sampling_seeds: int = 16,
) -> pd.DataFrame:
    """Final K = init centre + N(0, var = 0.5 * b^exponent) over sampling seeds."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(8.0, 12.0, init_seeds)
    final = {
        (b, i, s): centres[i] + rng.normal(0.0, math.sqrt(0.5 * b**exponent))
        for b in batches
        for i in range(init_seeds)
        for s in range(sampling_seeds)
    }
    return finals_frame(final, rng, steps=2)


@pytest.mark.parametrize("seed", SEEDS)
def test_power_law_passes_on_inverse_batch_variance(seed: int) -> None:
    res = PowerLaw().evaluate(power_records(seed, exponent=-1.0))
    assert res.passed, res.sentence
    assert res.ci_low <= -1.0 <= res.ci_high and res.n == len(BATCHES)
    assert res.effect_size_name == "r_squared" and res.effect_size > 0.9
    assert [v["sweep_value"] for v in res.details["variances"]] == BATCHES
    assert "intercept" in res.details


@pytest.mark.parametrize("seed", SEEDS)
def test_power_law_fails_when_variance_ignores_batch(seed: int) -> None:
    res = PowerLaw().evaluate(power_records(seed, exponent=0.0))
    assert not res.passed, res.sentence


def test_power_law_fails_on_wrong_exponent() -> None:
    res = PowerLaw().evaluate(power_records(0, exponent=-2.0, sampling_seeds=32))
    assert not res.passed
    assert res.ci_high < -1.0 and "misses" in res.sentence


def test_power_law_fails_on_uninformative_fit() -> None:
    res = PowerLaw().evaluate(
        power_records(3, exponent=-1.0, batches=[32.0, 64.0, 128.0], init_seeds=1, sampling_seeds=2)
    )
    assert not res.passed
    assert res.ci_high - res.ci_low > 3.0 and "too wide" in res.sentence


def test_power_law_check_design_and_errors() -> None:
    model = PowerLaw()
    assert "3 sweep values" in model.check_design(sweep_values=2, init_seeds=2, sampling_seeds=8, records_per_run=5)
    assert "sampling seeds" in model.check_design(sweep_values=5, init_seeds=2, sampling_seeds=1, records_per_run=5)
    assert model.check_design(sweep_values=5, init_seeds=1, sampling_seeds=4, records_per_run=5) is None
    records = power_records(0, exponent=-1.0, sampling_seeds=2)
    one_seed = records[records["sampling_seed"] == 0]
    with pytest.raises(ValueError, match="at least 2 sampling seeds"):
        model.evaluate(one_seed)


# --------------------------------------------------------------------------- invariance


def invariance_records(seed: int, init_cv: float, sampling_cv: float, sweep: list[float] | None = None) -> pd.DataFrame:
    """Final K = 10 * exp(N(0, init_cv)) per init seed * exp(N(0, sampling_cv)) per run."""
    rng = np.random.default_rng(seed)
    final = {}
    for v in sweep or [math.nan]:
        centres = 10.0 * np.exp(rng.normal(0.0, init_cv, 5))
        for i, c in enumerate(centres):
            for s in range(5):
                final[(v, i, s)] = c * math.exp(rng.normal(0.0, sampling_cv))
    return finals_frame(final, rng, steps=3)


@pytest.mark.parametrize("seed", SEEDS)
def test_invariance_passes_when_sampling_barely_matters(seed: int) -> None:
    res = Invariance().evaluate(invariance_records(seed, init_cv=0.2, sampling_cv=0.01))
    assert res.passed, res.sentence
    assert res.ci_high < 0.05 and res.effect_size < 1.0 and res.n == 25
    assert res.details["groups"][0]["init_effect_pvalue"] < 1e-6
    assert len(res.details["groups"][0]["per_init"]) == 5


@pytest.mark.parametrize("seed", SEEDS)
def test_invariance_fails_when_init_seed_has_no_effect(seed: int) -> None:
    res = Invariance().evaluate(invariance_records(seed, init_cv=0.0, sampling_cv=0.01))
    assert not res.passed, res.sentence
    assert res.effect_size is None or res.effect_size > 1.0  # None: no init component at all


def test_invariance_rarely_passes_when_spreads_are_equal() -> None:
    """Sampling spread as large as the init spread is not invariance: the F test must catch it."""
    passes = sum(
        Invariance().evaluate(invariance_records(seed, init_cv=0.01, sampling_cv=0.01)).passed for seed in range(40)
    )
    assert passes <= 4, f"{passes} of 40 equal-spread designs passed"


def test_invariance_fails_when_sampling_spread_exceeds_init_spread() -> None:
    res = Invariance().evaluate(invariance_records(0, init_cv=0.01, sampling_cv=0.02))
    assert not res.passed and res.effect_size > 1.0


def test_invariance_fails_when_spread_above_threshold() -> None:
    res = Invariance().evaluate(invariance_records(0, init_cv=0.5, sampling_cv=0.08))
    assert not res.passed
    assert res.effect_size < 1.0 and res.ci_high > 0.05


def test_invariance_checks_every_sweep_value() -> None:
    good = invariance_records(0, init_cv=0.2, sampling_cv=0.01, sweep=[1.0, 2.0])
    bad = invariance_records(1, init_cv=0.2, sampling_cv=0.2, sweep=[3.0])
    bad["run"] = "b" + bad["run"]
    res = Invariance().evaluate(pd.concat([good, bad]))
    assert not res.passed
    assert "= 3" in res.sentence
    assert [g["passed"] for g in res.details["groups"]] == [True, True, False]
    assert [g["n_runs"] for g in res.details["groups"]] == [25, 25, 25]


def test_invariance_check_design_and_errors() -> None:
    model = Invariance()
    assert "init seeds" in model.check_design(sweep_values=1, init_seeds=1, sampling_seeds=5, records_per_run=5)
    assert "sampling seeds" in model.check_design(sweep_values=1, init_seeds=3, sampling_seeds=2, records_per_run=5)
    assert model.check_design(sweep_values=1, init_seeds=2, sampling_seeds=3, records_per_run=5) is None
    records = invariance_records(0, init_cv=0.2, sampling_cv=0.01)
    with pytest.raises(ValueError, match="at least 3 sampling seeds"):
        model.evaluate(records[records["sampling_seed"] < 2])
    with pytest.raises(ValueError, match="at least 2 init seeds"):
        model.evaluate(records[records["init_seed"] == 0])


# --------------------------------------------------------------------------- result object and schema


def all_results() -> list[AssertionResult]:
    return [
        MonotoneTrend(direction="decreasing").evaluate(monotone_records(0, slope=1.5)),
        GrowthTrend().evaluate(trajectories_frame(growth_paths(0, drift=0.005, kind="walk"))),
        PowerLaw().evaluate(power_records(0, exponent=-1.0)),
        Invariance().evaluate(invariance_records(0, init_cv=0.0, sampling_cv=0.01)),
    ]


def test_results_round_trip_through_json() -> None:
    for res in all_results():
        d = res.to_dict()
        assert list(d) == list(AssertionResult.__dataclass_fields__)
        text = json.dumps(d, allow_nan=False)
        back = AssertionResult.from_dict(json.loads(text))
        assert back.to_dict() == d
        assert back.test == res.test and back.passed == res.passed
        assert res.sentence.count(". ") == 0  # one sentence


def test_to_dict_maps_nan_to_none() -> None:
    res = AssertionResult(
        test="x",
        passed=False,
        statistic=math.nan,
        statistic_name="s",
        threshold=0.0,
        pvalue=math.nan,
        ci_low=None,
        ci_high=math.inf,
        confidence=None,
        effect_size=None,
        effect_size_name=None,
        n=0,
        sentence="s.",
        details={"a": [np.float64("nan"), np.int64(3)], 1: np.bool_(True)},
    )
    d = res.to_dict()
    assert d["statistic"] is None and d["pvalue"] is None and d["ci_high"] is None
    assert d["details"] == {"a": [None, 3], "1": True}
    assert math.isnan(AssertionResult.from_dict(d).statistic)
    with pytest.raises(ValueError, match="keys"):
        AssertionResult.from_dict({"test": "x"})


def test_spec_validation() -> None:
    adapter = TypeAdapter(AssertionSpec)
    spec = adapter.validate_python({"test": "power_law", "expected_exponent": -1})
    assert isinstance(spec, PowerLaw)
    assert {"monotone_trend", "growth_trend", "power_law", "invariance"} <= set(ASSERTIONS)
    with pytest.raises(ValidationError):
        adapter.validate_python({"test": "invariance", "max_spread": 0.1})  # unknown key
    with pytest.raises(ValidationError):
        MonotoneTrend(direction="increasing", alpha=0.7)
    with pytest.raises(ValidationError):
        GrowthTrend(alpha=0.0)
    with pytest.raises(ValidationError):
        GrowthTrend(confidence=0.4)
    with pytest.raises(ValidationError):
        MonotoneTrend()  # direction is required
    with pytest.raises(ValidationError):
        adapter.validate_python({"test": "no_such_test"})
