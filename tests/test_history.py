"""`lipbench explain`, `lipbench history`, the report's waterfall and history, on stored synthetic runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from builders import write_claim
from layered import layered_records

from lipbench.baselines import baseline_path, build_baseline, write_baseline
from lipbench.cli import main
from lipbench.history import from_results, series
from lipbench.report import write_report
from lipbench.results import update_result
from lipbench.runner import judge
from lipbench.session import Session
from lipbench.suite import load_claim

COMMITS = ("a" * 40, "b" * 40, "c" * 40)


def stored_run(
    tmp_path: Path, out: str, seed: int, rates=(0.002, 0.001, 0.0005), commit=None, date=None, baselines=None
) -> Path:
    """One invocation's results folder of the synthetic growth claim (runs with the cheap drift columns)."""
    claim = load_claim(write_claim(tmp_path / "suite", "growth"), "quick")
    outcome = judge(claim, layered_records(claim, seed=seed, rates=rates, drift=True))
    session = Session(tmp_path / out, "cpu", mlflow=False, baselines=baselines or tmp_path / "none", warn=pytest.fail)
    folder = session.finish_claim(outcome)
    if commit is not None:
        env = json.loads((folder / "result.json").read_text())["environment"]
        update_result(folder, environment={**env, "git_commit": commit, "git_dirty": False, "date": date})
    return tmp_path / out


def test_explain_prints_the_table_and_the_change_against_a_baseline(tmp_path: Path, wide_console, capsys) -> None:
    base = stored_run(tmp_path, "base", 1)
    claim = load_claim(write_claim(tmp_path / "suite", "growth"), "quick")
    outcome = judge(claim, layered_records(claim, seed=1, drift=True))
    path = write_baseline(
        build_baseline(outcome, {"device": "cpu"}), baseline_path(tmp_path / "b", claim.collection, claim.name, "quick")
    )
    broken = stored_run(tmp_path, "broken", 2, rates=(0.002, 0.0, 0.0005), baselines=tmp_path / "b")
    result = json.loads(next(broken.rglob("result.json")).read_text())
    assert result["verdict"] == "REGRESSED" and "layer 1" in result["baseline"]["sentence"]
    assert result["baseline"]["attribution"][0]["layers"][0]["layer"] == 1
    assert (next(broken.rglob("attribution.json"))).is_file()
    assert main(["explain", str(base)]) == 0
    out = capsys.readouterr().out
    assert "late_growth" in out and "layer 2" in out and "mini-batch drift" in out
    for against in (str(path), str(tmp_path / "b"), str(base)):
        assert main(["explain", str(broken), "--against", against]) == 0
        out = capsys.readouterr().out
        assert "share of change" in out and "environment differs" in out
        table = out[out.index("share of change") :]
        assert table.index("layer 1") < table.index("layer 0")  # the largest change first


def test_history_marks_the_step_and_the_report_draws_it(tmp_path: Path, wide_console, capsys) -> None:
    """Three commits; the third breaks layer 1: history marks it, the report draws the history."""
    folders = [
        stored_run(tmp_path, "r1", 1, commit=COMMITS[0], date="2026-01-01T00:00:00+00:00"),
        stored_run(tmp_path, "r3", 3, rates=(0.002, 0.0, 0.0005), commit=COMMITS[2], date="2026-01-03T00:00:00+00:00"),
        stored_run(tmp_path, "r2", 2, commit=COMMITS[1], date="2026-01-02T00:00:00+00:00"),
    ]
    found = series(from_results(folders))
    (runs,) = found.values()
    assert [p.commit for p in runs] == list(COMMITS)  # ordered by date, not by folder
    assert not runs[1].steps and "late_growth" in runs[2].steps and "regressed" in runs[2].steps["late_growth"]
    suite = tmp_path / "suite" / "growth.yaml"
    assert main(["history", str(suite), *map(str, folders), "--html", str(tmp_path / "h.html")]) == 0
    out = capsys.readouterr().out
    assert "cccccccccc" in out and "regressed" in out and "◆" in out
    assert "<img" in (tmp_path / "h.html").read_text()
    page = write_report(folders[1], tmp_path / "rep", history=from_results(folders)).read_text()
    assert "history of growth" in page and "contributions by layer" in page and "regressed" in page
    assert main(["history", str(suite), str(tmp_path / "nothing-here")]) == 2


def test_mlflow_parent_run_carries_attribution_and_history_reads_it(tmp_path: Path, wide_console, capsys) -> None:
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    claim = load_claim(write_claim(tmp_path / "suite", "growth"), "quick")
    for seed in (1, 2):
        outcome = judge(claim, layered_records(claim, seed=seed, drift=True))
        Session(
            tmp_path / f"o{seed}", "cpu", tracking_uri=uri, baselines=tmp_path / "none", warn=pytest.fail
        ).finish_claim(outcome)
    client = MlflowClient(uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == f"lipbench/{claim.collection}"]
    parents = [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]
    metrics = parents[0].data.metrics
    assert {"tracked.late_growth", "tracked.late_growth.se", "attribution.late_growth.layer1", "forces.drift"} <= set(
        metrics
    )
    assert "lipbench.git_commit" in parents[0].data.tags
    assert "attribution.json" in {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    from lipbench.history import from_mlflow

    (runs,) = series(from_mlflow(uri, {claim.collection})).values()
    assert len(runs) == 2 and runs[0].tracked["late_growth"].se is not None
    assert main(["explain", parents[0].info.run_id, "--tracking-uri", uri]) == 0  # a claim's run id, too
    assert "late_growth" in capsys.readouterr().out


def test_compare_lists_environment_differences_and_the_layers(tmp_path: Path, wide_console, capsys) -> None:
    a = stored_run(tmp_path, "a", 1, commit=COMMITS[0], date="2026-01-01T00:00:00+00:00")
    b = stored_run(tmp_path, "b", 2, rates=(0.002, 0.0, 0.0005), commit=COMMITS[1], date="2026-01-02T00:00:00+00:00")
    result = next(b.rglob("result.json"))
    data = json.loads(result.read_text())
    data["environment"]["torch"] = "9.9"
    result.write_text(json.dumps(data))
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "environment differs" in out and "→ 9.9" in out and "code: aaaaaaaaaaaa → bbbbbbbbbbbb" in out
    assert "% layer 1" in out


def test_code_state_records_the_commit_and_uncommitted_changes(tmp_path: Path) -> None:
    import subprocess

    from lipbench.provenance import code_state, environment_differences

    assert code_state(tmp_path) == {"git_commit": None, "git_dirty": None}  # not a repository
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=tmp_path, env={**env, "PATH": "/usr/bin:/bin"}, capture_output=True)
        return done.stdout.decode().strip()

    git("init", "-q")
    (tmp_path / "f.py").write_text("x = 1\n")
    git("add", "f.py")
    git("commit", "-qm", "one")
    clean = code_state(tmp_path)
    assert clean == {"git_commit": git("rev-parse", "HEAD"), "git_dirty": False} and len(clean["git_commit"]) == 40
    (tmp_path / "f.py").write_text("x = 2\n")
    assert code_state(tmp_path)["git_dirty"] is True
    (tmp_path / "untracked.txt").write_text("")
    base = {"torch": "2.0", "device": "cpu", "dtype": "float32", "git_commit": clean["git_commit"], "date": "x"}
    now = {**base, "torch": "2.1", "date": "y", "git_dirty": True}
    assert environment_differences(base, now) == [
        "torch: 2.0 → 2.1",
        "code: uncommitted changes in the code under test",
    ]
    assert environment_differences(base, {**base, "git_commit": "f" * 40}) == [
        f"code: {clean['git_commit'][:12]} → ffffffffffff"
    ]
