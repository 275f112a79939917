"""One invocation of lipbench, the same from `lipbench run`, `lipbench.run(...)` and the pytest plugin.

`load_claims` resolves every claim by the one profile rule (`PROFILE_RULE`) and collects one error per
source that cannot be loaded; `Invocation` checks every other input (workers, executor, device, run
cache, MLflow store, results folder) before anything trains, then `Invocation.run` trains and judges
claims with the chosen executor and cache, saving and logging each as it finishes. An input it
refuses is a `LipbenchError` raised before any training: that is what exit code 2 means.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lipbench.cache import RunCache
from lipbench.devices import resolve_device
from lipbench.discovery import suite_files
from lipbench.errors import LipbenchError, SuiteError
from lipbench.executors import check_executor
from lipbench.folders import new_results_folder
from lipbench.options import OPTIONS, SHARED_OPTIONS
from lipbench.outcome import ClaimOutcome
from lipbench.runner import run_claims
from lipbench.session import Session, Warn
from lipbench.suite import BASE_PROFILE, ResolvedClaim, claim_from_mapping, load_claim, without_duplicates

#: The profile used when none is named, where the file has it.
FALLBACK_PROFILE = "quick"
PROFILE_RULE = (
    f"the profile named (--profile; `{BASE_PROFILE}` names the file's own settings), else `{FALLBACK_PROFILE}` "
    f"when the file has it, else the file's own settings, labelled `{BASE_PROFILE}`"
)

ClaimSource = str | Path | Mapping[str, Any] | ResolvedClaim


def load_claims(
    sources: Iterable[ClaimSource], profile: str | None = None, overrides: Iterable[str] = ()
) -> tuple[list[ResolvedClaim], list[SuiteError]]:
    """Every loadable claim of `sources` (suite files, folders, mappings, resolved claims), resolved by
    `PROFILE_RULE`, and one error per file that is not (so the others can still run)."""
    overrides = tuple(overrides)
    claims: list[ResolvedClaim] = []
    problems: list[SuiteError] = []
    for source in sources:
        try:
            if isinstance(source, ResolvedClaim):
                claims.append(source)
            elif isinstance(source, Mapping):
                claims.append(claim_from_mapping(dict(source), profile, overrides, fallback=FALLBACK_PROFILE))
            else:
                for file in suite_files([source]):
                    try:
                        claims.append(load_claim(file, profile, overrides, fallback=FALLBACK_PROFILE))
                    except SuiteError as e:
                        problems.append(e)
        except SuiteError as e:
            problems.append(e)
    unique, duplicates = without_duplicates(claims)
    return unique, problems + duplicates


@dataclass(frozen=True)
class Options:
    """What one invocation trains with: the shared options, with the option table's defaults (lipbench.options)."""

    device: str = OPTIONS["device"].default
    workers: int | None = OPTIONS["workers"].default
    engine: str = OPTIONS["engine"].default
    executor: str = OPTIONS["executor"].default
    ray_address: str | None = OPTIONS["ray-address"].default
    cache_dir: str | None = OPTIONS["cache-dir"].default
    no_cache: bool = OPTIONS["no-cache"].default
    tracking_uri: str | None = OPTIONS["tracking-uri"].default
    no_mlflow: bool = OPTIONS["no-mlflow"].default
    data_root: str | None = OPTIONS["data-root"].default
    out: str | Path | None = OPTIONS["out"].default
    baselines: str | Path | None = OPTIONS["baselines"].default
    experiment_ids: dict[str, str] = field(default_factory=dict)  # under pytest-xdist: the controller's

    @classmethod
    def of(cls, source: Any, prefix: str = "") -> Options:
        """From an argparse namespace (or any object with the options' dests as attributes, after `prefix`)."""
        names = {f.name for f in dataclasses.fields(cls)}
        given = {o.dest: getattr(source, prefix + o.dest) for o in SHARED_OPTIONS if hasattr(source, prefix + o.dest)}
        return cls(**{k: v for k, v in given.items() if k in names})


class Invocation:
    """The checked inputs of one invocation, opened before anything trains.

    In this order: `--workers`, the executor (Ray installed?), the device, the run cache folder
    (writable?), the MLflow store and one experiment per collection, the results folder. Any of
    them that cannot be used is a `LipbenchError`, and nothing has been trained or written.
    """

    def __init__(self, options: Options, claims: list[ResolvedClaim], warn: Warn = print) -> None:
        if options.workers is not None and options.workers < 1:
            raise LipbenchError(f"--workers must be at least 1, not {options.workers}")
        check_executor(options.executor)
        self.options = options
        self.device = resolve_device(options.device)
        self.cache = None if options.no_cache else RunCache(options.cache_dir)
        if self.cache is not None:
            self.cache.check_writable()
        self.session = Session(
            None,
            self.device,
            tracking_uri=options.tracking_uri,
            mlflow=not options.no_mlflow,
            experiment_ids=options.experiment_ids,
            warn=warn,
            baselines=options.baselines,
        )
        self.session.env["engine"] = options.engine  # listed among the environment differences of a comparison
        self.session.prepare(claims)
        self.session.out = new_results_folder(options.out)

    @property
    def out(self) -> Path:
        return self.session.out

    def run(
        self,
        claims: list[ResolvedClaim],
        *,
        workers: int | None = None,
        on_progress: Callable[[ResolvedClaim, int, int], None] | None = None,
        on_claim_done: Callable[[ClaimOutcome, Path], None] | None = None,
    ) -> list[ClaimOutcome]:
        """Train and judge `claims`; each finished claim is saved, judged against its baseline and logged
        at once (then `on_claim_done(outcome, folder)`). `workers` replaces the options' (pytest-xdist)."""

        def done(outcome: ClaimOutcome) -> None:
            folder = self.session.finish_claim(outcome)
            if on_claim_done:
                on_claim_done(outcome, folder)

        o = self.options
        return run_claims(
            claims,
            device=self.device,
            workers=workers if workers is not None else o.workers,
            data_root=o.data_root,
            engine=o.engine,
            executor=o.executor,
            ray_address=o.ray_address,
            cache=self.cache,
            baselines=self.session.baselines,
            on_progress=on_progress,
            on_claim_done=done,
        )
