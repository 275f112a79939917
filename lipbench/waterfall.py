"""The waterfall of a claim: each layer's contribution to a judged statistic, stacked from 0 to the statistic,
the baseline's beside this run's, each bar with its 95 % interval."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from scipy import stats

from lipbench.plots import save_figure

NOW, BASE = "#0969da", "#8c959f"


def _half(se: float | None, df: float | None) -> float:
    """Half-width of a 95 % interval from a standard error and its degrees of freedom (0 without one)."""
    if se is None:
        return 0.0
    q = stats.norm.isf(0.025) if df is None or df == float("inf") else stats.t.isf(0.025, df)
    return float(q * se)


def waterfall(summary: dict[str, Any], comparison: dict[str, Any] | None, title: str, path: str | Path) -> Path | None:
    """Write the PNG; None when no statistic of the claim splits by layer."""
    found = summary.get("attribution") or []
    if not found:
        return None
    versus = {c["statistic"]: c for c in (comparison or {}).get("attribution") or []}
    fig, axes = plt.subplots(1, len(found), figsize=(5.2 * len(found), 3.6), squeeze=False)
    for ax, entry in zip(axes[0], found, strict=True):
        layers = entry["layers"]
        base = {r["layer"]: r for r in versus.get(entry["statistic"], {}).get("layers", [])}
        sides = [("now", NOW, [(c["value"], c["se"], c["df"]) for c in layers], 0.0)]
        if base:
            old = [
                (base[c["layer"]]["baseline"], base[c["layer"]]["baseline_se"], base[c["layer"]].get("baseline_df"))
                for c in layers
                if c["layer"] in base
            ]
            sides = [("baseline", BASE, old, -0.2), ("now", NOW, sides[0][2], 0.2)]
        width = 0.38 if base else 0.6
        for label, colour, parts, shift in sides:
            total = 0.0
            for i, (value, se, df) in enumerate(parts):
                ax.bar(i + shift, value, bottom=total, width=width, color=colour, label=label if i == 0 else None)
                ax.errorbar(i + shift, total + value, yerr=_half(se, df), color="black", capsize=2, lw=0.8)
                total += value
            ax.bar(len(parts) + shift, total, width=width, color=colour, alpha=0.5, hatch="//")
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xticks(range(len(layers) + 1), [f"layer {c['layer']}" for c in layers] + ["total"], fontsize=8)
        ax.set_title(f"{entry['statistic']} ({entry['method']})", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    return save_figure(fig, title, path)
