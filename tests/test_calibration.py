"""`lipbench calibrate` on the shipped suites: a fast run in every test session, the full one behind `slow`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lipbench.cli import main

SUITES = Path(__file__).resolve().parents[1] / "suites"


def _rows(out: Path, profile: str) -> list[dict]:
    doc = json.loads((out / f"calibration-{profile}.json").read_text())
    assert (out / f"calibration-{profile}.html").read_text().count("<tr>") == len(doc["rows"]) + 1
    return doc["rows"]


def test_calibrate_writes_a_row_per_claim_and_noise(tmp_path: Path, wide_console) -> None:
    args = ["--profile", "quick", "--replicates", "200", "--path", "units", "--out", str(tmp_path)]
    assert main(["calibrate", str(SUITES), *args]) == 0
    rows = _rows(tmp_path, "quick")
    assert len(rows) == 2 * 21 and {r["family"] for r in rows} == {"normal", "skewed"}
    assert all(r["model"] == "baseline" for r in rows)  # every quick claim has a committed baseline
    for r in rows:
        for key in ("false_pass", "power"):
            assert 0 <= r[key]["low"] <= r[key]["rate"] <= r[key]["high"] <= 1 and r[key]["n"] == 200


def test_calibrate_judges_simulated_records_of_every_family(tmp_path: Path, wide_console) -> None:
    args = ["--profile", "quick", "--record-replicates", "20", "--out", str(tmp_path)]
    assert main(["calibrate", str(SUITES / "implications" / "unbounded_growth.yaml"), *args]) == 0
    rows = _rows(tmp_path, "quick")
    assert [r["path"] for r in rows] == ["units"] * 2 + ["records"] * 7
    assert {r["family"] for r in rows if r["path"] == "records"} >= {"lognormal", "t3", "growth_spread", "saturating"}
    assert all(r["power"]["n"] == 20 for r in rows if r["path"] == "records")


def test_calibrate_refuses_too_few_replicates(tmp_path: Path, capsys) -> None:
    assert main(["calibrate", str(SUITES), "--replicates", "10", "--out", str(tmp_path)]) == 2
    assert "--replicates must be at least 50" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["quick", "paper"])
def test_calibration_keeps_every_false_pass_rate_with_normal_noise(tmp_path: Path, profile: str, wide_console):
    """Every claim, both paths, every family, at a third of the README's replicates (which take 6-7 minutes a
    profile on this CPU): each normal-noise false-pass rate within its Monte-Carlo interval of alpha."""
    args = ["--profile", profile, "--replicates", "600", "--record-replicates", "100", "--out", str(tmp_path)]
    assert main(["calibrate", str(SUITES), *args]) == 0
    for r in _rows(tmp_path, profile):
        if r["family"] == "normal":
            assert r["meets"]["false_pass"], r


def _row(name: str, profile: str, family: str):
    from lipbench.calibration import calibrate_claim
    from lipbench.suite import load_claim

    claim = load_claim(next(SUITES.rglob(f"{name}.yaml")), profile)
    return next(r for r in calibrate_claim(claim, reps=2000, baselines=None, families=(family,)))


@pytest.mark.parametrize("name", ["batch_size", "variance_scaling"])
def test_variance_exponents_hold_their_false_pass_rate_when_k_is_skewed(name: str) -> None:
    # The model-based interval alone trusted a kurtosis estimated from few runs: 7.2 % (batch_size) and
    # 7.9 % (variance_scaling) false passes at alpha 5 % with log-normal noise on the paper design.
    row = _row(name, "paper", "skewed")
    assert row.false_pass.rate <= row.alpha, row.false_pass


def test_monotone_baseline_false_alarm_holds_with_few_blocks() -> None:
    # Tracking rho (a few discrete values per block, 3 blocks) raised 1.0 % false alarms at 0.5 %.
    row = _row("initialization_std", "paper", "normal")
    assert row.false_alarm is not None and row.false_alarm.rate <= 0.005, row.false_alarm
