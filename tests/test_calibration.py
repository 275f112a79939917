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
    assert main(["calibrate", str(SUITES), "--profile", "quick", "--replicates", "200", "--out", str(tmp_path)]) == 0
    rows = _rows(tmp_path, "quick")
    assert len(rows) == 2 * 21 and {r["family"] for r in rows} == {"normal", "skewed"}
    assert all(r["model"] == "baseline" for r in rows)  # every quick claim has a committed baseline
    for r in rows:
        for key in ("false_pass", "power"):
            assert 0 <= r[key]["low"] <= r[key]["rate"] <= r[key]["high"] <= 1 and r[key]["n"] == 200


def test_calibrate_refuses_too_few_replicates(tmp_path: Path, capsys) -> None:
    assert main(["calibrate", str(SUITES), "--replicates", "10", "--out", str(tmp_path)]) == 2
    assert "--replicates must be at least 50" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["quick", "paper"])
def test_full_calibration_holds_every_false_pass_rate_with_normal_noise(tmp_path: Path, profile: str, wide_console):
    assert main(["calibrate", str(SUITES), "--profile", profile, "--out", str(tmp_path)]) == 0
    for r in _rows(tmp_path, profile):
        if r["family"] == "normal":
            assert r["meets"]["false_pass"], r
