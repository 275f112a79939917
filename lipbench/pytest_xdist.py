"""The pytest plugin under pytest-xdist: one MLflow store prepared by the controller, pinned workers.

Under xdist (docs/mlflow.md says why) the controller creates the MLflow store and one experiment
per collection in `pytest_configure`, before any worker starts, and hands the experiment ids, the
tracking URI and the results folder to the workers through `node.workerinput`; workers pass ids,
never names. Each worker limits torch to max(1, cores // workers) threads and, when the controller
sees GPUs, keeps one of them visible (worker index modulo the GPU count) by setting
CUDA_VISIBLE_DEVICES before CUDA initialises. Without xdist, the plugin prepares the store itself
once the claims are collected (`prepare_store`).
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from lipbench.devices import has_nvidia_driver
from lipbench.discovery import collection_of, suite_files
from lipbench.errors import LipbenchWarning, StoreError, SuiteError
from lipbench.pytest_settings import Settings

WORKERINPUT_KEY = "lipbench"


def configure(config: pytest.Config, settings: Settings) -> None:
    """A worker takes the controller's store and pins itself; the controller prepares the store."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        configure_worker(settings, workerinput)
    elif distributing(config) and settings.mlflow and not config.option.collectonly:
        collections = sorted({collection_of(f) for f in _suite_files_to_collect(config, settings)})
        if collections:
            prepare_store(settings, collections)


def distributing(config: pytest.Config) -> bool:
    return config.getoption("dist", "no") != "no" and bool(config.getoption("tx", None))


def _suite_files_to_collect(config: pytest.Config, settings: Settings) -> list[Path]:
    """The suite files this session will collect, found by name only (nothing is parsed)."""
    base = config.invocation_params.dir
    roots = [(base / a.split("::")[0]).resolve() for a in config.args]
    try:
        found = suite_files(settings.suite_paths) if settings.suite_paths else []
    except SuiteError:  # an empty suite folder: nothing to prepare a store for
        return []
    return sorted({f for f in found if any(f == r or r in f.parents for r in roots)})


def prepare_store(settings: Settings, collections: list[str]) -> None:
    """Create the store and one experiment per collection; remember the URI and ids for the workers."""
    # MLflow and the runner's modules load only when a store is prepared, so pytest starts fast.
    from lipbench.session import Session
    from lipbench.tracking import Tracker

    for name in collections:
        try:
            tracker = Tracker(Session.experiment_name(name), settings.tracking_uri)
        except StoreError as e:  # before any claim runs: one line, as from the CLI, with this face's options
            message = (
                str(e)
                .replace("--tracking-uri", "--lipbench-tracking-uri")
                .replace("--no-mlflow", "--lipbench-no-mlflow")
            )
            raise pytest.UsageError(message) from None
        settings.tracking_uri = _absolute_uri(tracker.uri)
        settings.experiment_ids[name] = tracker.experiment_id


def _absolute_uri(uri: str) -> str:
    """A relative sqlite path would resolve against each process's cwd; pin it to this one's."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def configure_worker(settings: Settings, workerinput: dict[str, Any]) -> None:
    """An xdist worker: take the controller's store, experiment ids and results folder; pin threads and a GPU."""
    given = workerinput.get(WORKERINPUT_KEY) or {}
    if given:
        settings.tracking_uri = given["tracking_uri"]
        settings.experiment_ids = dict(given["experiment_ids"])
        settings.out = Path(given["out"])
    count = int(workerinput.get("workercount") or os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    settings.threads = max(1, (os.cpu_count() or 1) // count)
    os.environ.setdefault("OMP_NUM_THREADS", str(settings.threads))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(settings.threads)
    gpus = given.get("gpus") or []
    if gpus:
        worker = str(workerinput.get("workerid", "gw0"))
        index = int(worker[2:]) if worker[2:].isdigit() else 0
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            warnings.warn(
                f"lipbench: CUDA was initialised before worker {worker} could pin a GPU; it sees all of them",
                LipbenchWarning,
                stacklevel=1,
            )
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries; torch is imported only if a driver is there."""
    if not has_nvidia_driver():
        return []
    import torch  # only with an NVIDIA driver present: the plugin loads without torch

    count = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [v.strip() for v in visible.split(",") if v.strip()][:count]
    return [str(i) for i in range(count)]


class XdistHooks:
    """Hooks that exist only with pytest-xdist; the plugin registers them when xdist is there."""

    def __init__(self, settings_key: pytest.StashKey[Settings]) -> None:
        self.settings_key = settings_key

    @pytest.hookimpl
    def pytest_xdist_auto_num_workers(self, config: pytest.Config) -> int | None:
        """`-n auto`: one worker per GPU when there are GPUs, else xdist's default (None)."""
        if config.getoption("lipbench_device", "auto") not in ("auto", "cuda"):
            return None
        return len(visible_gpus()) or None

    @pytest.hookimpl
    def pytest_configure_node(self, node: Any) -> None:
        settings = node.config.stash[self.settings_key]
        if settings.gpus is None:  # `--lipbench-device cuda:N` names a GPU itself: no pinning then
            settings.gpus = visible_gpus() if settings.device_option in ("auto", "cuda") else []
        node.workerinput[WORKERINPUT_KEY] = {
            "tracking_uri": settings.tracking_uri,
            "experiment_ids": settings.experiment_ids,
            "out": str(settings.out),
            "gpus": settings.gpus,
        }
