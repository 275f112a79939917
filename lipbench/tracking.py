"""MLflow logging from ONE process (docs/mlflow.md says why): store and experiment first, then a parent
run per claim and a child run per training run, each written in batches once it is finished.

Workers never import mlflow. After a claim is logged, the store is read back and the number
of child runs and metric points is checked against what was produced.

The store is opened before anything is trained (`open_store`): a store that cannot be created or
reached is a `StoreError`. A sqlite store is created, and its experiments are created, under a
file lock beside the database, so invocations started together never run MLflow's schema
migration at the same time (docs/mlflow.md measures what happens when they do).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lipbench.errors import StoreError
from lipbench.outcome import ClaimOutcome, Verdict

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

PARENT_TAG = "mlflow.parentRunId"
# Marks an experiment as model training: MLflow's UI shows it with the model-training pages (runs,
# models), not the GenAI ones (traces, overview). Which page opens first is the UI's choice, so every
# invocation prints the address of the runs table itself (`runs_table`).
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
LOCK_SECONDS = 300  # the longest wait for another invocation to create the store (a migration takes seconds)
PROBE_SECONDS = 10  # how long a tracking server has to answer the first request


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested mappings to dotted keys, leaves as strings (MLflow params)."""
    if isinstance(data, dict):
        out: dict[str, str] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): json.dumps(data) if isinstance(data, (list, tuple)) else str(data)}


class Tracker:
    """Writes claims to one MLflow experiment; `tracking_uri=None` means MLFLOW_TRACKING_URI or MLflow's default."""

    def __init__(self, experiment: str, tracking_uri: str | None = None, experiment_id: str | None = None):
        self.uri = resolve_uri(tracking_uri)
        with store_lock(self.uri):
            self.client = open_store(self.uri)
            try:
                self.experiment_id = experiment_id or self._experiment(experiment)
            except Exception as e:  # a read-only database, a server that refuses writes, ...
                raise StoreError(self.uri, f"experiment {experiment!r} cannot be made ({one_line(e)})") from None

    def _experiment(self, name: str) -> str:
        """The id of experiment `name`, created (as a model-training experiment) if need be.

        A tracking server has no lock of ours: when another invocation creates the experiment
        first, its creation fails here and the experiment is read again.
        """
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is None:
            try:
                return self.client.create_experiment(
                    name, artifact_location=_artifact_location(self.uri), tags={KIND_TAG: KIND}
                )
            except MlflowException:
                found = self.client.get_experiment_by_name(name)
                if found is None:
                    raise
        if KIND_TAG not in found.tags:  # made by an older lipbench: `mlflow ui` would open it on traces
            self.client.set_experiment_tag(found.experiment_id, KIND_TAG, KIND)
        return found.experiment_id

    def log_claim(
        self,
        outcome: ClaimOutcome,
        tags: dict[str, str] | None = None,
        artifacts: dict[str, Path] | None = None,
        metrics: dict[str, float] | None = None,
    ) -> str:
        """Log a finished claim (with extra parent-run `metrics`, e.g. baseline z-scores); returns the parent run id."""
        from mlflow.entities import Metric, Param, RunTag

        claim = outcome.claim
        result = outcome.result.to_dict() if outcome.result else {}
        base_tags = {
            "lipbench.claim": claim.name,
            "lipbench.collection": claim.collection,
            "lipbench.profile": claim.profile,
            "lipbench.status": outcome.status,
            "lipbench.scenario_hash": claim.scenario_hash(),
            "lipbench.file": str(claim.file),
            "mlflow.note.content": outcome.sentence,
            **(tags or {}),
        }
        parent = self.client.create_run(self.experiment_id, run_name=f"{claim.name} [{claim.profile}]", tags=base_tags)
        pid = parent.info.run_id
        params = flatten(claim.claim.model_dump(mode="json", exclude={"claim", "paper", "expect_reason"}))
        params["profile"] = claim.profile
        now = int(time.time() * 1000)
        metrics = {
            "seconds": outcome.seconds,
            "runs": float(len(outcome.records)),
            "passed": float(outcome.status in (Verdict.PASS, Verdict.XPASS)),
            **(metrics or {}),
        }
        for key in ("statistic", "pvalue", "ci_low", "ci_high", "effect_size", "threshold", "n"):
            if isinstance(result.get(key), (int, float)):
                metrics[f"assertion.{key}"] = float(result[key])
        self.client.log_batch(
            pid,
            metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
            params=[Param(k, v[:6000]) for k, v in params.items()],
            tags=[RunTag("lipbench.test", str(result.get("test", "")))],
        )
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "assertion.json"
            path.write_text(
                json.dumps(
                    {"status": outcome.status, "error": outcome.error, "result": result}, indent=2, sort_keys=True
                )
            )
            self.client.log_artifact(pid, str(path))
        for _name, file in (artifacts or {}).items():
            if Path(file).exists():
                self.client.log_artifact(pid, str(file))
        expected = {record.run_id: self._log_child(pid, record, claim.name) for record in outcome.records}
        self.client.set_terminated(pid, "FINISHED" if outcome.status != Verdict.ERROR else "FAILED")
        self.verify(pid, expected)
        return pid

    def _log_child(self, parent_id: str, record, claim: str) -> int:
        from mlflow.entities import Metric, Param, RunTag

        run = self.client.create_run(
            self.experiment_id,
            run_name=record.run_id,
            tags={PARENT_TAG: parent_id, "lipbench.claim": claim, "lipbench.run": record.run_id},
        )
        rid = run.info.run_id
        now = int(time.time() * 1000)
        metrics = [
            Metric(name, float(value), now, int(step))
            for name, values in record.metrics.items()
            for step, value in zip(record.steps, values, strict=False)
            if value == value and abs(value) != float("inf")  # MLflow stores no NaN/inf reliably
        ]
        params = {
            "sweep_value": record.sweep_value,
            "init_seed": record.init_seed,
            "sampling_seed": record.sampling_seed,
            "device": record.device,
        }
        summary = [Metric(f"summary.{k}", float(v), now, 0) for k, v in record.summary.items()]
        summary.append(Metric("seconds", record.seconds, now, 0))
        self.client.log_batch(
            rid,
            metrics=metrics + summary,
            params=[Param(k, str(v)) for k, v in params.items()],
            tags=[RunTag("lipbench.problem", record.problem or "")],
        )
        self.client.set_terminated(rid, "FINISHED" if record.ok else "FAILED")
        return len(metrics)

    def verify(self, parent_id: str, expected: dict[str, int]) -> None:
        """Count the child runs and step-metric points the store holds; raise if any is missing."""
        children = self.client.search_runs(
            [self.experiment_id], f"tags.`{PARENT_TAG}` = '{parent_id}'", max_results=10_000
        )
        stored = {run.info.run_name: run for run in children}
        missing = sorted(set(expected) - set(stored))
        if missing:
            raise RuntimeError(f"MLflow holds {len(stored)} of {len(expected)} runs; missing {missing[:3]}")
        for name, points in expected.items():
            run = stored[name]
            keys = [k for k in run.data.metrics if not k.startswith("summary.") and k != "seconds"]
            held = sum(len(self.client.get_metric_history(run.info.run_id, k)) for k in keys)
            if held != points:
                raise RuntimeError(f"MLflow holds {held} of {points} metric points of run {name}")


#: Where `mlflow ui` serves a local store unless told otherwise.
LOCAL_UI = "http://127.0.0.1:5000"


def ui_address(uri: str) -> str:
    """The web address of store `uri`'s UI: the tracking server itself, else `mlflow ui`'s default."""
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI


def runs_table(uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """The address of an experiment's runs table (or of one run): it opens there, whichever page the UI
    would open an experiment on by default."""
    page = f"{ui_address(uri)}/#/experiments/{experiment_id}/runs"
    return f"{page}/{run_id}" if run_id else page


def resolve_uri(tracking_uri: str | None = None) -> str:
    """`tracking_uri`, else MLFLOW_TRACKING_URI, else MLflow's default (sqlite:///mlflow.db)."""
    import mlflow

    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite URI (None for an in-memory database or another kind of store)."""
    if not uri.startswith("sqlite://"):
        return None
    path = uri[len("sqlite://") :].split("?", 1)[0]
    return Path(path[1:]) if path.startswith("/") and path[1:] not in ("", ":memory:") else None


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold the lock of a sqlite store (a file `<database>.lock` beside it) while it and its
    experiments are created; no lock for other stores. Creating the lock file is also the test
    that the database's folder exists and can be written."""
    path = _sqlite_path(uri)
    if path is None:
        yield
        return
    from filelock import FileLock, Timeout

    lock = FileLock(path.with_name(path.name + ".lock"), timeout=LOCK_SECONDS)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        Path(lock.lock_file).touch()  # raises where the folder cannot be written (filelock would wait)
        lock.acquire()
    except Timeout:
        raise StoreError(uri, f"another process has held {lock.lock_file} for {LOCK_SECONDS} s") from None
    except OSError as e:
        raise StoreError(uri, f"cannot write in {_blocking_folder(path)} ({e.strerror or e})") from None
    try:
        yield
    finally:
        lock.release()


def _blocking_folder(path: Path) -> Path:
    """The nearest folder above the database that exists (a regular file there is the problem)."""
    for parent in path.absolute().parents:
        if parent.exists():
            return parent
    return path.parent


def open_store(uri: str):
    """An MlflowClient of a store that exists now: created if need be (call it under `store_lock`),
    a tracking server reached. Anything else is a StoreError naming the URI."""
    from mlflow import MlflowClient

    path = _sqlite_path(uri)
    if path is not None and path.exists() and not (path.is_file() and os.access(path, os.R_OK | os.W_OK)):
        raise StoreError(uri, f"{path} is not a database file lipbench can read and write")
    if uri.startswith(("http://", "https://")):
        _probe_server(uri)
    try:
        with _quiet("mlflow", "alembic"):  # its INFO lines ("Creating initial MLflow database tables") are not ours
            client = MlflowClient(uri)
            client.search_experiments(max_results=1)  # opens a sqlite store: creates and migrates it if new
    except Exception as e:
        raise StoreError(uri, f"cannot be opened ({one_line(e)})") from None
    return client


@contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """The named loggers at WARNING and above inside the block, as they were after it."""
    levels = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(max(levels[name], logging.WARNING))
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _probe_server(uri: str) -> None:
    """Fail fast when nothing answers at a server's address (MLflow's own client retries for minutes)."""
    import requests

    try:
        requests.get(uri, timeout=PROBE_SECONDS)
    except requests.exceptions.SSLError:
        return  # it answers; whether its certificate is trusted is MLflow's TLS settings' call
    except (requests.ConnectionError, requests.Timeout) as e:
        raise StoreError(uri, f"no server answers ({type(e).__name__})") from None


def one_line(error: Exception) -> str:
    """An MLflow or database error in one short line (without the SQL statement it ran)."""
    text = " ".join(str(error).split()).split(" [SQL: ", 1)[0]
    return f"{type(error).__name__}: {text[:300]}"


def _artifact_location(uri: str) -> str | None:
    """Artifacts of a sqlite store go beside the database, not into ./mlruns of whatever folder we run from."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :]).resolve()
        return (db.parent / "mlartifacts").as_uri()
    return None
