"""What happens to a finished claim, the same from the CLI and from pytest: save it locally,
draw its figure, log it to MLflow. The local copy is written first, so nothing computed is
lost when a later step fails.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lipbench.runner import ClaimOutcome
from lipbench.suite import ResolvedClaim

Warn = Callable[[str], None]


class Session:
    """The sinks of one invocation: a results folder and, unless disabled, one MLflow store."""

    def __init__(
        self,
        out: str | Path,
        device: str,
        *,
        tracking_uri: str | None = None,
        mlflow: bool = True,
        experiment_ids: dict[str, str] | None = None,
        warn: Warn = print,
    ):
        from lipbench.results import environment

        self.out, self.device, self.warn = Path(out), device, warn
        self.env = environment(device)
        self.tracking_uri, self.mlflow = tracking_uri, mlflow
        self.experiment_ids = dict(experiment_ids or {})
        self.trackers: dict = {}

    @staticmethod
    def experiment_name(collection: str) -> str:
        return f"lipbench/{collection}"

    def prepare(self, claims: list[ResolvedClaim]) -> dict[str, str]:
        """Create the store and one experiment per collection before any worker starts (MLFLOW.md)."""
        if not self.mlflow:
            return {}
        from lipbench.tracking import Tracker

        for collection in sorted({c.collection for c in claims}):
            if collection not in self.trackers:
                self.trackers[collection] = Tracker(
                    self.experiment_name(collection), self.tracking_uri, self.experiment_ids.get(collection)
                )
        return {name: t.experiment_id for name, t in self.trackers.items()}

    def finish_claim(self, outcome: ClaimOutcome) -> Path:
        """Save, draw and log one finished claim; returns its results folder."""
        from lipbench.plots import claim_figure
        from lipbench.results import save_outcome

        folder = save_outcome(outcome, self.out, self.env)
        figure = None
        try:
            figure = claim_figure(outcome, folder / "figure.png")
        except Exception as e:  # a figure must never cost a result
            self.warn(f"lipbench: warning: no figure for {outcome.claim.name}: {e}")
        if self.mlflow:
            self.prepare([outcome.claim])
            try:
                artifacts = {"records": folder / "records.json"}
                if figure:
                    artifacts["figure"] = figure
                run_id = self.trackers[outcome.claim.collection].log_claim(
                    outcome, tags={"lipbench.device": self.env["device"]}, artifacts=artifacts
                )
                (folder / "mlflow_run_id").write_text(run_id + "\n")
            except Exception as e:
                self.warn(
                    f"lipbench: warning: MLflow logging of {outcome.claim.name} failed ({e}); "
                    f"its results are in {folder}"
                )
        return folder
