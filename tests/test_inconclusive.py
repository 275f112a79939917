"""INCONCLUSIVE: an equivalence test whose interval straddles its margin, with the seeds that would decide it."""

from __future__ import annotations

from pathlib import Path

import pytest
from builders import synthetic_records, write_claim

from lipbench.baselines import build_baseline, judge_against, store
from lipbench.inconclusive import straddles
from lipbench.outcome import Verdict
from lipbench.runner import judge
from lipbench.suite import load_claim


@pytest.mark.parametrize(
    ("found", "expected"),
    [
        ([(0.2, 0.8, 0.0, 1.0)], False),  # inside: it passed, nothing to decide
        ([(-0.2, 0.8, 0.0, 1.0)], True),  # crosses the low edge
        ([(0.5, 1.5, 0.0, 1.0)], True),  # crosses the high edge
        ([(-1.0, 2.0, 0.0, 1.0)], True),  # wider than the band
        ([(1.2, 1.5, 0.0, 1.0)], False),  # wholly outside: evidence against the claim
        ([(0.5, 1.5, 0.0, 1.0), (2.0, 3.0, 0.0, 1.0)], False),  # one interval outside: FAIL
        ([(float("nan"), 1.5, 0.0, 1.0)], False),
    ],
)
def test_straddles(found, expected) -> None:
    assert straddles(found) is expected


def outcome_of(tmp_path: Path, expected: float, margin: float, sampling: int = 10):
    claim = load_claim(
        write_claim(
            tmp_path,
            "batch",
            assertion={"test": "power_law", "expected_exponent": expected, "margin": margin},
            seeds={"init": 2, "sampling": sampling},
        ),
        "quick",
    )
    return judge(claim, synthetic_records(claim, seed=3))


def test_power_law_is_pass_fail_or_inconclusive_by_where_its_interval_lies(tmp_path: Path) -> None:
    passed = outcome_of(tmp_path / "a", -1.0, 1.0)  # the runs' exponent is -1
    assert passed.status == Verdict.PASS
    low, high = passed.result.ci_low, passed.result.ci_high
    failed = outcome_of(tmp_path / "b", 3.0, 0.5)  # the interval lies far below 2.5
    assert failed.status == Verdict.FAIL and "straddles" not in failed.sentence
    edge = (low + high) / 2 + (high - low) / 4  # a band whose upper edge cuts the interval
    straddling = outcome_of(tmp_path / "c", edge - 0.2, 0.2)
    assert straddling.status == Verdict.INCONCLUSIVE
    assert "straddles the margin" in straddling.sentence and "sampling seeds" in straddling.sentence
    assert "— INCONCLUSIVE" in straddling.sentence


def test_inconclusive_keeps_a_baseline_comparison_and_is_not_stored(tmp_path: Path) -> None:
    base = outcome_of(tmp_path / "a", -1.0, 1.0)
    low, high = base.result.ci_low, base.result.ci_high
    edge = (low + high) / 2 + (high - low) / 4
    inconclusive = outcome_of(tmp_path / "c", edge - 0.2, 0.2)
    assert inconclusive.status == Verdict.INCONCLUSIVE
    baseline = build_baseline(base, {"device": "cpu"})
    baseline["scenario_hash"] = inconclusive.claim.scenario_hash()
    result = judge_against(inconclusive, baseline, device="cpu")
    assert result.verdict in (Verdict.INCONCLUSIVE, Verdict.REGRESSED) and result.comparable
    path, message = store(inconclusive, tmp_path / "b", {"device": "cpu"})
    assert path is None and "INCONCLUSIVE" in message


def test_an_expected_failure_stays_xfail(tmp_path: Path) -> None:
    claim = load_claim(
        write_claim(
            tmp_path,
            "batch",
            assertion={"test": "power_law", "expected_exponent": 3.0, "margin": 0.5},
            expect="fail",
            expect_reason="test",
        ),
        "quick",
    )
    assert judge(claim, synthetic_records(claim, seed=3)).status == Verdict.XFAIL


def test_inconclusive_rate_of_a_design_by_simulation() -> None:
    """The calibration's measure: at the band's edge half the intervals straddle it; far inside, none do."""
    import numpy as np

    from lipbench.assertions import PowerLaw
    from lipbench.assertions.base import Design
    from lipbench.inconclusive import inconclusive_rate

    spec = PowerLaw(expected_exponent=-1.0, margin=0.5)
    design = Design(tuple(float(b) for b in (8, 16, 32, 64, 128, 256)), 2, 10, 2)
    scenarios = spec.scenarios(spec.default_model(design))
    at_edge = inconclusive_rate(spec, design, scenarios["null"], np.random.default_rng(0), 400)
    inside = inconclusive_rate(spec, design, scenarios["alternative"], np.random.default_rng(0), 400)
    assert 0.3 < at_edge <= 1.0 and at_edge > inside
