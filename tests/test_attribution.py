"""Per-layer attribution of every judged statistic, the force split, and their comparison with a baseline."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from builders import SCENARIO, write_claim
from layered import LAYERS, layered_records

from lipbench import attribution, forces
from lipbench.attribution import EXACT, EXACT_TOLERANCE, SHARE, attribute
from lipbench.baselines import build_baseline, judge_against, summarise
from lipbench.outcome import Verdict
from lipbench.records import records_frame
from lipbench.runner import judge
from lipbench.suite import load_claim

SHARE_LINEARISATION = 0.1  # the first-order variance of K within 10 % of the real one at these spreads


def claim_of(tmp_path: Path, name: str, **changes):
    return load_claim(write_claim(tmp_path, name, **changes), "quick")


@pytest.mark.parametrize(
    ("name", "statistic", "method"),
    [
        ("growth", "late_growth", EXACT),
        ("label_noise", "log_ratio_extreme_values", EXACT),
        ("batch", "power_law_exponent", SHARE),
        ("sampling", "within_init_cv", SHARE),
    ],
)
def test_contributions_sum_to_the_judged_statistic(tmp_path: Path, name: str, statistic: str, method: str) -> None:
    claim = claim_of(tmp_path, name)
    records = layered_records(claim)
    outcome = judge(claim, records)
    (found,) = attribute(claim.claim.assertion, records_frame(records))
    tracked = {t.name: t for t in outcome.result.tracked}[statistic]
    assert found.statistic == statistic and found.method == method
    assert found.value == pytest.approx(tracked.value, abs=1e-12)  # the verdict's own statistic
    assert [c.layer for c in found.layers] == list(range(LAYERS))
    assert abs(sum(c.value for c in found.layers) - tracked.value) <= EXACT_TOLERANCE
    assert all(c.se is not None and c.se > 0 and c.df >= 1 for c in found.layers)
    if method == SHARE:
        assert found.linearisation is not None and found.linearisation < SHARE_LINEARISATION


def test_exact_split_is_each_layers_own_statistic(tmp_path: Path) -> None:
    """A layer's late growth is the growth_trend statistic of its log sigma, on the same runs."""
    claim = claim_of(tmp_path, "growth")
    records = layered_records(claim, rates=(0.003, 0.0, 0.001))
    (found,) = attribute(claim.claim.assertion, records_frame(records))
    per_run = [c.units for c in found.layers]
    assert all(len(u) == 3 for u in per_run)  # one unit per run, as the verdict's
    means = [c.value for c in found.layers]
    assert means[0] == pytest.approx(0.003 * 500, abs=0.05) and abs(means[1]) < 0.05
    assert found.layers[0].se == pytest.approx(np.std(per_run[0], ddof=1) / math.sqrt(3))


def test_sde_agreement_error_splits_by_layer(tmp_path: Path) -> None:
    claim = claim_of(
        tmp_path,
        "growth",
        assertion={"test": "sde_agreement", "tolerance": 0.25},
        scenario={**json.loads(json.dumps(write_claim.__globals__["SCENARIO"])), "record": ["sde"]},
    )
    records = layered_records(claim, sde=True)
    outcome = judge(claim, records)
    (found,) = attribute(claim.claim.assertion, records_frame(records))
    assert found.method == EXACT and found.statistic == "relative_error"
    assert abs(sum(c.value for c in found.layers) - outcome.result.statistic) < 1e-9


def test_force_split_of_the_probe_and_of_the_cheap_drift(tmp_path: Path) -> None:
    claim = claim_of(tmp_path, "growth")
    sde = forces.force_split(records_frame(layered_records(claim, sde=True)))
    terms = sde[["mu", "eps", "beta2", "disc", "residual"]].sum(axis=1)
    assert np.allclose(terms, sde["observed"], atol=1e-12)  # the terms and the residual add up to d log sigma
    assert np.allclose(sde["disc"], 0.0, atol=1e-12) and (sde["beta2"] < 0).all() and (sde["eps"] > 0).all()
    # mu carries the planted growth: rate_l per step over 1000 steps
    by_layer = sde.groupby("layer")["mu"].mean().to_numpy()
    assert by_layer == pytest.approx(np.array([0.002, 0.001, 0.0005]) * 1000, rel=1e-9)
    cheap = forces.force_split(records_frame(layered_records(claim, drift=True)))
    assert set(cheap.columns) >= {"drift", "remainder"} and "mu" not in cheap
    assert np.allclose(cheap["drift"] + cheap["remainder"], cheap["observed"])
    assert forces.force_split(records_frame(layered_records(claim))) is None  # neither: no split


def test_a_planted_one_layer_break_is_explained(tmp_path: Path) -> None:
    """Layer 1 stops growing: REGRESSED, and the layers are named in the order of their measured change."""
    claim = claim_of(tmp_path, "growth")
    base = judge(claim, layered_records(claim, seed=1, drift=True))
    broken = judge(claim, layered_records(claim, seed=2, rates=(0.002, 0.0, 0.0006), drift=True))
    baseline = json.loads(json.dumps(build_baseline(base, {"device": "cpu", "torch": "2.0"})))
    result = judge_against(broken, baseline, device="cpu", env={"device": "cpu", "torch": "2.1"})
    assert result.verdict == Verdict.REGRESSED
    (late,) = result.attribution
    changes = {row["layer"]: row["change"] for row in late["layers"]}
    assert [row["layer"] for row in late["layers"]] == sorted(changes, key=lambda k: -abs(changes[k]))
    assert late["layers"][0]["layer"] == 1 and late["layers"][0]["t"] < 0 and late["layers"][0]["p"] < 0.005
    assert late["layers"][0]["current_se"] > 0  # the frozen layer's own contribution, with its interval
    assert sum(row["change"] for row in late["layers"]) == pytest.approx(late["change"], abs=1e-9)
    assert "layer 1" in result.explanation and "% mini-batch drift" in result.explanation
    assert "torch: 2.0 → 2.1" in result.environment_differences and "environment differs" in result.sentence
    back = result.to_dict()
    assert back["attribution"][0]["layers"][0]["layer"] == 1 and back["explanation"] == result.explanation


def test_a_drift_change_is_not_blamed_on_noise(tmp_path: Path) -> None:
    """A change that acts on the gradient moves int mu; the noise terms stay within their errors."""
    claim = claim_of(tmp_path, "growth")
    base = summarise(judge(claim, layered_records(claim, seed=1, sde=True)))
    new = summarise(judge(claim, layered_records(claim, seed=2, rates=(0.001, 0.0005, 0.0002), sde=True)))
    changes = forces.compare(base["forces"], new["forces"])
    totals = {c["term"]: c for c in changes if c["layer"] is None}
    assert totals["mu"]["p"] < 0.005 and totals["mu"]["change"] < 0
    share = forces.shares(changes)
    assert share["mu"] > 0.9 and abs(share["noise"]) < 0.05
    text = forces.clause(changes)
    assert f"is {100 * share['mu']:.0f} % drift int mu/sigma" in text and "noise terms unchanged" in text


def test_a_format_2_baseline_still_compares_without_attribution(tmp_path: Path) -> None:
    claim = claim_of(tmp_path, "growth")
    base = judge(claim, layered_records(claim, seed=1))
    old = json.loads(json.dumps(build_baseline(base, {"device": "cpu"})))
    old["schema_version"] = 2
    del old["summary"]["attribution"], old["summary"]["forces"]
    result = judge_against(judge(claim, layered_records(claim, seed=2)), old, device="cpu")
    assert result.comparable is True and result.verdict == Verdict.PASS and not result.attribution
    assert any("format 2" in n for n in result.notes)


def test_records_without_layers_have_no_attribution(tmp_path: Path) -> None:
    claim = claim_of(tmp_path, "growth")
    frame = records_frame(layered_records(claim))
    frame = frame.drop(columns=[c for c in frame if c.startswith("sigma_")])
    assert attribute(claim.claim.assertion, frame) == [] and attribution.layers_of(frame) == []


def test_an_attribution_that_breaks_never_costs_the_verdict(tmp_path: Path, monkeypatch) -> None:
    claim = claim_of(tmp_path, "growth")
    outcome = judge(claim, layered_records(claim))

    def broken(*args):
        raise IndexError("planted")

    monkeypatch.setitem(attribution.RULES, "growth_trend", broken)
    summary = summarise(outcome)
    assert summary["attribution"] == [] and summary["tracked"] and summary["forces"] is None


def test_a_format_2_baseline_of_a_convnet_is_not_comparable(tmp_path: Path) -> None:
    """Format 2 took a conv layer's sigma of its reshaped kernel: a run whose conv layers are operators (the
    records name them with summary.sigma_bracket_<l>) is never compared with it; under conv: reshaped it is."""
    claim = claim_of(tmp_path, "growth")
    base = judge(claim, layered_records(claim, seed=1))
    old = json.loads(json.dumps(build_baseline(base, {"device": "cpu"})))
    old["schema_version"] = 2
    runs = layered_records(claim, seed=2)
    for record in runs:
        record.summary["sigma_bracket_0"] = 1e-6
    result = judge_against(judge(claim, runs), old, device="cpu")
    assert result.comparable is False and "reshaped kernel" in result.notes[0]
    scenario = {**SCENARIO, "lipschitz": {"conv": "reshaped"}}  # K keeps the format 2 meaning: the rule is silent
    reshaped = load_claim(write_claim(tmp_path / "reshaped", "growth", scenario=scenario), "quick")
    notes = judge_against(judge(reshaped, runs), old, device="cpu").notes
    assert not any("reshaped kernel" in n for n in notes)
