"""`LIPBENCH_BISECT=1 git bisect run lipbench run ...` finds the commit that planted a break."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

LOOP = '''import torch


def train(context, recorder, *, rate=0.01):
    """Every weight grows by about `rate` per step: log K grows by about 2 rate per step (two layers)."""
    features = context.data.x_train[0].numel()
    with context.init_rng():
        model = torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Linear(features, 8),
            torch.nn.ReLU(),
            torch.nn.Linear(8, context.data.num_classes),
        )
    noise = context.generators.sampling
    for step in range(context.steps + 1):
        recorder.record(step, model, loss=0.0)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + RATE * rate * (1 + 0.2 * torch.randn((), generator=noise)))
'''

SUITE = {
    "schema_version": 1,
    "name": "growth",
    "claim": "log K keeps growing",
    "scenario": {
        "run": {"name": "loop:train"},
        "dataset": {"name": "synthetic", "synthetic_shape": [1, 2, 2], "synthetic_size": 64},
        "steps": 100,
        "record_every": 10,
    },
    "seeds": {"init": 3, "sampling": 1},
    "assertion": {"test": "growth_trend", "quantity": "log_K", "window": 0.5, "alpha": 0.05},
    "profiles": {"quick": {}},
}


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    done = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=True, timeout=600)
    return done.stdout


def commit(repo: Path, message: str, rate: str = "1.0", loop: str = LOOP) -> str:
    (repo / "loop.py").write_text(f"RATE = {rate}\n" + loop)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", message)
    return git(repo, "rev-parse", "HEAD").strip()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_bisect_run_finds_the_planted_break(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "growth.yaml").write_text(yaml.safe_dump(SUITE, sort_keys=False))
    good = commit(repo, "a growing loop")
    unrunnable = commit(repo, "a loop that cannot be imported", loop=LOOP + "def (\n")
    commit(repo, "the loop imports again", loop=LOOP + "# fixed\n")
    commit(repo, "a comment", loop=LOOP + "# tidy\n")
    planted = commit(repo, "the break: little growth", rate="0.02")
    commit(repo, "another comment", rate="0.02", loop=LOOP + "# more\n")
    script = tmp_path / "run.sh"
    script.write_text(
        f"#!/bin/sh\nexec {sys.executable} -m lipbench.cli run growth.yaml --profile quick --device cpu --workers 1 "
        f'--no-mlflow --no-cache --out {tmp_path / "out"} "$@"\n'
    )
    script.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(repo), os.environ.get("PYTHONPATH", "")])}

    # The commit whose code cannot run: bad input (2), or 125 ("cannot test") with LIPBENCH_BISECT set.
    git(repo, "checkout", "-q", unrunnable)
    assert subprocess.run([str(script)], cwd=repo, env=env, capture_output=True, timeout=600).returncode == 2
    with_variable = {**env, "LIPBENCH_BISECT": "1"}
    assert (
        subprocess.run([str(script)], cwd=repo, env=with_variable, capture_output=True, timeout=600).returncode == 125
    )
    git(repo, "checkout", "-q", "-")

    git(repo, "bisect", "start", "HEAD", good)
    done = subprocess.run(
        ["git", "bisect", "run", str(script)],
        cwd=repo,
        env=with_variable,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert f"{planted} is the first bad commit" in done.stdout, done.stdout + done.stderr
