"""The pytest plugin: suites as test items, statuses as outcomes, and MLflow under xdist.

Every suite here is tiny (synthetic data, a one-layer MLP, 40 steps) and runs on the CPU.
Every pytest, CLI and MLflow call runs in a subprocess: the pytester fixture removes from
sys.modules, when its test ends, each module first imported during the test, and a library
imported again after that can come back half broken (mlflow without `MlflowClient`, sqlalchemy
failing inside), which made every later claim of the same xdist worker fail to log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

TINY = """\
schema_version: 1
name: {name}
claim: {claim}
scenario:
  model: {{name: mlp, hidden: [16]}}
  dataset: {{name: {dataset}, synthetic_size: 256}}
  optimizer: {{lr: 0.1, batch_size: 16}}
  steps: {steps}
  record_every: 5
  device: {device}
seeds: {{init: {seeds}, sampling: 1}}
assertion: {{test: growth_trend, quantity: {quantity}, window: 1.0, alpha: 0.05, alternative_growth: 1.0}}
profiles:
  quick: {{}}
"""
FAIL_WORDS = "loss keeps growing"  # the start of the failing claim's assertion sentence
NO_MLFLOW = ("--lipbench-no-mlflow", "--lipbench-workers", "1", "--lipbench-device", "cpu")


def suite(
    name: str,
    *,
    grows: bool = True,
    expect_fail: bool = False,
    device: str = "any",
    steps: int = 40,
    seeds: int = 2,
    dataset: str = "synthetic",
) -> str:
    """A claim that passes (log_K grows early in training) or fails (the loss does not grow)."""
    text = TINY.format(
        name=name,
        claim="K grows early in training." if grows else "The loss grows.",
        dataset=dataset,
        steps=steps,
        device=device,
        seeds=seeds,
        quantity="log_K" if grows else "loss",
    )
    if expect_fail:
        text += "expect: fail\nexpect_reason: the loss falls while training\n"
    return text


def write(pytester: pytest.Pytester, folder: str = "suites/tiny", **files: str) -> Path:
    root = pytester.path / folder
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / f"{name}.yaml").write_text(text)
    return root


def test_collect_only_lists_one_item_per_claim(pytester: pytest.Pytester) -> None:
    write(pytester, a=suite("a"), b=suite("b", grows=False), c=suite("c", device="cuda"))
    pytester.makepyfile(test_unit="def test_unit():\n    pass\n")
    result = pytester.runpytest_subprocess("--collect-only", "-q", *NO_MLFLOW)
    result.stdout.fnmatch_lines(
        ["suites/tiny/a.yaml::a", "suites/tiny/b.yaml::b", "suites/tiny/c.yaml::c", "test_unit.py::test_unit"]
    )
    result.stdout.fnmatch_lines(["4 tests collected*"])
    gpu = pytester.runpytest_subprocess("--collect-only", "-q", "-m", "gpu", *NO_MLFLOW)
    gpu.stdout.fnmatch_lines(["suites/tiny/c.yaml::c", "1/4 tests collected (3 deselected)*"])
    assert not (pytester.path / "lipbench-results").exists()


def test_base_files_are_not_collected_as_claims(pytester: pytest.Pytester) -> None:
    """A `_`-prefixed file (or folder) only meant to be included is no claim: collecting it would fail."""
    base = "\n".join(line for line in suite("unused").splitlines() if not line.startswith(("name:", "claim:")))
    write(pytester, _base=base, a="include: _base.yaml\nname: a\nclaim: K grows early in training.\n")
    write(pytester, "suites/tiny/_shared", common="scenario: {steps: 40}\n")
    result = pytester.runpytest_subprocess("--collect-only", "-q", *NO_MLFLOW)
    result.stdout.fnmatch_lines(["suites/tiny/a.yaml::a", "1 test collected*"])
    assert "_base" not in result.stdout.str() and "_shared" not in result.stdout.str()


def test_passing_claim_passes(pytester: pytest.Pytester) -> None:
    write(pytester, grows=suite("grows"))
    result = pytester.runpytest_subprocess("-rA", *NO_MLFLOW, "--lipbench-out", "out")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*NEW: log_K keeps growing*"])  # NEW: no baseline yet
    saved = json.loads((pytester.path / "out/tiny/grows/result.json").read_text())
    assert (saved["status"], saved["verdict"], saved["runs"]) == ("PASS", "NEW", 2)


def test_engine_option_trains_the_claim_as_an_ensemble(pytester: pytest.Pytester) -> None:
    write(pytester, grows=suite("grows"))
    result = pytester.runpytest_subprocess(*NO_MLFLOW, "--lipbench-out", "out", "--lipbench-engine", "ensemble")
    result.assert_outcomes(passed=1)
    runs = json.loads((pytester.path / "out/tiny/grows/records.json").read_text())
    assert len(runs) == 2 and all("sigma_rel_err" in r["summary"] for r in runs)  # the ensemble's own check


def test_failing_claim_shows_its_sentence_and_no_traceback(pytester: pytest.Pytester) -> None:
    write(pytester, flat=suite("flat", grows=False))
    result = pytester.runpytest_subprocess(*NO_MLFLOW)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            f"FAIL: {FAIL_WORDS}*t test of growth > 0.05: p = *needed < 0.05)*FAIL*",
            "  claim: flat (profile quick)",
            "  suite: suites/tiny/flat.yaml",
            "  results: *tiny/flat",
            f"FAILED suites/tiny/flat.yaml::flat - FAIL: {FAIL_WORDS}*",
        ]
    )
    out = result.stdout.str()
    assert "Traceback" not in out and "runner.py" not in out and "pytest_plugin.py" not in out


def test_error_says_error_and_why(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIPBENCH_OFFLINE", "1")
    write(pytester, nodata=suite("nodata", dataset="cifar10"))
    result = pytester.runpytest_subprocess(*NO_MLFLOW, "--lipbench-data-root", str(pytester.path / "empty"))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["ERROR: *cifar10*", "  claim: nodata (profile quick)"])
    assert "Traceback" not in result.stdout.str()


def test_malformed_suite_is_a_collection_error_naming_the_key(pytester: pytest.Pytester) -> None:
    bad = suite("bad").replace("  steps: 40", "  stepz: 40")
    write(pytester, good=suite("good"), bad=bad)
    result = pytester.runpytest_subprocess("--collect-only", "-q", *NO_MLFLOW)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*suites/tiny/bad.yaml: scenario.stepz: unknown key (did you mean 'steps'?)*"])
    result.stdout.fnmatch_lines(["suites/tiny/good.yaml::good"])
    assert "Traceback" not in result.stdout.str()


def test_not_slow_deselects_a_slow_claim(pytester: pytest.Pytester) -> None:
    write(pytester, small=suite("small"), big=suite("big", steps=150_000))  # 2 runs: 300,000 model-steps
    result = pytester.runpytest_subprocess("--collect-only", "-q", "-m", "not slow", *NO_MLFLOW)
    result.stdout.fnmatch_lines(["suites/tiny/small.yaml::small", "1/2 tests collected (1 deselected)*"])
    pytester.makeini("[pytest]\nlipbench_slow_steps = 50\n")
    result = pytester.runpytest_subprocess("--collect-only", "-q", "-m", "not slow", *NO_MLFLOW)
    result.stdout.fnmatch_lines(["*no tests collected (2 deselected)*"])


def test_gpu_claim_is_skipped_on_cpu(pytester: pytest.Pytester) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    write(pytester, needs_gpu=suite("needs_gpu", device="cuda"))
    result = pytester.runpytest_subprocess("-rs", *NO_MLFLOW)
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED*needs a CUDA device*"])


def test_expect_fail_claim_is_xfailed(pytester: pytest.Pytester) -> None:
    write(pytester, known=suite("known", grows=False, expect_fail=True))
    result = pytester.runpytest_subprocess("-rx", *NO_MLFLOW)
    result.assert_outcomes(xfailed=1)
    result.stdout.fnmatch_lines(["XFAIL suites/tiny/known.yaml::known - the loss falls while training"])


def test_collecting_unrelated_tests_imports_neither_torch_nor_mlflow(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_light="""
        import sys

        def test_light():
            heavy = {"torch", "mlflow", "lipbench.suite", "lipbench.runner"} & set(sys.modules)
            assert not heavy, heavy
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def _verdicts(out: Path) -> dict[str, tuple[str, str, float | None]]:
    """claim -> (runner status, final verdict, assertion statistic), from each result.json under `out`."""
    found = {}
    for path in sorted(out.glob("*/*/result.json")):
        saved = json.loads(path.read_text())
        found[saved["claim"]] = (saved["status"], saved.get("verdict"), (saved["assertion"] or {}).get("statistic"))
    return found


def test_verdicts_equal_those_of_lipbench_run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same suites, the same baselines: `lipbench run` and pytest reach the same verdicts."""
    monkeypatch.delenv("LIPBENCH_BASELINES", raising=False)

    def main(args: list[str]) -> int:  # `lipbench ...` in a subprocess, in pytester's folder
        return pytester.run(sys.executable, "-c", CLI, *args, timeout=600).ret

    write(
        pytester,
        grows=suite("grows"),
        flat=suite("flat", grows=False),
        known=suite("known", grows=False, expect_fail=True),
        needs_gpu=suite("needs_gpu", device="cuda"),
    )
    run = ["run", "suites", "--profile", "quick", "--device", "cpu", "--workers", "1", "--no-mlflow"]
    assert main([*run, "--out", "first"]) == 1  # `flat` fails
    assert _verdicts(pytester.path / "first")["grows"][1] == "NEW"
    main(["baseline", "update", "suites", "--from-run", "first", "--baselines", "baselines"])
    assert (pytester.path / "baselines/tiny/grows.quick.json").exists()

    assert main([*run, "--baselines", "baselines", "--out", "cli"]) == 1
    options = ("--lipbench-profile", "quick", "--lipbench-baselines", "baselines", "--lipbench-out", "from-pytest")
    result = pytester.runpytest_subprocess(*NO_MLFLOW, *options)
    result.assert_outcomes(passed=1, failed=1, xfailed=1, skipped=1)
    cli, from_pytest = _verdicts(pytester.path / "cli"), _verdicts(pytester.path / "from-pytest")
    assert {name: v[:2] for name, v in cli.items()} == {
        "grows": ("PASS", "PASS"),  # compared with its baseline: no change
        "flat": ("FAIL", "FAIL"),
        "known": ("XFAIL", "XFAIL"),
        "needs_gpu": ("SKIPPED", "SKIPPED"),
    }
    assert {name: v[:2] for name, v in from_pytest.items()} == {name: v[:2] for name, v in cli.items()}
    for name, (_, _, statistic) in cli.items():
        if statistic is None:  # a SKIPPED claim has no statistic (pytest 9 refuses approx(None))
            assert from_pytest[name][2] is None, name
        else:
            assert from_pytest[name][2] == pytest.approx(statistic, rel=1e-6), name


def test_xdist_workers_log_every_run_to_one_fresh_store(pytester: pytest.Pytester) -> None:
    """docs/mlflow.md: the controller creates store and experiment; 4 workers then lose no run and no point."""
    pytest.importorskip("xdist")
    names = [f"claim{i}" for i in range(8)]
    write(pytester, **{n: suite(n, grows=i % 4 != 3) for i, n in enumerate(names)})
    store = pytester.path / "store.db"
    uri = f"sqlite:///{store}"
    assert not store.exists()
    result = pytester.runpytest_subprocess(
        "-p", "xdist", "-n", "4", "--lipbench-tracking-uri", uri, "--lipbench-device", "cpu", timeout=300
    )
    result.assert_outcomes(passed=6, failed=2)
    result.stdout.fnmatch_lines(["*4 workers*"])
    assert "MLflow logging" not in result.stdout.str()

    store_runs = read_store(uri)
    assert "lipbench/tiny" in store_runs and store_runs.get("Default", []) == []
    runs = store_runs["lipbench/tiny"]
    parents = {r["tags"]["lipbench.claim"]: r for r in runs if "mlflow.parentRunId" not in r["tags"]}
    children = [r for r in runs if "mlflow.parentRunId" in r["tags"]]
    assert sorted(parents) == names
    assert len(children) == 2 * len(names)
    assert {r["tags"]["mlflow.parentRunId"] for r in children} == {r["run_id"] for r in parents.values()}
    steps = list(range(0, 41, 5))
    for child in children:
        assert child["status"] == "FINISHED"
        step_keys = {k for k in child["histories"] if not k.startswith("summary.") and k != "seconds"}
        assert step_keys == {"K", "log_K", "sigma_0", "sigma_1", "drift_0", "drift_1", "loss", "accuracy"}
        for key in step_keys:
            assert sorted(child["histories"][key]) == steps, (child["tags"].get("mlflow.runName"), key)
    statuses = {name: run["tags"]["lipbench.status"] for name, run in parents.items()}
    assert statuses == {n: "FAIL" if i % 4 == 3 else "PASS" for i, n in enumerate(names)}


CLI = "import sys; from lipbench.cli import main; sys.exit(main(sys.argv[1:]))"
READ_STORE = """
import json, sys
from mlflow import MlflowClient

client = MlflowClient(sys.argv[1])
out = {}
for experiment in client.search_experiments():
    out[experiment.name] = [
        {
            "run_id": run.info.run_id,
            "status": run.info.status,
            "tags": dict(run.data.tags),
            "histories": {
                key: [m.step for m in client.get_metric_history(run.info.run_id, key)] for key in run.data.metrics
            },
        }
        for run in client.search_runs([experiment.experiment_id], max_results=1000)
    ]
print(json.dumps(out))
"""


def read_store(uri: str) -> dict[str, list[dict]]:
    """Every experiment's runs (id, status, tags, metric steps) of an MLflow store, read by a subprocess
    (see the module docstring)."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    done = subprocess.run(
        [sys.executable, "-c", READ_STORE, uri], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_xdist_hooks_only_with_xdist(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_hooks=textwrap.dedent(
            """
            def test_hooks(pytestconfig):
                assert pytestconfig.pluginmanager.hasplugin("lipbench-xdist") == pytestconfig.pluginmanager.hasplugin(
                    "xdist"
                )
            """
        )
    )
    pytester.runpytest_subprocess("-p", "no:xdist").assert_outcomes(passed=1)
    pytester.runpytest_subprocess().assert_outcomes(passed=1)


def test_worker_takes_the_controllers_store_pins_a_gpu_and_limits_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from lipbench import pytest_plugin as plugin
    from lipbench import pytest_xdist

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")  # restored after the test
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    threads = torch.get_num_threads()
    given = {"tracking_uri": "sqlite:////s.db", "experiment_ids": {"tiny": "3"}, "out": "/r", "gpus": ["2", "3", "7"]}
    settings = plugin.Settings()
    try:
        workerinput = {"workerid": "gw5", "workercount": 4, pytest_xdist.WORKERINPUT_KEY: given}
        pytest_xdist.configure_worker(settings, workerinput)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "7"  # worker 5 of GPUs [2, 3, 7]: 5 % 3 = 2
    assert os.environ["OMP_NUM_THREADS"] == "2"
    assert settings.tracking_uri == "sqlite:////s.db" and settings.experiment_ids == {"tiny": "3"}
    assert settings.out == Path("/r") and settings.threads == 2


def test_a_relative_sqlite_store_is_pinned_to_the_controllers_folder() -> None:
    from lipbench.pytest_xdist import _absolute_uri

    assert _absolute_uri("sqlite:///rel/m.db") == f"sqlite:///{Path('rel/m.db').resolve()}"
    assert _absolute_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"


class _OptionGroup:
    """Stands in for pytest's option group: records what the plugin adds."""

    def __init__(self) -> None:
        self.options: dict[str, dict] = {}

    def getgroup(self, *args: object) -> _OptionGroup:
        return self

    def addoption(self, flag: str, **kwargs: object) -> None:
        self.options[flag] = kwargs

    def addini(self, *args: object, **kwargs: object) -> None:
        pass


def test_plugin_and_cli_share_their_options_with_the_same_defaults() -> None:
    """Every option of `lipbench run` but the suite selection is a `--lipbench-` option of pytest, alike."""
    import argparse

    from lipbench import pytest_plugin as plugin
    from lipbench.cli import build_parser

    group = _OptionGroup()
    plugin.pytest_addoption(group)  # type: ignore[arg-type]
    run = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["run"]
    cli = {a.option_strings[0]: a for a in run._actions if a.option_strings and a.dest not in ("help", "overrides")}
    assert {f"--lipbench-{flag[2:]}" for flag in cli} == set(group.options) - {"--lipbench-suites"}
    for flag, action in cli.items():
        given = group.options[f"--lipbench-{flag[2:]}"]
        assert given.get("default") == action.default, flag
        assert given.get("type") == action.type, flag
        assert tuple(given.get("choices") or ()) == tuple(action.choices or ()), flag
        assert given.get("help") == action.help, flag
        assert (given.get("action") == "store_true") == isinstance(action, argparse._StoreTrueAction), flag
