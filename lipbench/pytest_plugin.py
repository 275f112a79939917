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

Options are the CLI's (lipbench.options), written `--lipbench-NAME`. Under pytest-xdist the
controller prepares one MLflow store and each worker pins its threads and a GPU
(lipbench.pytest_xdist).

Importing this module is cheap: the schema, the runner, torch and mlflow are imported inside
hooks, and only when a suite file is collected or a claim runs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import warnings
from pathlib import Path
from typing import Any

import pytest

from lipbench import pytest_xdist
from lipbench.discovery import SUITE_SUFFIXES, is_base_file
from lipbench.errors import LipbenchWarning
from lipbench.folders import RESULTS_ROOT, unique_name
from lipbench.options import SHARED_OPTIONS, add_to_pytest
from lipbench.pytest_settings import SLOW_STEPS, Settings
from lipbench.registry import RAY_INSTALL

MARKERS = (
    "lipbench: a claim of a lipbench suite file, run as a test",
    "gpu: needs a CUDA device (scenario.device: cuda)",
    f"slow: a lipbench claim of more than lipbench_slow_steps (default {SLOW_STEPS:,}) model-steps",
)


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
    add_to_pytest(group)
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
        manager.register(pytest_xdist.XdistHooks(SETTINGS), "lipbench-xdist")


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    settings = _settings(config)
    config.stash[SETTINGS] = settings
    if config.args_source == pytest.Config.ArgsSource.TESTPATHS:
        _add_suite_args(config, settings.suite_paths)
    pytest_xdist.configure(config, settings)


def _settings(config: pytest.Config) -> Settings:
    named = config.getoption("lipbench_suites")
    if named:
        candidates = [Path(p) if Path(p).is_absolute() else config.invocation_params.dir / p for p in named]
    else:
        candidates = [config.rootpath / p for p in config.getini("lipbench_suites")]
    raw_slow = config.getini("lipbench_slow_steps")
    try:
        slow = int(str(raw_slow).replace("_", "")) if raw_slow else SLOW_STEPS
    except ValueError:
        raise pytest.UsageError(f"lipbench_slow_steps must be an integer, got {raw_slow!r}") from None
    if config.getoption("lipbench_executor") == "ray" and importlib.util.find_spec("ray") is None:
        raise pytest.UsageError(f"--lipbench-executor ray needs Ray, which is not installed: {RAY_INSTALL}")
    out = config.getoption("lipbench_out")
    out_path = Path(out) if out else RESULTS_ROOT / unique_name("pytest-")
    if not out_path.is_absolute():
        out_path = config.invocation_params.dir / out_path
    given = {o.dest: config.getoption(o.pytest_dest) for o in SHARED_OPTIONS}
    return Settings(
        suite_paths=[p.resolve() for p in candidates if p.exists()],
        device_option=given["device"],
        profile_option=given["profile"],
        mlflow=not given["no_mlflow"],
        tracking_uri=given["tracking_uri"],
        out=out_path,
        workers=given["workers"],
        data_root=given["data_root"],
        engine=given["engine"],
        executor=given["executor"],
        ray_address=given["ray_address"],
        cache_dir=given["cache_dir"],
        no_cache=given["no_cache"],
        baselines=given["baselines"],
        slow_steps=slow,
    )


def _add_suite_args(config: pytest.Config, suite_paths: list[Path]) -> None:
    """`pytest` with no paths runs testpaths; add the suite paths that no testpath already covers."""
    base = config.invocation_params.dir
    covered = [(base / a).resolve() for a in config.args]
    for path in suite_paths:
        if not any(path == c or c in path.parents for c in covered):
            config.args.append(os.path.relpath(path, base) if base in path.parents else str(path))


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
    for root in settings.suite_paths:
        if resolved == root or (root in resolved.parents and not is_base_file(resolved, root)):
            return SuiteFile.from_parent(parent, path=file_path)
    return None  # outside the suite paths, or a base file only meant to be included


class SuiteFile(pytest.File):
    """One suite file: one claim, resolved for the session's profile."""

    def collect(self):
        # The schema loads only once a suite file is collected.
        from lipbench.invocation import load_claims
        from lipbench.suite import name_taken

        settings = self.config.stash[SETTINGS]
        claims, problems = load_claims([self._suite_path()], settings.profile_option)
        if problems:
            raise self.CollectError(str(problems[0]))
        [claim] = claims
        key = (claim.collection, claim.name)
        other = settings.names.setdefault(key, self.path)
        if other != self.path:
            raise self.CollectError(str(name_taken(claim, other)))
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


# ------------------------------------------------------------------ running


class ClaimItem(pytest.Item):
    """One claim; `runtest` runs it through `lipbench.runner.run_claims`, as `lipbench run` does."""

    def __init__(self, *, claim: Any, **kwargs: Any):
        super().__init__(**kwargs)
        self.claim = claim
        self.outcome: Any = None

    def runtest(self) -> None:
        # The runner and the baselines (pandas, scipy) load only once a claim runs.
        from lipbench.outcome import Verdict, exit_code
        from lipbench.tracking import runs_table

        settings = self.config.stash[SETTINGS]
        run = _invocation(settings, self.claim)
        if run is None:
            raise ClaimFailed(self, Verdict.ERROR, str(settings.invocation_error))
        if settings.threads is not None:
            import torch  # a claim is about to train: torch is needed now

            torch.set_num_threads(settings.threads)
        folders: list[Path] = []
        workers = settings.workers if settings.workers is not None else (1 if settings.threads is not None else None)
        [outcome] = run.run([self.claim], workers=workers, on_claim_done=lambda _, folder: folders.append(folder))
        self.outcome = outcome
        folder = folders[0] if folders else None
        verdict, strict, comparison = outcome.verdict, self.claim.claim.strict, outcome.comparison
        message = "; ".join(s for s in (outcome.sentence, comparison.sentence if comparison else "") if s)
        self.user_properties += [("lipbench_verdict", str(verdict)), ("lipbench_sentence", message)]
        if folder is not None:
            self.user_properties.append(("lipbench_results", str(folder)))
            run_id = folder / "mlflow_run_id"
            if outcome.fails and run_id.is_file() and self.claim.collection in run.session.trackers:
                tracker = run.session.trackers[self.claim.collection]
                page = runs_table(tracker.uri, tracker.experiment_id, run_id.read_text().strip())
                self.user_properties.append(("lipbench_mlflow", f"{verdict} {self.claim.name}: {page}"))
        if verdict == Verdict.SKIPPED:
            pytest.skip(outcome.sentence or "skipped by lipbench")
        if verdict == Verdict.XPASS and strict:
            message = f"expected to fail ({self.claim.claim.expect_reason}), but: {message}"
            raise ClaimFailed(self, f"{Verdict.XPASS}(strict)", message, folder)
        if exit_code([outcome]) != 0:  # the rule of `lipbench run`'s exit code
            raise ClaimFailed(self, verdict, message, folder)
        if message:  # a failure shows it in its report; a pass shows it with -rA
            self.add_report_section("call", "lipbench", f"{verdict}: {message}")
        if verdict == Verdict.XFAIL:
            pytest.xfail(self.claim.claim.expect_reason)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, ClaimFailed):
            return excinfo.value.report()
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"lipbench claim {self.name} [{self.claim.profile}]"


def _invocation(settings: Settings, claim: Any) -> Any:
    """The invocation of this pytest process (lipbench.invocation, as `lipbench run` opens it), opened when
    the first claim runs; None when an input is refused (`settings.invocation_error` says why)."""
    if settings.invocation is None and settings.invocation_error is None:
        from lipbench.errors import LipbenchError
        from lipbench.invocation import Invocation, Options

        options = Options.of(settings)
        options = dataclasses.replace(
            options,
            device=settings.device_option,
            no_mlflow=not settings.mlflow,
            out=settings.out,
            experiment_ids=settings.experiment_ids,
        )
        try:
            settings.invocation = Invocation(options, [claim], warn=_warn)
        except LipbenchError as e:
            settings.invocation_error = _pytest_flags(str(e))
    return settings.invocation


def _pytest_flags(text: str) -> str:
    """A message of the CLI with this face's option names (`--device` -> `--lipbench-device`)."""
    for option in SHARED_OPTIONS:
        text = re.sub(rf"(?<![\w-])--{option.name}\b", f"--lipbench-{option.name}", text)
    return text


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
        pytest_xdist.prepare_store(settings, collections)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    from lipbench.tracking import runs_table  # (mlflow itself is not imported)

    settings = config.stash.get(SETTINGS, None)
    if settings is None:
        return
    ran = any(
        name == "lipbench_verdict"
        for reports in terminalreporter.stats.values()
        for report in reports
        for name, _ in getattr(report, "user_properties", ())
    )
    if not ran:
        return
    terminalreporter.write_line(f"lipbench: results in {settings.out}")
    if settings.mlflow and settings.experiment_ids and settings.tracking_uri:
        for name, experiment_id in sorted(settings.experiment_ids.items()):
            terminalreporter.write_line(f"mlflow: runs of {name}: {runs_table(settings.tracking_uri, experiment_id)}")
    for reports in terminalreporter.stats.values():
        for report in reports:
            for name, value in getattr(report, "user_properties", ()):
                if name == "lipbench_mlflow" and getattr(report, "when", None) == "call":
                    terminalreporter.write_line(f"mlflow: {value}")
