"""The Ray executor: the local executor's records and verdicts, Ray's retries of a dead worker, a
unit that keeps dying reported as Verdict.ERROR, and a real two-node cluster on this machine.

Ray is a test dependency (the README installs the `ray` extra): these tests run, not skip, in CI;
without Ray installed the module is skipped.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from builders import live_group_members

from lipbench.executors import start_ray
from lipbench.outcome import Verdict
from lipbench.runner import run_claims
from lipbench.suite import load_claim

ray = pytest.importorskip("ray")  # the `ray` extra: CI installs it, a plain install may not

ROOT = Path(__file__).resolve().parents[1]
LONGER = {"scenario": {"steps": 2500, "record_every": 500}}  # about a second a run: caught in flight


def _comparable(outcome) -> tuple:
    records = []
    for record in sorted(outcome.records, key=lambda r: r.run_id):
        data = record.to_dict()
        data.pop("seconds")
        records.append(data)
    return outcome.claim.name, outcome.status, outcome.result.statistic if outcome.result else None, records


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance (2 CPUs) for the tests of this module that run in this process."""
    start_ray(None, 2)
    yield
    ray.shutdown()


def _unit_workers() -> list[int]:
    """Ray worker processes running a lipbench unit now (Ray titles them `ray::<task name>`)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(b"ray::lipbench_unit"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_the_local_ray_instance_runs_its_tasks_at_lipbenchs_niceness(local_ray) -> None:
    """Ray's default niceness for workers (15) let a second pytest worker starve the units (3-4 % of a core)."""

    @ray.remote
    def niceness() -> int:
        return os.nice(0)

    assert ray.get(niceness.remote()) == os.nice(0)


def test_ray_and_local_executors_give_identical_records_and_verdicts(write_suite, local_ray) -> None:
    claims = [
        load_claim(write_suite("scale"), "quick"),
        load_claim(write_suite("more-seeds", {"seeds": {"init": 3, "sampling": 2}}), "quick"),
    ]
    on_ray = run_claims(claims, device="cpu", executor="ray", workers=2)
    local = run_claims(claims, device="cpu", workers=2)  # the same workers: ensemble groups split alike
    assert [o.status for o in on_ray] == [Verdict.PASS, Verdict.PASS]
    assert [_comparable(o) for o in on_ray] == [_comparable(o) for o in local]


@pytest.mark.slow  # trains three claims of the quick implications suite
def test_quick_implications_claims_on_ray_hold_their_baselines(local_ray) -> None:
    """Claims of suites/implications at their quick profile, trained by Ray tasks (MLP ensembles split over
    the workers, and ConvNet runs): the verdicts of the README's reproduction, and against the committed
    baselines (made on another machine, whose BLAS rounds otherwise) judged by the tolerance rule, as a
    user's run is: no claim REGRESSED. That Ray and the local executor give the same records to the last
    bit is the test above, on this machine."""
    from lipbench.baselines import verdict_for

    names = ("label_corruption", "noisy_gradient", "unbounded_growth")
    claims = [load_claim(ROOT / "suites" / "implications" / f"{name}.yaml", "quick") for name in names]
    on_ray = run_claims(claims, device="cpu", executor="ray", workers=2)
    assert [o.status for o in on_ray] == [Verdict.PASS] * 3, [o.sentence for o in on_ray]  # README, Reproduction
    for ray_outcome in on_ray:
        comparison = verdict_for(ray_outcome, ROOT / "baselines", "cpu")
        assert comparison.comparable, (ray_outcome.claim.name, comparison.sentence)
        assert comparison.verdict in (Verdict.PASS, Verdict.IMPROVED), (ray_outcome.claim.name, comparison.sentence)


def test_a_ray_worker_killed_mid_collection_is_retried_by_ray(write_suite, local_ray) -> None:
    claim = load_claim(write_suite("survives", LONGER), "quick")
    killed: list[int] = []

    def kill_a_running_unit(_claim, done: int, total: int) -> None:
        deadline = time.monotonic() + 30
        while not killed and time.monotonic() < deadline:
            running = _unit_workers()
            if running:
                os.kill(running[0], signal.SIGKILL)
                killed.append(running[0])
            time.sleep(0.02)

    [outcome] = run_claims([claim], device="cpu", executor="ray", on_progress=kill_a_running_unit)
    assert killed, "no unit was running to be killed"
    assert outcome.status in (Verdict.PASS, Verdict.FAIL), outcome.error  # a verdict: the killed unit was trained again
    assert sorted(r.run_id for r in outcome.records) == sorted(s.run_id for s in claim.runs())
    assert all(r.ok for r in outcome.records)


def test_a_unit_whose_worker_keeps_dying_is_that_runs_error(write_suite, local_ray) -> None:
    claim = load_claim(write_suite("doomed", LONGER), "quick")
    stop, killed = threading.Event(), set()

    def killer() -> None:
        while not stop.is_set():
            for pid in _unit_workers():
                if pid not in killed:
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
            time.sleep(0.01)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        [outcome] = run_claims([claim], device="cpu", executor="ray")
    finally:
        stop.set()
        thread.join()
    assert outcome.status == Verdict.ERROR
    failed = [r for r in outcome.records if not r.ok]
    assert failed and all("its Ray task failed 2 times" in r.error for r in failed)
    assert "its Ray task failed 2 times" in outcome.error
    assert len(killed) >= 2 * len(failed)  # every failed unit was tried twice


# ------------------------------------------------------------------ a two-node cluster on this machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _end_group(pgid: int) -> None:
    """Kill every process of one `ray start` (its own process group), and only those."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while live_group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not live_group_members(pgid), f"Ray processes left: {live_group_members(pgid)}"


@pytest.fixture
def ray_cluster(tmp_path: Path):
    """A head node and one worker node (1 CPU each), started with `ray start` and ended after the test.

    Each `ray start` runs in a process group of its own, so the teardown signals that group alone;
    the session folders go to a short temp dir of this test (Ray's socket paths have a length limit)."""
    temp = Path(tempfile.mkdtemp(prefix="lbray-"))
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "RAY_AUTH_MODE": "token",  # Ray's token authentication, as a real cluster should have it
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_worker_niceness": "0",  # as the local instance lipbench starts (README, Several machines)
    }
    env.pop("RAY_ADDRESS", None)
    ray_cli = str(Path(sys.executable).with_name("ray"))
    common = ["--num-cpus=1", f"--temp-dir={temp}", "--disable-usage-stats"]
    groups: list[int] = []
    try:
        for args in (["--head", f"--port={port}", "--include-dashboard=false"], [f"--address=127.0.0.1:{port}"]):
            started = subprocess.Popen(
                [ray_cli, "start", *args, *common],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            groups.append(started.pid)
            output, _ = started.communicate(timeout=240)
            assert started.returncode == 0, output
        yield f"127.0.0.1:{port}", env
    finally:
        for pgid in reversed(groups):
            _end_group(pgid)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow  # starts a cluster of two Ray nodes
def test_a_two_node_ray_cluster_reaches_the_local_verdicts(write_suite, tmp_path: Path, ray_cluster) -> None:
    address, env = ray_cluster
    count = "import ray; ray.init(address={!r}); print(sum(n['Alive'] for n in ray.nodes()), 'nodes')"
    nodes = subprocess.run(
        [sys.executable, "-c", count.format(address)], env=env, capture_output=True, text=True, timeout=120
    )
    assert "2 nodes" in nodes.stdout, nodes.stdout + nodes.stderr

    path = write_suite("clustered")
    out = tmp_path / "out"
    argv = ["run", str(path), "--profile", "quick", "--no-mlflow", "--no-cache", "--out", str(out)]
    argv += ["--engine", "per-run"]  # one run a unit: the cluster's split of ensemble groups is not the local one's
    on_cluster = subprocess.run(
        [sys.executable, "-m", "lipbench.cli", *argv, "--executor", "ray", "--ray-address", address],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert on_cluster.returncode == 0, on_cluster.stdout + on_cluster.stderr
    assert "Traceback" not in on_cluster.stderr

    from lipbench.results import load_outcome

    [local] = run_claims([load_claim(path, "quick")], device="cpu", workers=1, engine="per-run")
    assert _comparable(load_outcome(out / "suites" / "clustered")) == _comparable(local)


@pytest.mark.slow  # starts lipbench and a local Ray instance in a subprocess
def test_ctrl_c_under_the_ray_executor_ends_ray_too(write_suite, tmp_path: Path) -> None:
    """The local Ray instance that `lipbench run` started is in its process group: all of it ends."""
    from lipbench.cache import RunCache

    path = write_suite("interrupted", {**LONGER, "seeds": {"init": 4, "sampling": 1}})
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.update(LIPBENCH_CACHE_DIR=str(cache))
    env.pop("RAY_ADDRESS", None)
    argv = ["run", str(path), "--profile", "quick", "--no-mlflow", "--executor", "ray", "--workers", "2"]
    argv += ["--engine", "per-run"]  # one run a unit: runs are still training when the signal comes
    proc = subprocess.Popen(
        [sys.executable, "-m", "lipbench.cli", *argv, "--out", str(tmp_path / "out")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not RunCache(cache).entries() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    os.killpg(proc.pid, signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        _end_group(proc.pid)
        raise AssertionError("lipbench did not end within 10 s of Ctrl-C") from None
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "resume with: lipbench run" in err
    deadline = time.monotonic() + 10
    while live_group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = live_group_members(proc.pid)
    _end_group(proc.pid)
    assert not left, f"processes left: {left}"
