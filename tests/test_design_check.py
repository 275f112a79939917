"""The design check sizes a design on the model fitted to the claim's stored baseline (lipbench.design)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lipbench.cli import main
from lipbench.design import design_check, design_model
from lipbench.outcome import Verdict
from lipbench.runner import judge
from lipbench.simulate import simulate_records
from lipbench.suite import load_claim

ROOT = Path(__file__).resolve().parents[1]
WIDTH = ROOT / "suites" / "implications" / "initialization_width.yaml"
INVARIANCE = ROOT / "suites" / "implications" / "seed_invariance.yaml"
STORED = ROOT / "baselines" / "implications"


def noisier_baseline(tmp_path: Path, sd: float) -> Path:
    """A copy of the shipped initialization_width baseline whose K_0 varies between init draws by `sd` (log)."""
    root = tmp_path / "baselines"
    (root / "implications").mkdir(parents=True)
    doc = json.loads((STORED / "initialization_width.quick.json").read_text())
    y = np.asarray(doc["assertion"]["details"]["data"]["y"])
    doc["assertion"]["details"]["data"]["y"] = (y * np.exp(np.random.default_rng(0).normal(0, sd, y.shape))).tolist()
    (root / "implications" / "initialization_width.quick.json").write_text(json.dumps(doc))
    return root


def test_the_design_check_sizes_on_the_spread_the_stored_baseline_measured(tmp_path: Path) -> None:
    claim = load_claim(WIDTH, "quick")
    assert design_model(claim).source == "baseline"
    assert design_check(claim).problem is None
    # The same design, had its runs spread as the width-8 net's do (sd 0.2 of log K_0), cannot see 0.2:
    # under the default model (sd 0.05) it would have been accepted.
    noisy = noisier_baseline(tmp_path, 0.2)
    problem = design_check(claim, noisy).problem
    assert "power" in problem and "fitted to the stored baseline" in problem, problem
    assert str(noisy) in problem
    assert design_check(claim, tmp_path / "none").problem is None  # no baseline: the default model


def test_a_baseline_of_another_scenario_is_not_fitted_but_one_with_other_seeds_is(tmp_path: Path) -> None:
    noisy = noisier_baseline(tmp_path, 0.1)  # a fitted run sd of 0.092: 4 init draws have power 0.52
    assert "power" in design_check(load_claim(WIDTH, "quick"), noisy).problem
    other_lr = load_claim(WIDTH, "quick", ["scenario.optimizer.lr=0.001"])
    assert design_model(other_lr, noisy).source == "default"
    assert design_check(other_lr, noisy).problem is None
    more_draws = load_claim(WIDTH, "quick", ["seeds.init=8"])
    assert design_model(more_draws, noisy).source == "baseline"
    assert design_check(more_draws, noisy).problem is None  # resized: 8 draws see 0.2 at this spread (0.90)


def test_validate_and_run_refuse_a_design_short_of_power_under_the_fitted_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    noisy = noisier_baseline(tmp_path, 0.2)
    assert main(["validate", str(WIDTH), "--baselines", str(noisy)]) == 1
    err = capsys.readouterr().err
    assert "[profile quick]" in err and "fitted to the stored baseline" in err and "Traceback" not in err
    out = tmp_path / "out"
    args = ["run", str(WIDTH), "--baselines", str(noisy), "--no-mlflow", "--no-cache", "--out", str(out)]
    assert main(args) == 1
    result = json.loads((out / "implications" / "initialization_width" / "result.json").read_text())
    assert result["status"] == "ERROR" and result["runs"] == 0  # before any training
    assert "fitted to the stored baseline" in result["error"]


def test_an_expected_failure_short_of_power_runs_and_its_sentence_says_so(tmp_path: Path) -> None:
    # 3 x 5 runs reach power 0.4 at the quick runs' spread: refused for a claim expected to pass; for one
    # expected to fail, a note its XFAIL / XPASS sentence carries.
    small = ["seeds.init=3", "seeds.sampling=5"]
    assert "power" in design_check(load_claim(INVARIANCE, "quick", small)).problem
    claim = load_claim(INVARIANCE, "quick", [*small, "expect=fail", "expect_reason=too few runs"])
    check = design_check(claim)
    assert check.problem is None and "power" in check.note and "fitted to the stored baseline" in check.note
    params = claim.claim.assertion.scenarios(design_model(claim).params)["alternative"]
    records = simulate_records(claim, params, "normal", np.random.default_rng(3))
    outcome = judge(claim, records, design_note=check.note)
    assert outcome.status in (Verdict.XFAIL, Verdict.XPASS)
    assert "no evidence against the claim" in outcome.result.sentence and check.note in outcome.result.sentence


def test_validate_notes_an_expected_failure_short_of_power(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = tmp_path / "implications" / "seed_invariance.yaml"  # the collection the shipped baseline is stored under
    suite.parent.mkdir()
    text = INVARIANCE.read_text().replace("seeds: {init: 6, sampling: 6}", "seeds: {init: 3, sampling: 5}")
    suite.write_text(text + "    expect: fail\n    expect_reason: too few runs\n")
    assert main(["validate", str(suite), "--baselines", str(ROOT / "baselines")]) == 0
    err = capsys.readouterr().err
    [note] = [line for line in err.splitlines() if line.startswith("lipbench: note: ")]
    assert "[profile quick, expect: fail]" in note and "fitted to the stored baseline" in note, err
    assert "lipbench: error" not in err


def test_every_shipped_design_has_its_power_under_the_fitted_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(ROOT / "suites")]) == 0
    assert "lipbench: error" not in capsys.readouterr().err


@pytest.mark.parametrize("units", [[[1.0]], [[-1.0, 2.0], [3.0, 4.0]], "abc"], ids=["one value", "other shape", "text"])
def test_a_baseline_that_gives_no_model_falls_back_to_the_default_and_says_so(
    tmp_path: Path, units, capsys: pytest.CaptureFixture[str]
) -> None:
    # A baseline edited by hand: fitting it divided by zero or broadcast shapes (a traceback before training).
    root = tmp_path / "baselines"
    (root / "implications").mkdir(parents=True)
    doc = json.loads((STORED / "initialization_width.quick.json").read_text())
    doc["assertion"]["details"]["data"]["y"] = units
    (root / "implications" / "initialization_width.quick.json").write_text(json.dumps(doc))
    model = design_model(load_claim(WIDTH, "quick"), root)
    assert model.source == "default" and "gives no model to fit" in model.label
    assert main(["validate", str(WIDTH), "--baselines", str(root)]) == 0
    assert "Traceback" not in capsys.readouterr().err
