"""`lipbench history PATH [RESULTS_DIR ...] [--tracking-uri URI]`: each claim's tracked statistics over stored runs.

The runs are results folders (every result.json under the folders named) or, without folders, the
claims' MLflow parent runs in the store; the claims are those of the suite files PATH. Runs are
ordered by the date their environment records, each with the git commit (and uncommitted changes)
of the code under test. A point is marked where its statistic stepped outside the tolerance of
the point before it (the baseline rule, ``lipbench.baselines.compare_tracked``, between two
consecutive runs of the same scenario): that run's commit is the first to show the move, the
place to start ``git bisect`` from.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lipbench.assertions import Tracked
from lipbench.baselines import compare_tracked
from lipbench.outcome import StatOutcome
from lipbench.results import find_results, load_result

Key = tuple[str, str, str]  # collection, claim, profile
STEPS = (StatOutcome.REGRESSED, StatOutcome.IMPROVED)


@dataclass
class Point:
    """One stored run of a claim."""

    key: Key
    date: str
    commit: str | None
    dirty: bool | None
    verdict: str
    scenario_hash: str | None
    tracked: dict[str, Tracked]
    source: str
    steps: dict[str, str] = field(default_factory=dict)  # statistic -> how it stepped from the point before

    @property
    def code(self) -> str:
        return (self.commit or "-")[:10] + ("+dirty" if self.dirty else "")


def from_results(folders: list[str | Path]) -> list[Point]:
    points = []
    for root in folders:
        for folder in find_results(root):
            data = load_result(folder)
            env = data.get("environment") or {}
            stats = (data.get("summary") or {}).get("tracked") or (data.get("assertion") or {}).get("tracked") or []
            points.append(
                Point(
                    (data["collection"], data["claim"], data["profile"]),
                    str(env.get("date") or ""),
                    env.get("git_commit"),
                    env.get("git_dirty"),
                    str(data.get("verdict") or data.get("status")),
                    data.get("scenario_hash"),
                    {t["name"]: Tracked.from_dict(t) for t in stats},
                    str(folder),
                )
            )
    return points


def from_mlflow(uri: str | None, collections: set[str]) -> list[Point]:
    """The claims' parent runs in the MLflow store: tracked statistics from their ``tracked.<name>`` metrics."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from lipbench import tracking

    client = tracking.open_store(tracking.resolve_uri(uri))
    points = []
    for collection in sorted(collections):
        experiment = client.get_experiment_by_name(f"lipbench/{collection}")
        if experiment is None:
            continue
        runs = client.search_runs([experiment.experiment_id], "", max_results=50_000)
        for run in runs:
            tags, metrics = run.data.tags, run.data.metrics
            if tracking.PARENT_TAG in tags or "lipbench.claim" not in tags:
                continue
            stats = {}
            for name, value in metrics.items():
                if name.startswith("tracked.") and name.count(".") == 1:
                    stat = name.split(".", 1)[1]
                    se = metrics.get(f"tracked.{stat}.se")
                    stats[stat] = Tracked(
                        stat,
                        value,
                        se,
                        metrics.get(f"tracked.{stat}.df", float("inf") if se is not None else None),
                        tags.get(f"lipbench.tracked.{stat}.better", "higher"),
                        metrics.get(f"tracked.{stat}.scale", 1.0),
                        metrics.get(f"tracked.{stat}.target"),
                    )
            dirty = tags.get("lipbench.git_dirty")
            points.append(
                Point(
                    (collection, tags["lipbench.claim"], tags.get("lipbench.profile", "")),
                    tags.get("lipbench.date") or _iso(run.info.start_time),
                    tags.get("lipbench.git_commit"),
                    None if dirty is None else dirty == "True",
                    tags.get("lipbench.verdict", tags.get("lipbench.status", "")),
                    tags.get("lipbench.scenario_hash"),
                    stats,
                    run.info.run_id,
                )
            )
    return points


def _iso(millis: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(millis / 1000, timezone.utc).isoformat(timespec="seconds")


def series(points: list[Point], keys: set[Key] | None = None) -> dict[Key, list[Point]]:
    """Points per claim, ordered by date, each marked where a statistic stepped from the point before."""
    out: dict[Key, list[Point]] = {}
    for p in sorted(points, key=lambda p: p.date):
        if keys is None or p.key in keys or (p.key[0], p.key[1], "*") in keys:
            out.setdefault(p.key, []).append(p)
    for runs in out.values():
        for before, now in itertools.pairwise(runs):
            if before.scenario_hash != now.scenario_hash:
                now.steps["*"] = "scenario changed"
                continue
            for name, stat in now.tracked.items():
                if name in before.tracked:
                    change = compare_tracked(before.tracked[name], stat)
                    if change.outcome in STEPS:
                        now.steps[name] = f"{change.outcome} (t = {change.t:.2g})"
    return out


def print_history(found: dict[Key, list[Point]], console: Any) -> None:
    from rich.table import Table

    for key, runs in found.items():
        names = sorted({n for p in runs for n in p.tracked})
        table = Table(title=f"{key[0]}/{key[1]} [{key[2]}]: {len(runs)} runs", title_justify="left")
        for col in ("date", "code", "verdict", *names, "stepped"):
            table.add_column(col)
        for p in runs:
            cells = []
            for n in names:
                t = p.tracked.get(n)
                text = "-" if t is None else f"{t.value:.4g}" + ("" if t.se is None else f" ± {t.se:.2g}")
                cells.append(f"[bold red]{text} ◆[/]" if n in p.steps else text)
            stepped = "; ".join(f"{n}: {why}" for n, why in p.steps.items())
            table.add_row(p.date, p.code, p.verdict, *cells, stepped or "")
        console.print(table)


def history_figure(runs: list[Point], path: str | Path) -> Path | None:
    """Each tracked statistic (± se) over the runs, the code's commit under each, steps marked in red."""
    names = sorted({n for p in runs for n in p.tracked})
    if not names:
        return None
    import matplotlib.pyplot as plt

    from lipbench.plots import save_figure

    fig, axes = plt.subplots(len(names), 1, figsize=(9, 2.4 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=True):
        xs = [i for i, p in enumerate(runs) if name in p.tracked]
        values = [runs[i].tracked[name].value for i in xs]
        errors = [runs[i].tracked[name].se or 0.0 for i in xs]
        ax.errorbar(xs, values, yerr=errors, fmt="o-", color="black", capsize=3)
        stepped = [i for i in xs if name in runs[i].steps]
        ax.scatter(stepped, [runs[i].tracked[name].value for i in stepped], s=90, color="#cf222e", zorder=3)
        ax.set_ylabel(name, fontsize=8)
        ax.set_xticks(range(len(runs)), [p.code for p in runs], rotation=30, fontsize=7)
        ax.grid(alpha=0.3)
    key = runs[0].key
    return save_figure(fig, f"history of {key[1]} [{key[2]}] (red: stepped outside the tolerance)", path)


def explain_tags(summary: dict[str, Any], env: dict[str, Any]) -> tuple[dict[str, str], dict[str, float]]:
    """Parent-run tags and metrics that `history` and the MLflow UI read: the code's commit, every tracked
    statistic with its se, df, scale and target, each layer's contribution and each force term."""
    tags = {f"lipbench.{k}": str(env[k]) for k in ("git_commit", "git_dirty", "date") if env.get(k) is not None}
    metrics: dict[str, float] = {}

    def put(name: str, value: Any) -> None:
        if isinstance(value, (int, float)) and value == value and abs(value) != float("inf"):
            metrics[name] = float(value)

    for t in summary.get("tracked") or []:
        tags[f"lipbench.tracked.{t['name']}.better"] = str(t["better"])
        for key, suffix in (("value", ""), ("se", ".se"), ("df", ".df"), ("scale", ".scale"), ("target", ".target")):
            put(f"tracked.{t['name']}{suffix}", t.get(key))
    for a in summary.get("attribution") or []:
        for c in a["layers"]:
            put(f"attribution.{a['statistic']}.layer{c['layer']}", c["value"])
            put(f"attribution.{a['statistic']}.layer{c['layer']}.se", c["se"])
    found = summary.get("forces") or {}
    for r in found.get("totals") or []:
        put(f"forces.{r['term']}", r["value"])
    for r in found.get("layers") or []:
        put(f"forces.layer{r['layer']}.{r['term']}", r["value"])
    return tags, metrics
