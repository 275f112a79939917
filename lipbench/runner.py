"""Plans the runs of claims, trains them in long-lived worker processes, and judges each claim.

The runner knows nothing of MLflow, baselines or the terminal: callers pass `on_progress`
and `on_claim_done` and do their own logging, so the CLI and the pytest plugin share it.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lipbench.assertions import AssertionResult
from lipbench.errors import LipbenchError
from lipbench.records import RunRecord, records_frame
from lipbench.suite import ResolvedClaim, RunSpec

if TYPE_CHECKING:
    from lipbench.cache import RunCache

PASS, FAIL, ERROR, XFAIL, XPASS, SKIPPED = "PASS", "FAIL", "ERROR", "XFAIL", "XPASS", "SKIPPED"
ENGINES = ("auto", "per-run", "ensemble")  # auto: runs that can share an ensemble do (lipbench.ensemble)


@dataclass
class ClaimOutcome:
    """A claim's runs, its assertion result and its status (before any baseline comparison)."""

    claim: ResolvedClaim
    status: str
    records: list[RunRecord] = field(default_factory=list)
    result: AssertionResult | None = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def sentence(self) -> str:
        if self.error:
            return self.error
        return self.result.sentence if self.result else ""


def default_workers(device: str, runs: int) -> int:
    if device.startswith("cuda"):
        import torch

        return max(1, min(torch.cuda.device_count(), runs))
    return max(1, min(os.cpu_count() or 1, runs))


def run_claims(
    claims: list[ResolvedClaim],
    *,
    device: str = "auto",
    workers: int | None = None,
    data_root: str | None = None,
    on_progress: Callable[[ResolvedClaim, int, int], None] | None = None,
    on_claim_done: Callable[[ClaimOutcome], None] | None = None,
    engine: str = "per-run",
    executor: str = "local",
    ray_address: str | None = None,
    cache: RunCache | None = None,
) -> list[ClaimOutcome]:
    """Train every run of every claim (in parallel when workers > 1) and judge each claim.

    `engine`: "per-run" trains each run alone (engine.train); "ensemble" trains the runs of a claim
    that can share one (lipbench.ensemble.group_specs) as one vectorised ensemble, a unit of work
    for one worker; "auto" does so for groups of two or more runs.

    `executor` ("local" or "ray", `lipbench.executors`) trains the units; runs that are equal
    (`lipbench.cache.run_key`) are trained once and shared by every claim that needs them;
    with a `cache`, cached runs are reused and each finished run is cached as it arrives.
    SIGINT or SIGTERM stops the collection: `executors.Interrupted` is raised once every
    finished run has been delivered (and cached), and claims finished by then have had
    `on_claim_done`.
    """
    from lipbench.cache import adopt, run_key
    from lipbench.engine import resolve_device
    from lipbench.executors import StopSignals, check_executor, run_units

    if engine not in ENGINES:
        raise ValueError(f"`engine` must be one of {', '.join(map(repr, ENGINES))}, not {engine!r}.")
    check_executor(executor)

    device = str(resolve_device(device)) if device == "auto" else device
    outcomes: dict[str, ClaimOutcome] = {}
    pending: dict[str, list[RunSpec]] = {}
    started: dict[str, float] = {}
    for claim in claims:
        problem = _precheck(claim, device)
        if problem is not None:
            outcomes[claim.name] = problem
        else:
            pending[claim.name] = claim.runs()
            started[claim.name] = time.perf_counter()
    by_name = {c.name: c for c in claims}
    done_records: dict[str, list[RunRecord]] = {name: [] for name in pending}

    def finish(name: str) -> None:
        claim = by_name[name]
        outcome = judge(claim, done_records[name], time.perf_counter() - started[name])
        outcomes[name] = outcome
        if on_claim_done:
            on_claim_done(outcome)

    for _name, outcome in list(outcomes.items()):
        if on_claim_done:
            on_claim_done(outcome)

    def collect(record: RunRecord) -> None:
        name = record.claim
        done_records[name].append(record)
        if on_progress:
            on_progress(by_name[name], len(done_records[name]), len(pending[name]))
        if len(done_records[name]) == len(pending[name]):
            finish(name)

    # Longest runs first, so that no long run starts last and leaves the other workers idle.
    specs = sorted((s for name in pending for s in pending[name]), key=_cost, reverse=True)
    sharing: dict[str, list[RunSpec]] = {}  # equal runs (of one claim or several) are trained once
    for spec in specs:
        sharing.setdefault(run_key(spec, engine, device), []).append(spec)
    key_of = {id(same[0]): key for key, same in sharing.items()}

    def deliver(unit: list[RunSpec], records: list[RunRecord]) -> None:
        by_run = {spec.run_id: spec for spec in unit}
        for record in records:
            key = key_of[id(by_run[record.run_id])]
            if cache is not None:
                cache.trained += 1
                cache.store(key, record)
            for spec in sharing[key]:
                collect(adopt(record, spec))

    with StopSignals() as stop:
        missing = []
        for key, same in sharing.items():
            record = cache.load(key) if cache is not None else None
            if record is None:
                missing.append(same[0])
                continue
            cache.reused += len(same)
            for spec in same:
                collect(adopt(record, spec))
        n_workers = workers or default_workers(device, len(missing))
        units = _units(missing, engine, n_workers)
        run_units(
            units,
            deliver,
            stop,
            executor=executor,
            n_workers=n_workers,
            device=device,
            data_root=data_root,
            engine=engine,
            ray_address=ray_address,
        )
        if len(outcomes) < len(claims):
            stop.check()
    return [outcomes[c.name] for c in claims]


def _units(specs: list[RunSpec], engine: str, n_workers: int) -> list[list[RunSpec]]:
    """Units of work: one run each, or (ensemble engines) the ensemble groups of each claim, split
    into near-equal parts where there are fewer groups than workers; longest first."""
    if engine == "per-run":
        return [[s] for s in specs]
    from lipbench.ensemble import group_specs

    claims = dict.fromkeys(s.claim for s in specs)
    groups = [g for claim in claims for g in group_specs([s for s in specs if s.claim == claim])]
    parts = max(1, -(-n_workers // len(groups))) if groups else 1
    units = [g[i::parts] for g in groups for i in range(min(parts, len(g)))]
    return sorted(units, key=lambda u: sum(map(_cost, u)), reverse=True)


def _cost(spec: RunSpec) -> float:
    return spec.scenario.steps * (spec.scenario.optimizer.batch_size + 64)  # + a per-step overhead


def judge(claim: ResolvedClaim, records: list[RunRecord], seconds: float = 0.0) -> ClaimOutcome:
    """The claim's status from its records: ERROR if any run failed, else the assertion's verdict."""
    records = sorted(records, key=lambda r: r.run_id)
    problems = [r.problem for r in records if not r.ok]
    if problems:
        more = f" (and {len(problems) - 1} more runs)" if len(problems) > 1 else ""
        return ClaimOutcome(claim, ERROR, records, error=problems[0] + more, seconds=seconds)
    try:
        frame = records_frame(records)
        frame.attrs["sweep_name"] = claim.sweep_name
        result = claim.claim.assertion.evaluate(frame)
    except ValueError as e:
        return ClaimOutcome(claim, ERROR, records, error=f"assertion could not be computed: {e}", seconds=seconds)
    status = (XPASS if result.passed else XFAIL) if claim.claim.expect == "fail" else PASS if result.passed else FAIL
    return ClaimOutcome(claim, status, records, result=result, seconds=seconds)


def _precheck(claim: ResolvedClaim, device: str) -> ClaimOutcome | None:
    if claim.claim.scenario.device == "cuda" and not device.startswith("cuda"):
        return ClaimOutcome(claim, SKIPPED, error="needs a CUDA device (scenario.device: cuda); none is in use")
    problem = claim.design_problem()
    if problem:
        return ClaimOutcome(claim, ERROR, error=f"{claim.file}: seeds/sweep/record_every: {problem.rstrip('.')}")
    return None


def execute_group(specs: list[RunSpec], device: str, data_root: str | None, engine: str) -> list[RunRecord]:
    """Train one unit of work (see `_units`); every failure becomes the records' `error`."""
    if engine == "per-run" or (engine == "auto" and len(specs) == 1):
        return [execute_run(spec, device, data_root) for spec in specs]
    from lipbench.ensemble import train_ensemble

    try:
        return train_ensemble(specs, _dataset(specs[0], data_root), device)
    except LipbenchError as e:
        return [_failed(spec, str(e)) for spec in specs]
    except Exception as e:  # as in execute_run
        return [_failed(spec, _crash_message(e)) for spec in specs]


def _dataset(spec: RunSpec, data_root: str | None):
    from lipbench.data import load_dataset

    d = spec.scenario.dataset
    return load_dataset(
        d.name,
        root=data_root,
        train_size=d.train_size,
        test_size=d.test_size,
        synthetic_shape=d.synthetic_shape,
        synthetic_classes=d.synthetic_classes,
        synthetic_size=d.synthetic_size,
    )


def execute_run(spec: RunSpec, device: str, data_root: str | None) -> RunRecord:
    """Train one run; every failure becomes the record's `error` instead of an exception."""
    from lipbench.engine import train

    try:
        return train(spec, _dataset(spec, data_root), device)
    except LipbenchError as e:
        return _failed(spec, str(e))
    except Exception as e:  # a bug or a resource problem: keep the claim going, say where
        return _failed(spec, _crash_message(e))


def _crash_message(e: Exception) -> str:
    """The exception in one line, with the file and line it was raised at."""
    where = traceback.extract_tb(e.__traceback__)[-1]
    return f"{type(e).__name__}: {e} (at {os.path.basename(where.filename)}:{where.lineno})"


def _failed(spec: RunSpec, message: str) -> RunRecord:
    import numpy as np

    return RunRecord(
        spec.claim,
        spec.run_id,
        spec.sweep_value,
        spec.init_seed,
        spec.sampling_seed,
        np.zeros(0, dtype=np.int64),
        {},
        error=message,
    )
