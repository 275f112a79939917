"""`lipbench.run(...)`: what `lipbench run` does, from Python, for notebooks and users' own test suites.

    import lipbench

    result = lipbench.run("suites/implications/label_corruption.yaml", profile="quick")
    result = lipbench.run({"schema_version": 1, "name": "mine", "claim": "...", "scenario": {...}, ...})
    result.passed, result.verdicts, result.records  # a pandas DataFrame, one row per recorded step

A claim is a suite file or folder, a mapping written as a suite file would be (validated the same
way; a problem raises the same one-line `SuiteError`), or an already loaded `ResolvedClaim`. The
runs go through the runner and the session the CLI uses: the same assertions, baseline verdicts,
results folder and (when `mlflow=True`) MLflow logging.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from lipbench.discovery import suite_files
from lipbench.outcome import ClaimOutcome, Verdict, exit_code
from lipbench.records import records_frame
from lipbench.runner import run_claims
from lipbench.session import Session
from lipbench.suite import ResolvedClaim, claim_from_mapping, load_claim, without_duplicates

ClaimSource = str | Path | Mapping[str, Any] | ResolvedClaim


@dataclass
class RunResult:
    """The outcomes of one `run` call, in the order the claims were given."""

    outcomes: list[ClaimOutcome]
    out: Path

    @property
    def verdicts(self) -> dict[str, Verdict]:
        """Claim name -> final verdict (a `lipbench.outcome.Verdict`, equal to its name as a string)."""
        return {o.claim.name: o.verdict for o in self.outcomes}

    @property
    def passed(self) -> bool:
        """True when no verdict is FAIL, ERROR or REGRESSED (and no strict claim passed unexpectedly)."""
        return exit_code(self.outcomes, bad_input=False) == 0

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
        return next(o for o in self.outcomes if o.claim.name == name)


def load(
    *claims: ClaimSource, profile: str | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> list[ResolvedClaim]:
    """The claims named, resolved for `profile` (default: the file's own settings) and `overrides`."""
    resolved: list[ResolvedClaim] = []
    for source in claims:
        if isinstance(source, ResolvedClaim):
            resolved.append(source)
        elif isinstance(source, Mapping):
            resolved.append(claim_from_mapping(dict(source), profile, overrides))
        else:
            resolved += [load_claim(f, profile, overrides) for f in suite_files([source])]
    unique, duplicates = without_duplicates(resolved)
    if duplicates:  # the rule of `lipbench run`: names differ within a collection
        raise duplicates[0]
    return unique


def run(
    *claims: ClaimSource,
    profile: str | None = "quick",
    overrides: list[str] | tuple[str, ...] = (),
    device: str = "auto",
    workers: int | None = 1,
    engine: str = "per-run",
    data_root: str | None = None,
    out: str | Path | None = None,
    mlflow: bool = False,
    tracking_uri: str | None = None,
    baselines: str | Path | None = None,
) -> RunResult:
    """Train and judge `claims` as `lipbench run` does; returns their outcomes and records.

    `workers=1` trains in this process (so a notebook's monkeypatches and imports apply); results
    are saved under `out` (default lipbench-results/api-<time>); baselines default to the folder
    above each suite file (a claim given as a mapping has none unless `baselines` names one).
    """
    from lipbench.torch.engine import resolve_device  # torch, only when claims train

    resolved = load(*claims, profile=profile, overrides=overrides)
    device = str(resolve_device(device))
    out = Path(out or Path("lipbench-results") / datetime.now().strftime("api-%Y%m%d-%H%M%S"))
    session = Session(out, device, tracking_uri=tracking_uri, mlflow=mlflow, baselines=baselines)
    session.prepare(resolved)
    outcomes = run_claims(
        resolved,
        device=device,
        workers=workers,
        data_root=data_root,
        engine=engine,
        on_claim_done=session.finish_claim,
    )
    return RunResult(outcomes, out)
