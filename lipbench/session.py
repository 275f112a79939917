"""What happens to a finished claim, the same from the CLI and from pytest: save it locally,
judge it against its baseline, draw its figure, log it to MLflow. The local copy is written
first, so nothing computed is lost when a later step fails.

The final verdict (a `lipbench.outcome.Verdict`) is put on the outcome by `finish_claim`: read
`outcome.verdict` and `outcome.comparison` (a `lipbench.outcome.Comparison`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lipbench import tracking
from lipbench.baselines import default_root, verdict_for
from lipbench.explain import as_json
from lipbench.history import explain_tags
from lipbench.outcome import ClaimOutcome, Comparison
from lipbench.results import environment, save_outcome, update_result
from lipbench.suite import ResolvedClaim

Warn = Callable[[str], None]


class Session:
    """The sinks of one invocation: a results folder and, unless disabled, one MLflow store.

    `out` may be None until the store is open (`lipbench.cli.open_session` makes the folder only
    once the store is known to work); `unlogged` names the claims whose MLflow logging failed.
    """

    def __init__(
        self,
        out: str | Path | None,
        device: str,
        *,
        tracking_uri: str | None = None,
        mlflow: bool = True,
        experiment_ids: dict[str, str] | None = None,
        warn: Warn = print,
        baselines: str | Path | None = None,
    ):
        self.out, self.device, self.warn = (Path(out) if out is not None else None), device, warn
        self.env = environment(device)
        self.tracking_uri, self.mlflow = tracking_uri, mlflow
        self.experiment_ids = dict(experiment_ids or {})
        self.trackers: dict = {}
        self.unlogged: list[str] = []
        self.run_ids: dict[tuple[str, str, str], str] = {}  # claim key -> its MLflow parent run
        self.baselines = Path(baselines) if baselines is not None else None  # None: baselines.default_root

    @staticmethod
    def experiment_name(collection: str) -> str:
        return f"lipbench/{collection}"

    @property
    def store_uri(self) -> str:
        """The tracking URI this session writes to, after MLFLOW_TRACKING_URI and MLflow's default."""
        return next(iter(self.trackers.values())).uri if self.trackers else tracking.resolve_uri(self.tracking_uri)

    def prepare(self, claims: list[ResolvedClaim]) -> dict[str, str]:
        """Create the store and one experiment per collection before any worker starts (docs/mlflow.md)."""
        if not self.mlflow:
            return {}
        for collection in sorted({c.collection for c in claims}):
            if collection not in self.trackers:
                self.trackers[collection] = tracking.Tracker(
                    self.experiment_name(collection), self.tracking_uri, self.experiment_ids.get(collection)
                )
        return {name: t.experiment_id for name, t in self.trackers.items()}

    def finish_claim(self, outcome: ClaimOutcome) -> Path:
        """Save, judge against its baseline, draw and log one finished claim; returns its results folder.

        Sets `outcome.verdict` and `outcome.comparison`.
        """
        from lipbench.plots import claim_figure  # matplotlib loads only when a figure is drawn

        folder = save_outcome(outcome, self.out, self.env)
        comparison = self._judge(outcome, folder)
        figure = sde = None
        try:
            figure = claim_figure(outcome, folder / "figure.png")
            if "sde" in outcome.claim.claim.scenario.record:
                from lipbench.sde_plots import sde_figure  # as claim_figure

                sde = sde_figure(outcome, folder / "sde_decomposition.png")
        except Exception as e:  # a figure must never cost a result
            self.warn(f"lipbench: warning: no figure for {outcome.claim.name}: {e}")
        (folder / "attribution.json").write_text(as_json(comparison.summary) + "\n")
        if self.mlflow:
            try:  # opening the store too: a broken MLflow never costs the claim its verdict
                self.prepare([outcome.claim])
                artifacts = {"records": folder / "records.json", "result": folder / "result.json"}
                if figure:
                    artifacts["figure"] = figure
                if sde:
                    artifacts["sde_decomposition"] = sde
                tags, metrics = _verdict_tags(comparison)
                more_tags, more_metrics = explain_tags(comparison.summary, self.env)
                artifacts["attribution"] = folder / "attribution.json"
                run_id = self.trackers[outcome.claim.collection].log_claim(
                    outcome,
                    tags={"lipbench.device": self.env["device"], **tags, **more_tags},
                    artifacts=artifacts,
                    metrics={**metrics, **more_metrics},
                )
                (folder / "mlflow_run_id").write_text(run_id + "\n")
                self.run_ids[outcome.claim.key] = run_id
            except Exception as e:
                self.unlogged.append(outcome.claim.name)
                self.warn(
                    f"lipbench: warning: MLflow logging of {outcome.claim.name} failed ({tracking.one_line(e)}); "
                    f"its results are in {folder}"
                )
        return folder

    def addresses(self, outcomes: list[ClaimOutcome]) -> list[str]:
        """Where to look in MLflow's UI: each experiment's runs table, and the parent run of each failing claim."""
        lines = [
            f"mlflow: runs of {name}: {tracking.runs_table(t.uri, t.experiment_id)}"
            for name, t in sorted(self.trackers.items())
        ]
        for o in outcomes:
            run_id = self.run_ids.get(o.claim.key)
            if o.fails and run_id:
                t = self.trackers[o.claim.collection]
                lines.append(
                    f"mlflow: {o.verdict} {o.claim.name}: {tracking.runs_table(t.uri, t.experiment_id, run_id)}"
                )
        uri = self.store_uri
        if lines and not uri.startswith(("http://", "https://")):
            lines.append(f"mlflow: (these open once `mlflow ui --backend-store-uri {uri}` runs)")
        return lines

    def baselines_root(self, claim: ResolvedClaim) -> Path:
        return self.baselines if self.baselines is not None else default_root(claim.file)

    def _judge(self, outcome: ClaimOutcome, folder: Path):
        """Compare with the baseline, put the verdict on the outcome and into result.json."""
        try:
            comparison = verdict_for(outcome, self.baselines_root(outcome.claim), self.env["device"], self.env)
        except Exception as e:  # a broken comparison must never cost a result: say so, keep the status
            self.warn(f"lipbench: warning: no baseline comparison for {outcome.claim.name}: {type(e).__name__}: {e}")
            note = f"baseline comparison failed: {type(e).__name__}: {e}"
            comparison = Comparison(outcome.status, outcome.status, notes=(note,))
        outcome.attach(comparison)
        update_result(folder, verdict=comparison.verdict, baseline=comparison.to_dict(), summary=comparison.summary)
        return comparison


def _verdict_tags(comparison) -> tuple[dict[str, str], dict[str, float]]:
    """MLflow tags and metrics of the verdict (names listed in lipbench.compare's docstring)."""
    state = {None: "none", True: "compared", False: "not comparable"}[comparison.comparable]
    tags = {
        "lipbench.verdict": comparison.verdict,
        "lipbench.baseline": state,
        "lipbench.comparison": comparison.sentence[:5000],
    }
    metrics: dict[str, float] = {}
    if comparison.summary.get("final_mean") is not None:
        metrics["final.mean"] = float(comparison.summary["final_mean"])
    for change in comparison.changes:
        for key in ("t", "change"):
            value = getattr(change, key)
            if value is not None and abs(value) != float("inf") and value == value:
                metrics[f"baseline.{change.name}.{key}"] = float(value)
    return tags, metrics
