"""Fixtures shared by the suite, engine and CLI tests: one thread, a tiny suite, a wide console."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

# Tiny models on a shared CPU: one thread avoids oversubscription (and its 10x slowdowns).
torch.set_num_threads(1)

#: A claim that holds after two steps: K_0 grows with the init scale (the paper, §8.2).
TINY_SUITE: dict[str, Any] = {
    "schema_version": 1,
    "name": "init_scale",
    "claim": "K grows with the scale of the initial weights.",
    "scenario": {
        "model": {"name": "mlp", "hidden": [16], "init": "normal"},
        "dataset": {"name": "synthetic", "synthetic_size": 64},
        "optimizer": {"lr": 0.05, "batch_size": 8},
        "steps": 2,
        "record_every": 1,
    },
    "sweep": {"axis": "scenario.model.init_std", "values": [0.01, 0.03, 0.1]},
    "seeds": {"init": 2, "sampling": 1},
    # K_0 scales as init_std^2 in a two-layer MLP: the claim must detect at least a factor e over the sweep.
    "assertion": {"test": "monotone_trend", "direction": "increasing", "alpha": 0.05, "min_effect": 1.0},
    "profiles": {"quick": {}},
}


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep merge, override wins; a None value deletes the key."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@pytest.fixture(autouse=True)
def private_run_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test its own run cache (lipbench.cache), so no test reuses another's runs or the user's."""
    path = tmp_path / "run-cache"
    monkeypatch.setenv("LIPBENCH_CACHE_DIR", str(path))
    return path


@pytest.fixture
def write_suite(tmp_path: Path) -> Callable[..., Path]:
    """write_suite("name", {...changes...}, folder=None) -> path of TINY_SUITE with the changes, as YAML."""

    def write(name: str, changes: dict[str, Any] | None = None, folder: Path | None = None) -> Path:
        data = merge(TINY_SUITE, {"name": name.replace("_", "-"), **(changes or {})})
        path = (folder or tmp_path / "suites") / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


@pytest.fixture
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Print the CLI's stdout on a 300-column console, so tables and paths are not cut or wrapped."""
    from rich.console import Console

    from lipbench import console

    monkeypatch.setattr(console, "out", Console(width=300, highlight=False))
