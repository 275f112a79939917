"""Plans the runs of claims, trains them in long-lived worker processes, and judges each claim.

The runner knows nothing of MLflow, baselines or the terminal: callers pass `on_progress`
and `on_claim_done` and do their own logging, so the CLI and the pytest plugin share it.
The torch modules (engine, ensemble, data) are imported inside the functions that train, so
planning and judging claims loads no torch.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from lipbench.errors import LipbenchError
from lipbench.outcome import ClaimOutcome, Verdict
from lipbench.records import RunRecord, records_frame
from lipbench.registry import ENGINES
from lipbench.suite import ClaimKey, ResolvedClaim, RunSpec, empirical_note

MAX_ATTEMPTS = 2  # a run whose worker process dies is tried once more in a fresh pool


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
) -> list[ClaimOutcome]:
    """Train every run of every claim (in parallel when workers > 1) and judge each claim.

    `engine`: "per-run" trains each run alone (engine.train); "ensemble" trains the runs of a claim
    that can share one (lipbench.ensemble.group_specs) as one vectorised ensemble, a unit of work
    for one worker; "auto" does so for groups of two or more runs.
    """
    from lipbench.engine import resolve_device

    if engine not in ENGINES:
        raise ValueError(f"`engine` must be one of {', '.join(map(repr, ENGINES))}, not {engine!r}.")

    device = str(resolve_device(device)) if device == "auto" else device
    outcomes: dict[ClaimKey, ClaimOutcome] = {}
    pending: dict[ClaimKey, list[RunSpec]] = {}
    started: dict[ClaimKey, float] = {}
    for claim in claims:
        problem = _precheck(claim, device)
        if problem is not None:
            outcomes[claim.key] = problem
        else:
            pending[claim.key] = claim.runs()
            started[claim.key] = time.perf_counter()
    by_key = {c.key: c for c in claims}
    done_records: dict[ClaimKey, list[RunRecord]] = {key: [] for key in pending}

    def finish(key: ClaimKey) -> None:
        outcome = judge(by_key[key], done_records[key], time.perf_counter() - started[key])
        outcomes[key] = outcome
        if on_claim_done:
            on_claim_done(outcome)

    for outcome in list(outcomes.values()):
        if on_claim_done:
            on_claim_done(outcome)

    def collect(unit: list[RunSpec], records: list[RunRecord]) -> None:
        """The records of one unit of work; a unit holds runs of one claim."""
        key = unit[0].key
        for record in records:
            done_records[key].append(record)
            if on_progress:
                on_progress(by_key[key], len(done_records[key]), len(pending[key]))
            if len(done_records[key]) == len(pending[key]):
                finish(key)

    # Longest runs first, so that no long run starts last and leaves the other workers idle.
    specs = sorted((s for name in pending for s in pending[name]), key=_cost, reverse=True)
    n_workers = workers or default_workers(device, len(specs))
    units = _units(specs, engine, n_workers)
    if n_workers <= 1 or len(units) <= 1:
        for unit in units:
            collect(unit, execute_group(unit, device, data_root, engine))
    else:
        _run_in_pool(units, n_workers, device, data_root, collect, engine)
    return [outcomes[c.key] for c in claims]


def _units(specs: list[RunSpec], engine: str, n_workers: int) -> list[list[RunSpec]]:
    """Units of work: one run each, or (ensemble engines) the ensemble groups of each claim, split
    into near-equal parts where there are fewer groups than workers; longest first."""
    if engine == "per-run":
        return [[s] for s in specs]
    from lipbench.ensemble import group_specs

    claims = dict.fromkeys(s.key for s in specs)
    groups = [g for claim in claims for g in group_specs([s for s in specs if s.key == claim])]
    parts = max(1, -(-n_workers // len(groups))) if groups else 1
    units = [g[i::parts] for g in groups for i in range(min(parts, len(g)))]
    return sorted(units, key=lambda u: sum(map(_cost, u)), reverse=True)


def _cost(spec: RunSpec) -> float:
    batch = spec.scenario.optimizer.batch_size if spec.scenario.optimizer else 64  # a run function: unknown
    return spec.scenario.steps * (batch + 64)  # + a per-step overhead


def judge(claim: ResolvedClaim, records: list[RunRecord], seconds: float = 0.0) -> ClaimOutcome:
    """The claim's status from its records: ERROR if any run failed, else the assertion's verdict."""
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
    else:
        status = Verdict.PASS if result.passed else Verdict.FAIL
    return ClaimOutcome(claim, status, records, result=result, seconds=seconds)


def _precheck(claim: ResolvedClaim, device: str) -> ClaimOutcome | None:
    if claim.claim.scenario.device == "cuda" and not device.startswith("cuda"):
        return ClaimOutcome(claim, Verdict.SKIPPED, error="needs a CUDA device (scenario.device: cuda); none is in use")
    problem = claim.design_problem()
    if problem:
        error = f"{claim.file}: seeds/sweep/record_every: {problem.rstrip('.')}"
        return ClaimOutcome(claim, Verdict.ERROR, error=error)
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
    from lipbench import factories
    from lipbench.data import DATASETS, default_data_root, load_dataset

    d = spec.scenario.dataset
    reference = factories.reference_for("dataset", d.name, DATASETS)
    if reference is not None:  # the user's own data (a factory or a plugin)
        root = data_root or default_data_root()
        return factories.build_dataset(reference, d.kwargs, root, d.train_size, d.test_size)
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


def _init_worker(threads: int, counter, gpus: int) -> None:
    """Each worker limits its CPU threads and, with GPUs, takes one (its index modulo the count)."""
    import torch

    torch.set_num_threads(threads)
    if gpus:
        with counter.get_lock():
            index = counter.value
            counter.value += 1
        torch.cuda.set_device(index % gpus)


def _run_in_pool(
    units: list[list[RunSpec]], n_workers: int, device: str, data_root: str | None, collect, engine: str
) -> None:
    ctx = mp.get_context("spawn")  # fork after torch (or CUDA) is initialised is unsafe
    threads = max(1, (os.cpu_count() or 1) // n_workers)
    gpus = 0
    if device.startswith("cuda"):
        import torch

        gpus = torch.cuda.device_count()
    attempts = {u[0].run_id: 0 for u in units}
    queue = list(units)
    while queue:
        counter = ctx.Value("i", 0)
        with ProcessPoolExecutor(
            n_workers, mp_context=ctx, initializer=_init_worker, initargs=(threads, counter, gpus)
        ) as pool:
            futures: dict[Future, list[RunSpec]] = {
                pool.submit(execute_group, u, device, data_root, engine): u for u in queue
            }
            queue = []
            while futures:
                done, _ = wait(futures, return_when=FIRST_COMPLETED)
                for fut in done:
                    unit = futures.pop(fut)
                    try:
                        records = fut.result()
                    except BrokenProcessPool:
                        attempts[unit[0].run_id] += 1
                        if attempts[unit[0].run_id] >= MAX_ATTEMPTS:
                            died = "its worker process died twice (out of memory, or killed?)"
                            collect(unit, [_failed(spec, died) for spec in unit])
                        else:
                            queue.append(unit)
                        continue
                    collect(unit, records)
