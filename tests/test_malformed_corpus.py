"""Every malformed input through every command: exit 2, one line naming the file and the key, no traceback.

The corpus: each suite file of tests/malformed/ (through the commands that read suite files), and
broken copies of a real `result.json` and of a stored baseline (through the commands that read
those), each holding one mistake: not JSON, the wrong JSON type, a missing key, a key of the wrong
type, a format version this lipbench does not read.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from builders import MALFORMED_SUITES, save_run, synthetic_outcome

from lipbench.cli import main

MALFORMED = Path(__file__).parent / "malformed"
#: Loads, but its design cannot reach its alpha (a verdict, not a malformed file): not in this corpus.
SUITES = sorted(MALFORMED / f"{stem}.yaml" for stem in MALFORMED_SUITES)


def _one_line(capsys: pytest.CaptureFixture[str], prefix: str) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"lipbench: error: {prefix}"), lines[0]
    return lines[0]


SUITE_COMMANDS: dict[str, Callable[[Path, Path], list[str]]] = {
    "run": lambda f, tmp: ["run", str(f), "--no-mlflow", "--workers", "1", "--out", str(tmp / "out")],
    "validate": lambda f, tmp: ["validate", str(f)],
    "show": lambda f, tmp: ["show", str(f)],
    "list": lambda f, tmp: ["list", str(f)],
    "calibrate": lambda f, tmp: ["calibrate", str(f), "--replicates", "50", "--out", str(tmp / "cal")],
    "baseline show": lambda f, tmp: ["baseline", "show", str(f), "--baselines", str(tmp / "b")],
    "baseline update": lambda f, tmp: ["baseline", "update", str(f), "--no-mlflow", "--out", str(tmp / "out")],
}


@pytest.mark.parametrize("command", sorted(SUITE_COMMANDS))
def test_every_malformed_suite_file_through_every_command(command: str, tmp_path: Path, capsys) -> None:
    for path in SUITES:
        code = main(SUITE_COMMANDS[command](path, tmp_path))
        assert code == 2, (command, path.name)
        key = MALFORMED_SUITES[path.stem][0]
        _one_line(capsys, f"{path}: {key}: " if key else f"{path}: ")
        assert not (tmp_path / "out").exists()  # nothing trained, no results folder


# --------------------------------------------------------------------------- results and baselines


def _drop(*keys: str) -> Callable[[dict[str, Any]], Any]:
    def change(data: dict[str, Any]) -> dict[str, Any]:
        node = data
        for key in keys[:-1]:
            node = node[key]
        del node[keys[-1]]
        return data

    return change


def _put(value: Any, *keys: str | int) -> Callable[[dict[str, Any]], Any]:
    def change(data: dict[str, Any]) -> dict[str, Any]:
        node: Any = data
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
        return data

    return change


#: case -> (how the good file is broken, the key path the line names, "" for the whole file)
BROKEN: dict[str, tuple[Callable[[dict[str, Any]], Any] | str, str]] = {
    "not_json": ('{"claim": "label_noise", ', ""),
    "a_list": (lambda d: [d], ""),
    "empty": ("", ""),
    "no_claim": (_drop("claim"), "claim"),
    "status_a_number": (_put(3, "status"), "status"),
    "assertion_a_string": (_put("PASS", "assertion"), "assertion"),
    "assertion_n_text": (_put("three", "assertion", "n"), "assertion.n"),
    "tracked_without_scale": (_drop("summary", "tracked", 0, "scale"), "summary.tracked.0.scale"),
    "summary_a_list": (_put([], "summary"), "summary"),
}
RESULT_ONLY: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "result_version_2": (_put(2, "result_version"), "result_version"),
    "seconds_text": (_put("fast", "seconds"), "seconds"),
    "changes_without_name": (_drop("baseline", "changes", 0, "name"), "baseline.changes.0.name"),
}
BASELINE_ONLY: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "schema_version_9": (_put(9, "schema_version"), "schema_version"),
    "no_scenario_hash": (_drop("scenario_hash"), "scenario_hash"),
}


def _broken(good: Path, target: Path, how: Callable[[dict[str, Any]], Any] | str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(how, str):
        target.write_text(how)
    else:
        target.write_text(json.dumps(how(json.loads(good.read_text()))))


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A finished run of one synthetic claim, with its baseline stored and compared: (suite file, run, baselines)."""
    root = tmp_path_factory.mktemp("finished")
    baselines = root / "baselines"
    outcome = synthetic_outcome(root / "coll", "label_noise")
    run = save_run(root / "run", [outcome], baselines)
    assert (
        main(["baseline", "update", str(outcome.claim.file), "--from-run", str(run), "--baselines", str(baselines)])
        == 0
    )
    again = save_run(root / "again", [synthetic_outcome(root / "coll", "label_noise", seed=1)], baselines)
    return outcome.claim.file, again, baselines


@pytest.mark.parametrize("case", sorted({**BROKEN, **RESULT_ONLY}))
def test_a_broken_result_through_compare_report_and_baseline_update(
    case: str, finished, tmp_path: Path, capsys
) -> None:
    suite, run, _ = finished
    how, key = {**BROKEN, **RESULT_ONLY}[case]
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    result = copy / "coll" / "label_noise" / "result.json"
    _broken(run / "coll" / "label_noise" / "result.json", result, how)
    prefix = f"{result}: {key}: " if key else f"{result}: "
    commands = [
        ["compare", str(run), str(copy)],
        ["compare", str(copy), str(run)],
        ["report", str(copy), "--out", str(tmp_path / "report")],
        ["baseline", "update", str(suite), "--from-run", str(copy), "--baselines", str(tmp_path / "b")],
    ]
    for argv in commands:
        assert main(argv) == 2, argv
        _one_line(capsys, prefix)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("case", sorted({**BROKEN, **BASELINE_ONLY}))
def test_a_broken_baseline_through_baseline_show(case: str, finished, tmp_path: Path, capsys) -> None:
    suite, _, baselines = finished
    how, key = {**BROKEN, **BASELINE_ONLY}[case]
    copy = tmp_path / "baselines"
    shutil.copytree(baselines, copy)
    path = copy / "coll" / "label_noise.quick.json"
    _broken(baselines / "coll" / "label_noise.quick.json", path, how)
    assert main(["baseline", "show", str(suite), "--baselines", str(copy)]) == 2
    _one_line(capsys, f"{path}: {key}: " if key else f"{path}: ")


# --------------------------------------------------------------------------- folders


@pytest.mark.parametrize("command", ["run", "calibrate"])
def test_a_folder_that_cannot_be_made_is_refused_before_any_work(
    command: str, write_suite, tmp_path: Path, capsys
) -> None:
    blocker = tmp_path / "a-file"  # a folder inside a file cannot be made, whoever runs the test
    blocker.write_text("")
    suite = write_suite("tiny")
    if command == "run":
        argv = ["run", str(suite), "--no-mlflow", "--out", str(tmp_path / "out"), "--cache-dir", str(blocker / "c")]
    else:
        argv = ["calibrate", str(suite), "--replicates", "50", "--out", str(blocker / "cal")]
    assert main(argv) == 2
    _one_line(capsys, f"{blocker}/")
    assert not (tmp_path / "out").exists()


def test_a_path_that_is_not_a_folder_is_one_line(finished, tmp_path: Path, capsys) -> None:
    file = tmp_path / "file"
    file.write_text("x")
    assert main(["compare", str(file / "a"), str(file / "b")]) == 2
    _one_line(capsys, f"{file}/a")
    _, run, _ = finished
    assert main(["report", str(run), "--out", str(file / "report")]) == 2  # an OSError, caught by main
    assert _one_line(capsys, f"{file}/report: ").endswith("Not a directory")


@pytest.mark.parametrize("workers", ["0", "-2"])
def test_workers_below_one_is_refused(workers: str, write_suite, tmp_path: Path, capsys) -> None:
    argv = ["run", str(write_suite("tiny")), "--no-mlflow", "--workers", workers, "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    _one_line(capsys, f"--workers must be at least 1, not {workers}")
    assert not (tmp_path / "out").exists()
