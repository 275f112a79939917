"""examples/own_code: a package's own model and loop as the system under test (docs/extending.md).

The example package is made importable (its folder on sys.path) and "installed" for its entry
points (a dist-info folder written from its pyproject.toml), so these tests need no pip install.
Planted breaks are monkeypatches of the example's loop, run in this process (workers 1).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lipbench
from lipbench import plugins
from lipbench.cli import main
from lipbench.errors import SuiteError
from lipbench.results import load_outcome
from lipbench.suite import load_claim

REPO = Path(__file__).parent.parent
EXAMPLE = REPO / "examples" / "own_code"
SUITES = EXAMPLE / "suites"
BASELINES = EXAMPLE / "baselines"


def write_dist_info(folder: Path) -> None:
    """A dist-info for own-code holding the entry points its pyproject.toml declares (read without
    tomllib, which Python 3.10 lacks: the example writes one `"key" = "value"` per line)."""
    text = (EXAMPLE / "pyproject.toml").read_text()
    name, version = (re.search(rf'^{key} = "([^"]+)"', text, re.M).group(1) for key in ("name", "version"))
    section = text.split('[project.entry-points."lipbench.plugins"]\n', 1)[1].split("\n[", 1)[0]
    entries = dict(re.findall(r'^"([^"]+)" = "([^"]+)"$', section, re.M))
    assert entries, "the example declares no lipbench.plugins entry points"
    install_entry_points(folder, name, version, entries)


def install_entry_points(folder: Path, name: str, version: str, entries: dict[str, str]) -> None:
    """A dist-info folder under `folder` for distribution `name` with these lipbench.plugins entry points."""
    lines = [f"{k} = {v}" for k, v in entries.items()]
    info = folder / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("[lipbench.plugins]\n" + "\n".join(lines) + "\n")


@pytest.fixture
def own_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The example package importable and its plugins installed; returns the folder on sys.path for it."""
    meta = tmp_path / "site"
    write_dist_info(meta)
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.syspath_prepend(str(meta))
    plugins.installed.cache_clear()
    yield meta
    plugins.installed.cache_clear()


def result_of(out: Path, claim: str) -> dict:
    return json.loads((out / "suites" / claim / "result.json").read_text())


@pytest.mark.slow  # trains claims of the example's suites
def test_example_suites_pass_against_their_baselines_and_log_to_mlflow(own_code, tmp_path: Path) -> None:
    out = tmp_path / "out"
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["run", str(SUITES), "--profile", "quick", "--workers", "1", "--out", str(out), "--tracking-uri", store]
    assert main(argv) == 0
    for claim in ("own-label-corruption", "own-seed-invariance", "own-sampling-noise"):
        result = result_of(out, claim)
        assert result["verdict"] == "PASS", result  # compared with the committed baseline: not NEW
        assert (out / "suites" / claim / "mlflow_run_id").is_file()
    # The plugin's test comes back from the results folder (lipbench report, compare) as its own class.
    rebuilt = load_outcome(out / "suites" / "own-sampling-noise")
    assert type(rebuilt.claim.claim.assertion).__name__ == "SamplingNoise"
    assert rebuilt.claim.scenario_hash() == result_of(out, "own-sampling-noise")["scenario_hash"]


@pytest.mark.slow  # trains claims of the example's suites
def test_forgetting_the_corrupted_labels_fails_the_label_claim(own_code, monkeypatch, tmp_path: Path) -> None:
    import own_code.loop

    monkeypatch.setattr(own_code.loop, "training_labels", lambda context: context.data.y_train)
    result = lipbench.run(SUITES / "label_corruption.yaml", device="cpu", out=tmp_path / "out")
    assert result.verdicts["own-label-corruption"] in ("FAIL", "REGRESSED")
    assert not result.passed


@pytest.mark.slow  # trains claims of the example's suites
def test_one_sampling_seed_for_every_run_fails_the_sampling_noise_claim(own_code, monkeypatch, tmp_path: Path) -> None:
    import own_code.loop

    def same_seed(context) -> torch.Generator:
        return torch.Generator(device=context.device).manual_seed(0)

    monkeypatch.setattr(own_code.loop, "sampling_generator", same_seed)
    result = lipbench.run(
        SUITES / "seed_invariance.yaml", SUITES / "sampling_noise.yaml", device="cpu", out=tmp_path / "out"
    )
    assert not result.passed
    # The claim that the sampling seed moves K at all is refuted by equal runs: FAIL.
    assert result.verdicts["own-sampling-noise"] == "FAIL"
    noise = result["own-sampling-noise"].sentence
    assert noise.startswith("Every sampling seed gives the same final K: within-init CV = 0%")
    assert "check that the sampling stream reaches the batch sampler — FAIL" in noise
    # The invariance claim presumes a sampling spread; with none it cannot be judged and says why.
    assert result.verdicts["own-seed-invariance"] == "ERROR"
    invariance = result["own-seed-invariance"].sentence
    assert "every sampling seed gives the same final K" in invariance
    assert "sampling stream reaches the batch sampler" in invariance


@pytest.mark.slow  # trains claims of the example's suites
def test_example_claim_runs_as_a_pytest_item(own_code, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(EXAMPLE), str(own_code)]),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(SUITES / "label_corruption.yaml"),
            "--lipbench-suites",
            str(SUITES),
            "--lipbench-profile",
            "quick",
            "--lipbench-no-mlflow",
            "--lipbench-workers",
            "1",
            "--lipbench-out",
            str(tmp_path / "out"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "1 passed" in proc.stdout
    assert result_of(tmp_path / "out", "own-label-corruption")["verdict"] == "PASS"


def test_list_plugins_shows_the_example_and_where_it_comes_from(own_code, wide_console, capsys) -> None:
    assert main(["list", "--plugins"]) == 0
    out = capsys.readouterr().out
    for words in ("model", "small-net", "own_code.model:SmallNet", "run", "own-loop", "own_code.loop:train"):
        assert words in out
    assert re.search(
        r"assertion +│ sampling_noise +│ own_code\.assertions:SamplingNoise +│ own-code 0\.1\.0 +│ ok ", out
    )
    assert out.count(" ok ") == 3


def test_a_plugin_name_is_among_the_allowed_values(own_code, write_suite, capsys) -> None:
    path = write_suite("typo", {"scenario": {"model": {"name": "small-nett", "hidden": None}}})
    assert main(["validate", str(path)]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"lipbench: error: {path}: scenario.model.name: 'small-nett' is not allowed")
    assert "did you mean 'small-net'?" in line
    assert "'mlp'" in line and "'convnet'" in line


@pytest.mark.slow  # trains claims of the example's suites
def test_a_plugin_model_trains_in_the_built_in_loop(own_code, tmp_path: Path) -> None:
    claim = {
        "schema_version": 1,
        "name": "plugin-model",
        "claim": "K falls with label noise.",
        "scenario": {
            "model": {"name": "small-net", "kwargs": {"widths": [16]}},
            "dataset": {"name": "synthetic", "synthetic_size": 64},
            "optimizer": {"name": "adamw", "lr": 0.01, "batch_size": 8, "schedule": {"name": "cosine"}},
            "steps": 4,
            "record_every": 2,
        },
        "sweep": {"axis": "scenario.label_noise", "values": [0.0, 0.3, 0.6]},
        "seeds": {"init": 2, "sampling": 1},
        "assertion": {"test": "monotone_trend", "direction": "decreasing", "alpha": 0.05, "min_effect": 1.0},
    }
    result = lipbench.run(claim, profile=None, device="cpu", out=tmp_path / "out")
    records = result.records
    assert set(records["claim"]) == {"plugin-model"}
    assert {"sigma_0", "sigma_1", "K", "loss", "accuracy"} <= set(records.columns)
    assert all(list(steps) == [0, 2, 4] for _, steps in records.groupby("run")["step"])


# --------------------------------------------------------------------------- assertion plugins

PLUGIN_TEST = {
    "test": "sampling_noise",
    "direction": None,
    "min_effect": None,
    "min_relative_spread": 0.01,
    "alternative_cv": 0.1,
}


def test_a_plugin_assertion_is_a_test_suites_can_name(own_code, write_suite) -> None:
    path = write_suite("plugin_test", {"seeds": {"sampling": 4}, "assertion": PLUGIN_TEST})
    claim = load_claim(path, "quick").claim
    assert type(claim.assertion).__name__ == "SamplingNoise"
    assert claim.assertion.min_relative_spread == 0.01
    assert main(["validate", str(path)]) == 0


def test_a_plugin_assertions_keys_are_checked_like_a_built_in_ones(own_code, write_suite, capsys) -> None:
    path = write_suite("plugin_key", {"seeds": {"sampling": 4}, "assertion": {**PLUGIN_TEST, "min_relative_sprad": 1}})
    assert main(["validate", str(path)]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"lipbench: error: {path}: assertion.min_relative_sprad: unknown key")
    assert "did you mean 'min_relative_spread'?" in line
    assert "allowed here: test, quantity, min_relative_spread, alpha, alternative_cv" in line


def test_an_unknown_test_lists_built_in_and_plugin_tests(own_code, write_suite, capsys) -> None:
    path = write_suite("typo_test", {"assertion": {"test": "sampling_nois"}})
    assert main(["validate", str(path)]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"lipbench: error: {path}: assertion: unknown test 'sampling_nois'")
    assert "did you mean 'sampling_noise'?" in line
    assert "available: monotone_trend, growth_trend," in line and line.endswith(", init_scaling, sampling_noise")


def test_a_plugin_that_is_no_test_is_refused_naming_the_key(own_code, write_suite, wide_console, capsys) -> None:
    entries = {
        "assertion.not_a_test": "own_code.loop:train",
        "assertion.renamed": "own_code.assertions:SamplingNoise",
        "assertion.missing": "own_code.assertions:Gone",
    }
    install_entry_points(own_code, "broken-tests", "0.2.0", entries)
    plugins.installed.cache_clear()
    problems = {
        "not_a_test": "'own_code.loop:train' is a function, not a subclass of lipbench.assertions.Assertion",
        "renamed": "must declare the field test: Literal['renamed'], the name it is registered under",
        "missing": "own_code.assertions has no attribute 'Gone'",
    }
    for test, problem in problems.items():
        path = write_suite(f"bad_{test}", {"assertion": {"test": test}})
        assert main(["validate", str(path)]) == 2
        line = capsys.readouterr().err.strip()
        assert line.startswith(f"lipbench: error: {path}: assertion.test: "), line
        assert problem in line
    assert main(["list", "--plugins"]) == 0
    listed = capsys.readouterr().out
    assert "broken-tests 0.2.0" in listed and "not a subclass of" in listed


def test_suites_with_built_in_tests_read_no_entry_points(own_code, write_suite, monkeypatch) -> None:
    """Plugins are looked up when a suite names a test no built-in has, not when the schema loads."""
    monkeypatch.delitem(sys.modules, "own_code.assertions", raising=False)
    plugins.installed.cache_clear()
    load_claim(write_suite("built_in"), "quick")
    assert plugins.installed.cache_info().misses == 0
    assert "own_code.assertions" not in sys.modules
    with pytest.raises(SuiteError, match="unknown test 'nope'"):
        load_claim(write_suite("unknown", {"assertion": {"test": "nope"}}))
    assert plugins.installed.cache_info().misses == 1
