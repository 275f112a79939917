"""Faults of long collections under the local executor: a worker killed with SIGKILL, Ctrl-C sent to
the whole process group (as a terminal does), SIGTERM, and a second Ctrl-C.

The signal tests start `lipbench run` as a subprocess in a session of its own, so the signal
reaches it and its workers, and nothing else; they then check that the command ended within 10
seconds, with no traceback and no process of its group left, that no MLflow run is left RUNNING,
and that the same command resumes, training only what was missing, to the verdicts, records and
figures of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from builders import live_group_members

from lipbench.cache import RunCache
from lipbench.cli import main
from lipbench.outcome import Verdict
from lipbench.runner import run_claims
from lipbench.suite import load_claim

ROOT = Path(__file__).resolve().parents[1]
#: Runs long enough (about a second each) to be caught in flight.
LONGER = {"scenario": {"steps": 2500, "record_every": 500}}

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="reads /proc to find leftover processes"),
    pytest.mark.slow,  # each test trains claims in worker processes, some of them twice
]


def _lipbench(*args: str, cwd: Path, cache: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.update(LIPBENCH_CACHE_DIR=str(cache), MPLBACKEND="Agg", MLFLOW_DISABLE_TELEMETRY="true")
    return subprocess.Popen(
        [sys.executable, "-m", "lipbench.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the signal reaches it and its workers only
    )


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _no_process_left(pgid: int) -> None:
    try:
        _wait_for(lambda: not live_group_members(pgid), 10, "the command's processes to end")
    except AssertionError:
        left = live_group_members(pgid)
        for member in left:  # do not leave them to the next test
            os.kill(int(member.split()[0]), signal.SIGKILL)
        raise AssertionError(f"processes left after the command ended: {left}") from None


def _statuses(uri: str) -> list[str]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return [run.info.status for run in client.search_runs(experiments, max_results=1000)]


def _claim_files(out: Path) -> dict[str, tuple]:
    """Per claim: status, statistic, records without wall time, figure bytes."""
    found = {}
    for result in sorted(out.glob("*/*/result.json")):
        data = json.loads(result.read_text())
        records = json.loads((result.parent / "records.json").read_text())
        for record in records:
            record.pop("seconds")
        statistic = (data.get("assertion") or {}).get("statistic")
        found[data["claim"]] = (data["status"], statistic, records, (result.parent / "figure.png").read_bytes())
    return found


def test_a_worker_killed_mid_collection_has_its_unit_retried(write_suite, caplog) -> None:
    claims = [load_claim(write_suite(name, LONGER), "quick") for name in ("first", "second")]
    killed: list[int] = []

    def kill_one_worker(claim, done: int, total: int) -> None:
        if not killed:
            worker = mp.active_children()[0]  # the pool's spawn workers are this process's children
            os.kill(worker.pid, signal.SIGKILL)
            killed.append(worker.pid)

    with caplog.at_level(logging.WARNING, logger="lipbench"):
        outcomes = run_claims(claims, device="cpu", workers=2, on_progress=kill_one_worker)
    assert killed
    assert "a worker process died" in caplog.text
    assert all(o.status in (Verdict.PASS, Verdict.FAIL) for o in outcomes)  # a verdict, not an ERROR
    for outcome, claim in zip(outcomes, claims, strict=True):
        assert sorted(r.run_id for r in outcome.records) == sorted(s.run_id for s in claim.runs())
        assert all(r.ok for r in outcome.records)


def test_a_unit_that_kills_its_worker_every_time_is_the_only_error(write_suite, caplog) -> None:
    """The pool cannot tell whose unit killed it; only a death while a unit runs alone is charged to it."""
    model = {"name": "builders:fatal_model", "kwargs": {"die_at_init_seed": 1}, "hidden": None, "init": None}
    sweep = {"axis": "scenario.label_noise", "values": [0.0, 0.3, 0.6]}
    fatal = {"scenario": {"model": model}, "sweep": sweep, "assertion": {"direction": "decreasing"}}
    claims = [
        load_claim(write_suite("innocent", {**LONGER, "assertion": {"at": "initial"}}), "quick"),
        load_claim(write_suite("fatal", {**fatal, "seeds": {"init": 2, "sampling": 1}}), "quick"),
    ]
    with caplog.at_level(logging.WARNING, logger="lipbench"):
        innocent, guilty = run_claims(claims, device="cpu", workers=2)
    assert "tried again, each alone" in caplog.text
    assert innocent.status == Verdict.PASS and all(r.ok for r in innocent.records)
    assert sorted(r.run_id for r in innocent.records) == sorted(s.run_id for s in claims[0].runs())
    assert guilty.status == Verdict.ERROR
    dead = {r.run_id for r in guilty.records if not r.ok}
    assert dead == {s.run_id for s in claims[1].runs() if s.init_seed == 1}
    assert all("died 2 times" in r.error for r in guilty.records if not r.ok)
    assert all(r.ok for r in guilty.records if r.run_id not in dead)  # its other runs were not charged


def test_ctrl_c_stops_at_once_keeps_finished_runs_and_the_same_command_resumes(write_suite, tmp_path: Path) -> None:
    write_suite("early", LONGER)
    # 12 runs after early's 6 (another learning rate: equal runs would be shared, lipbench.cache)
    late = {"scenario": {**LONGER["scenario"], "optimizer": {"lr": 0.04}}, "seeds": {"init": 4, "sampling": 1}}
    write_suite("late", late)
    suites, cache = tmp_path / "suites", tmp_path / "cache"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["run", str(suites), "--profile", "quick", "--workers", "2", "--out", str(tmp_path / "out")]
    argv += ["--tracking-uri", uri, "--engine", "per-run"]  # one run a unit: the late claim is still training
    first = _lipbench(*argv, cwd=tmp_path, cache=cache)
    early_done = tmp_path / "out" / "suites" / "early" / "mlflow_run_id"
    _wait_for(lambda: early_done.exists() or first.poll() is not None, 300, "the first claim to be logged")
    assert first.poll() is None, first.communicate()
    os.killpg(first.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole foreground group
    sent = time.monotonic()
    try:
        _, err = first.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(first.pid, signal.SIGKILL)
        raise AssertionError(f"lipbench did not end within 10 s of Ctrl-C: {first.communicate()}") from None
    assert time.monotonic() - sent < 10
    assert first.returncode == 130, err
    assert "Traceback" not in err
    assert "1 of 2 claims finished" in err, err
    resume = re.search(r"resume with: (lipbench run .*)", err)
    assert resume and "--out" in resume.group(1)
    _no_process_left(first.pid)
    assert _statuses(uri) and "RUNNING" not in _statuses(uri)  # early's runs were logged and ended

    kept = len(RunCache(cache).entries())
    assert 6 <= kept < 18
    second = _lipbench(*argv, cwd=tmp_path, cache=cache)
    out, err = second.communicate(timeout=600)
    assert second.returncode in (0, 1), err  # 1: a claim is false after this many steps; not a fault
    assert "Traceback" not in err
    assert f"reused {kept} cached runs, trained {18 - kept}" in out
    assert "RUNNING" not in _statuses(uri)

    reference = tmp_path / "reference"
    plain = ["run", str(suites), "--profile", "quick", "--workers", "1", "--no-mlflow", "--no-cache"]
    plain += ["--engine", "per-run"]
    assert main([*plain, "--out", str(reference)]) == second.returncode
    resumed, uninterrupted = _claim_files(tmp_path / "out"), _claim_files(reference)
    assert set(resumed) == {"early", "late"}
    assert resumed == uninterrupted


def test_sigterm_stops_a_run_in_this_process_at_once(write_suite, tmp_path: Path) -> None:
    write_suite("alone", LONGER)
    cache = tmp_path / "cache"
    argv = ["run", str(tmp_path / "suites"), "--profile", "quick", "--workers", "1", "--no-mlflow"]
    proc = _lipbench(*argv, "--out", str(tmp_path / "out"), cwd=tmp_path, cache=cache)
    _wait_for(lambda: RunCache(cache).entries() or proc.poll() is not None, 300, "a finished run")
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)  # as a scheduler or `kill` sends it: to the process alone
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted (SIGTERM): 0 of 1 claims finished" in err
    assert "resume with: lipbench run" in err
    _no_process_left(proc.pid)
    assert 1 <= len(RunCache(cache).entries()) < 6


def _ctrl_c_twice(write_suite, tmp_path: Path, second_after: str | None) -> tuple[subprocess.Popen, str]:
    """A run of 4 units on 2 workers gets Ctrl-C once a run has finished, and again once lipbench has printed
    a line containing `second_after` (None: its first line after the signal). Its status and stderr."""
    write_suite("twice", {**LONGER, "seeds": {"init": 4, "sampling": 1}})
    cache = tmp_path / "cache"
    argv = ["run", str(tmp_path / "suites"), "--profile", "quick", "--workers", "2", "--no-mlflow"]
    proc = _lipbench(*argv, "--out", str(tmp_path / "out"), cwd=tmp_path, cache=cache)
    _wait_for(lambda: RunCache(cache).entries() or proc.poll() is not None, 300, "a finished run")
    assert proc.poll() is None, proc.communicate()
    os.killpg(proc.pid, signal.SIGINT)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if second_after is None or second_after in line:
            break
    with contextlib.suppress(ProcessLookupError):  # it may have ended already
        os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    return proc, "".join(seen) + err


def test_a_second_ctrl_c_while_lipbench_ends_exits_130_too(write_suite, tmp_path: Path) -> None:
    """The second Ctrl-C can come after the first stop has finished, while the process saves and exits
    (CI saw it: Python's own handler was back, and the process died of the signal, status -2)."""
    proc, err = _ctrl_c_twice(write_suite, tmp_path, second_after="resume with:")  # lipbench's last line
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    _no_process_left(proc.pid)


def test_a_second_ctrl_c_exits_at_once(write_suite, tmp_path: Path) -> None:
    proc, err = _ctrl_c_twice(write_suite, tmp_path, second_after=None)  # while the workers are being stopped
    assert proc.returncode == 130, err
    # while stopping, the second exits at once; when the stop had already ended, the process was exiting 130
    assert "SIGINT again: exiting now" in err or "resume with:" in err, err
    assert "Traceback" not in err
    _no_process_left(proc.pid)
