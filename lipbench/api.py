"""`lipbench.run(...)`: what `lipbench run` does, from Python, for notebooks and users' own test suites.

    import lipbench

    result = lipbench.run("suites/implications/label_corruption.yaml")  # profile: quick, as `lipbench run`
    result = lipbench.run({"schema_version": 1, "name": "mine", "claim": "...", "scenario": {...}, ...})
    result.passed, result.verdicts, result.records  # a pandas DataFrame, one row per recorded step

A claim is a suite file or folder, a mapping written as a suite file would be (validated the same
way; a problem raises the same one-line `SuiteError`), or an already loaded `ResolvedClaim`. The
claims go through `lipbench.invocation`, as from the CLI: the same profile rule, input checks,
executor, run cache (a second call trains nothing), assertions, baseline verdicts, results folder and
(when `mlflow=True`) MLflow logging.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lipbench.errors import LipbenchWarning
from lipbench.invocation import ClaimSource, Invocation, Options, load_claims
from lipbench.outcome import ClaimOutcome, Verdict, exit_code
from lipbench.records import records_frame
from lipbench.registry import DEFAULT_ENGINE
from lipbench.suite import ResolvedClaim


@dataclass
class RunResult:
    """The outcomes of one `run` call, in the order the claims were given."""

    outcomes: list[ClaimOutcome]
    out: Path
    trained: int = 0  # runs this call trained
    reused: int = 0  # runs this call took from the run cache

    @property
    def verdicts(self) -> dict[str, Verdict]:
        """Claim name -> final verdict (a `lipbench.outcome.Verdict`, equal to its name as a string)."""
        return {o.claim.name: o.verdict for o in self.outcomes}

    @property
    def passed(self) -> bool:
        """True when no verdict is FAIL, ERROR or REGRESSED (and no strict claim passed unexpectedly)."""
        return exit_code(self.outcomes) == 0

    @property
    def records(self) -> pd.DataFrame:
        """Every finished run's records in one long table, with a `claim` column first."""
        frames = []
        for o in self.outcomes:
            frame = records_frame(o.records)
            if not frame.empty:
                frame.insert(0, "claim", o.claim.name)
                frames.append(frame)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def __getitem__(self, name: str) -> ClaimOutcome:
        for o in self.outcomes:
            if o.claim.name == name:
                return o
        raise KeyError(f"no claim {name!r} in this result; it has {', '.join(o.claim.name for o in self.outcomes)}")


def load(
    *claims: ClaimSource, profile: str | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> list[ResolvedClaim]:
    """The claims named, resolved by the profile rule of every face (`lipbench.invocation.PROFILE_RULE`) and
    `overrides`; the first problem raises its one-line `SuiteError`."""
    resolved, problems = load_claims(claims, profile, overrides)
    if problems:
        raise problems[0]
    return resolved


def run(
    *claims: ClaimSource,
    profile: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    device: str = "auto",
    workers: int | None = 1,
    engine: str = DEFAULT_ENGINE,
    executor: str = "local",
    ray_address: str | None = None,
    cache_dir: str | Path | None = None,
    cache: bool = True,
    data_root: str | None = None,
    out: str | Path | None = None,
    mlflow: bool = False,
    tracking_uri: str | None = None,
    baselines: str | Path | None = None,
) -> RunResult:
    """Train and judge `claims` as `lipbench run` does (`lipbench.invocation`: the same profile rule, checks,
    executor and run cache); returns their outcomes and records.

    `workers=1` trains in this process (so a notebook's monkeypatches and imports apply); results are
    saved under `out` (default a new lipbench-results/<date>-<time>-<random>, one per call); baselines
    default to the folder above each suite file (a claim given as a mapping has none unless `baselines`
    names one). Every input is checked before anything trains; a problem raises a `LipbenchError`.
    """
    resolved = load(*claims, profile=profile, overrides=overrides)
    options = Options(
        device=device,
        workers=workers,
        engine=engine,
        executor=executor,
        ray_address=ray_address,
        cache_dir=None if cache_dir is None else str(cache_dir),
        no_cache=not cache,
        tracking_uri=tracking_uri,
        no_mlflow=not mlflow,
        data_root=data_root,
        out=out,
        baselines=baselines,
    )
    invocation = Invocation(options, resolved, warn=_warn)
    outcomes = invocation.run(resolved)
    cache = invocation.cache
    return RunResult(outcomes, invocation.out, cache.trained if cache else len(resolved), cache.reused if cache else 0)


def _warn(text: str) -> None:
    warnings.warn(text, LipbenchWarning, stacklevel=3)
