"""The state of the lipbench pytest plugin in one pytest process, shared by `lipbench.pytest_plugin` and
`lipbench.pytest_xdist` (neither reaches into the other). Light: only the standard library."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lipbench.registry import DEFAULT_ENGINE

SLOW_STEPS = 200_000  # model-steps above which a claim is marked slow (ini lipbench_slow_steps)


@dataclass
class Settings:
    """Plugin state of one pytest process, kept in `config.stash`."""

    suite_paths: list[Path] = field(default_factory=list)
    device_option: str = "auto"
    profile_option: str | None = None
    mlflow: bool = True
    tracking_uri: str | None = None
    out: Path = Path("lipbench-results")
    workers: int | None = None
    data_root: str | None = None
    engine: str = DEFAULT_ENGINE
    executor: str = "local"
    ray_address: str | None = None
    cache_dir: str | None = None
    no_cache: bool = False
    baselines: str | None = None
    slow_steps: int = SLOW_STEPS
    threads: int | None = None
    experiment_ids: dict[str, str] = field(default_factory=dict)
    gpus: list[str] | None = None
    invocation: Any = None  # lipbench.invocation.Invocation, opened when the first claim runs
    invocation_error: str | None = None
    names: dict[tuple[str, str], Path] = field(default_factory=dict)
