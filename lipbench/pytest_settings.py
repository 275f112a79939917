"""The state of the lipbench pytest plugin in one pytest process, shared by `lipbench.pytest_plugin` and
`lipbench.pytest_xdist` (neither reaches into the other). Light: the standard library and the option table,
whose defaults it takes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lipbench.options import OPTIONS

SLOW_STEPS = 200_000  # model-steps above which a claim is marked slow (ini lipbench_slow_steps)


@dataclass
class Settings:
    """Plugin state of one pytest process, kept in `config.stash`."""

    suite_paths: list[Path] = field(default_factory=list)
    device_option: str = OPTIONS["device"].default
    profile_option: str | None = OPTIONS["profile"].default
    mlflow: bool = not OPTIONS["no-mlflow"].default
    tracking_uri: str | None = OPTIONS["tracking-uri"].default
    out: Path = Path("lipbench-results")
    workers: int | None = OPTIONS["workers"].default
    data_root: str | None = OPTIONS["data-root"].default
    engine: str = OPTIONS["engine"].default
    executor: str = OPTIONS["executor"].default
    ray_address: str | None = OPTIONS["ray-address"].default
    cache_dir: str | None = OPTIONS["cache-dir"].default
    no_cache: bool = OPTIONS["no-cache"].default
    baselines: str | None = OPTIONS["baselines"].default
    slow_steps: int = SLOW_STEPS
    threads: int | None = None
    experiment_ids: dict[str, str] = field(default_factory=dict)
    gpus: list[str] | None = None
    invocation: Any = None  # lipbench.invocation.Invocation, opened when the first claim runs
    invocation_error: str | None = None
    names: dict[tuple[str, str], Path] = field(default_factory=dict)
