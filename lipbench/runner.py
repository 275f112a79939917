"""Plans the runs of claims, trains them in long-lived worker processes, and judges each claim.

The runner knows nothing of MLflow or the terminal, and reads baselines only for the design check's
model (`lipbench.design`): callers pass `on_progress` and `on_claim_done` and do their own logging and
baseline comparison, so the CLI and the pytest plugin share it.
The torch modules (engine, ensemble, data) are imported inside the functions that train, so
planning and judging claims loads no torch.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path

from lipbench.cache import RunCache, adopt, run_key
from lipbench.design import design_check
from lipbench.devices import resolve_device
from lipbench.ensemble_support import group_specs, members_independent
from lipbench.executors import StopSignals, check_executor, run_units
from lipbench.inconclusive import undecided
from lipbench.outcome import ClaimOutcome, Verdict
from lipbench.records import RunRecord, records_frame
from lipbench.registry import DEFAULT_ENGINE, ENGINES
from lipbench.suite import ClaimKey, ResolvedClaim, RunSpec, empirical_note


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
    engine: str = DEFAULT_ENGINE,
    executor: str = "local",
    ray_address: str | None = None,
    cache: RunCache | None = None,
    baselines: Path | None = None,
) -> list[ClaimOutcome]:
    """Train every run of every claim (in parallel when workers > 1) and judge each claim.

    `engine`: "per-run" trains each run alone (engine.train); "ensemble" trains the runs of a claim
    that can share one (lipbench.torch.ensemble.group_specs) as vectorised ensembles, each group split
    between the workers (`_units`); "auto" does so for groups of two or more runs.

    `executor` ("local" or "ray", `lipbench.executors`) trains the units; runs that are equal
    (`lipbench.cache.run_key`) are trained once and shared by every claim that needs them;
    with a `cache`, cached runs are reused and each finished run is cached as it arrives.
    SIGINT or SIGTERM stops the collection: `executors.Interrupted` is raised once every
    finished run has been delivered (and cached), and claims finished by then have had
    `on_claim_done`.

    `baselines`: the folder whose stored baselines the design check fits its model to (None: each suite
    file's own, `baselines.default_root`).
    """
    if engine not in ENGINES:
        raise ValueError(f"`engine` must be one of {', '.join(map(repr, ENGINES))}, not {engine!r}.")
    check_executor(executor)

    device = resolve_device(device) if device == "auto" else device
    outcomes: dict[ClaimKey, ClaimOutcome] = {}
    pending: dict[ClaimKey, list[RunSpec]] = {}
    started: dict[ClaimKey, float] = {}
    notes: dict[ClaimKey, str | None] = {}
    for claim in claims:
        problem, notes[claim.key] = _precheck(claim, device, baselines)
        if problem is not None:
            outcomes[claim.key] = problem
        else:
            pending[claim.key] = claim.runs()
            started[claim.key] = time.perf_counter()
    by_key = {c.key: c for c in claims}
    done_records: dict[ClaimKey, list[RunRecord]] = {key: [] for key in pending}

    def finish(key: ClaimKey) -> None:
        outcome = judge(by_key[key], done_records[key], time.perf_counter() - started[key], design_note=notes[key])
        outcomes[key] = outcome
        if on_claim_done:
            on_claim_done(outcome)

    for outcome in list(outcomes.values()):
        if on_claim_done:
            on_claim_done(outcome)

    def collect(spec: RunSpec, record: RunRecord) -> None:
        """One finished run of the claim `spec` belongs to (records name their claim, not its collection)."""
        key = spec.key
        done_records[key].append(record)
        if on_progress:
            on_progress(by_key[key], len(done_records[key]), len(pending[key]))
        if len(done_records[key]) == len(pending[key]):
            finish(key)

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
                collect(spec, adopt(record, spec))

    with StopSignals() as stop:
        missing = []
        for key, same in sharing.items():
            record = cache.load(key) if cache is not None else None
            if record is None:
                missing.append(same[0])
                continue
            cache.reused += len(same)
            for spec in same:
                collect(spec, adopt(record, spec))
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
    return [outcomes[c.key] for c in claims]


def _units(specs: list[RunSpec], engine: str, n_workers: int) -> list[list[RunSpec]]:
    """Units of work, longest first: one run each, or (ensemble engines) the ensemble groups of each claim,
    each split into as many interleaved parts as there are workers (at most one run a part).

    A group trained whole keeps one worker busy while the others idle once the shorter units are done
    (measured: `auto` took 1.04x the wall time of `per-run` at 0.78x its CPU time); split, every worker
    trains a part of it. Splitting costs each part its own setup (data, initial and final exact SVDs, test
    accuracy) and a smaller ensemble; see README.md "Parallelism". Members are independent
    (`ensemble_support.members_independent`), so a part trains its runs exactly as the whole group would; a group
    whose members share a random stream (the MLP's dropout under vmap) stays whole.
    """
    if engine == "per-run":
        return [[s] for s in specs]
    claims = dict.fromkeys(s.key for s in specs)
    groups = [g for claim in claims for g in group_specs([s for s in specs if s.key == claim])]
    units = []
    for group in groups:
        parts = min(n_workers, len(group)) if members_independent(group[0].scenario) else 1
        units += [group[i::parts] for i in range(parts)]
    return sorted(units, key=lambda u: sum(map(_cost, u)), reverse=True)


def _cost(spec: RunSpec) -> float:
    batch = spec.scenario.optimizer.batch_size if spec.scenario.optimizer else 64  # a run function: unknown
    return spec.scenario.steps * (batch + 64)  # + a per-step overhead


def judge(
    claim: ResolvedClaim,
    records: list[RunRecord],
    seconds: float = 0.0,
    reasons: bool = True,
    design_note: str | None = None,
) -> ClaimOutcome:
    """The claim's status from its records: ERROR if any run failed, else the assertion's verdict.

    `reasons=False` leaves out of an INCONCLUSIVE sentence the seeds the design would need (a simulation
    of its own); the status does not depend on it. `design_note`: an expected failure's power shortfall
    (`lipbench.design`), which its XFAIL or XPASS sentence states."""
    records = sorted(records, key=lambda r: r.run_id)
    problems = [r.problem for r in records if not r.ok]
    if problems:
        more = f" (and {len(problems) - 1} more runs)" if len(problems) > 1 else ""
        return ClaimOutcome(claim, Verdict.ERROR, records, error=problems[0] + more, seconds=seconds)
    try:
        frame = records_frame(records)
        frame.attrs["sweep_name"] = claim.sweep_name
        result = claim.claim.assertion.evaluate(frame)
        if claim.claim.expect == "empirical":
            result = dataclasses.replace(result, sentence=f"{empirical_note(claim.claim)} {result.sentence}")
    except ValueError as e:
        error = f"assertion could not be computed: {e}"
        return ClaimOutcome(claim, Verdict.ERROR, records, error=error, seconds=seconds)
    if claim.claim.expect == "fail":
        status = Verdict.XPASS if result.passed else Verdict.XFAIL
        if design_note:
            note = f"Expected to fail on a design short of power, so no evidence against the claim: {design_note}"
            result = dataclasses.replace(result, sentence=f"{result.sentence} {note}")
    elif result.passed:
        status = Verdict.PASS
    else:
        why = undecided(claim, frame, result, reason=reasons)
        status = Verdict.FAIL if why is None else Verdict.INCONCLUSIVE
        if why is not None:
            sentence = result.sentence.replace("— FAIL", "— INCONCLUSIVE")
            result = dataclasses.replace(result, sentence=f"{sentence} {why}.")
    return ClaimOutcome(claim, status, records, result=result, seconds=seconds)


def _precheck(claim: ResolvedClaim, device: str, baselines: Path | None) -> tuple[ClaimOutcome | None, str | None]:
    """An outcome decided before training (SKIPPED, or ERROR for a design that cannot be run), and an
    expected failure's design note."""
    if claim.claim.scenario.device == "cuda" and not device.startswith("cuda"):
        error = "needs a CUDA device (scenario.device: cuda); none is in use"
        return ClaimOutcome(claim, Verdict.SKIPPED, error=error), None
    check = design_check(claim, baselines)
    if check.problem:
        error = f"{claim.file}: seeds/sweep/record_every: {check.problem.rstrip('.')}"
        return ClaimOutcome(claim, Verdict.ERROR, error=error), None
    return None, check.note
