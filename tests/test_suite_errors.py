"""A broken suite file is one line on stderr (file, key path, what is allowed) and exit code 2.

Each file under tests/malformed/ holds one realistic mistake. `validate` and `run` are called
in-process for each file (the interpreter starts once); one subprocess runs
`python -m lipbench.cli validate` on the whole folder to check the real entry point.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from builders import MALFORMED_SUITES as EXPECTED

from lipbench.cli import main

MALFORMED = Path(__file__).parent / "malformed"
REPO = Path(__file__).parent.parent

#: Loads fine but can never reach its alpha: validate says so (exit 2), run reports an ERROR (exit 1).
DESIGN = MALFORMED / "design_alpha_unreachable.yaml"


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def _check_one_line(captured, path: Path | str, key: str, words: tuple[str, ...]) -> None:
    assert "Traceback" not in captured.err + captured.out
    lines = _error_lines(captured.err)
    assert len(lines) == 1, lines
    prefix = f"lipbench: error: {path}: {key}: " if key else f"lipbench: error: {path}: "
    assert lines[0].startswith(prefix), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_every_malformed_file_has_an_expectation() -> None:
    files = {p.stem for p in MALFORMED.glob("*.yaml")}
    assert files == set(EXPECTED) | {DESIGN.stem}
    assert len(EXPECTED) >= 18


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_validate_prints_one_line(stem: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = MALFORMED / f"{stem}.yaml"
    assert main(["validate", str(path)]) == 2
    key, words = EXPECTED[stem]
    _check_one_line(capsys.readouterr(), path, key, words)


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_run_prints_one_line_and_trains_nothing(stem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = MALFORMED / f"{stem}.yaml"
    out = tmp_path / "out"
    assert main(["run", str(path), "--no-mlflow", "--workers", "1", "--out", str(out)]) == 2
    key, words = EXPECTED[stem]
    _check_one_line(capsys.readouterr(), path, key, words)
    assert not out.exists()


def test_python_m_validate_names_each_file_once() -> None:
    """The real entry point, once for the whole folder: one line per file, exit 2, no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "lipbench.cli", "validate", str(MALFORMED)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = _error_lines(proc.stderr)
    for stem, (key, _) in EXPECTED.items():
        named = [line for line in lines if line.startswith(f"lipbench: error: {MALFORMED / stem}.yaml: {key}")]
        assert len(named) == 1, (stem, lines)
    design = [line for line in lines if line.startswith(f"lipbench: error: {DESIGN}: seeds/sweep: [profile ")]
    assert len(design) == len(lines) - len(EXPECTED) >= 1  # one per profile whose design cannot reach alpha


def test_design_that_cannot_reach_alpha_fails_validate_as_run_fails(capsys: pytest.CaptureFixture[str]) -> None:
    """Exit 1, as `run` (an ERROR verdict), once per profile; a malformed file is exit 2."""
    assert main(["validate", str(DESIGN)]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = _error_lines(captured.err)
    assert [line.split("[profile ")[1].split("]")[0] for line in lines] == ["paper", "quick"]
    for line in lines:
        assert line.startswith(f"lipbench: error: {DESIGN}: seeds/sweep: [profile ")
        assert "2 sweep values x 2 seed blocks" in line and "never below alpha = 0.01" in line


def test_validate_checks_the_design_of_every_profile(write_suite, capsys) -> None:
    """The quick profile is sound; the paper profile (not the one run by default) cannot reach alpha."""
    weak = {"sweep": {"axis": "scenario.model.init_std", "values": [0.01, 0.1]}, "seeds": {"init": 2}}
    path = write_suite("tiny", {"profiles": {"quick": {}, "paper": weak}})
    assert main(["validate", str(path)]) == 1
    [line] = _error_lines(capsys.readouterr().err)
    assert line.startswith(f"lipbench: error: {path}: seeds/sweep: [profile paper]")


def test_design_that_cannot_reach_alpha_is_an_error_verdict_in_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["run", str(DESIGN), "--no-mlflow", "--workers", "1", "--out", str(out)]) == 1
    assert "Traceback" not in capsys.readouterr().err
    result = json.loads((out / "malformed" / "design-alpha-unreachable" / "result.json").read_text())
    assert result["status"] == "ERROR"
    assert result["runs"] == 0  # found before any training
    assert result["error"].startswith(f"{DESIGN}: ")
    assert "never below alpha = 0.01" in result["error"]


@pytest.mark.parametrize("command", ["validate", "run"])
def test_duplicate_claim_names_in_a_directory(
    command: str, write_suite, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # For `run`, one init seed (3 runs) is a design that cannot reach alpha: an ERROR verdict, no training.
    same = {"name": "same-name", "seeds": {"init": 1}} if command == "run" else {"name": "same-name"}
    first, second = write_suite("first", same), write_suite("second", same)
    extra = ["--no-mlflow", "--workers", "1", "--out", str(tmp_path / "out")] if command == "run" else []
    # validate: a refused file, exit 2; run: the first claim ran (an ERROR verdict), the second is an ERROR too
    assert main([command, str(first.parent), *extra]) == (2 if command == "validate" else 1)
    _check_one_line(capsys.readouterr(), second, "name", (f"also the name of {first}", "names must differ"))


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize(
    ("override", "key", "words"),
    [
        ("scenario.steps=-1", "--set scenario.steps", ("greater than 0", "got -1")),
        ("scenario.stepz=3", "--set scenario.stepz", ("unknown key", "did you mean 'steps'?")),
        ("scenario.label_noise=2", "--set scenario.label_noise", ("less than or equal to 1",)),
        ("scenario.steps", "--set scenario.steps", ("expected key.path=value",)),
        # Not finite: `nan` / `inf` arrive as text, `.nan` / `.inf` as YAML floats; both are refused.
        ("scenario.optimizer.lr=nan", "--set scenario.optimizer.lr", ("must be a finite number, got 'nan'",)),
        ("scenario.optimizer.lr=.inf", "--set scenario.optimizer.lr", ("must be a finite number, got .inf",)),
        ("scenario.steps=inf", "--set scenario.steps", ("must be a finite number, got 'inf'",)),
        ("scenario.label_noise=.nan", "--set scenario.label_noise", ("must be a finite number, got .nan",)),
        ("sweep.values=[0.01, -.inf]", "--set sweep.values.1", ("must be a finite number, got -.inf",)),
        ("assertion.alpha=.nan", "--set assertion.alpha", ("must be a finite number, got .nan",)),
    ],
)
def test_bad_set_override_is_one_line(
    command: str, override: str, key: str, words: tuple[str, ...], write_suite, tmp_path: Path, capsys
) -> None:
    path = write_suite("tiny")
    extra = ["--no-mlflow", "--workers", "1", "--out", str(tmp_path / "out")] if command == "run" else []
    assert main([command, str(path), "--set", override, *extra]) == 2
    _check_one_line(capsys.readouterr(), path, key, words)
    assert not (tmp_path / "out").exists()


def test_one_broken_file_does_not_stop_the_others(write_suite, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "mixed"
    good = write_suite("good", folder=folder)
    bad = shutil.copy(MALFORMED / "negative_steps.yaml", folder / "bad.yaml")
    out = tmp_path / "out"
    # Exit 1, the code of the verdicts: the malformed file is an ERROR row of its own; the good claim ran.
    assert main(["run", str(folder), "--no-mlflow", "--workers", "1", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    _check_one_line(captured, bad, "scenario.steps", ("greater than 0",))
    assert f"ERROR {bad}: scenario.steps: Input should be greater than 0" in captured.out
    result = json.loads((out / "mixed" / "good" / "result.json").read_text())
    assert result["status"] == "PASS"
    assert result["file"] == str(good)
    assert not (out / "mixed" / "negative-steps").exists()
