"""Baselines and verdicts: the tolerance rule at its edges, verdict mapping, exit codes, baseline
files, `baseline update`, `compare`, and one planted break on a tiny claim that really trains."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from builders import CLAIMS, SCENARIO, baseline_of, save_run, synthetic_outcome, synthetic_records, write_claim
from scipy import stats

from lipbench import baselines as bl
from lipbench.assertions import Tracked
from lipbench.baselines import (
    build_baseline,
    compare_tracked,
    judge_against,
    read_baseline,
    verdict_for,
    write_baseline,
)
from lipbench.cli import main
from lipbench.outcome import STATUSES, ClaimOutcome, Comparison, Verdict, exit_code
from lipbench.records import RunRecord
from lipbench.runner import judge
from lipbench.session import Session
from lipbench.suite import load_claim

PASS, FAIL, ERROR, XFAIL, XPASS, SKIPPED = STATUSES
REGRESSED, IMPROVED, NEW = Verdict.REGRESSED, Verdict.IMPROVED, Verdict.NEW

# --------------------------------------------------------------------------- the tolerance rule at its edges


def tracked(value: float, se: float | None, better: str = "higher", scale: float = 1.0, target=None, df=math.inf):
    return Tracked("stat", value, se, df if se is not None else None, better, scale, target)


SE = 0.01  # each side's standard error: the pooled one is SE * sqrt(2)
Z = float(stats.norm.isf(bl.ALPHA / 2))  # the critical |t| with infinite degrees of freedom


@pytest.mark.parametrize(
    ("z", "size", "expected"),
    [
        (-(Z + 0.01), 0.5, "regressed"),  # just significant, large
        (-(Z - 0.01), 0.5, "large but not significant"),  # size without significance passes
        (Z + 0.01, 0.5, "improved"),
        (-50.0, 0.101, "regressed"),  # just outside the size band, significant
        (-50.0, 0.099, "significant but small"),  # significance without size passes
        (-1.0, 0.05, "within tolerance"),
    ],
)
def test_tolerance_edges(z: float, size: float, expected: str) -> None:
    change = z * SE * math.sqrt(2)
    scale = abs(change) / size  # so that |change| / scale == size exactly
    result = compare_tracked(tracked(1.0, SE, scale=scale), tracked(1.0 + change, SE))
    assert result.outcome == expected
    assert result.t == pytest.approx(z)
    assert result.size == pytest.approx(size)


def test_welch_degrees_of_freedom_widen_the_band() -> None:
    change = -5 * SE * math.sqrt(2)  # t = -5, 14% of a scale of 0.5
    wide = compare_tracked(tracked(1.0, SE, scale=0.5, df=2), tracked(1.0 + change, SE, df=2))
    assert wide.df == pytest.approx(4.0) and wide.outcome == "large but not significant"  # t(4) needs 5.6
    assert compare_tracked(tracked(1.0, SE, scale=0.5), tracked(1.0 + change, SE)).outcome == "regressed"


def test_direction_lower_and_closer() -> None:
    assert compare_tracked(tracked(0.02, 1e-4, "lower", 0.05), tracked(0.03, 1e-4, "lower")).outcome == "regressed"
    assert compare_tracked(tracked(0.03, 1e-4, "lower", 0.05), tracked(0.02, 1e-4, "lower")).outcome == "improved"
    same = compare_tracked(tracked(-1.2, 0.01, "closer", 1.0, -1.0), tracked(-0.8, 0.01, "closer", 1.0, -1.0))
    assert same.change == pytest.approx(0.0) and same.outcome != "regressed"
    away = compare_tracked(tracked(-1.0, 0.01, "closer", 1.0, -1.0), tracked(-1.5, 0.01, "closer", 1.0, -1.0))
    assert away.outcome == "regressed" and away.change == pytest.approx(-0.5)
    assert away.t < 0  # the sign of t says better (+) or worse (-), for "closer" too


def test_missing_or_zero_errors() -> None:
    assert compare_tracked(tracked(1.0, None), tracked(0.0, None)).outcome == "not compared"
    assert compare_tracked(tracked(1.0, 0.01), tracked(0.5, None)).outcome == "not compared"
    assert compare_tracked(tracked(1.0, 0.0), tracked(1.0, 0.0)).outcome == "within tolerance"
    moved = compare_tracked(tracked(1.0, 0.0), tracked(0.5, 0.0))
    assert moved.outcome == "regressed"


# --------------------------------------------------------------------------- verdicts


@pytest.mark.parametrize("name", list(CLAIMS))
def test_every_test_tracks_statistics_with_errors(tmp_path: Path, name: str) -> None:
    outcome = synthetic_outcome(tmp_path / "coll", name)
    assert outcome.status == PASS, outcome.sentence
    summary = bl.summarise(outcome)
    assert summary["tracked"], name
    for t in summary["tracked"]:
        assert t["se"] is not None and t["se"] >= 0 and math.isfinite(t["value"]), t
    assert sum(s["n"] for s in summary["per_sweep"]) == len(outcome.records)
    # the first tracked statistic is the assertion's headline wherever there is one sweep group or none;
    # monotone_trend tracks its effect, not rho (a discrete rank statistic: see docs/assertions.md)
    if outcome.result.test == "monotone_trend":
        assert [t["name"] for t in summary["tracked"]] == [outcome.result.effect_size_name]
        assert summary["tracked"][0]["value"] == pytest.approx(outcome.result.effect_size, rel=1e-9)
    elif name != "batch":  # (power_law's headline is the same slope, fitted by linregress)
        assert summary["tracked"][0]["value"] == pytest.approx(outcome.result.statistic, rel=1e-9)
    else:
        assert summary["tracked"][0]["value"] == pytest.approx(outcome.result.statistic, rel=1e-6)


def test_verdict_mapping(tmp_path: Path) -> None:
    outcome = synthetic_outcome(tmp_path / "coll", "label_noise")
    base = baseline_of(outcome)
    h = outcome.claim.scenario_hash()
    assert judge_against(outcome, None, device="cpu").verdict == NEW
    same = judge_against(outcome, base, device="cpu", file_hash=h)
    assert same.verdict == PASS and same.comparable and all(c.t == 0 for c in same.changes)

    weaker = synthetic_outcome(tmp_path / "coll", "label_noise", strength=0.5)
    assert weaker.status == PASS  # the assertion still holds ...
    assert judge_against(weaker, base, device="cpu").verdict == REGRESSED  # ... but much less strongly
    assert judge_against(outcome, baseline_of(weaker), device="cpu").verdict == IMPROVED

    failing = synthetic_outcome(tmp_path / "coll", "label_noise", strength=-1.0)
    assert failing.status == FAIL
    assert judge_against(failing, None, device="cpu").verdict == FAIL
    assert judge_against(failing, base, device="cpu").verdict == FAIL

    for status in (ERROR, SKIPPED, XFAIL, XPASS):
        other = ClaimOutcome(outcome.claim, status, outcome.records, outcome.result if status != ERROR else None)
        assert judge_against(other, base, device="cpu").verdict == status


def test_changed_scenario_is_not_comparable(tmp_path: Path) -> None:
    outcome = synthetic_outcome(tmp_path / "coll", "label_noise")
    base = baseline_of(outcome)
    base["scenario_hash"] = "0" * 16
    base["scenario"]["scenario"]["steps"] = 30
    weaker = synthetic_outcome(tmp_path / "coll", "label_noise", strength=0.5)
    result = judge_against(weaker, base, device="cpu", file_hash=weaker.claim.scenario_hash())
    assert result.verdict == PASS and result.comparable is False and not result.changes
    assert "not comparable" in result.sentence and "scenario.steps: 30 → 60" in result.sentence


def test_set_override_is_compared_and_named(tmp_path: Path) -> None:
    folder = tmp_path / "coll"
    base = baseline_of(synthetic_outcome(folder, "label_noise"))
    path = folder / "label_noise.yaml"
    changed = load_claim(path, "quick", ["scenario.optimizer.lr=0.05"])
    weaker = judge(changed, synthetic_records(changed, strength=0.5))
    result = verdict_for(weaker, tmp_path / "none", "cpu")  # no file there: NEW ...
    assert result.verdict == NEW
    root = tmp_path / "baselines"
    write_baseline(base, bl.baseline_path(root, "coll", "label_noise", "quick"))
    result = verdict_for(weaker, root, "cpu")  # ... and with the file's baseline: compared, --set named
    assert result.verdict == REGRESSED and result.comparable
    assert "scenario changed by --set (scenario.optimizer.lr: 0.1 → 0.05)" in result.sentence


def test_set_free_hash_is_the_one_taken_when_the_claim_was_loaded(tmp_path: Path) -> None:
    folder = tmp_path / "coll"
    base = baseline_of(synthetic_outcome(folder, "label_noise"))
    path = folder / "label_noise.yaml"
    changed = load_claim(path, "quick", ["scenario.optimizer.lr=0.05"])
    path.unlink()  # judging does not read the suite file again
    root = tmp_path / "baselines"
    write_baseline(base, bl.baseline_path(root, "coll", "label_noise", "quick"))
    result = verdict_for(judge(changed, synthetic_records(changed, strength=0.5)), root, "cpu")
    assert result.comparable and "scenario changed by --set (scenario.optimizer.lr: 0.1 → 0.05)" in result.sentence


def test_other_device_is_compared_and_said(tmp_path: Path) -> None:
    outcome = synthetic_outcome(tmp_path / "coll", "label_noise")
    result = judge_against(outcome, baseline_of(outcome, device="NVIDIA H100 80GB HBM3"), device="cpu")
    assert result.verdict == PASS and "compared as a new draw of seeds" in result.sentence


def test_unreadable_baseline_is_not_comparable(tmp_path: Path) -> None:
    outcome = synthetic_outcome(tmp_path / "coll", "label_noise")
    path = bl.baseline_path(tmp_path / "b", "coll", "label_noise", "quick")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    result = verdict_for(outcome, tmp_path / "b", "cpu")
    assert result.verdict == PASS and result.comparable is False and "cannot be read" in result.sentence


@pytest.mark.parametrize(
    ("verdicts", "strict", "code"),
    [
        ([PASS, IMPROVED, NEW, XFAIL, SKIPPED], False, 0),
        ([PASS, XPASS], False, 0),
        ([PASS, XPASS], True, 1),
        ([PASS, REGRESSED], False, 1),
        ([FAIL], False, 1),
        ([NEW, ERROR], False, 1),
    ],
)
def test_exit_codes(tmp_path: Path, verdicts: list[str], strict: bool, code: int) -> None:
    claim = load_claim(write_claim(tmp_path, "label_noise", strict=strict), "quick")
    outcomes = []
    for v in verdicts:
        o = ClaimOutcome(claim, v if v in STATUSES else PASS)
        o.attach(Comparison(v, o.status))
        outcomes.append(o)
    assert exit_code(outcomes) == code
    assert exit_code(outcomes, bad_input=True) == max(code, 1)  # a refused file beside them: an ERROR
    assert exit_code([], bad_input=True) == 2  # refused, and nothing ran


# --------------------------------------------------------------------------- baseline files


def test_baseline_file_round_trip(tmp_path: Path) -> None:
    outcome = synthetic_outcome(tmp_path / "coll", "batch")
    data = build_baseline(outcome, {"device": "cpu", "lipbench": "0.1.0", "torch": "x", "git_commit": "abc"})
    path = write_baseline(data, bl.baseline_path(tmp_path / "b", "coll", "batch", "quick"))
    assert path == tmp_path / "b" / "coll" / "batch.quick.json"
    text = path.read_text()
    assert text.startswith('{\n  "schema_version": 3,\n  "collection": "coll",')  # indent 2, fixed order
    back = read_baseline(path)
    assert back == json.loads(json.dumps(data))
    assert list(back) == [
        "schema_version",
        "collection",
        "claim",
        "profile",
        "file",
        "scenario_hash",
        "status",
        "assertion",
        "summary",
        "tolerance",
        "environment",
        "scenario",
    ]
    write_baseline(
        build_baseline(outcome, {"device": "cpu", "lipbench": "0.1.0", "torch": "x", "git_commit": "abc"}), path
    )
    assert path.read_text() == text  # the same records give the same bytes (fixed bootstrap seed)
    assert back["tolerance"]["alpha"] == bl.ALPHA and back["summary"]["tracked"][0]["target"] == -1.0
    path.write_text(text.replace('"schema_version": 3', '"schema_version": 99'))
    with pytest.raises(bl.BaselineError, match="schema_version: 99 is not a format this lipbench reads"):
        read_baseline(path)


def test_a_claim_judged_at_initial_is_compared_at_its_first_record(tmp_path: Path) -> None:
    """Its baseline statistic is K_0's: a change that moves only the final K (a learning rate) moves nothing."""
    assertion = {"test": "monotone_trend", "direction": "increasing", "at": "initial", "alpha": 0.05}
    claim = load_claim(write_claim(tmp_path / "coll", "label_noise", assertion=assertion), "quick")

    def records(final_factor: float) -> list[RunRecord]:
        rng = np.random.default_rng(0)
        out = []
        for spec in claim.runs():
            k0 = 1.0 + spec.sweep_value + rng.normal(0, 0.05)
            k = np.array([k0, k0 * final_factor * (1 + spec.sweep_value)])
            steps = np.array([0, 100], dtype=np.int64)
            out.append(
                RunRecord(
                    claim.name,
                    spec.run_id,
                    spec.sweep_value,
                    spec.init_seed,
                    spec.sampling_seed,
                    steps,
                    {"K": k, "log_K": np.log(k)},
                )
            )
        return out

    base, new = judge(claim, records(1.0)), judge(claim, records(50.0))
    result = judge_against(new, baseline_of(base), device="cpu")
    assert base.status == PASS and result.verdict == PASS, result.sentence  # was IMPROVED (log ratio 6.24 -> 12.4)
    assert result.changes and all(c.change == 0 for c in result.changes)
    assert [s["mean"] for s in bl.summarise(new)["per_sweep"]] == [s["mean"] for s in bl.summarise(base)["per_sweep"]]


def test_old_format_baseline_is_not_comparable(tmp_path: Path) -> None:
    outcome = synthetic_outcome(tmp_path / "coll", "label_noise")
    path = tmp_path / "b.json"
    write_baseline(build_baseline(outcome, {"device": "cpu"}), path)
    path.write_text(path.read_text().replace('"schema_version": 3', '"schema_version": 1'))
    result = verdict_for(outcome, tmp_path / "none", "cpu")
    assert result.comparable is None
    try:
        read_baseline(path)
    except bl.BaselineError as e:
        problem = str(e)
    result = judge_against(outcome, None, device="cpu", path=path, problem=problem)
    assert (
        result.comparable is False
        and "not comparable" in result.sentence
        and "schema_version: 1 is not a format" in result.sentence
    )


def test_finish_claim_puts_the_verdict_on_outcome_and_result(tmp_path: Path) -> None:
    outcome = synthetic_outcome(tmp_path / "coll", "label_noise")
    folder = Session(tmp_path / "out", "cpu", mlflow=False, baselines=tmp_path / "b").finish_claim(outcome)
    assert outcome.verdict == NEW and outcome.comparison.verdict == NEW
    saved = json.loads((folder / "result.json").read_text())
    assert saved["verdict"] == NEW and saved["status"] == PASS and saved["summary"]["tracked"]
    assert (folder / "figure.png").stat().st_size > 0


def test_finish_claim_keeps_the_verdict_when_mlflow_cannot_be_opened(tmp_path: Path, monkeypatch) -> None:
    """An MLflow that fails to open (here: its client will not import) is a warning, not a lost claim."""
    import lipbench.tracking

    def broken(*args, **kwargs):
        raise ImportError("cannot import name 'MlflowClient' from 'mlflow'")

    monkeypatch.setattr(lipbench.tracking, "Tracker", broken)
    warnings: list[str] = []
    outcome = synthetic_outcome(tmp_path / "coll", "label_noise")
    session = Session(
        tmp_path / "out", "cpu", tracking_uri="sqlite:///x.db", baselines=tmp_path / "b", warn=warnings.append
    )
    folder = session.finish_claim(outcome)
    assert outcome.verdict == NEW and json.loads((folder / "result.json").read_text())["verdict"] == NEW
    assert len(warnings) == 1 and "MLflow logging of label_noise failed" in warnings[0] and str(folder) in warnings[0]


def test_update_from_run_refuses_a_failing_claim_without_force(tmp_path: Path, wide_console) -> None:
    suite = tmp_path / "coll"
    failing = synthetic_outcome(suite, "label_noise", strength=-1.0)
    assert failing.status == FAIL
    results = save_run(tmp_path / "run", [failing], tmp_path / "b")
    path = bl.baseline_path(tmp_path / "b", "coll", "label_noise", "quick")
    argv = ["baseline", "update", str(suite), "--from-run", str(results), "--baselines", str(tmp_path / "b")]
    assert main(argv) == 1 and not path.exists()
    assert main([*argv, "--force"]) == 0 and read_baseline(path)["status"] == FAIL


def test_update_from_run_refuses_a_run_with_another_scenario(tmp_path: Path, wide_console) -> None:
    suite = tmp_path / "coll"
    write_claim(suite, "label_noise")
    changed = load_claim(suite / "label_noise.yaml", "quick", ["scenario.steps=30"])
    results = save_run(tmp_path / "run", [judge(changed, synthetic_records(changed))], tmp_path / "b")
    argv = ["baseline", "update", str(suite), "--from-run", str(results), "--baselines", str(tmp_path / "b")]
    assert main(argv) == 1
    assert main([*argv, "--force"]) == 0
    assert main(["baseline", "update", str(suite), "--from-run", str(tmp_path / "nowhere")]) == 2


def test_update_show_and_compare_commands(tmp_path: Path, wide_console, capsys) -> None:
    suite, b = tmp_path / "coll", tmp_path / "b"
    run_a = save_run(tmp_path / "a", [synthetic_outcome(suite, n) for n in ("label_noise", "sampling")], b)
    assert main(["baseline", "update", str(suite), "--from-run", str(run_a), "--baselines", str(b)]) == 0
    assert sorted(p.name for p in (b / "coll").iterdir()) == ["label_noise.quick.json", "sampling.quick.json"]
    capsys.readouterr()
    assert main(["baseline", "show", str(suite), "--baselines", str(b)]) == 0
    shown = capsys.readouterr().out
    assert "coll/label_noise" in shown and "spearman_rho = " in shown and "same as the file's" in shown

    weaker = synthetic_outcome(suite, "label_noise", strength=0.5)
    run_b = save_run(tmp_path / "bb", [weaker, synthetic_outcome(suite, "sampling")], b)
    assert weaker.verdict == REGRESSED
    from lipbench.compare import compare_rows, sides

    rows = {r["claim"]: r for r in compare_rows(sides(str(run_a)), sides(str(run_b)))}
    assert rows["label_noise"]["judgement"] == "regressed" and rows["sampling"]["judgement"] == "within tolerance"
    assert rows["label_noise"]["a"]["verdict"] == NEW and rows["label_noise"]["b"]["verdict"] == REGRESSED
    capsys.readouterr()
    assert main(["compare", str(run_a), str(run_b)]) == 0
    table = capsys.readouterr().out
    assert "NEW → REGRESSED" in table and "spearman_rho" in table and "regressed" in table
    assert main(["compare", str(run_a), str(tmp_path / "missing")]) == 2


# --------------------------------------------------------------------------- a planted break, really trained

TINY = {
    "schema_version": 1,
    "name": "tiny_noise",
    "claim": "K decreases as label noise grows (tiny synthetic check).",
    "scenario": SCENARIO,
    "sweep": {"axis": "scenario.label_noise", "values": [0.0, 0.5, 0.9]},
    "seeds": {"init": 3, "sampling": 1},
    "assertion": {"test": "monotone_trend", "direction": "decreasing", "alpha": 0.05},
    "profiles": {"quick": {}},
}


def test_planted_break_is_caught(tmp_path: Path, wide_console) -> None:
    """A baseline stored from a run; the same claim with its learning rate halved by --set must not pass."""
    suite = tmp_path / "tiny" / "tiny_noise.yaml"
    suite.parent.mkdir()
    suite.write_text(yaml.safe_dump(TINY, sort_keys=False))
    common = ["--profile", "quick", "--device", "cpu", "--workers", "1", "--no-mlflow"]
    common += ["--baselines", str(tmp_path / "b")]
    assert main(["baseline", "update", str(suite), *common, "--out", str(tmp_path / "r0")]) == 0
    assert read_baseline(tmp_path / "b" / "tiny" / "tiny_noise.quick.json")["status"] == PASS

    assert main(["run", str(suite), *common, "--out", str(tmp_path / "r1")]) == 0  # unchanged: PASS
    again = json.loads((tmp_path / "r1" / "tiny" / "tiny_noise" / "result.json").read_text())
    assert again["verdict"] == PASS and again["baseline"]["comparable"] is True

    broken = ["--set", "scenario.optimizer.lr=0.05", "--out", str(tmp_path / "r2")]
    assert main(["run", str(suite), *common, *broken]) == 1
    result = json.loads((tmp_path / "r2" / "tiny" / "tiny_noise" / "result.json").read_text())
    assert result["verdict"] in (REGRESSED, FAIL)
    assert "scenario changed by --set (scenario.optimizer.lr: 0.1 → 0.05)" in result["baseline"]["sentence"]


def test_mlflow_verdict_tags_and_run_ids(tmp_path: Path, wide_console, capsys) -> None:
    """The verdict is an MLflow tag; compare, baseline update --from-run and report accept claim run ids."""
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    suite, b = tmp_path / "coll", tmp_path / "b"
    ids = []
    for strength, out in ((1.0, "a"), (0.5, "bb")):
        session = Session(tmp_path / out, "cpu", tracking_uri=uri, baselines=b, warn=pytest.fail)
        folder = session.finish_claim(synthetic_outcome(suite, "label_noise", strength=strength))
        ids.append((folder / "mlflow_run_id").read_text().strip())
        if out == "a":
            argv = [
                "baseline",
                "update",
                str(suite),
                "--from-run",
                ids[0],
                "--tracking-uri",
                uri,
                "--baselines",
                str(b),
            ]
            assert main(argv) == 0
    client = MlflowClient(uri)
    first, second = (client.get_run(i).data for i in ids)
    assert first.tags["lipbench.verdict"] == NEW and first.tags["lipbench.baseline"] == "none"
    assert second.tags["lipbench.verdict"] == REGRESSED and second.tags["lipbench.baseline"] == "compared"
    assert second.metrics["baseline.log_ratio_extreme_values.t"] < 0
    assert "final.mean" in second.metrics and "assertion.statistic" in second.metrics
    capsys.readouterr()
    assert main(["compare", ids[0], ids[1], "--tracking-uri", uri]) == 0
    assert "NEW → REGRESSED" in capsys.readouterr().out
    assert main(["report", ids[1], "--tracking-uri", uri, "--out", str(tmp_path / "rep")]) == 0
    assert "data:image/png;base64," in (tmp_path / "rep" / "report.html").read_text()
    assert main(["compare", "0" * 32, ids[1], "--tracking-uri", uri]) == 2
