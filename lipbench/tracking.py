"""MLflow logging from ONE process (docs/mlflow.md says why): store and experiment first, then a parent
run per claim and a child run per training run, each written in batches once it is finished.

Workers never import mlflow. After a claim is logged, the store is read back and the number
of child runs and metric points is checked against what was produced.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from lipbench.outcome import ClaimOutcome, Verdict

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

PARENT_TAG = "mlflow.parentRunId"


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
        import mlflow
        from mlflow import MlflowClient

        self.uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()
        self.client = MlflowClient(self.uri)
        if experiment_id is None:
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = (
                found.experiment_id
                if found
                else self.client.create_experiment(experiment, artifact_location=_artifact_location(self.uri))
            )
        self.experiment_id = experiment_id

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


def _artifact_location(uri: str) -> str | None:
    """Artifacts of a sqlite store go beside the database, not into ./mlruns of whatever folder we run from."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :]).resolve()
        return (db.parent / "mlartifacts").as_uri()
    return None
