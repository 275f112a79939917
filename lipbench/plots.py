"""The figure of a claim: K over steps per sweep value, beside the view its assertion judges."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd

from lipbench.outcome import ClaimOutcome
from lipbench.records import records_frame


def claim_figure(outcome: ClaimOutcome, path: str | Path) -> Path | None:
    """Write the claim's PNG to `path`; None when there is nothing to draw (no finished runs)."""
    df = records_frame(outcome.records)
    if df.empty:
        return None
    sweep = outcome.claim.sweep_name or "run"
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    test = outcome.result.test if outcome.result else ""
    if test == "invariance" and df["sweep_value"].isna().all():
        _trajectories(left, df, "init seed", by="init_seed")  # paper Fig. 4: one band per init seed
    else:
        _trajectories(left, df, sweep)
    if test == "power_law":
        _power_law(right, df, outcome, sweep)
    elif test == "invariance":
        _invariance(right, df, outcome)
    elif test == "growth_trend":
        _growth(right, df, outcome)
    else:
        _final_vs_sweep(right, df, outcome, sweep)
    verdict = getattr(outcome, "verdict", None) or outcome.status  # the baseline verdict, once judged
    return save_figure(fig, f"{outcome.claim.name} [{outcome.claim.profile}] — {verdict}", path)


def save_figure(fig: plt.Figure, title: str, path: str | Path) -> Path:
    """Title and lay out `fig`, write it as a PNG (creating the folder) and close it."""
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _final(df: pd.DataFrame, quantity: str = "K") -> pd.DataFrame:
    return df.loc[df.groupby("run")["step"].idxmax(), ["run", "sweep_value", "init_seed", "sampling_seed", quantity]]


def _trajectories(ax, df: pd.DataFrame, sweep: str, by: str = "sweep_value") -> None:
    groups = df.groupby(by, dropna=False)
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(1, groups.ngroups)))
    for color, (value, g) in zip(colors, groups, strict=False):
        stats = g.groupby("step")["K"].agg(["mean", "min", "max"])
        label = "all runs" if pd.isna(value) else f"{sweep} = {value:g}"
        ax.plot(stats.index, stats["mean"], color=color, label=label)
        ax.fill_between(stats.index, stats["min"], stats["max"], color=color, alpha=0.2, linewidth=0)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("K = prod sigma_max (mean, min-max over runs)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def _final_vs_sweep(ax, df: pd.DataFrame, outcome: ClaimOutcome, sweep: str) -> None:
    quantity = _quantity(outcome)
    final = _final(df, quantity)
    ax.scatter(final["sweep_value"], final[quantity], s=14, alpha=0.6, label="runs")
    means = final.groupby("sweep_value")[quantity].mean()
    ax.plot(means.index, means.values, "o-", color="black", label="mean")
    ax.set_xlabel(sweep)
    ax.set_ylabel(f"final {quantity}")
    ax.set_title(_short(outcome), fontsize=8)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def _power_law(ax, df: pd.DataFrame, outcome: ClaimOutcome, sweep: str) -> None:
    quantity = _quantity(outcome)
    final = _final(df, quantity)
    var = final.groupby(["sweep_value", "init_seed"])[quantity].var(ddof=1).groupby("sweep_value").mean()
    x, y = var.index.to_numpy(float), var.to_numpy(float)
    ax.loglog(x, y, "o", label="across-sampling-seed variance")
    slope = outcome.result.statistic if outcome.result else np.nan
    if np.isfinite(slope) and np.all(y > 0):
        intercept = np.mean(np.log(y) - slope * np.log(x))
        ax.loglog(x, np.exp(intercept + slope * np.log(x)), "-", label=f"fit: slope {slope:.2f}")
        ref = outcome.result.threshold
        ax.loglog(
            x,
            np.exp(np.mean(np.log(y) - ref * np.log(x)) + ref * np.log(x)),
            "--",
            color="gray",
            label=f"reference slope {ref:g}",
        )
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # label the swept values, nothing else
    ax.set_xticks(x, [f"{v:g}" for v in x])
    ax.set_xlabel(sweep)
    ax.set_ylabel(f"Var[final {quantity}]")
    ax.set_title(_short(outcome), fontsize=8)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")


def _invariance(ax, df: pd.DataFrame, outcome: ClaimOutcome) -> None:
    quantity = _quantity(outcome)
    final = _final(df, quantity)
    for seed, g in final.groupby("init_seed"):
        ax.scatter(np.full(len(g), seed) + np.linspace(-0.15, 0.15, len(g)), g[quantity], s=16, label=None)
        ax.hlines(g[quantity].mean(), seed - 0.25, seed + 0.25, color="black")
    ax.set_xticks(sorted(final["init_seed"].unique()))
    ax.set_xlabel("init seed (points: sampling seeds)")
    ax.set_ylabel(f"final {quantity}")
    ax.set_title(_short(outcome), fontsize=8)
    ax.grid(alpha=0.3)


def _growth(ax, df: pd.DataFrame, outcome: ClaimOutcome) -> None:
    mean = df.groupby("step")["log_K"].mean()
    ax.plot(mean.index, mean.values, color="black")
    late = mean.index[int(len(mean) * 0.5) :]
    if len(late):
        ax.axvspan(late[0], late[-1], color="orange", alpha=0.15, label="late window")
    ax.set_xlabel("step")
    ax.set_ylabel("log K (mean over seeds)")
    ax.set_title(_short(outcome), fontsize=8)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def _quantity(outcome: ClaimOutcome) -> str:
    return getattr(outcome.claim.claim.assertion, "quantity", "K")


def _short(outcome: ClaimOutcome, width: int = 80, lines: int = 3) -> str:
    """The assertion sentence wrapped to fit above one panel (the full sentence is in the report)."""
    wrapped = textwrap.wrap(outcome.sentence, width)
    if len(wrapped) > lines:
        wrapped = [*wrapped[: lines - 1], textwrap.shorten(" ".join(wrapped[lines - 1 :]), width, placeholder=" …")]
    return "\n".join(wrapped)
