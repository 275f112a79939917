"""Four `lipbench run` started together, as a script launching jobs would: into one fresh folder's
default sqlite store, and into one local `mlflow server`. Every invocation finishes, each in its
own results folder, and the store holds every parent and child run, FINISHED, none in `Default`,
with every metric point (counted)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from builders import free_port
from conftest import TINY_SUITE

ROOT = Path(__file__).resolve().parents[1]
INVOCATIONS = 4
CHILDREN = 6  # TINY_SUITE: 3 sweep values x 2 init seeds x 1 sampling seed


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true", MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    return env


def run_together(folder: Path, *options: str) -> list[subprocess.CompletedProcess]:
    """Start INVOCATIONS `lipbench run` of the tiny suite in `folder` at once; wait for all."""
    suite = folder / "suites" / "tiny.yaml"
    suite.parent.mkdir(parents=True, exist_ok=True)
    suite.write_text(yaml.safe_dump({**TINY_SUITE, "name": "tiny"}, sort_keys=False))
    argv = [sys.executable, "-m", "lipbench.cli", "run", str(suite), "--workers", "1", "--profile", "quick"]
    procs = [
        subprocess.Popen(
            [*argv, "--device", "cpu", *options],
            cwd=folder,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(INVOCATIONS)
    ]
    done = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


def check_store(uri: str, results: list[Path]) -> None:
    """Every invocation's parent and child runs are in `lipbench/suites`, FINISHED, with every point."""
    from mlflow import MlflowClient

    from lipbench.tracking import KIND, KIND_TAG

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("lipbench/suites")
    assert experiment.tags.get(KIND_TAG) == KIND
    assert client.search_runs(["0"], max_results=100) == []  # nothing landed in `Default`
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = {r.info.run_id: r for r in runs if "mlflow.parentRunId" not in r.data.tags}
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == INVOCATIONS and len(children) == INVOCATIONS * CHILDREN
    assert {r.info.status for r in runs} == {"FINISHED"}
    for folder in results:  # each results folder names its own parent run
        parent_id = (folder / "suites" / "tiny" / "mlflow_run_id").read_text().strip()
        assert parent_id in parents
        mine = {c.info.run_name: c for c in children if c.data.tags["mlflow.parentRunId"] == parent_id}
        records = json.loads((folder / "suites" / "tiny" / "records.json").read_text())
        assert sorted(mine) == sorted(r["run_id"] for r in records)
        for record in records:
            child = mine[record["run_id"]]
            for name, values in record["metrics"].items():
                held = client.get_metric_history(child.info.run_id, name)
                assert len(held) == len(values) == 3, (record["run_id"], name)  # steps 0, 1, 2


def check_invocations(done: list[subprocess.CompletedProcess], folder: Path) -> list[Path]:
    for d in done:
        assert d.returncode == 0, d.stderr[-3000:]
        assert "Traceback" not in d.stderr and "lipbench: warning" not in d.stderr, d.stderr[-3000:]
    results = sorted((folder / "lipbench-results").iterdir())
    assert len(results) == INVOCATIONS  # one folder each, though they started in the same second
    for d in done:
        assert sum(f"results in {r.relative_to(folder)}" in d.stdout for r in results) == 1
    return results


def test_four_invocations_share_a_fresh_default_store(tmp_path: Path) -> None:
    done = run_together(tmp_path)
    results = check_invocations(done, tmp_path)
    check_store(f"sqlite:///{tmp_path / 'mlflow.db'}", results)


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A local `mlflow server` (sqlite backend, proxied artifacts) on a free port; torn down after."""
    port = free_port()
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"),
            *("--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}"),
            *("--artifacts-destination", str(tmp_path / "server-artifacts")),
        ],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the server and its workers go together
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(uri, server)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _wait_until_up(uri: str, server: subprocess.Popen, seconds: float = 180) -> None:
    import requests

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert server.poll() is None, "mlflow server exited"
        try:
            if requests.get(f"{uri}/health", timeout=5).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError(f"mlflow server at {uri} did not answer within {seconds} s")


def test_four_invocations_share_one_tracking_server(mlflow_server: str, tmp_path: Path) -> None:
    folder = tmp_path / "jobs"
    folder.mkdir()
    done = run_together(folder, "--tracking-uri", mlflow_server)
    results = check_invocations(done, folder)
    check_store(mlflow_server, results)
    assert not (folder / "mlflow.db").exists() and not (folder / "mlruns").exists()  # all went to the server
    from mlflow import MlflowClient

    parent = (results[0] / "suites" / "tiny" / "mlflow_run_id").read_text().strip()
    artifacts = {a.path for a in MlflowClient(mlflow_server).list_artifacts(parent)}
    assert {"assertion.json", "records.json", "result.json", "figure.png"} <= artifacts  # through the server
