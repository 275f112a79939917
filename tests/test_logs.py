"""Output read in a CI log: `lipbench run` and `lipbench calibrate` piped into a file print every table
whole (one line per claim, no name or number cut, whatever the width), MLflow's own INFO lines do not
come first, and the addresses of the MLflow runs table and of each failing claim's run are printed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from lipbench.calibration import calibrate, table_rows
from lipbench.suite import load_claim

ROOT = Path(__file__).resolve().parents[1]
#: Longer than a default 80-column table gives its claim column.
LONG = "k-grows-with-the-scale-of-the-initial-weights-of-a-two-layer-mlp"


def _lipbench(*args: str, cwd: Path, log: Path) -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.update(COLUMNS="60", MPLBACKEND="Agg", MLFLOW_DISABLE_TELEMETRY="true")  # a narrow log
    with log.open("w") as f:
        done = subprocess.run(
            [sys.executable, "-m", "lipbench.cli", *args], cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT
        )
    return done.returncode


def test_run_and_calibrate_piped_to_a_file_print_whole_lines(write_suite, tmp_path: Path) -> None:
    good = write_suite(LONG)
    write_suite(f"{LONG}-weak", {"seeds": {"init": 1}, "assertion": {"alpha": 0.01}})  # an ERROR, untrained
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log = tmp_path / "run.log"
    argv = ["run", str(good.parent), "--workers", "1", "--out", str(tmp_path / "out"), "--tracking-uri", uri]
    assert _lipbench(*argv, cwd=tmp_path, log=log) == 1
    lines = log.read_text().splitlines()
    assert "Traceback" not in log.read_text()
    assert lines[0].startswith("lipbench: 2 claims"), lines[:3]  # nothing of MLflow's before
    row = next(line for line in lines if f"│ {LONG} " in line)
    assert re.search(r"mean_block_spearman_rho = [-\d.e]+ ", row) and "│ quick " in row, row
    assert next(line for line in lines if f"│ {LONG}-weak " in line and "ERROR" in line)

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("lipbench/suites").experiment_id
    [weak_run] = [
        r.info.run_id
        for r in client.search_runs([experiment])
        if r.data.tags.get("lipbench.claim") == f"{LONG}-weak" and "mlflow.parentRunId" not in r.data.tags
    ]
    assert f"mlflow: runs of suites: http://127.0.0.1:5000/#/experiments/{experiment}/runs" in lines
    assert f"mlflow: ERROR {LONG}-weak: http://127.0.0.1:5000/#/experiments/{experiment}/runs/{weak_run}" in lines

    log = tmp_path / "calibrate.log"
    assert (
        _lipbench(
            "calibrate",
            str(good),
            "--replicates",
            "50",
            "--record-replicates",
            "20",
            "--out",
            str(tmp_path / "cal"),
            cwd=tmp_path,
            log=log,
        )
        == 0
    )
    text = log.read_text()
    rows, _ = calibrate([load_claim(good, "quick")], reps=50, record_reps=20)
    for cells in table_rows(rows):  # every cell of each row on the row's one line (simulated again: same seeds)
        key = cells[:4]  # claim, test, path, noise family: one row each
        line = next(line for line in text.splitlines() if all(f"│ {cell} " in line for cell in key))
        for cell in cells[4:9]:  # model, runs, alpha, false pass, power
            assert f"│ {cell} " in line, (cell, line)
