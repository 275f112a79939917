"""Records simulated from models the tests do not assume (lipbench.simulate), judged by runner.judge.

Degenerate draws are ERRORs with a sentence; each miss an independent simulation found is a case
here (each failed before the fix it names).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from lipbench.assertions.base import wilson
from lipbench.assertions.init import DESIGN_LAYER, finite_size_ratio
from lipbench.calibration import calibrate_claim_records
from lipbench.design import design_check, design_model
from lipbench.outcome import Verdict
from lipbench.runner import judge
from lipbench.simulate import simulate_records
from lipbench.suite import load_claim

SUITES = Path(__file__).resolve().parents[1] / "suites"


def claim(name: str, profile: str = "quick", overrides: tuple[str, ...] = ()):
    return load_claim(next(SUITES.rglob(f"{name}.yaml")), profile, list(overrides))


def records(c, family: str = "normal", scenario: str = "alternative", seed: int = 0):
    params = design_model(c).params
    return simulate_records(c, c.claim.assertion.scenarios(params)[scenario], family, np.random.default_rng(seed))


def with_metric(recs, name: str, change):
    """The records with metric `name` of each run replaced by change(run record)."""
    return [dataclasses.replace(r, metrics={**r.metrics, name: change(r)}) for r in recs]


def pass_rate(c, params: dict, family: str, reps: int, seed: int = 1) -> tuple[float, float, float]:
    rng = np.random.default_rng(seed)
    outcomes = [judge(c, simulate_records(c, params, family, rng)) for _ in range(reps)]
    assert all(o.status != Verdict.ERROR for o in outcomes), next(o.error for o in outcomes if o.error)
    k = sum(o.result.passed for o in outcomes)
    return (k / reps, *wilson(k, reps))


# --------------------------------------------------------------------------- degenerate data: ERROR, never a verdict


def assert_error(c, recs, *words: str) -> None:
    outcome = judge(c, recs)
    assert outcome.status == Verdict.ERROR, (outcome.status, outcome.result and outcome.result.sentence)
    for w in words:
        assert w in outcome.error, outcome.error


def test_the_simulated_records_are_judged_without_error() -> None:
    for name in ("initialization", "unbounded_growth", "seed_invariance", "batch_size", "label_corruption"):
        c = claim(name)
        assert judge(c, records(c)).status in (Verdict.PASS, Verdict.FAIL), name


def test_identical_draws_under_different_init_seeds_are_an_error() -> None:
    # Was PASS: the one-draw check counted seed labels, and a zero standard error was accepted.
    c = claim("initialization")
    recs = records(c)
    first = {r.sweep_value: r.metrics for r in recs if r.init_seed == c.claim.seeds.base}
    copied = [dataclasses.replace(r, metrics=first[r.sweep_value]) for r in recs]
    assert_error(c, copied, "init seeds 0 and 1 give the same draw")


def test_identical_log_k_paths_are_an_error() -> None:
    # Was PASS with p = 0: five identical paths gave a zero standard error.
    c = claim("unbounded_growth")
    recs = records(c)
    assert_error(c, with_metric(recs, "log_K", lambda r: recs[0].metrics["log_K"]), "same log_K path")


def test_a_constant_quantity_is_an_error() -> None:
    c = claim("unbounded_growth")
    assert_error(c, with_metric(records(c), "log_K", lambda r: np.full(len(r.steps), 2.0)), "constant")
    c = claim("label_corruption")
    assert_error(c, with_metric(records(c), "K", lambda r: np.full(len(r.steps), 7.0)), "every run has the same")


def test_identical_seed_blocks_are_an_error() -> None:
    c = claim("label_corruption")
    recs = records(c)
    first = {r.sweep_value: r.metrics for r in recs if r.init_seed == c.claim.seeds.base}
    copied = [dataclasses.replace(r, metrics=first[r.sweep_value]) for r in recs]
    assert_error(c, copied, "give the same final K at every sweep value")


def test_a_sampling_spread_at_rounding_level_is_an_error() -> None:
    # Was PASS: the check was var <= 0, and a spread of 1e-12 passed the invariance claim.
    c = claim("seed_invariance")
    recs = records(c)
    level = {r.init_seed: r.metrics["K"] for r in recs if r.sampling_seed == c.claim.seeds.base}
    rounded = with_metric(recs, "K", lambda r: level[r.init_seed] * (1 + 1e-12 * r.sampling_seed))
    assert_error(c, rounded, "every sampling seed gives the same final K", "sampling stream")


def test_k_identical_across_sampling_seeds_is_an_error_not_an_exponent() -> None:
    # Was a meaningless exponent from variances of 7e-30.
    c = claim("batch_size")
    recs = records(c)
    base = {(r.sweep_value, r.init_seed): r.metrics["K"] for r in recs if r.sampling_seed == c.claim.seeds.base}
    same = with_metric(recs, "K", lambda r: base[(r.sweep_value, r.init_seed)] + 1e-15 * r.sampling_seed)
    assert_error(c, same, "every sampling seed gives the same final K")


# --------------------------------------------------------------------------- the misses, fixed


@pytest.mark.parametrize("family", ["lognormal", "t3", "uneven_spread"])
def test_invariance_holds_alpha_when_k_is_skewed_heavy_tailed_or_unevenly_spread(family: str) -> None:
    # CV exactly at the 5 % limit, the rest fitted to the baseline. On 3 x 5 runs without a kurtosis
    # floor this simulation gave 7.1 % (log-normal, skewness 2), 7.2 % (t3) and 2.0 % (uneven CV).
    c = claim("seed_invariance")
    params = design_model(c).params
    null = c.claim.assertion.scenarios(params)["null"]
    # Held within the Monte-Carlo interval, as calibrate counts a target met: on 6 x 6 runs, t3 gives
    # 4.5 % [3.6, 5.7] over 1500 sets; 1000 sets fail this for a true rate from about 6.5 %.
    rate, low, _ = pass_rate(c, null, family, 1000)
    assert low <= c.claim.assertion.alpha, rate
    old = claim("seed_invariance", "quick", ("seeds.init=3", "seeds.sampling=5"))
    assert "power" in design_check(old).problem  # the floor's price: 3 x 5 runs no longer reach 0.8 at CV 2.5 %


@pytest.mark.parametrize("profile", ["quick", "paper"])
def test_init_scaling_has_power_at_the_finite_size_ratio(profile: str) -> None:
    # The 10 x 256 output layer's sigma_max sits 2.8 % below s(sqrt m + sqrt n); with 10 init draws the
    # power there was 74 % while the design check measured it at ratio 1 (100 %) and accepted the design.
    c = claim("initialization", profile)
    mean, sd = finite_size_ratio(*DESIGN_LAYER)
    assert mean == pytest.approx(0.9716, abs=0.001) and sd == pytest.approx(0.024, abs=0.001)
    assert design_check(c).problem is None and c.claim.seeds.init >= 12
    ten = claim("initialization", profile, ("seeds.init=10",))
    assert "power" in design_check(ten).problem
    layers = {"mean": [0.992, 0.994, mean], "sd": [0.008, 0.005, sd]}  # 256 x 512, 512 x 784, 10 x 256
    rate, _, high = pass_rate(c, layers, "normal", 300)
    assert high >= 0.8, rate


@pytest.mark.parametrize("name", ["label_corruption", "batch_size"])
def test_a_conditional_verdict_says_which_init_draws_it_speaks_for(name: str) -> None:
    # With init-specific trends (or exponents) the within-block permutation (the within-init variance)
    # speaks for the init draws that were run, not for init draws in general: 5.4-11.5 % (1 %) and
    # 8.5-19.5 % (5 %) false passes for networks in general. The sentence now names the draws, and one
    # init seed (label_corruption passed with p = 1/120) is refused before any training.
    c = claim(name)
    outcome = judge(c, records(c, "init_specific"))
    assert "for these 3 init draws" in outcome.result.sentence
    one = claim(name, "quick", ("seeds.init=1",))
    assert "at least 2 init seeds" in design_check(one).problem


def test_the_record_path_reports_every_family_of_a_test() -> None:
    rows = calibrate_claim_records(claim("unbounded_growth"), reps=20)
    assert {r.family for r in rows} == {
        "fitted",
        "normal",
        "lognormal",
        "t3",
        "init_specific",
        "growth_spread",
        "saturating",
    }
    assert all(r.path == "records" and r.model == "baseline" and r.errors == 0 for r in rows)
    fa = next(r for r in rows if r.family == "normal").false_alarm
    assert fa is not None and fa.n == 10  # consecutive pairs: stored as a baseline (JSON), then compared


# --------------------------------------------------------------------------- INCONCLUSIVE in the calibration


def test_calibration_counts_inconclusive_verdicts_of_equivalence_tests_only() -> None:
    """At the edge of its margin a power-law interval is centred on the edge, so it mostly straddles it:
    most non-passes there are INCONCLUSIVE, not FAIL. A trend test has no margin: no INCONCLUSIVE rate."""
    [row] = calibrate_claim_records(claim("batch_size"), reps=40, families=("normal",))
    assert row.inconclusive is not None and row.inconclusive_null is not None
    assert row.inconclusive.rate <= 1 - row.power.rate + 1e-12  # INCONCLUSIVE is one way of not passing
    assert row.inconclusive_null.rate <= 1 - row.false_pass.rate + 1e-12
    assert row.inconclusive_null.rate > 0.5, row.inconclusive_null
    [trend] = calibrate_claim_records(claim("noisy_gradient"), reps=20, families=("normal",))
    assert trend.inconclusive is None and trend.inconclusive_null is None


def test_the_unit_path_reports_the_same_inconclusive_share_at_the_margin() -> None:
    from lipbench.calibration import calibrate_claim

    [row] = calibrate_claim(claim("batch_size"), reps=400, families=("normal",))
    assert row.inconclusive_null is not None and row.inconclusive_null.rate > 0.5, row.inconclusive_null
    assert row.inconclusive.rate <= 1 - row.power.rate + 1e-12
