"""`lipbench run` end to end on tiny synthetic claims: exit codes, results folder, MLflow store."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from lipbench.cli import main
from lipbench.executors import RAY_INSTALL
from lipbench.records import RunRecord
from lipbench.suite import load_claim

RUN = ["--workers", "1", "--profile", "quick"]


def _result(out: Path, collection: str, claim: str) -> dict:
    return json.loads((out / collection / claim / "result.json").read_text())


def test_run_logs_a_parent_and_a_child_per_run_to_mlflow(
    write_suite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)  # MLflow puts a sqlite store's artifacts under ./mlruns
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = write_suite("logged")
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["run", str(path), *RUN, "--out", str(out), "--tracking-uri", uri]) == 0
    assert "Traceback" not in capsys.readouterr().err

    folder = out / "suites" / "logged"
    result = _result(out, "suites", "logged")
    assert (result["status"], result["runs"]) == ("PASS", 6)
    assert result["assertion"]["passed"] is True
    records = [RunRecord.from_dict(d) for d in json.loads((folder / "records.json").read_text())]
    assert sorted(r.run_id for r in records) == sorted(r.run_id for r in load_claim(path, "quick").runs())
    png = (folder / "figure.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("lipbench/suites")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.tags["lipbench.claim"] == "logged"
    assert parent.data.tags["lipbench.status"] == "PASS"
    assert parent.info.run_id == (folder / "mlflow_run_id").read_text().strip()
    assert len(children) == 6
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {c.info.run_name for c in children} == {r.run_id for r in records}
    for child in children:
        history = client.get_metric_history(child.info.run_id, "K")
        assert sorted(m.step for m in history) == [0, 1, 2]  # steps 2, record_every 1


def test_run_exits_1_when_the_claim_is_false(write_suite, tmp_path: Path, wide_console, capsys) -> None:
    # K_0 grows with the init scale, so "decreasing" is false.
    path = write_suite("false_claim", {"assertion": {"direction": "decreasing"}})
    out = tmp_path / "out"
    assert main(["run", str(path), *RUN, "--no-mlflow", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "FAIL false-claim: Final K decreases with init_std" in captured.out
    result = _result(out, "suites", "false-claim")
    assert result["status"] == "FAIL"
    assert result["assertion"]["passed"] is False
    assert result["assertion"]["statistic"] > 0  # the trend is there, the other way


def test_run_exits_0_for_an_expected_failure(write_suite, tmp_path: Path) -> None:
    path = write_suite(
        "known_false",
        {"assertion": {"direction": "decreasing"}, "expect": "fail", "expect_reason": "K_0 grows with scale."},
    )
    out = tmp_path / "out"
    assert main(["run", str(path), *RUN, "--no-mlflow", "--out", str(out)]) == 0
    assert _result(out, "suites", "known-false")["status"] == "XFAIL"


def test_two_collections_may_hold_claims_of_the_same_name(write_suite, tmp_path: Path) -> None:
    """The runner keys a claim by (collection, name, profile): each collection's claim is run and judged."""
    rising = write_suite("same", folder=tmp_path / "rising")
    falling = write_suite("same", {"assertion": {"direction": "decreasing"}}, folder=tmp_path / "falling")
    out = tmp_path / "out"
    assert main(["run", str(rising), str(falling), *RUN, "--no-mlflow", "--out", str(out)]) == 1
    assert _result(out, "rising", "same")["status"] == "PASS"
    assert _result(out, "falling", "same")["status"] == "FAIL"
    assert _result(out, "falling", "same")["runs"] == 6  # its own runs only, not the other claim's


def test_missing_dataset_is_an_error_that_says_how_to_get_it(
    write_suite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("LIPBENCH_OFFLINE", "1")
    empty = tmp_path / "no-data"
    empty.mkdir()
    write_suite("needs_mnist", {"scenario": {"dataset": {"name": "mnist"}}})
    path = write_suite("still_runs")
    out = tmp_path / "out"
    argv = ["run", str(path.parent), *RUN, "--no-mlflow", "--out", str(out), "--data-root", str(empty)]
    assert main(argv) == 1
    assert "Traceback" not in capsys.readouterr().err

    missing = _result(out, "suites", "needs-mnist")
    assert missing["status"] == "ERROR"
    assert missing["runs"] == 6
    assert "Dataset 'mnist' is not in" in missing["error"]
    assert str(empty) in missing["error"]
    assert "run with LIPBENCH_OFFLINE unset" in missing["error"]
    assert "put the torchvision files under" in missing["error"]
    assert not any(empty.iterdir())  # nothing was downloaded

    assert _result(out, "suites", "still-runs")["status"] == "PASS"


# --------------------------------------------------------------------------- the ray executor, without Ray


def test_without_ray_the_ray_executor_says_how_to_install_it(write_suite, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    out = tmp_path / "out"
    path = write_suite("unrun")
    assert main(["run", str(path), "--profile", "quick", "--no-mlflow", "--out", str(out), "--executor", "ray"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"--executor ray needs Ray, which is not installed: {RAY_INSTALL}" in err
    assert not out.exists()  # refused before anything was trained or saved


def test_the_cli_and_the_pytest_plugin_offer_the_same_executors() -> None:
    from lipbench.cli import build_parser
    from lipbench.executors import EXECUTORS
    from lipbench.options import OPTIONS

    assert OPTIONS["executor"].choices == EXECUTORS  # the one table both faces are built from
    args = build_parser().parse_args(["run", "suites", "--executor", "ray", "--ray-address", "auto"])
    assert (args.executor, args.ray_address) == ("ray", "auto")


def test_every_flag_of_every_command_comes_from_the_option_table() -> None:
    """No command declares a flag of its own: each optional argument is an entry of lipbench.options, with
    the table's default; and the invocation's and the plugin's defaults are the table's."""
    import argparse
    import dataclasses

    from lipbench.cli import build_parser
    from lipbench.invocation import Options
    from lipbench.options import OPTIONS
    from lipbench.pytest_settings import Settings

    def parsers(p: argparse.ArgumentParser):
        yield p
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    yield from parsers(child)

    seen = set()
    for p in parsers(build_parser()):
        for action in p._actions:
            flags = [s for s in action.option_strings if s.startswith("--") and s != "--help"]
            for flag in flags:
                option = OPTIONS.get(flag[2:])
                assert option is not None, f"{p.prog}: {flag} is not in the option table"
                assert action.dest == option.dest and action.default == (option.kwargs()["default"]), (p.prog, flag)
                seen.add(option.name)
    assert seen == set(OPTIONS), set(OPTIONS) - seen  # and every entry is offered by some command
    settings, options = Settings(), Options()
    for f in dataclasses.fields(Options):
        if f.name in {o.dest for o in OPTIONS.values()}:
            assert getattr(options, f.name) == OPTIONS[f.name.replace("_", "-")].default, f.name
    assert (settings.engine, settings.executor, settings.device_option) == (
        options.engine,
        options.executor,
        options.device,
    )
