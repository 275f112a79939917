"""Which layer moved K: each layer's share of every judged statistic, on the verdict's own units.

log K = sum_l log sigma_l, so a statistic that is linear in log K splits exactly into per-layer
statistics computed the same way from log sigma_l: the late growth of ``growth_trend`` (per run),
the extreme-value log ratio of ``monotone_trend`` on the log scale (per seed block), the relative
error of ``sde_agreement`` (per run: each layer's predicted minus observed change of log sigma_l,
over the run's |observed change of log K|). Each layer's contribution gets the mean and standard
error over the same units as the verdict, and the contributions sum to the statistic up to rounding
(``EXACT_TOLERANCE``).

Statistics of a spread (the exponent of ``power_law`` and ``variance_scaling``, the within-init CV of
``invariance``, the log variance ratio of ``variance_prediction``) are not linear in log K. Their
split is a first-order one: to first order K - mean K = mean K x sum_l (log sigma_l - its mean), so
the within-init variance of K is sum_l Cov(K, mean K x log sigma_l), and each layer's *variance
share* is its covariance term over their sum (the crossed within-init covariance of the assertion's
own design). A CV or a log variance ratio is split in proportion to the shares; an exponent (a
weighted least-squares slope of log variance on log sweep value, linear in the log variances) as the
slope of each layer's share of the log variances. These contributions sum to the statistic by
construction; ``linearisation`` reports how far the first-order variance is from the real one (the
stated tolerance of the split), and each contribution's standard error is the jackknife over
sampling seeds, as the exponents' own.

A baseline comparison compares each layer's contribution with the baseline's by Welch's t on the
value, standard error and degrees of freedom of both (the verdict's own test, on the same units).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from lipbench.assertions.base import (
    Assertion,
    AssertionDataError,
    at_rounding_level,
    crossed_grid,
    crossed_within_variance,
    jackknife_over_sampling_seeds,
    log_variance_moments,
    pooled_excess_kurtosis,
)
from lipbench.records import jsonable

if TYPE_CHECKING:
    import pandas as pd

LAYER_COLUMN = re.compile(r"^sigma_(\d+)$")
EXACT_TOLERANCE = 1e-6  # |sum of contributions - statistic| allowed for a sum of log sigma (float64 rounding of log K)
EXACT, SHARE = "exact", "variance share"


@dataclass(frozen=True)
class Contribution:
    """One layer's contribution to a statistic: mean over the verdict's units, its se and df, and the units."""

    layer: int
    value: float
    se: float | None
    df: float | None
    units: tuple[float, ...] = ()

    @property
    def name(self) -> str:
        return f"layer {self.layer}"

    def to_dict(self) -> dict[str, Any]:
        return jsonable(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Contribution:
        value = d.get("value")
        se = d.get("se")
        df = d.get("df")
        return cls(
            int(d["layer"]),
            math.nan if value is None else float(value),
            None if se is None else float(se),
            (math.inf if se is not None else None) if df is None else float(df),
            tuple(math.nan if u is None else float(u) for u in d.get("units") or ()),
        )


@dataclass(frozen=True)
class Attribution:
    """The per-layer split of one tracked statistic.

    ``method``: ``EXACT`` (a sum of log sigma) or ``SHARE`` (first-order variance shares);
    ``residual`` = statistic - sum of contributions; ``linearisation``: for a variance share, the
    relative gap between the first-order and the real variance (None for an exact split).
    """

    statistic: str
    value: float
    method: str
    layers: tuple[Contribution, ...]
    unit: str
    residual: float
    linearisation: float | None = None
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        out = jsonable({k: v for k, v in asdict(self).items() if k != "layers"})
        out["layers"] = [c.to_dict() for c in self.layers]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Attribution:
        return cls(
            d["statistic"],
            math.nan if d.get("value") is None else float(d["value"]),
            d["method"],
            tuple(Contribution.from_dict(c) for c in d.get("layers") or ()),
            d.get("unit", ""),
            math.nan if d.get("residual") is None else float(d["residual"]),
            d.get("linearisation"),
            tuple(d.get("notes") or ()),
        )


def layers_of(frame: pd.DataFrame) -> list[int]:
    """The layer indices l with a ``sigma_<l>`` column, in order."""
    return sorted(int(m.group(1)) for c in frame.columns if (m := LAYER_COLUMN.match(str(c))))


def attribute(spec: Assertion, frame: pd.DataFrame) -> list[Attribution]:
    """The per-layer split of every tracked statistic of ``spec`` on ``frame`` that is a function of log K.

    Statistics that are not (a worst layer's ratio, a difference of K on the linear scale, the
    predicted exponent of the probe) are left out. Raises nothing for records without layers.
    """
    if frame.empty or not layers_of(frame):
        return []
    rule = RULES.get(spec.test)
    if rule is None:
        return []
    try:
        return [a for a in rule(spec, frame, layers_of(frame)) if a is not None]
    except Exception:  # an attribution must never cost a verdict; the verdict says what is wrong with the data
        return []


# --------------------------------------------------------------------------- exact splits


def _with_layer_columns(frame: pd.DataFrame, layers: list[int], log: bool) -> tuple[pd.DataFrame, list[str]]:
    """``frame`` with a column per layer: log sigma_l (``log``) or sigma_l."""
    names = [f"_layer_{layer}" for layer in layers]
    extra = {
        n: np.log(frame[f"sigma_{layer}"].astype(float)) if log else frame[f"sigma_{layer}"].astype(float)
        for n, layer in zip(names, layers, strict=True)
    }
    import pandas as pd  # imported here, not above, so that the suite schema loads without pandas

    return pd.concat([frame, pd.DataFrame(extra, index=frame.index)], axis=1), names


def _mean_se(units: np.ndarray) -> tuple[float, float | None, float | None]:
    n = len(units)
    if n < 2:
        return float(units.mean()), None, None
    return float(units.mean()), float(units.std(ddof=1) / math.sqrt(n)), float(n - 1)


def _exact(statistic: str, value: float, unit: str, layers: list[int], units: list[np.ndarray]) -> Attribution:
    parts = tuple(
        Contribution(layer, *_mean_se(u), tuple(float(x) for x in u)) for layer, u in zip(layers, units, strict=True)
    )
    residual = value - sum(c.value for c in parts)
    return Attribution(statistic, value, EXACT, parts, unit, residual)


def _growth(spec: Any, frame: pd.DataFrame, layers: list[int]) -> list[Attribution | None]:
    if spec.quantity != "log_K":
        return []
    data = spec.extract(frame)
    decision = spec.decide(data)
    worst = int(decision.extras["worst"][0])
    wide, names = _with_layer_columns(frame, layers, log=True)
    units = []
    runs = np.asarray(decision.extras["growth"])[0][worst]
    for name in names:
        try:
            layer_data = spec.model_copy(update={"quantity": name}).extract(wide)
        except AssertionDataError:  # the layer's log sigma is degenerate data on its own account
            late = [x.to_numpy()[-len(data["steps"]) :] for _, x in wide.groupby("run")[name]]
            if not all(at_rounding_level(np.ptp(x), np.abs(x).max()) for x in late):
                raise
            units.append(np.zeros_like(runs))  # a layer that did not move (frozen): its late growth is 0
            continue
        units.append(np.asarray(spec.decide(layer_data).extras["growth"])[0][worst])
    return [_exact("late_growth", float(decision.statistic[0]), "run", layers, units)]


def _monotone(spec: Any, frame: pd.DataFrame, layers: list[int]) -> list[Attribution | None]:
    if (spec.scale, spec.quantity) not in (("log", "K"), ("linear", "log_K")):
        return []
    log = spec.quantity == "log_K"
    wide, names = _with_layer_columns(frame, layers, log=log)
    value = float(spec.decide(spec.extract(frame)).tracked[spec._effect_name][0][0])
    units = []
    for name in names:
        y = np.asarray(spec.model_copy(update={"quantity": name}).extract(wide)["y"])[0]  # [sweep, init, sampling]
        blocks = y.reshape(y.shape[0], -1)
        units.append(blocks[-1] - blocks[0] if log else np.log(blocks[-1] / blocks[0]))
    return [_exact(spec._effect_name, value, "seed block", layers, units)]


def _sde_agreement(spec: Any, frame: pd.DataFrame, layers: list[int]) -> list[Attribution | None]:
    from lipbench.forces import force_split

    runs = force_split(frame)
    if runs is None:
        return []
    data = spec.extract(frame)
    decision = spec.decide(data)
    worst = int(decision.extras["worst"][0])
    group = data["groups"][worst]["runs"]
    mine = runs[runs["run"].isin(set(group["run"]))].set_index(["run", "layer"])
    scale = np.abs(group.set_index("run")["observed"])
    units = []
    for layer in layers:
        rows = mine.xs(layer, level="layer").loc[group["run"]]
        predicted = rows["mu"] + rows["eps"] + rows["beta2"]  # beta2 holds -1/2 int beta^2 / sigma^2
        units.append(((predicted - rows["observed"]) / scale.loc[group["run"]]).to_numpy(float))
    return [_exact("relative_error", float(decision.statistic[0]), "run", layers, units)]


# --------------------------------------------------------------------------- variance shares


def _within_cov(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The crossed within-init covariance of a and b [..., init, sampling] (polarisation of the variance)."""
    return (crossed_within_variance(a + b)[0] - crossed_within_variance(a - b)[0]) / 4


def _grids(spec: Any, frame: pd.DataFrame, layers: list[int], quantity: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Y[1 + layers, sweep, init, sampling]: the judged quantity at the last record, then each layer's log sigma."""
    from lipbench.assertions.base import at_record

    rows = at_record(frame, "final").copy()
    for layer in layers:
        rows[f"_layer_{layer}"] = np.log(rows[f"sigma_{layer}"].astype(float))
    grids, x = [], None
    for column in [quantity, *(f"_layer_{layer}" for layer in layers)]:
        grid, x, _ = crossed_grid(rows, column, spec.test)
        grids.append(grid)
    return np.stack(grids), x


def _shares(Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Variance shares s[layer, ..., sweep] of Y[0] (summing to 1 over layers) and the linearisation gap per sweep."""
    y = Y[0]
    centre = y.mean(axis=(-2, -1), keepdims=True)
    cov = np.stack([_within_cov(y, centre * Y[i]) for i in range(1, len(Y))])
    with np.errstate(all="ignore"):
        total = cov.sum(axis=0)
        gap = total / crossed_within_variance(y)[0] - 1
        return cov / total, gap


def _share_attribution(statistic: str, value: float, layers: list[int], Y: np.ndarray, split) -> Attribution:
    """Contributions split(Y) -> [layers], their jackknife se over sampling seeds, the linearisation gap."""
    values = split(Y)
    se, df = jackknife_over_sampling_seeds(split, Y)
    parts = tuple(
        Contribution(layer, float(v), float(s) if math.isfinite(s) else None, float(df) if math.isfinite(s) else None)
        for layer, v, s in zip(layers, values, np.broadcast_to(se, values.shape), strict=True)
    )
    gap = float(np.nanmax(np.abs(_shares(Y)[1])))
    return Attribution(statistic, value, SHARE, parts, "sampling seed (jackknife)", value - float(values.sum()), gap)


def _exponent_split(log_x: np.ndarray):
    """Per layer, the weighted least-squares slope of its share of the log variances (as ``_wls_exponent``)."""

    def split(Y: np.ndarray) -> np.ndarray:
        y = Y[0]
        var, df = crossed_within_variance(y)
        kappa = pooled_excess_kurtosis(y[None])[0]
        bias, var_log = log_variance_moments(df)
        w = 1.0 / (var_log + kappa / (y.shape[-2] * y.shape[-1]))
        xw = np.sum(w * log_x) / np.sum(w)
        coef = w * (log_x - xw) / np.sum(w * (log_x - xw) ** 2)  # the slope is sum(coef * ly)
        shares, _ = _shares(Y)
        with np.errstate(all="ignore"):
            ly = np.log(var) - bias
        return np.sum(coef * shares * ly, axis=-1)

    return split


def _power_law(spec: Any, frame: pd.DataFrame, layers: list[int]) -> list[Attribution | None]:
    Y, x = _grids(spec, frame, layers, spec.quantity)
    k = float(spec.decide(spec.extract(frame)).statistic[0])
    return [_share_attribution("power_law_exponent", k, layers, Y, _exponent_split(np.log(x)))]


def _variance_scaling(spec: Any, frame: pd.DataFrame, layers: list[int]) -> list[Attribution | None]:
    from lipbench.assertions.sde import sde_runs

    Y, x = _grids(spec, _final_K(frame, sde_runs(frame, spec.test)), layers, "K_T")
    k = float(spec.decide(spec.extract(frame)).statistic[0])
    return [_share_attribution("observed_variance_exponent", k, layers, Y, _exponent_split(np.log(x)))]


def _proportional(statistic: str, value: float, worst: int, layers: list[int], Y: np.ndarray) -> Attribution:
    def split(Z: np.ndarray) -> np.ndarray:
        return _shares(Z)[0][:, worst] * value

    return _share_attribution(statistic, value, layers, Y, split)


def _invariance(spec: Any, frame: pd.DataFrame, layers: list[int]) -> list[Attribution | None]:
    Y, _ = _grids(spec, frame, layers, spec.quantity)
    decision = spec.decide(spec.extract(frame))
    worst = int(decision.extras["worst"][0])
    return [_proportional("within_init_cv", float(decision.statistic[0]), worst, layers, Y)]


def _variance_prediction(spec: Any, frame: pd.DataFrame, layers: list[int]) -> list[Attribution | None]:
    from lipbench.assertions.sde import sde_runs

    Y, _ = _grids(spec, _final_K(frame, sde_runs(frame, spec.test)), layers, "K_T")
    decision = spec.decide(spec.extract(frame))
    worst = int(decision.extras["worst"][0])
    value = float(decision.tracked["log_variance_ratio"][0][0])
    return [_proportional("log_variance_ratio", value, worst, layers, Y)]


def _final_K(frame: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with K_T (the K of each run's last record, as ``sde_runs`` computes it) on every row."""
    return frame.merge(runs[["run", "K_T"]], on="run", how="left")


RULES = {
    "growth_trend": _growth,
    "monotone_trend": _monotone,
    "sde_agreement": _sde_agreement,
    "power_law": _power_law,
    "invariance": _invariance,
    "variance_prediction": _variance_prediction,
    "variance_scaling": _variance_scaling,
}


# --------------------------------------------------------------------------- against a baseline


def summarise(spec: Assertion, frame: pd.DataFrame) -> list[dict[str, Any]]:
    """What a baseline and result.json keep: every attribution as a dict."""
    return [a.to_dict() for a in attribute(spec, frame)]


def compare(base: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per statistic in both: each layer's contribution then and now, its change, Welch t, df and p,
    and its share of the statistic's change; layers ordered by the size of their change."""
    from lipbench.baselines import welch

    now = {a["statistic"]: Attribution.from_dict(a) for a in new}
    out = []
    for entry in base:
        old = Attribution.from_dict(entry)
        cur = now.get(old.statistic)
        if cur is None:
            continue
        total = cur.value - old.value
        mine = {c.layer: c for c in cur.layers}
        rows = []
        for a in old.layers:
            b = mine.get(a.layer)
            if b is None:
                continue
            change = b.value - a.value
            t = df = p = None
            if a.se is not None and b.se is not None:
                t, df, p = welch(change, a.se, a.df, b.se, b.df)
            share = change / total if total != 0 and math.isfinite(total) else None
            rows.append(
                {
                    "layer": a.layer,
                    "baseline": a.value,
                    "baseline_se": a.se,
                    "baseline_df": a.df,
                    "current": b.value,
                    "current_se": b.se,
                    "current_df": b.df,
                    "change": change,
                    "share_of_change": share,
                    "t": t,
                    "df": df,
                    "p": p,
                }
            )
        rows.sort(key=lambda r: -abs(r["change"]))
        out.append(
            {
                "statistic": old.statistic,
                "method": cur.method,
                "baseline": old.value,
                "current": cur.value,
                "change": total,
                "layers": rows,
            }
        )
    return jsonable(out)


def clause(changes: list[dict[str, Any]], statistic: str | None = None, top: int = 2) -> str:
    """One clause naming the layers that carry most of a statistic's change, e.g. "the change of
    late_growth (0.224 → 0.337) is 46 % layer 2 (0.05 → 0.1, t = 4.1), 39 % layer 3 (...)"."""
    chosen = next((c for c in changes if statistic in (None, c["statistic"]) and c["layers"]), None)
    if chosen is None or not chosen["change"]:
        return ""
    parts = []
    for row in chosen["layers"][:top]:
        t = "" if row["t"] is None else f", t = {row['t']:.2g}"
        share = "" if row["share_of_change"] is None else f"{100 * row['share_of_change']:.0f} % "
        parts.append(f"{share}layer {row['layer']} ({row['baseline']:.3g} → {row['current']:.3g}{t})")
    more = len(chosen["layers"]) - top
    tail = f" and {more} more layer{'s' if more > 1 else ''} (lipbench explain)" if more > 0 else ""
    return (
        f"the change of {chosen['statistic']} ({chosen['baseline']:.3g} → {chosen['current']:.3g}) is "
        + ", ".join(parts)
        + tail
    )
