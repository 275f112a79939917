"""The run cache: its key, atomic entries, distrust of bad entries, sharing of equal runs, the CLI."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from lipbench import cache as cache_module
from lipbench.cache import RunCache, adopt, run_key, source_digest
from lipbench.cli import main
from lipbench.outcome import Verdict
from lipbench.registry import DEFAULT_ENGINE
from lipbench.runner import run_claims
from lipbench.suite import load_claim

pytest_plugins = ["pytester"]

RUN = ["--workers", "1", "--profile", "quick", "--no-mlflow"]


def _comparable(records) -> list[dict]:
    """Records without their wall time, in run order."""
    out = []
    for record in sorted(records, key=lambda r: r.run_id):
        data = record.to_dict()
        data.pop("seconds")
        out.append(data)
    return out


def test_the_key_is_every_input_of_a_run_and_not_the_claims_name(write_suite, monkeypatch) -> None:
    a = load_claim(write_suite("first"), "quick").runs()
    b = load_claim(write_suite("second"), "quick").runs()  # the same runs under another name
    moved = load_claim(write_suite("lr", {"scenario": {"optimizer": {"lr": 0.06}}}), "quick").runs()
    key = run_key(a[0], "per-run", "cpu")
    assert run_key(b[0], "per-run", "cpu") == key
    assert run_key(a[0], "per-run", "cuda:0") != key
    assert run_key(a[0], "per-run", "cuda:0") == run_key(a[0], "per-run", "cuda:1")  # the kind, not the index
    assert run_key(a[0], "ensemble", "cpu") != key
    assert run_key(moved[0], "per-run", "cpu") != key
    assert len({run_key(spec, "per-run", "cpu") for spec in a}) == len(a)  # seeds and sweep values differ

    monkeypatch.setattr(cache_module, "lipbench_fingerprint", lambda: "0.1.0+another-source")
    assert run_key(a[0], "per-run", "cpu") != key
    monkeypatch.undo()
    monkeypatch.setattr(cache_module.metadata, "version", lambda name: "0.0-other")
    assert run_key(a[0], "per-run", "cpu") != key


def test_the_source_digest_changes_with_any_source_file(tmp_path: Path) -> None:
    package = Path(cache_module.__file__).parent
    copy = tmp_path / "lipbench"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert source_digest(copy) == source_digest(package)
    runner = copy / "runner.py"
    runner.write_text(runner.read_text() + "\n# an edit\n")
    assert source_digest(copy) != source_digest(package)


def test_entries_are_written_whole_and_read_back(write_suite, tmp_path: Path) -> None:
    claim = load_claim(write_suite("stored"), "quick")
    [outcome] = run_claims([claim], device="cpu", workers=1)
    cache = RunCache(tmp_path / "c")
    record = outcome.records[0]
    key = run_key(claim.runs()[0], "per-run", "cpu")
    path = cache.store(key, record)
    assert path == cache.path(key) and path.exists()
    assert list(path.parent.glob(".*.tmp")) == []  # the temporary file was renamed, not left
    assert _comparable([cache.load(key)]) == _comparable([record])

    failed = adopt(record, claim.runs()[1])
    failed.error = "RuntimeError: out of memory"
    assert cache.store("f" * 64, failed) is None  # a failure may not happen again: never cached
    assert cache.load("f" * 64) is None
    assert cache.written == 1


def test_a_cached_record_that_fails_to_load_is_trained_again(write_suite) -> None:
    claim = load_claim(write_suite("distrust"), "quick")
    cache = RunCache()
    [first] = run_claims([claim], device="cpu", workers=1, cache=cache)
    assert (cache.reused, cache.trained, cache.written) == (0, 6, 6)

    paths = {spec.run_id: cache.path(run_key(spec, DEFAULT_ENGINE, "cpu")) for spec in claim.runs()}
    bad = list(paths.values())[:4]
    bad[0].write_text(bad[0].read_text()[:100])  # truncated
    bad[1].write_bytes(b"\x00\xff not json")  # garbage
    entry = json.loads(bad[2].read_text())
    entry["key"] = "0" * 64  # an entry filed under another run's key
    bad[2].write_text(json.dumps(entry))
    entry = json.loads(bad[3].read_text())
    entry["record"]["metrics"]["K"] = entry["record"]["metrics"]["K"][:1]  # edited: fewer values than steps
    bad[3].write_text(json.dumps(entry))

    again = RunCache()
    [second] = run_claims([claim], device="cpu", workers=1, cache=again)
    assert (again.rejected, again.reused, again.trained) == (4, 2, 4)
    assert second.status == first.status == Verdict.PASS
    assert _comparable(second.records) == _comparable(first.records)
    assert all(RunCache().load(run_key(spec, DEFAULT_ENGINE, "cpu")) is not None for spec in claim.runs())  # replaced


def test_two_claims_that_need_the_same_run_share_it(write_suite) -> None:
    first = load_claim(write_suite("one"), "quick")
    second = load_claim(write_suite("two"), "quick")
    cache = RunCache()
    outcomes = run_claims([first, second], device="cpu", workers=1, cache=cache)
    assert cache.trained == 6  # 12 runs needed, 6 distinct
    assert [o.status for o in outcomes] == [Verdict.PASS, Verdict.PASS]
    a, b = (sorted(o.records, key=lambda r: r.run_id) for o in outcomes)
    assert {r.claim for r in a} == {"one"} and {r.claim for r in b} == {"two"}
    assert [r.run_id for r in b] == sorted(spec.run_id for spec in second.runs())
    assert [r.metrics["K"].tolist() for r in a] == [r.metrics["K"].tolist() for r in b]
    assert outcomes[0].result.statistic == outcomes[1].result.statistic

    without = run_claims([first, second], device="cpu", workers=1)  # shared without a cache too
    assert [len(o.records) for o in without] == [6, 6]


def test_a_second_run_reuses_the_cache_and_no_cache_ignores_it(write_suite, tmp_path: Path, capsys) -> None:
    path = write_suite("again")
    store = tmp_path / "cache"
    assert main(["run", str(path), *RUN, "--out", str(tmp_path / "a"), "--cache-dir", str(store)]) == 0
    assert "reused 0 cached runs, trained 6" in capsys.readouterr().out
    assert len(RunCache(store).entries()) == 6

    assert main(["run", str(path), *RUN, "--out", str(tmp_path / "b"), "--cache-dir", str(store)]) == 0
    assert "reused 6 cached runs, trained 0" in capsys.readouterr().out
    records = [json.loads((tmp_path / side / "suites" / "again" / "records.json").read_text()) for side in "ab"]
    assert records[0] == records[1]
    figures = [(tmp_path / side / "suites" / "again" / "figure.png").read_bytes() for side in "ab"]
    assert figures[0] == figures[1]

    fresh = tmp_path / "unused"
    argv = ["run", str(path), *RUN, "--out", str(tmp_path / "c"), "--cache-dir", str(fresh), "--no-cache"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "reused" not in out and not fresh.exists()


def test_cache_info_and_prune(write_suite, tmp_path: Path, capsys, wide_console) -> None:
    store = tmp_path / "cache"
    assert main(["run", str(write_suite("pruned")), *RUN, "--out", str(tmp_path / "o"), "--cache-dir", str(store)]) == 0
    capsys.readouterr()
    assert main(["cache", "info", "--cache-dir", str(store)]) == 0
    out = capsys.readouterr().out
    assert f"run cache: {store}" in out and re.search(r"\b6 cached runs\b", out)

    entries = RunCache(store).entries()
    old = time.time() - 10 * 86400
    for path in entries[:2]:
        os.utime(path, (old, old))
    assert main(["cache", "prune", "--older-than", "7", "--cache-dir", str(store)]) == 0
    assert "deleted 2 cached runs" in capsys.readouterr().out
    assert len(RunCache(store).entries()) == 4

    assert main(["cache", "prune", "--cache-dir", str(store)]) == 2  # what to prune must be said
    assert "--all" in capsys.readouterr().err
    assert main(["cache", "prune", "--older-than", "-1", "--cache-dir", str(store)]) == 2
    assert main(["cache", "prune", "--all", "--cache-dir", str(store)]) == 0
    assert "deleted 4 cached runs" in capsys.readouterr().out
    assert RunCache(store).entries() == []
    assert main(["cache", "info", "--cache-dir", str(store)]) == 0
    assert "0 cached runs" in capsys.readouterr().out


def test_the_default_location_is_the_user_cache_unless_set(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LIPBENCH_CACHE_DIR", raising=False)
    import platformdirs

    assert RunCache().root == Path(platformdirs.user_cache_dir("lipbench")) / "runs"
    monkeypatch.setenv("LIPBENCH_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert RunCache().root == tmp_path / "elsewhere"
    assert RunCache(tmp_path / "given").root == tmp_path / "given"


@pytest.mark.parametrize("engine", ["ensemble"])
def test_the_ensemble_engine_caches_its_runs_too(write_suite, engine: str) -> None:
    claim = load_claim(write_suite("grouped"), "quick")
    cache = RunCache()
    [first] = run_claims([claim], device="cpu", workers=1, engine=engine, cache=cache)
    again = RunCache()
    [second] = run_claims([claim], device="cpu", workers=1, engine=engine, cache=again)
    assert (cache.trained, again.reused, again.trained) == (6, 6, 0)
    assert _comparable(second.records) == _comparable(first.records)


def test_the_pytest_plugin_uses_the_cache_and_no_cache_skips_it(pytester: pytest.Pytester, tmp_path: Path) -> None:
    import yaml
    from conftest import TINY_SUITE

    (pytester.path / "suites").mkdir()
    (pytester.path / "suites" / "cached.yaml").write_text(yaml.safe_dump({**TINY_SUITE, "name": "cached"}))
    options = ["--lipbench-no-mlflow", "--lipbench-workers", "1", "--lipbench-device", "cpu", "-p", "no:cacheprovider"]
    store = tmp_path / "plugin-cache"
    first = pytester.runpytest_subprocess(*options, "--lipbench-cache-dir", str(store), "suites")
    first.assert_outcomes(passed=1)
    assert len(RunCache(store).entries()) == 6

    unused = tmp_path / "unused"
    second = pytester.runpytest_subprocess(
        *options, "--lipbench-cache-dir", str(unused), "--lipbench-no-cache", "suites"
    )
    second.assert_outcomes(passed=1)
    assert not unused.exists()


OWN_MODEL = """
import math

import torch


def model(input_shape, num_classes):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(math.prod(input_shape), num_classes))
"""


def test_an_edit_of_the_users_own_code_makes_a_new_key(write_suite, tmp_path: Path, monkeypatch) -> None:
    """A maintainer who changes their model or loop must not get the runs of the old code back."""
    package = tmp_path / "own_cache_pkg"
    package.mkdir()
    (package / "__init__.py").write_text(OWN_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    changes = {
        "scenario": {"model": {"name": "own_cache_pkg:model", "hidden": None, "init": None}},
        "sweep": {"axis": "scenario.optimizer.lr", "values": [0.01, 0.02]},
    }
    spec = load_claim(write_suite("own", changes), "quick").runs()[0]
    key = run_key(spec, "per-run", "cpu")
    assert cache_module.user_code(spec) == {"own_cache_pkg:model": source_digest(package)}
    (package / "helpers.py").write_text("SCALE = 2.0\n")  # any file of the package counts
    cache_module.package_digest.cache_clear()
    assert run_key(spec, "per-run", "cpu") != key
    builtin = load_claim(write_suite("builtin"), "quick").runs()[0]
    assert cache_module.user_code(builtin) == {}
