"""pytest plugin: each claim of a suite file is a test item, run by the same runner as `lipbench run`.

Registered through the `pytest11` entry point. Suite files (*.yaml, *.yml) under the configured
paths (`--lipbench-suites`, else the `lipbench_suites` ini option, default `suites/` under the
rootdir) are collected as one item per claim; when pytest is invoked without paths (testpaths)
the existing suite paths are collected as well. An item calls `lipbench.runner.run_claims` with
`lipbench.session.Session.finish_claim` as `on_claim_done`, exactly as the CLI does: results
folder, figure and MLflow logging are the same.

Markers: `lipbench` on every claim; `gpu` when `scenario.device: cuda` (such a claim is skipped
with a reason when no CUDA device is in use); `slow` when the claim's model-steps (the sum of
`steps` over its runs, as `lipbench list` shows them) exceed `lipbench_slow_steps` (ini, default
200,000: about a minute or more of CPU time), so `pytest -m "not slow"` works.

Under pytest-xdist (docs/mlflow.md says why) the controller creates the MLflow store and one
experiment per collection in `pytest_configure`, before any worker starts, and hands the
experiment ids, the tracking URI and the results folder to the workers through
`node.workerinput`; workers pass ids, never names. Each worker limits torch to
max(1, cores // workers) threads and, when the controller sees GPUs, keeps one of them visible
(worker index modulo the GPU count) by setting CUDA_VISIBLE_DEVICES before CUDA initialises.

Importing this module is cheap: torch, mlflow and the suite schema are imported inside hooks,
and only when a suite file is collected or a claim runs.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

SLOW_STEPS = 200_000
SUITE_SUFFIXES = (".yaml", ".yml")  # lipbench.suite.SUITE_SUFFIXES, without importing the schema
ENGINES = ("auto", "per-run", "ensemble")  # lipbench.runner.ENGINES, likewise
EXECUTORS = ("local", "ray")  # lipbench.executors.EXECUTORS, likewise
WORKERINPUT_KEY = "lipbench"
MARKERS = (
    "lipbench: a claim of a lipbench suite file, run as a test",
    "gpu: needs a CUDA device (scenario.device: cuda)",
    f"slow: a lipbench claim of more than lipbench_slow_steps (default {SLOW_STEPS:,}) model-steps",
)


class LipbenchWarning(UserWarning):
    """A problem that costs no verdict (an MLflow write or a figure that failed); the results are saved."""


class ClaimFailed(Exception):
    """A claim whose status fails the test: FAIL, ERROR or a strict XPASS."""

    def __init__(self, item: ClaimItem, status: str, message: str, folder: Path | None = None):
        super().__init__(f"{item.name} [{status}]: {message}")
        self.item, self.status, self.message, self.folder = item, status, message, folder

    def report(self) -> str:
        claim = self.item.claim
        lines = [
            f"{self.status}: {self.message}",
            f"  claim: {claim.name} (profile {claim.profile})",
            f"  suite: {claim.file}",
        ]
        if self.folder is not None:
            lines.append(f"  results: {self.folder}")
        return "\n".join(lines)


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
    engine: str = "per-run"
    executor: str = "local"
    ray_address: str | None = None
    cache_dir: str | None = None
    no_cache: bool = False
    cache: Any = None
    baselines: str | None = None
    slow_steps: int = SLOW_STEPS
    threads: int | None = None
    experiment_ids: dict[str, str] = field(default_factory=dict)
    gpus: list[str] | None = None
    profile: str | None = None
    device: str | None = None
    device_error: str | None = None
    session: Any = None
    names: dict[tuple[str, str], Path] = field(default_factory=dict)


SETTINGS = pytest.StashKey[Settings]()


# ------------------------------------------------------------------ options and configuration


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lipbench", "lipbench claims as tests")
    group.addoption(
        "--lipbench-suites",
        action="append",
        default=None,
        metavar="PATH",
        help="folder or file of suite YAML files to collect (repeatable; default: the lipbench_suites ini option)",
    )
    group.addoption(
        "--lipbench-profile",
        default=None,
        help="profile of each suite (default: paper when torch sees a CUDA device, else quick)",
    )
    group.addoption("--lipbench-device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    group.addoption(
        "--lipbench-no-mlflow", action="store_true", help="do not log claims to MLflow (results are still saved)"
    )
    group.addoption(
        "--lipbench-tracking-uri", default=None, help="MLflow store (default MLFLOW_TRACKING_URI or MLflow's default)"
    )
    group.addoption("--lipbench-out", default=None, help="results folder (default lipbench-results/pytest-<time>)")
    group.addoption(
        "--lipbench-workers",
        type=int,
        default=None,
        help="training processes per claim (default: 1 inside an xdist worker, else the runner's default)",
    )
    group.addoption(
        "--lipbench-baselines",
        default=None,
        metavar="DIR",
        help="baselines folder (default LIPBENCH_BASELINES, else the baselines/ folder above the suite file)",
    )
    group.addoption(
        "--lipbench-engine",
        choices=ENGINES,
        default="per-run",
        help="per-run (default) trains each run alone; ensemble/auto vectorise a claim's compatible runs",
    )
    group.addoption(
        "--lipbench-executor",
        choices=EXECUTORS,
        default="local",
        help="local (default): a process pool on this machine; ray: Ray tasks on a Ray cluster",
    )
    group.addoption(
        "--lipbench-ray-address",
        default=None,
        metavar="ADDR",
        help="with --lipbench-executor ray: cluster to join (default RAY_ADDRESS, else a local instance)",
    )
    group.addoption(
        "--lipbench-cache-dir",
        default=None,
        metavar="DIR",
        help="run cache folder (default LIPBENCH_CACHE_DIR, else ~/.cache/lipbench/runs)",
    )
    group.addoption(
        "--lipbench-no-cache", action="store_true", help="train every run, neither reading nor writing the cache"
    )
    group.addoption("--lipbench-data-root", default=None, help="dataset folder (default LIPBENCH_DATA or a user cache)")
    parser.addini(
        "lipbench_suites", "folders or files of suite YAML files, relative to the rootdir", "args", ["suites"]
    )
    parser.addini("lipbench_slow_steps", f"model-steps above which a claim is marked slow (default {SLOW_STEPS})")


def pytest_plugin_registered(plugin: object, manager: pytest.PytestPluginManager) -> None:
    """Register the xdist hooks only when xdist is there (an unknown hook would be an error without it).

    This hook is historic: it also sees plugins registered before this one, so the order in which
    xdist and lipbench are loaded does not matter; `-n auto` asks for the worker count before
    `pytest_configure`, hence here and not there.
    """
    if manager.hasplugin("xdist") and not manager.hasplugin("lipbench-xdist"):
        manager.register(XdistHooks(), "lipbench-xdist")


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    settings = _settings(config)
    config.stash[SETTINGS] = settings
    if config.args_source == pytest.Config.ArgsSource.TESTPATHS:
        _add_suite_args(config, settings.suite_paths)
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        _configure_worker(settings, workerinput)
    elif _distributing(config) and settings.mlflow and not config.option.collectonly:
        # The controller: store and experiments before any worker starts (docs/mlflow.md).
        collections = sorted({_collection(f) for f in _suite_files_to_collect(config, settings)})
        if collections:
            _prepare_store(settings, collections)


def _settings(config: pytest.Config) -> Settings:
    given = config.getoption("lipbench_suites")
    if given:
        candidates = [Path(p) if Path(p).is_absolute() else config.invocation_params.dir / p for p in given]
    else:
        candidates = [config.rootpath / p for p in config.getini("lipbench_suites")]
    raw_slow = config.getini("lipbench_slow_steps")
    try:
        slow = int(str(raw_slow).replace("_", "")) if raw_slow else SLOW_STEPS
    except ValueError:
        raise pytest.UsageError(f"lipbench_slow_steps must be an integer, got {raw_slow!r}") from None
    if config.getoption("lipbench_executor") == "ray" and importlib.util.find_spec("ray") is None:
        raise pytest.UsageError(
            '--lipbench-executor ray needs Ray, which is not installed: pip install "lipbench[ray]"'
        )
    out = config.getoption("lipbench_out")
    out_path = Path(out) if out else Path("lipbench-results") / datetime.now().strftime("pytest-%Y%m%d-%H%M%S")
    if not out_path.is_absolute():
        out_path = config.invocation_params.dir / out_path
    return Settings(
        suite_paths=[p.resolve() for p in candidates if p.exists()],
        device_option=config.getoption("lipbench_device"),
        profile_option=config.getoption("lipbench_profile"),
        mlflow=not config.getoption("lipbench_no_mlflow"),
        tracking_uri=config.getoption("lipbench_tracking_uri"),
        out=out_path,
        workers=config.getoption("lipbench_workers"),
        data_root=config.getoption("lipbench_data_root"),
        engine=config.getoption("lipbench_engine"),
        executor=config.getoption("lipbench_executor"),
        ray_address=config.getoption("lipbench_ray_address"),
        cache_dir=config.getoption("lipbench_cache_dir"),
        no_cache=config.getoption("lipbench_no_cache"),
        baselines=config.getoption("lipbench_baselines"),
        slow_steps=slow,
    )


def _add_suite_args(config: pytest.Config, suite_paths: list[Path]) -> None:
    """`pytest` with no paths runs testpaths; add the suite paths that no testpath already covers."""
    base = config.invocation_params.dir
    covered = [(base / a).resolve() for a in config.args]
    for path in suite_paths:
        if not any(path == c or c in path.parents for c in covered):
            config.args.append(os.path.relpath(path, base) if base in path.parents else str(path))


def _distributing(config: pytest.Config) -> bool:
    return config.getoption("dist", "no") != "no" and bool(config.getoption("tx", None))


def _suite_files_to_collect(config: pytest.Config, settings: Settings) -> list[Path]:
    """The suite files this session will collect, found by name only (nothing is parsed)."""
    base = config.invocation_params.dir
    roots = [(base / a.split("::")[0]).resolve() for a in config.args]
    files: set[Path] = set()
    for path in settings.suite_paths:
        found = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
        for f in found:
            if f.suffix in SUITE_SUFFIXES and any(f == r or r in f.parents for r in roots):
                files.add(f)
    return sorted(files)


def _collection(path: Path) -> str:
    return path.parent.name or "suites"  # as lipbench.suite.load_claim names it


def _prepare_store(settings: Settings, collections: list[str]) -> None:
    """Create the store and one experiment per collection; remember the URI and ids for the workers."""
    from lipbench.session import Session
    from lipbench.tracking import Tracker

    for name in collections:
        tracker = Tracker(Session.experiment_name(name), settings.tracking_uri)
        settings.tracking_uri = _absolute_uri(tracker.uri)
        settings.experiment_ids[name] = tracker.experiment_id


def _absolute_uri(uri: str) -> str:
    """A relative sqlite path would resolve against each process's cwd; pin it to this one's."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def _configure_worker(settings: Settings, workerinput: dict[str, Any]) -> None:
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


def _visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries; torch is imported only if a driver is there."""
    if not (Path("/proc/driver/nvidia").exists() or any(Path("/dev").glob("nvidia[0-9]*"))):
        return []
    import torch

    count = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [v.strip() for v in visible.split(",") if v.strip()][:count]
    return [str(i) for i in range(count)]


class XdistHooks:
    """Hooks that exist only with pytest-xdist; registered by `pytest_plugin_registered`."""

    @pytest.hookimpl
    def pytest_xdist_auto_num_workers(self, config: pytest.Config) -> int | None:
        """`-n auto`: one worker per GPU when there are GPUs, else xdist's default (None)."""
        if config.getoption("lipbench_device", "auto") not in ("auto", "cuda"):
            return None
        return len(_visible_gpus()) or None

    @pytest.hookimpl
    def pytest_configure_node(self, node: Any) -> None:
        settings = node.config.stash[SETTINGS]
        if settings.gpus is None:  # `--lipbench-device cuda:N` names a GPU itself: no pinning then
            settings.gpus = _visible_gpus() if settings.device_option in ("auto", "cuda") else []
        node.workerinput[WORKERINPUT_KEY] = {
            "tracking_uri": settings.tracking_uri,
            "experiment_ids": settings.experiment_ids,
            "out": str(settings.out),
            "gpus": settings.gpus,
        }


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    settings = config.stash.get(SETTINGS, None)
    if settings is None or not settings.suite_paths:
        return None
    mlflow = "off" if not settings.mlflow else settings.tracking_uri or "MLFLOW_TRACKING_URI or MLflow's default"
    return [
        f"lipbench: suites {', '.join(map(str, settings.suite_paths))}; "
        f"profile {settings.profile_option or 'auto'}; results {settings.out}; mlflow {mlflow}"
    ]


# ------------------------------------------------------------------ collection


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> SuiteFile | None:
    settings = parent.config.stash.get(SETTINGS, None)
    if settings is None or not settings.suite_paths or file_path.suffix not in SUITE_SUFFIXES:
        return None
    resolved = file_path.resolve()
    if not any(resolved == p or p in resolved.parents for p in settings.suite_paths):
        return None
    return SuiteFile.from_parent(parent, path=file_path)


class SuiteFile(pytest.File):
    """One suite file: one claim, resolved for the session's profile."""

    def collect(self):
        from lipbench.errors import SuiteError
        from lipbench.suite import load_claim

        settings = self.config.stash[SETTINGS]
        try:
            claim = load_claim(self._suite_path(), _profile(settings))
        except SuiteError as e:
            raise self.CollectError(str(e)) from None
        key = (claim.collection, claim.name)
        other = settings.names.setdefault(key, self.path)
        if other != self.path:
            raise self.CollectError(
                str(SuiteError(claim.file, "name", f"{claim.name!r} is also the name of {other}; names must differ"))
            )
        item = ClaimItem.from_parent(self, name=claim.name, claim=claim)
        item.add_marker("lipbench")
        if claim.claim.scenario.device == "cuda":
            item.add_marker("gpu")
        if claim.model_steps() > settings.slow_steps:
            item.add_marker("slow")
        yield item

    def _suite_path(self) -> Path:
        """Relative to the invocation folder when inside it, so files read as they do from `lipbench run`."""
        base = self.config.invocation_params.dir
        return Path(os.path.relpath(self.path, base)) if base in self.path.parents else self.path


def _profile(settings: Settings) -> str:
    if settings.profile is None:
        from lipbench.cli import default_profile

        settings.profile = settings.profile_option or default_profile(settings.device_option)
    return settings.profile


# ------------------------------------------------------------------ running


class ClaimItem(pytest.Item):
    """One claim; `runtest` runs it through `lipbench.runner.run_claims`, as `lipbench run` does."""

    def __init__(self, *, claim: Any, **kwargs: Any):
        super().__init__(**kwargs)
        self.claim = claim
        self.outcome: Any = None

    def runtest(self) -> None:
        from lipbench.baselines import comparison_of, is_failure, verdict_of
        from lipbench.runner import ERROR, SKIPPED, XFAIL, XPASS, run_claims

        settings = self.config.stash[SETTINGS]
        device = _device(settings)
        if device is None:
            raise ClaimFailed(self, ERROR, str(settings.device_error))
        session = _session(settings, device)
        if settings.threads is not None:
            import torch

            torch.set_num_threads(settings.threads)
        folders: list[Path] = []

        def done(outcome: Any) -> None:
            folders.append(session.finish_claim(outcome))

        workers = settings.workers if settings.workers is not None else (1 if settings.threads is not None else None)
        [outcome] = run_claims(
            [self.claim],
            device=device,
            workers=workers,
            data_root=settings.data_root,
            engine=settings.engine,
            executor=settings.executor,
            ray_address=settings.ray_address,
            cache=_cache(settings),
            on_claim_done=done,
        )
        self.outcome = outcome
        folder = folders[0] if folders else None
        verdict, strict = verdict_of(outcome), self.claim.claim.strict
        comparison = comparison_of(outcome)
        message = "; ".join(s for s in (outcome.sentence, comparison.sentence if comparison else "") if s)
        self.user_properties += [("lipbench_verdict", verdict), ("lipbench_sentence", message)]
        if folder is not None:
            self.user_properties.append(("lipbench_results", str(folder)))
        if verdict == SKIPPED:
            pytest.skip(outcome.sentence or "skipped by lipbench")
        if verdict == XPASS and strict:
            message = f"expected to fail ({self.claim.claim.expect_reason}), but: {message}"
            raise ClaimFailed(self, "XPASS(strict)", message, folder)
        if is_failure(verdict, strict):
            raise ClaimFailed(self, verdict, message, folder)
        if message:  # a failure shows it in its report; a pass shows it with -rA
            self.add_report_section("call", "lipbench", f"{verdict}: {message}")
        if verdict == XFAIL:
            pytest.xfail(self.claim.claim.expect_reason)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, ClaimFailed):
            return excinfo.value.report()
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"lipbench claim {self.name} [{self.claim.profile}]"


def _device(settings: Settings) -> str | None:
    if settings.device is None and settings.device_error is None:
        from lipbench.engine import resolve_device

        try:
            settings.device = str(resolve_device(settings.device_option))
        except RuntimeError as e:
            settings.device_error = str(e).replace("--device", "--lipbench-device")
    return settings.device


def _session(settings: Settings, device: str) -> Any:
    if settings.session is None:
        from lipbench.session import Session

        settings.session = Session(
            settings.out,
            device,
            tracking_uri=settings.tracking_uri,
            mlflow=settings.mlflow,
            experiment_ids=settings.experiment_ids,
            warn=_warn,
            baselines=settings.baselines,
        )
    return settings.session


def _cache(settings: Settings) -> Any:
    """The run cache of this process (None with --lipbench-no-cache), shared by all its claims."""
    if settings.cache is None and not settings.no_cache:
        from lipbench.cache import RunCache

        settings.cache = RunCache(settings.cache_dir)
    return settings.cache


def _warn(text: str) -> None:
    warnings.warn(text, LipbenchWarning, stacklevel=2)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Without xdist: create the store and experiments of the selected claims before the first runs."""
    settings = session.config.stash.get(SETTINGS, None)
    if settings is None or not settings.mlflow or hasattr(session.config, "workerinput"):
        return
    if session.config.option.collectonly or settings.experiment_ids:
        return
    collections = sorted({item.claim.collection for item in session.items if isinstance(item, ClaimItem)})
    if collections:
        _prepare_store(settings, collections)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    settings = config.stash.get(SETTINGS, None)
    if settings is None:
        return
    ran = any(
        name == "lipbench_verdict"
        for reports in terminalreporter.stats.values()
        for report in reports
        for name, _ in getattr(report, "user_properties", ())
    )
    if ran:
        terminalreporter.write_line(f"lipbench: results in {settings.out}")
