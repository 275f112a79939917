"""Which force moved K: each layer's change of log sigma over a run, split into the terms of the SDE model.

With the SDE probe (``record: [sde]``) a record holds, per layer l, ``sde_mu_<l>``, ``sde_eps_<l>``,
``sde_beta2_<l>`` and ``sde_disc_<l>`` of the step that follows it (docs/science.md). Per run and
layer, the change of log sigma_l from the first to the last record splits as

    d log sigma_l = int mu_l / sigma_l + int eps_l / sigma_l - 1/2 int beta_l^2 / sigma_l^2
                    + int (disc_l / sigma_l - mu_l^2 / (2 sigma_l^2)) + residual,

each integral by the trapezoid rule over the record grid (dt in SGD steps), as ``sde_runs`` does for
the network. The residual is what none of the terms explains: the martingale part int beta dB (mean
zero over runs), the record grid's quadrature error, and any misfit of the model.

Without the probe, records may carry ``drift_<l>`` = <W'_l - W_l, u_l v_l^T> / sigma_l of the step after
the record (for SGD -lr (scale <g_l, u_l v_l^T> / sigma_l + wd) plus the injected noise's projection: the
first-order change of log sigma_l along that step; lipbench.torch.tracking.StepDrift). Then the split is
int drift_l and the remainder (everything else: the second-order terms, and the gradient noise
between records, since one mini-batch per record stands in for every step between two records).

Each term's mean and standard error over a claim's runs is its summary; a baseline comparison
compares them term by term with Welch's t (``compare``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from lipbench.records import jsonable

if TYPE_CHECKING:
    import pandas as pd

SDE_TERMS = ("mu", "eps", "beta2", "disc", "residual")
DRIFT_TERMS = ("drift", "remainder")
TERM_NAMES = {
    "mu": "drift int mu/sigma",
    "eps": "noise curvature int eps/sigma",
    "beta2": "noise -1/2 int beta^2/sigma^2",
    "disc": "discrete-time term",
    "residual": "residual",
    "drift": "mini-batch drift",
    "remainder": "remainder",
}
NOISE_TERMS = ("eps", "beta2")


def method_of(frame: pd.DataFrame, layers: list[int]) -> str | None:
    """ "sde" when every layer has the probe's terms, "drift" when every layer has drift_<l>, else None."""
    if layers and all(f"sde_mu_{i}" in frame and f"sde_beta2_{i}" in frame and f"sde_eps_{i}" in frame for i in layers):
        return "sde"
    if layers and all(f"drift_{i}" in frame for i in layers):
        return "drift"
    return None


def force_split(frame: pd.DataFrame) -> pd.DataFrame | None:
    """One row per (run, layer): observed change of log sigma_l and its terms; None without the columns."""
    import pandas as pd  # imported here, not above, so that the suite schema loads without pandas

    from lipbench.attribution import layers_of

    layers = layers_of(frame)
    method = method_of(frame, layers)
    if method is None:
        return None
    rows = []
    for run, g in frame.groupby("run", sort=True):
        g = g.sort_values("step")
        steps = g["step"].to_numpy(float)
        if len(steps) < 2:
            continue
        first = g.iloc[0]
        for layer in layers:
            sigma = g[f"sigma_{layer}"].to_numpy(float)
            observed = math.log(sigma[-1]) - math.log(sigma[0])
            row = {
                "run": run,
                "layer": layer,
                "sweep_value": float(first["sweep_value"]),
                "init_seed": int(first["init_seed"]),
                "sampling_seed": int(first["sampling_seed"]),
                "observed": observed,
            }
            if method == "sde":
                mu = g[f"sde_mu_{layer}"].to_numpy(float)
                disc = g[f"sde_disc_{layer}"].to_numpy(float) if f"sde_disc_{layer}" in g else np.zeros_like(mu)
                row["mu"] = float(np.trapezoid(mu / sigma, steps))
                row["eps"] = float(np.trapezoid(g[f"sde_eps_{layer}"].to_numpy(float) / sigma, steps))
                row["beta2"] = float(-np.trapezoid(g[f"sde_beta2_{layer}"].to_numpy(float) / sigma**2, steps) / 2)
                row["disc"] = float(np.trapezoid(disc / sigma - mu**2 / (2 * sigma**2), steps))
                row["residual"] = observed - row["mu"] - row["eps"] - row["beta2"] - row["disc"]
            else:
                row["drift"] = float(np.trapezoid(g[f"drift_{layer}"].to_numpy(float), steps))
                row["remainder"] = observed - row["drift"]
            rows.append(row)
    return pd.DataFrame(rows) if rows else None


def _stat(values: np.ndarray) -> dict[str, float | None]:
    n = len(values)
    se = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else None
    return {"value": float(values.mean()), "se": se, "df": float(n - 1) if n > 1 else None, "n": n}


def summarise(frame: pd.DataFrame) -> dict[str, Any] | None:
    """Mean and se over runs of every term, per layer and summed over layers (the change of log K)."""
    try:
        split = force_split(frame)
    except Exception:  # a force split must never cost a verdict (a sigma of 0 has no log)
        return None
    if split is None:
        return None
    terms = SDE_TERMS if "mu" in split else DRIFT_TERMS
    per_layer = [
        {"layer": int(layer), "term": term, **_stat(g[term].to_numpy(float))}
        for layer, g in split.groupby("layer", sort=True)
        for term in ("observed", *terms)
    ]
    network = split.groupby("run")[["observed", *terms]].sum()
    totals = [{"term": term, **_stat(network[term].to_numpy(float))} for term in ("observed", *terms)]
    return jsonable(
        {"method": "sde" if "mu" in split else "drift", "terms": list(terms), "layers": per_layer, "totals": totals}
    )


def compare(base: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """Per term (summed over layers, then per layer): baseline, now, change, Welch t and p."""
    from lipbench.baselines import welch

    if base.get("method") != new.get("method"):
        return []

    def keyed(d: dict[str, Any]) -> dict[tuple[int | None, str], dict[str, Any]]:
        return {(None, r["term"]): r for r in d["totals"]} | {(r["layer"], r["term"]): r for r in d["layers"]}

    old, now = keyed(base), keyed(new)
    out = []
    for (layer, term), a in old.items():
        b = now.get((layer, term))
        if b is None or a["value"] is None or b["value"] is None:
            continue
        change = b["value"] - a["value"]
        t = p = None
        if a["se"] is not None and b["se"] is not None:
            t, _, p = welch(change, a["se"], a["df"], b["se"], b["df"])
        row = {"layer": layer, "term": term, "baseline": a["value"], "current": b["value"], "change": change}
        out.append({**row, "t": t, "p": p})
    return out


def shares(changes: list[dict[str, Any]]) -> dict[str, float] | None:
    """Each force's share of the change of log K (summed over layers): the drift term ("mu" or "drift"),
    "noise" (eps and beta^2 together), "disc", and "residual" or "remainder"; None without a change."""
    totals = {c["term"]: c["change"] for c in changes if c["layer"] is None}
    change = totals.get("observed")
    if not change:
        return None
    groups = {"noise": [t for t in NOISE_TERMS if t in totals]}
    groups |= {t: [t] for t in ("mu", "drift", "disc", "residual", "remainder") if t in totals}
    return {name: sum(totals[t] for t in terms) / change for name, terms in groups.items() if terms}


def clause(changes: list[dict[str, Any]], floor: float = 0.05) -> str:
    """One clause on the forces behind a change of log K: each force's share of it, the drift term first,
    e.g. "by force, the change of log K over a run (1.6 → 0.06) is 98 % drift int mu/sigma (t = -20); noise terms
    unchanged (under 5 %)". Shares under `floor` are left out."""
    share = shares(changes)
    if share is None:
        return ""
    totals = {c["term"]: c for c in changes if c["layer"] is None}
    drift = totals.get("mu") or totals.get("drift")
    observed = totals["observed"]
    t = "" if drift["t"] is None else f", t = {drift['t']:.2g}"
    parts = [
        f"{100 * share[drift['term']]:.0f} % {TERM_NAMES[drift['term']]} "
        f"({drift['baseline']:.3g} → {drift['current']:.3g}{t})"
    ]
    if "noise" in share:
        noise = share["noise"]
        parts.append(
            f"noise terms {100 * noise:.0f} %"
            if abs(noise) >= floor
            else f"noise terms unchanged (under {100 * floor:.0f} %)"
        )
    parts += [
        f"{TERM_NAMES[k]} {100 * v:.0f} %"
        for k, v in share.items()
        if k in ("disc", "residual", "remainder") and abs(v) >= floor
    ]
    head = f"by force, the change of log K over a run ({observed['baseline']:.3g} → {observed['current']:.3g}) is "
    return head + ", ".join(parts)
