"""`lipbench explain RESULTS [--against BASELINE|RESULTS]`: the full table of where each judged statistic comes from.

Per claim of RESULTS: each layer's contribution to every judged statistic (mean ± se over the
verdict's units, share of the statistic) and, where the records allow it, each layer's change of
log sigma split into forces. With ``--against``, the same beside a baseline (a baseline file, a
baselines folder, or another results folder): each layer's contribution then and now, the change,
its share of the statistic's change and Welch's t and p; then the forces' changes; then the
environment differences.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from lipbench import attribution, forces
from lipbench.baselines import BaselineError, baseline_path, read_baseline, summarise
from lipbench.errors import LipbenchError
from lipbench.provenance import environment_differences
from lipbench.results import find_results, load_outcome, load_result


def summary_of(folder: Path) -> dict[str, Any]:
    """The summary of a claim folder: the one result.json keeps, recomputed from records.json when it holds
    no attribution (written by an older lipbench)."""
    data = load_result(folder)
    summary = data.get("summary") or {}
    if "attribution" not in summary and (folder / "records.json").exists() and data.get("assertion"):
        summary = summarise(load_outcome(folder))
    return summary


def against(spec: str | None, data: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any], str]:
    """The summary and environment to compare a claim with: from a baseline file, a baselines folder or a
    results folder; (None, {}, why) when there is none."""
    if spec is None:
        return None, {}, ""
    path = Path(spec)
    key = (data["collection"], data["claim"], data["profile"])
    if path.is_file():
        base = _baseline(path)
        same = (base.get("collection"), base.get("claim"), base.get("profile")) == key
        return (base["summary"], base.get("environment") or {}, str(path)) if same else (None, {}, "")
    if not path.is_dir():
        raise LipbenchError(f"{spec}: neither a baseline file, a baselines folder nor a results folder")
    for folder in find_results(path):
        other = load_result(folder)
        if (other["collection"], other["claim"], other["profile"]) == key:
            return summary_of(folder), other.get("environment") or {}, str(folder)
    file = baseline_path(path, *key)
    if file.is_file():
        base = _baseline(file)
        return base["summary"], base.get("environment") or {}, str(file)
    return None, {}, f"no result or baseline of {key[1]} [{key[2]}] under {spec}"


def _baseline(path: Path) -> dict[str, Any]:
    try:
        return read_baseline(path)
    except BaselineError as e:
        raise LipbenchError(str(e)) from None


def explain(results: str, versus: str | None, console: Console, tracking_uri: str | None = None) -> int:
    """Print the tables of every claim under `results` (a results folder or a claim's MLflow run id);
    returns the number of claims explained."""
    from lipbench.compare import load_side  # MLflow loads only when a run id is read

    folders = load_side(results, tracking_uri)
    for folder in folders:
        data = load_result(folder)
        summary = summary_of(folder)
        title = f"{data['collection']}/{data['claim']} [{data['profile']}]: {data.get('verdict') or data['status']}"
        console.print(f"\n[bold]{title}[/]", soft_wrap=True)
        base, base_env, where = against(versus, data)
        if versus is not None and base is None:
            console.print(f"  nothing to compare with{': ' + where if where else ''}", markup=False)
        if base is not None:
            console.print(f"  against {where}", markup=False, soft_wrap=True)
            _print_changes(
                console, attribution.compare(base.get("attribution") or [], summary.get("attribution") or [])
            )
            if not base.get("attribution"):
                console.print(
                    "  the baseline holds no per-layer contributions (format 2): store it again", markup=False
                )
            if base.get("forces") and summary.get("forces"):
                _print_force_changes(console, forces.compare(base["forces"], summary["forces"]))
            diffs = environment_differences(base_env, data.get("environment") or {})
            console.print("  environment differs: " + (", ".join(diffs) if diffs else "no"), markup=False)
            continue
        _print_attribution(console, summary.get("attribution") or [])
        if summary.get("forces"):
            _print_forces(console, summary["forces"])
    return len(folders)


def _pm(value: float | None, se: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" + ("" if se is None else f" ± {se:.2g}")


def _print_attribution(console: Console, found: list[dict[str, Any]]) -> None:
    if not found:
        console.print("  no statistic of this claim splits by layer", markup=False)
    for entry in found:
        a = attribution.Attribution.from_dict(entry)
        table = Table(title=f"{a.statistic} = {a.value:.4g} ({a.method}, units: {a.unit})", title_justify="left")
        for col in ("layer", "contribution ± se", "share"):
            table.add_column(col)
        for c in a.layers:
            share = f"{100 * c.value / a.value:.0f} %" if a.value else "-"
            table.add_row(c.name, _pm(c.value, c.se), share)
        gap = "" if a.linearisation is None else f"; first-order variance off by {100 * a.linearisation:.1f} %"
        table.caption = f"residual {a.residual:.2g}{gap}"
        console.print(table)


def _print_changes(console: Console, changes: list[dict[str, Any]]) -> None:
    for c in changes:
        table = Table(
            title=f"{c['statistic']}: {c['baseline']:.4g} → {c['current']:.4g} (change {c['change']:+.3g})",
            title_justify="left",
        )
        for col in ("layer", "baseline ± se", "now ± se", "change", "share of change", "t", "p"):
            table.add_column(col)
        for r in c["layers"]:
            share = "-" if r["share_of_change"] is None else f"{100 * r['share_of_change']:.0f} %"
            t = "-" if r["t"] is None else f"{r['t']:.2f}"
            p = "-" if r["p"] is None else f"{r['p']:.2g}"
            table.add_row(
                f"layer {r['layer']}",
                _pm(r["baseline"], r["baseline_se"]),
                _pm(r["current"], r["current_se"]),
                f"{r['change']:+.3g}",
                share,
                t,
                p,
            )
        console.print(table)


def _print_forces(console: Console, summary: dict[str, Any]) -> None:
    terms = ["observed", *summary["terms"]]
    table = Table(title=f"change of log sigma per layer, by force ({summary['method']}), mean ± se over runs")
    table.title_justify = "left"
    for col in ("layer", *(forces.TERM_NAMES.get(t, "observed d log sigma") for t in terms)):
        table.add_column(col)
    rows: dict[Any, dict[str, str]] = {}
    for r in summary["layers"]:
        rows.setdefault(f"layer {r['layer']}", {})[r["term"]] = _pm(r["value"], r["se"])
    for r in summary["totals"]:
        rows.setdefault("all (log K)", {})[r["term"]] = _pm(r["value"], r["se"])
    for name, cells in rows.items():
        table.add_row(name, *(cells.get(t, "-") for t in terms))
    console.print(table)


def _print_force_changes(console: Console, changes: list[dict[str, Any]]) -> None:
    table = Table(title="forces: baseline → now", title_justify="left")
    for col in ("layer", "term", "baseline", "now", "change", "t", "p"):
        table.add_column(col)
    for r in changes:
        table.add_row(
            "all" if r["layer"] is None else f"layer {r['layer']}",
            forces.TERM_NAMES.get(r["term"], r["term"]),
            f"{r['baseline']:.4g}",
            f"{r['current']:.4g}",
            f"{r['change']:+.3g}",
            "-" if r["t"] is None else f"{r['t']:.2f}",
            "-" if r["p"] is None else f"{r['p']:.2g}",
        )
    console.print(table)


def as_json(summary: dict[str, Any]) -> str:
    """The attribution and forces of a summary as the JSON artifact MLflow keeps (attribution.json)."""
    return json.dumps({"attribution": summary.get("attribution") or [], "forces": summary.get("forces")}, indent=2)
