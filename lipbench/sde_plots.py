"""The decomposition figure of a claim recorded with the SDE probe (as the paper's Fig. 3).

Left: the network terms per step over training (drift mu, entropy eps, diffusion beta^2/2 and
SGD's discrete-time term), averaged over runs. Right: their cumulative contributions to log K
(trapezoid over the record grid), their sum (the SDE's prediction) and the observed change of
log K, mean over runs with each run's observed curve faint behind.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from lipbench.outcome import ClaimOutcome
from lipbench.plots import save_figure
from lipbench.records import records_frame

TERMS = (  # column, label, sign in d log K, colour
    ("sde_mu", "drift  μ", 1.0, "tab:blue"),
    ("sde_eps", "entropy  ε", 1.0, "tab:orange"),
    ("sde_beta2", "diffusion  −β²/2", -0.5, "tab:green"),
    ("sde_disc", "discrete step (not in the SDE)", 1.0, "tab:gray"),
)


def _cumulative(run: pd.DataFrame, column: str) -> np.ndarray:
    steps, y = run["step"].to_numpy(float), run[column].to_numpy(float)
    return np.concatenate([[0.0], np.cumsum(np.diff(steps) * (y[1:] + y[:-1]) / 2)])


def sde_figure(outcome: ClaimOutcome, path: str | Path) -> Path | None:
    """Write the decomposition PNG to `path`; None when the runs carry no SDE terms (or none finished).

    With a sweep, the first sweep value's runs are drawn (the title says which).
    """
    df = records_frame(outcome.records)
    if df.empty or "sde_mu" not in df.columns:
        return None
    sweep_note = ""
    if df["sweep_value"].notna().any():
        first = float(df["sweep_value"].min())
        df = df[df["sweep_value"] == first]
        sweep_note = f", {outcome.claim.sweep_name or 'sweep'} = {first:g}"
    runs = [g.sort_values("step") for _, g in df.groupby("run", sort=True)]
    grid = runs[0]["step"].to_numpy(float)
    runs = [r for r in runs if len(r) == len(grid) and np.array_equal(r["step"].to_numpy(float), grid)]
    terms = [t for t in TERMS if t[0] in df.columns]

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for column, label, sign, colour in terms:
        per_step = np.mean([sign * r[column].to_numpy(float) for r in runs], axis=0)
        left.plot(grid, per_step, color=colour, label=label)
        cum = np.mean([sign * _cumulative(r, column) for r in runs], axis=0)
        right.plot(grid, cum, color=colour, label=f"∫ {label}")
    left.axhline(0, color="black", lw=0.5)
    biggest = max(float(np.nanmax(np.abs(np.asarray(line.get_ydata(), float)))) for line in left.get_lines())
    if biggest > 0:  # eps and beta^2 sit orders of magnitude below mu: a symmetric log axis shows all
        left.set_yscale("symlog", linthresh=biggest * 1e-4)
    left.set(xlabel="step", ylabel="per step (network, on log K)", title="terms of d log K")
    left.legend(fontsize=8)

    predicted = np.mean([sum(s * _cumulative(r, c) for c, _, s, _ in TERMS[:3]) for r in runs], axis=0)
    observed = [r["log_K"].to_numpy(float) - r["log_K"].to_numpy(float)[0] for r in runs]
    for obs in observed:
        right.plot(grid, obs, color="black", alpha=0.15, lw=0.8)
    right.plot(grid, np.mean(observed, axis=0), color="black", lw=2, label="observed Δ log K")
    right.plot(grid, predicted, color="tab:red", lw=2, ls="--", label="SDE: ∫ (μ + ε − β²/2)")
    if "sde_disc" in df.columns:
        disc = np.mean([_cumulative(r, "sde_disc") for r in runs], axis=0)
        right.plot(grid, predicted + disc, color="tab:purple", lw=1.2, ls=":", label="SDE + discrete step")
    right.axhline(0, color="black", lw=0.5)
    right.set(xlabel="step", ylabel="cumulative change of log K", title=f"cumulative, mean of {len(runs)} runs")
    right.legend(fontsize=8)

    return save_figure(fig, f"{outcome.claim.name} [{outcome.claim.profile}] — {outcome.status}{sweep_note}", path)
