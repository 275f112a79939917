"""How many of N processes opening one fresh sqlite MLflow store at the same moment fail.

    python benchmarks/mlflow_store_race.py [--processes 4] [--trials 5] [--lock]

Each trial starts N spawned processes in a new empty folder; each imports mlflow, waits at a
barrier so that all start together, then opens `sqlite:///<folder>/mlflow.db` (a fresh store:
MLflow creates the tables and runs its alembic migrations) and logs one run into experiment
`race`. Without `--lock` each process opens the store with MLflow alone, as N `lipbench run`
started together did; with `--lock` through `lipbench.tracking.Tracker`, which creates the store
and the experiment under a file lock. A start fails when it raises, or when its run did not land
in `race` with its metric. The last line is `failed=<f> of <N x trials> (lock=<yes|no>)`.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def start(uri: str, lock: bool, barrier, results) -> None:
    """One process: open the store together with the others, log a run, report None or the error."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    from mlflow import MlflowClient

    from lipbench.tracking import Tracker

    barrier.wait()
    try:
        if lock:
            tracker = Tracker("race", uri)
            client, experiment_id = tracker.client, tracker.experiment_id
        else:
            client = MlflowClient(uri)
            found = client.get_experiment_by_name("race")
            experiment_id = found.experiment_id if found else client.create_experiment("race")
        run = client.create_run(experiment_id)
        client.log_metric(run.info.run_id, "x", 1.0)
        client.set_terminated(run.info.run_id)
        results.put(None)
    except Exception as e:
        results.put(f"{type(e).__name__}: {' '.join(str(e).split())[:160]}")
    del mlflow


def trial(processes: int, lock: bool) -> tuple[int, list[str]]:
    """Failures of one trial: starts that raised, plus runs missing from the store afterwards."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    with tempfile.TemporaryDirectory() as folder:
        uri = f"sqlite:///{Path(folder) / 'mlflow.db'}"
        procs = [ctx.Process(target=start, args=(uri, lock, barrier, results)) for _ in range(processes)]
        for p in procs:
            p.start()
        errors = [e for e in (results.get(timeout=600) for _ in procs) if e]
        for p in procs:
            p.join()
        stored = _stored_runs(uri)
    missing = max(0, processes - len(errors) - stored)  # raised nothing, yet its run is not in `race`
    return len(errors) + missing, errors + ["run missing from the store"] * missing


def _stored_runs(uri: str) -> int:
    """Runs in experiment `race` holding their metric (0 when the store cannot be read at all)."""
    from mlflow import MlflowClient

    try:
        client = MlflowClient(uri)
        found = client.get_experiment_by_name("race")
        if found is None:
            return 0
        return sum("x" in r.data.metrics for r in client.search_runs([found.experiment_id]))
    except Exception:
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--lock", action="store_true", help="open the store through lipbench's Tracker")
    args = parser.parse_args()
    failed = 0
    kinds: dict[str, int] = {}
    for i in range(args.trials):
        started = time.perf_counter()
        n, errors = trial(args.processes, args.lock)
        failed += n
        for e in errors:
            kinds[e.split(":")[0]] = kinds.get(e.split(":")[0], 0) + 1
        print(f"trial {i + 1}: {n} of {args.processes} failed ({time.perf_counter() - started:.0f} s)", flush=True)
        for e in errors:
            print(f"    {e}", flush=True)
    print("errors by type: " + (", ".join(f"{k} x{v}" for k, v in sorted(kinds.items())) or "none"))
    print(f"failed={failed} of {args.processes * args.trials} (lock={'yes' if args.lock else 'no'})")


if __name__ == "__main__":
    main()
