"""`lipbench compare A B`: per-claim differences between two runs, each a results folder or an MLflow run id.

A side is a results folder (an invocation's ``--out``, or one claim's folder in it) or the
id of a claim's MLflow parent run (its ``result.json`` and ``records.json`` artifacts are
downloaded). Claims are matched by (collection, claim, profile). For each: the verdicts, the
assertion's statistic, p-value and CI, the mean final quantity, and B judged against A with
the baseline tolerance rule (``lipbench.baselines``) — "not comparable" when the scenario
hashes differ. The command is informational: it exits 0, or 2 when a side cannot be read.

The same comparison in the MLflow UI
------------------------------------
Every claim is one parent run, named ``<claim> [<profile>]``, in the experiment
``lipbench/<collection>``; its training runs are child runs. To line up one claim across
invocations, search the experiment with
``tags.lipbench.claim = 'batch_size' and tags.lipbench.profile = 'quick'`` (add
``tags.lipbench.scenario_hash = '...'`` to keep only comparable runs), tick the runs and press
Compare. Pick these parent-run metrics:

- ``assertion.statistic`` (the headline number; its name is in the ``assertion.json`` artifact),
  ``assertion.pvalue``, ``assertion.ci_low``, ``assertion.ci_high``, ``assertion.effect_size``,
  ``assertion.threshold``, ``assertion.n``;
- ``final.mean`` (mean final K, or the assertion's quantity, over all runs), ``runs``, ``seconds``;
- ``baseline.<statistic>.t`` and ``baseline.<statistic>.change`` (the tolerance rule's Welch t and
  its change, positive = better), e.g. ``baseline.log_ratio_extreme_values.t``;
- ``tracked.<statistic>`` (and ``.se``), ``attribution.<statistic>.layer<l>`` (each layer's
  contribution) and ``forces.<term>`` (the force split, summed over layers);

and these tags as columns: ``lipbench.verdict`` (the final verdict), ``lipbench.status`` (the
assertion's verdict before the baseline), ``lipbench.baseline`` (compared / not comparable /
none), ``lipbench.comparison`` (the sentence), ``lipbench.scenario_hash``, ``lipbench.device``, ``lipbench.git_commit``.
Child runs carry step metrics ``K``, ``log_K``, ``sigma_<i>``, ``loss``, ``accuracy`` (plot them
against step) and params ``sweep_value``, ``init_seed``, ``sampling_seed``.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from lipbench import attribution
from lipbench.baselines import changed_keys, compare_summaries
from lipbench.errors import LipbenchError
from lipbench.numbers import fmt
from lipbench.outcome import StatOutcome, Verdict, decide
from lipbench.provenance import environment_differences
from lipbench.results import find_results, load_result

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
#: How the verdict of B against A reads in the table.
JUDGEMENT = {
    Verdict.REGRESSED: StatOutcome.REGRESSED,
    Verdict.IMPROVED: StatOutcome.IMPROVED,
    Verdict.PASS: StatOutcome.WITHIN_TOLERANCE,
}


@dataclass(frozen=True)
class Side:
    """One claim's saved result as the comparison reads it."""

    folder: Path
    result: dict[str, Any]

    @property
    def key(self) -> tuple[str, str, str]:
        return self.result["collection"], self.result["claim"], self.result["profile"]


def load_side(spec: str, tracking_uri: str | None = None) -> list[Path]:
    """Claim folders of a results folder, or of one MLflow parent run id (downloaded to a temporary folder)."""
    path = Path(spec)
    if path.exists():
        folders = find_results(path)
        if not folders:
            raise LipbenchError(f"{spec}: holds no result.json; name a folder written by `lipbench run --out`")
        return folders
    if RUN_ID.match(spec):
        return [download_run(spec, tracking_uri)]
    raise LipbenchError(f"{spec}: neither a results folder nor an MLflow run id (32 hex digits)")


def download_run(run_id: str, tracking_uri: str | None = None) -> Path:
    """result.json and records.json of a claim's parent run, in a temporary folder."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # MLflow (slow to import) loads only when a run id is read.
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        raise LipbenchError(f"MLflow run {run_id}: not found in {client.tracking_uri} ({e.error_code})") from None
    parent = run.data.tags.get("mlflow.parentRunId")
    if parent:
        raise LipbenchError(f"MLflow run {run_id} is a training run; pass its claim's run {parent}")
    folder = Path(tempfile.mkdtemp(prefix=f"lipbench-{run_id[:8]}-"))
    names = {a.path for a in client.list_artifacts(run_id)}
    if "result.json" not in names:
        raise LipbenchError(
            f"MLflow run {run_id} has no result.json artifact (logged by an older lipbench); use its results folder"
        )
    for name in ("result.json", "records.json"):
        if name in names:
            client.download_artifacts(run_id, name, str(folder))
    return folder


def sides(spec: str, tracking_uri: str | None = None) -> dict[tuple[str, str, str], Side]:
    out = {}
    for folder in load_side(spec, tracking_uri):
        side = Side(folder, load_result(folder))
        out[side.key] = side
    return out


def compare_rows(a: dict[tuple[str, str, str], Side], b: dict[tuple[str, str, str], Side]) -> list[dict[str, Any]]:
    """One row per claim in A or B: numbers of both sides and B judged against A."""
    rows = []
    for key in sorted(set(a) | set(b)):
        left, right = a.get(key), b.get(key)
        row: dict[str, Any] = {"collection": key[0], "claim": key[1], "profile": key[2]}
        for name, side in (("a", left), ("b", right)):
            res = side.result if side else {}
            assertion = res.get("assertion") or {}
            summary = res.get("summary") or {}
            row[name] = {
                "verdict": res.get("verdict") or res.get("status"),
                "statistic_name": assertion.get("statistic_name"),
                "statistic": assertion.get("statistic"),
                "pvalue": assertion.get("pvalue"),
                "ci": (assertion.get("ci_low"), assertion.get("ci_high")),
                "final_mean": summary.get("final_mean"),
                "quantity": summary.get("quantity", "K"),
                "scenario_hash": res.get("scenario_hash"),
            }
        row["changes"], row["notes"] = [], []
        if left is None or right is None:
            row["judgement"] = f"only in {'B' if left is None else 'A'}"
        elif left.result.get("scenario_hash") != right.result.get("scenario_hash"):
            keys = changed_keys(left.result.get("resolved") or {}, right.result.get("resolved") or {})
            row["judgement"] = "not comparable"
            row["notes"] = [f"scenario differs: {'; '.join(keys[:4]) or 'hash only'}"]
        elif not (left.result.get("summary") and right.result.get("summary")):
            row["judgement"] = "no summary (needs result.json written by this lipbench)"
        else:
            devices = [s.result.get("environment", {}).get("device") for s in (left, right)]
            if devices[0] != devices[1]:
                row["notes"].append(f"devices differ ({devices[0]} vs {devices[1]}): compared as a new draw of seeds")
            envs = [s.result.get("environment") or {} for s in (left, right)]
            differences = environment_differences(*envs)
            if differences:
                row["notes"].append("environment differs: " + ", ".join(differences))
            changes, _, notes = compare_summaries(left.result["summary"], right.result["summary"])
            row["changes"], row["notes"] = changes, row["notes"] + notes
            layers = attribution.compare(
                left.result["summary"].get("attribution") or [], right.result["summary"].get("attribution") or []
            )
            moved = next((c.name for c in changes if c.outcome in (StatOutcome.REGRESSED, StatOutcome.IMPROVED)), None)
            if moved and attribution.clause(layers, moved):
                row["notes"].append(attribution.clause(layers, moved))
            row["judgement"] = JUDGEMENT[decide(changes)]
        rows.append(row)
    return rows


def compare_table(rows: list[dict[str, Any]], label_a: str, label_b: str) -> Table:
    table = Table(title=f"A = {label_a}\nB = {label_b}", title_justify="left")
    for col in ("claim", "verdict A → B", "statistic A → B (Δ)", "p A → B", "CI A → B", "mean final A → B", "B vs A"):
        table.add_column(col)
    for row in rows:
        a, b = row["a"], row["b"]
        stat_name = a["statistic_name"] or b["statistic_name"] or "statistic"
        table.add_row(
            f"{row['claim']} [{row['profile']}]",
            f"{a['verdict'] or '-'} → {b['verdict'] or '-'}",
            f"{stat_name}\n{_g(a['statistic'])} → {_g(b['statistic'])} ({_delta(a['statistic'], b['statistic'])})",
            f"{_g(a['pvalue'], 2)} → {_g(b['pvalue'], 2)}",
            f"{_interval(a['ci'])} → {_interval(b['ci'])}",
            f"{_g(a['final_mean'])} → {_g(b['final_mean'])} ({_relative(a['final_mean'], b['final_mean'])})",
            "\n".join([row["judgement"], *(c.text() for c in row["changes"]), *row["notes"]]),
        )
    return table


def _g(x: float | None, digits: int = 3) -> str:
    return fmt(x, digits, missing="-")


def _delta(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{b - a:+.3g}"


def _relative(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or a == 0 else f"{100 * (b - a) / abs(a):+.1f}%"


def _interval(ci: tuple[float | None, float | None]) -> str:
    return "-" if ci[0] is None and ci[1] is None else f"[{_g(ci[0])}, {_g(ci[1])}]"
