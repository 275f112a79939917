"""Checks of the SDE model against observed trajectories: the change of log K, Var[K_T] and its 1/b scaling.

The probe records, per step s, the network terms of the step s -> s + 1: ``sde_mu``, ``sde_eps``,
``sde_beta2``, ``sde_drift`` (= mu + eps - beta^2/2) and ``sde_disc`` (what SGD's finite step adds
to E[d log K]). They are integrated over the record grid (trapezoid). From the model,
E[K_T] = K_0 exp(int (mu + eps)) and Var[K_T] = E[K_T]^2 (exp(int beta^2) - 1).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import Field
from scipy import stats

from lipbench.assertions.base import (
    Assertion,
    AssertionDataError,
    AssertionResult,
    Decision,
    Design,
    check_frame,
    ci_text,
    crossed_grid,
    crossed_within_variance,
    edge_scenarios,
    effective_df,
    fmt,
    jackknife_over_sampling_seeds,
    log_variance_moments,
    noise,
    pct,
    pooled_excess_kurtosis,
    reasons_text,
    sweep_name,
    verdict_word,
)
from lipbench.assertions.levels import mean_interval, worst_level
from lipbench.assertions.variance import (
    _grid_data,
    _zero_spread,
    default_power_spread,
    exponent_scenarios,
    fit_power_spread,
    level_and_init_sd,
    power_sd,
    spread_sim,
    variance_exponent,
)

if TYPE_CHECKING:
    import pandas as pd

SDE_TERMS = ("sde_mu", "sde_eps", "sde_beta2", "sde_drift")


def sde_runs(records: pd.DataFrame, test: str) -> pd.DataFrame:
    """One row per run: log K at the first and last record, K_T, the integrals of every SDE term
    (``int_mu``, ``int_eps``, ``int_beta2``, ``int_drift``, ``int_disc``) and the predicted mean and
    variance of K_T."""
    import pandas as pd  # imported here, not above, so that the suite schema loads without pandas

    check_frame(records, test, "log_K", ["run", "step", "sweep_value", "init_seed", "sampling_seed", *SDE_TERMS])
    has_disc = "sde_disc" in records.columns
    cols = ["log_K", *SDE_TERMS, *(["sde_disc"] if has_disc else [])]
    rows = []
    for run, g in records.groupby("run", sort=True):
        g = g.sort_values("step")
        if len(g) < 2:
            raise AssertionDataError(f"{test} needs at least 2 records per run to integrate, but run {run} has 1.")
        values = g[cols].to_numpy(dtype=float)
        if not np.isfinite(values).all():
            raise AssertionDataError(f"{test} needs finite log_K and SDE terms, but run {run} has missing values.")
        steps = g["step"].to_numpy(dtype=float)
        first = g.iloc[0]
        row = {
            "run": run,
            "sweep_value": float(first["sweep_value"]),
            "init_seed": int(first["init_seed"]),
            "sampling_seed": int(first["sampling_seed"]),
            "log_K0": float(values[0, 0]),
            "log_KT": float(values[-1, 0]),
            "int_disc": math.nan,
        }
        for j, c in enumerate(cols[1:], start=1):
            row[f"int_{c[4:]}"] = float(np.trapezoid(values[:, j], steps))
        rows.append(row)
    runs = pd.DataFrame(rows)
    if runs.duplicated(["sweep_value", "init_seed", "sampling_seed"]).any():
        raise AssertionDataError(f"{test} found two runs with the same seeds and sweep value: not independent units.")
    runs["observed"] = runs["log_KT"] - runs["log_K0"]
    runs["K_T"] = np.exp(runs["log_KT"])
    runs["predicted_mean"] = np.exp(runs["log_K0"] + runs["int_mu"] + runs["int_eps"])
    runs["predicted_var"] = runs["predicted_mean"] ** 2 * np.expm1(runs["int_beta2"])
    return runs


def too_few_records(test: str, design: Design) -> str | None:
    """The SDE terms are integrated over a run's records: a design must record each run twice at least."""
    if design.records_per_run < 2:
        return f"{test} integrates the SDE terms over records, but the design gives {design.records_per_run} per run."
    return None


# --------------------------------------------------------------------------- sde_agreement


class SDEAgreement(Assertion):
    """Claim: the integrated drift int (mu + eps - beta^2/2) predicts the observed change of log K.

    Unit: a run. Per run, relative error = (predicted - observed) / |observed|; the mean over runs
    gets a Student-t interval at ``confidence``, which must lie inside ±``tolerance`` (an
    equivalence test at alpha = (1 - confidence) / 2); with a sweep every value must pass.
    Reported beside it, never judged: the prediction with the discrete-time term and each term's
    cumulative contribution.

    ``tolerance = 0.25``: the paper's checks are visual overlays, where a quarter of the change is
    the coarsest disagreement still read as agreement; leaving eps out errs by more when eps is
    near mu; the record grid's quadrature errs by far less (< 5% at >= 20 records per run).
    """

    needs_record: ClassVar[tuple[str, ...]] = ("sde",)

    test: Literal["sde_agreement"] = "sde_agreement"
    tolerance: float = Field(0.25, gt=0)
    confidence: float = Field(0.95, gt=0.5, lt=1)

    def structural_problem(self, design: Design) -> str | None:
        if design.init_seeds * design.sampling_seeds < 3:
            return "sde_agreement needs at least 3 runs per sweep value for a t interval."
        return too_few_records(self.test, design)

    def extract(self, records: pd.DataFrame) -> dict[str, Any]:
        runs = sde_runs(records, self.test)
        groups, rel = [], []
        sweep = runs["sweep_value"].fillna(-math.inf)
        for value, g in runs.groupby(sweep, sort=True):
            obs = g["observed"].to_numpy()
            if len(g) < 2:
                raise AssertionDataError(f"sde_agreement needs at least 2 runs per sweep value, but has {len(g)}.")
            if (obs == 0).any():
                raise AssertionDataError("sde_agreement needs a non-zero observed change of log K in every run.")
            rel.append((g["int_drift"].to_numpy() - obs) / np.abs(obs))
            groups.append({"sweep_value": None if value == -math.inf else float(value), "runs": g})
        if len({len(r) for r in rel}) > 1:
            raise AssertionDataError("sde_agreement needs the same number of runs at every sweep value.")
        return {"rel": np.stack(rel)[None], "groups": groups}

    def decide(self, data: dict[str, Any]) -> Decision:
        rel = np.asarray(data["rel"], dtype=float)  # [R, sweep, runs]
        n = rel.shape[-1]
        mean, se, low, high = mean_interval(rel, self.confidence)
        ok = (low >= -self.tolerance) & (high <= self.tolerance)
        worst, pick = worst_level(ok, np.maximum(np.abs(low), np.abs(high)))
        return Decision(
            np.all(ok, axis=-1),
            mean[pick, worst],
            low[pick, worst],
            high[pick, worst],
            None,
            {"relative_error": (mean[pick, worst], se[pick, worst], np.full(len(worst), n - 1.0))},
            {"worst": worst},
        )

    def tracked_meta(self) -> dict[str, tuple[str, float, float | None]]:
        return {"relative_error": ("closer", self.tolerance, 0.0)}

    def result(self, records: pd.DataFrame, data: dict[str, Any], d: Decision) -> AssertionResult:
        w = int(d.extras["worst"][0])
        group = data["groups"][w]
        g = group["runs"]
        mean, low, high = float(d.statistic[0]), float(d.ci_low[0]), float(d.ci_high[0])
        passed = bool(d.passed[0])
        obs = g["observed"].to_numpy()
        rel_disc = float(np.mean((g["int_drift"] + g["int_disc"] - obs) / np.abs(obs)))
        which = (
            ""
            if group["sweep_value"] is None
            else (
                f" (worst of {len(data['groups'])} sweep values: {sweep_name(records)} = {fmt(group['sweep_value'])})"
            )
        )
        sentence = (
            f"Integrated SDE drift int(mu + eps - beta^2/2) = {fmt(float(g['int_drift'].mean()))} "
            "predicts the observed "
            f"change of log K = {fmt(float(obs.mean()))}{which} with relative error {pct(mean)} "
            f"({fmt(100 * self.confidence)}% CI [{pct(low)}, {pct(high)}], needed within ±{pct(self.tolerance)}) over "
            f"{len(g)} runs; terms: int mu = {fmt(float(g['int_mu'].mean()))}, "
            f"int eps = {fmt(float(g['int_eps'].mean()))}, "
            f"-int beta^2/2 = {fmt(float(-g['int_beta2'].mean() / 2))}; with the discrete-time term "
            f"(+{fmt(float(g['int_disc'].mean()))}) the relative error is {pct(rel_disc)} — {verdict_word(passed)}."
        )
        groups = [
            {
                "sweep_value": gr["sweep_value"],
                "relative_error": float(np.mean(r)),
                "observed": float(gr["runs"]["observed"].mean()),
                "predicted": float(gr["runs"]["int_drift"].mean()),
                "predicted_with_discrete": float((gr["runs"]["int_drift"] + gr["runs"]["int_disc"]).mean()),
                "int_mu": float(gr["runs"]["int_mu"].mean()),
                "int_eps": float(gr["runs"]["int_eps"].mean()),
                "int_minus_half_beta2": float(-gr["runs"]["int_beta2"].mean() / 2),
                "int_disc": float(gr["runs"]["int_disc"].mean()),
                "n_runs": len(gr["runs"]),
                "per_run": [
                    {"run": run, "observed": float(o), "predicted": float(p), "relative_error": float(e)}
                    for run, o, p, e in zip(
                        gr["runs"]["run"], gr["runs"]["observed"], gr["runs"]["int_drift"], r, strict=True
                    )
                ],
            }
            for gr, r in zip(data["groups"], np.asarray(data["rel"])[0], strict=True)
        ]
        return self.make_result(
            d,
            statistic_name="relative_error_of_predicted_dlogK",
            threshold=self.tolerance,
            confidence=self.confidence,
            effect_size=rel_disc,
            effect_size_name="relative_error_with_discrete_correction",
            n=len(g),
            sentence=sentence,
            details={"groups": groups, "data": {"rel": np.asarray(data["rel"])[0].tolist()}},
        )

    def fit(self, data: dict[str, Any]) -> dict[str, Any]:
        rel = np.asarray(data["rel"], dtype=float)
        return {"mean": float(rel.mean()), "sd": float(rel.std(axis=-1, ddof=1).mean())}

    def default_model(self, design: Design) -> dict[str, Any]:
        return {"mean": 0.0, "sd": 0.1}

    def scenarios(self, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return edge_scenarios(params, "mean", self.tolerance, 0.0)

    def simulate(
        self, design: Design, params: dict[str, Any], rng: np.random.Generator, reps: int, family: str
    ) -> dict[str, Any]:
        shape = (reps, design.sweep_values, design.init_seeds * design.sampling_seeds)
        return {"rel": params["mean"] + params["sd"] * noise(rng, shape, family)}


# --------------------------------------------------------------------------- variance_prediction


class VariancePrediction(Assertion):
    """Claim: Var[K_T] = E[K_T]^2 (exp(int beta^2) - 1) predicts the within-init variance of K_T.

    Per sweep value: the within-init variance of K_T over sampling seeds (crossed design,
    Satterthwaite's degrees of freedom narrowed by the excess kurtosis) divided by the mean
    predicted Var[K_T] of the same runs; its chi-square interval at ``confidence`` must lie inside
    [1/``factor``, ``factor``] (an equivalence test on the log ratio). ``factor = 10``: the model
    states its limits (Gaussian, layer-wise noise, continuous time), so only the order of magnitude
    is asked of it.
    """

    needs_record: ClassVar[tuple[str, ...]] = ("sde",)

    test: Literal["variance_prediction"] = "variance_prediction"
    factor: float = Field(10.0, gt=1)
    confidence: float = Field(0.95, gt=0.5, lt=1)

    def structural_problem(self, design: Design) -> str | None:
        if design.sampling_seeds < 2:
            return f"variance_prediction needs at least 2 sampling seeds, but the design has {design.sampling_seeds}."
        return too_few_records(self.test, design)

    def extract(self, records: pd.DataFrame) -> dict[str, Any]:
        runs = sde_runs(records, self.test)
        y, x, _ = crossed_grid(runs, "K_T", self.test)
        if y.shape[2] < 2:
            raise AssertionDataError("variance_prediction needs at least 2 sampling seeds per init seed.")
        pred, _, _ = crossed_grid(runs, "predicted_var", self.test)
        if (pred <= 0).any():
            raise AssertionDataError("variance_prediction needs a positive predicted variance (int beta^2 > 0).")
        return {"y": y[None], "pred": pred.mean(axis=(1, 2))[None], "x": x, "runs": runs}

    def decide(self, data: dict[str, Any]) -> Decision:
        y = np.asarray(data["y"], dtype=float)
        pred = np.asarray(data["pred"], dtype=float)  # [R, sweep]
        var, df = crossed_within_variance(y)
        df = np.minimum(df, effective_df(df, pooled_excess_kurtosis(y), y.shape[-2] * y.shape[-1]))
        ratio = var / pred
        a = (1 - self.confidence) / 2
        low = ratio * df / stats.chi2.ppf(1 - a, df)
        high = ratio * df / stats.chi2.ppf(a, df)
        se = np.sqrt(log_variance_moments(df)[1])
        with np.errstate(all="ignore"):
            log_ratio = np.log(ratio)
        # The chi-square interval rests on a kurtosis estimated from few runs; the jackknife over
        # sampling seeds does not (see variance_exponent). The interval is the wider of the two.
        se_jack, df_jack = jackknife_over_sampling_seeds(lambda v: np.log(crossed_within_variance(v)[0]), y)
        if df_jack >= 2:
            q_jack, q_norm = float(stats.t.isf(a, df_jack)), float(stats.norm.isf(a))
            with np.errstate(all="ignore"):
                low = np.fmin(low, np.exp(log_ratio - q_jack * se_jack))
                high = np.fmax(high, np.exp(log_ratio + q_jack * se_jack))
            se = np.fmax(se, se_jack * q_jack / q_norm)
        ok = (low >= 1 / self.factor) & (high <= self.factor)
        worst, pick = worst_level(ok, np.nan_to_num(np.abs(log_ratio), nan=1e5, posinf=1e5))
        return Decision(
            np.all(ok, axis=-1),
            ratio[pick, worst],
            low[pick, worst],
            high[pick, worst],
            None,
            {"log_variance_ratio": (log_ratio[pick, worst], se[pick, worst], np.full(len(worst), np.inf))},
            {"worst": worst, "var": var, "df": df},
        )

    def tracked_meta(self) -> dict[str, tuple[str, float, float | None]]:
        return {"log_variance_ratio": ("closer", math.log(self.factor), 0.0)}

    def result(self, records: pd.DataFrame, data: dict[str, Any], d: Decision) -> AssertionResult:
        _zero_spread(d.extras["var"], data["y"], data["x"], "K_T", self.test)
        w = int(d.extras["worst"][0])
        ratio, low, high = float(d.statistic[0]), float(d.ci_low[0]), float(d.ci_high[0])
        passed = bool(d.passed[0])
        obs, pred = float(d.extras["var"][0][w]), float(np.asarray(data["pred"])[0][w])
        x = data["x"]
        which = "" if x is None else f" (worst of {len(x)} sweep values: {sweep_name(records)} = {fmt(float(x[w]))})"
        df = float(d.extras["df"][0][w])
        sentence = (
            f"Within-init variance of K_T across sampling seeds = {fmt(obs)} vs predicted Var[K_T] = "
            f"{fmt(pred)}{which}: observed/predicted = {fmt(ratio)} ({ci_text(low, high, self.confidence)}, "
            f"df = {fmt(df, 3)}, needed within "
            f"[{fmt(1 / self.factor)}, {fmt(self.factor)}]) — {verdict_word(passed)}."
        )
        runs = data["runs"]
        return self.make_result(
            d,
            statistic_name="observed_over_predicted_variance",
            threshold=self.factor,
            confidence=self.confidence,
            effect_size=math.log10(ratio) if ratio > 0 else None,
            effect_size_name="log10_ratio",
            n=len(runs),
            sentence=sentence,
            details={
                "groups": [
                    {
                        "sweep_value": None if x is None else float(x[s]),
                        "observed_var": float(v),
                        "predicted_var": float(p),
                        "df": float(f),
                    }
                    for s, (v, p, f) in enumerate(
                        zip(d.extras["var"][0], np.asarray(data["pred"])[0], d.extras["df"][0], strict=True)
                    )
                ],
                "mean_K_T": float(runs["K_T"].mean()),
                "data": {**_grid_data(data), "pred": np.asarray(data["pred"])[0].tolist()},
            },
        )

    def fit(self, data: dict[str, Any]) -> dict[str, Any]:
        y = np.asarray(data["y"], dtype=float)
        var, _ = crossed_within_variance(y)
        pred = np.asarray(data["pred"], dtype=float)
        return {"ratio": float(np.exp(np.mean(np.log(var / pred)))), "pred": pred.tolist(), **level_and_init_sd(y)}

    def default_model(self, design: Design) -> dict[str, Any]:
        return {"ratio": 1.0, "pred": [0.01] * design.sweep_values, "mean": 1.0, "init_sd": 0.1}

    def scenarios(self, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return edge_scenarios(params, "ratio", self.factor, 1.0)

    def simulate(
        self, design: Design, params: dict[str, Any], rng: np.random.Generator, reps: int, family: str
    ) -> dict[str, Any]:
        pred = np.asarray(params["pred"], dtype=float)
        y = spread_sim(design, params, np.sqrt(params["ratio"] * pred), rng, reps, family)
        return {"y": y, "pred": np.broadcast_to(pred, (reps, len(pred))), "x": None}


# --------------------------------------------------------------------------- variance_scaling


class VarianceScaling(Assertion):
    """Claim: the predicted Var[K_T] (from the measured beta^2) and the observed within-init variance
    of K_T both scale like b^k with k = ``expected_exponent``.

    Two equivalence tests at ``alpha``, both needed: the observed exponent as ``power_law`` computes
    it (its interval from the sampling distribution of the variances), and the predicted exponent
    by least squares of log predicted variance on log b with a Student-t interval (n - 2 df). Each
    (1 - 2 alpha) interval must lie inside ``expected_exponent`` ± ``margin``. ``margin = 0.5``, as
    ``power_law``: 1/b, and neither 1/sqrt(b) nor 1/b^1.5.
    """

    needs_record: ClassVar[tuple[str, ...]] = ("sde",)

    test: Literal["variance_scaling"] = "variance_scaling"
    expected_exponent: float = -1.0
    margin: float = Field(0.5, gt=0)
    alpha: float = Field(0.05, gt=0, lt=0.5)

    def structural_problem(self, design: Design) -> str | None:
        if design.sweep_values < 4:
            return f"variance_scaling needs at least 4 sweep values, but the design has {design.sweep_values}."
        if design.sampling_seeds < 2:
            return (
                "variance_scaling needs at least 2 sampling seeds for a variance, but the design has "
                f"{design.sampling_seeds}."
            )
        return too_few_records(self.test, design)

    def extract(self, records: pd.DataFrame) -> dict[str, Any]:
        runs = sde_runs(records, self.test)
        y, x, _ = crossed_grid(runs, "K_T", self.test)
        if x is None or len(x) < 3 or (x <= 0).any():
            raise AssertionDataError("variance_scaling needs at least 3 positive sweep values (the batch size).")
        pred, _, _ = crossed_grid(runs, "predicted_var", self.test)
        if (pred <= 0).any():
            raise AssertionDataError("variance_scaling needs a positive predicted variance at every sweep value.")
        return {"y": y[None], "pred": pred.mean(axis=(1, 2))[None], "x": x}

    def decide(self, data: dict[str, Any]) -> Decision:
        y = np.asarray(data["y"], dtype=float)
        lx = np.log(np.asarray(data["x"], dtype=float))
        k, se, low, high, var = variance_exponent(y, lx, self.alpha)
        lp = np.log(np.asarray(data["pred"], dtype=float))
        xc = lx - lx.mean()
        kp = np.sum(xc * (lp - lp.mean(axis=-1, keepdims=True)), axis=-1) / np.sum(xc**2)
        resid = lp - lp.mean(axis=-1, keepdims=True) - kp[:, None] * xc
        n = len(lx)
        se_p = np.sqrt(np.sum(resid**2, axis=-1) / (n - 2) / np.sum(xc**2))
        q = stats.t.ppf(1 - self.alpha, n - 2)
        lo_p, hi_p = kp - q * se_p, kp + q * se_p
        edge_lo, edge_hi = self.expected_exponent - self.margin, self.expected_exponent + self.margin
        ok_obs = (low > edge_lo) & (high < edge_hi)
        ok_pred = (lo_p > edge_lo) & (hi_p < edge_hi)
        return Decision(
            ok_obs & ok_pred,
            k,
            low,
            high,
            None,
            {
                "observed_variance_exponent": (k, se, np.full(len(k), np.inf)),
                "predicted_variance_exponent": (kp, se_p, np.full(len(k), n - 2.0)),
            },
            {"var": var, "kp": kp, "lo_p": lo_p, "hi_p": hi_p, "ok_obs": ok_obs, "ok_pred": ok_pred},
        )

    def tracked_meta(self) -> dict[str, tuple[str, float, float | None]]:
        scale = abs(self.expected_exponent) or 1.0
        return {
            "observed_variance_exponent": ("closer", scale, self.expected_exponent),
            "predicted_variance_exponent": ("closer", scale, self.expected_exponent),
        }

    def result(self, records: pd.DataFrame, data: dict[str, Any], d: Decision) -> AssertionResult:
        _zero_spread(d.extras["var"], data["y"], data["x"], "K_T", self.test)
        k, low, high = float(d.statistic[0]), float(d.ci_low[0]), float(d.ci_high[0])
        kp, lo_p, hi_p = (float(d.extras[c][0]) for c in ("kp", "lo_p", "hi_p"))
        passed = bool(d.passed[0])
        conf = 1 - 2 * self.alpha
        k0, m = self.expected_exponent, self.margin
        ratios = d.extras["var"][0] / np.asarray(data["pred"])[0]
        reasons = ([] if d.extras["ok_obs"][0] else ["observed CI not inside the margin"]) + (
            [] if d.extras["ok_pred"][0] else ["predicted CI not inside the margin"]
        )
        sentence = (
            f"Var[K_T] scales as {sweep_name(records)}^k: observed k = {fmt(k, 2)} ({ci_text(low, high, conf, 2)}), "
            f"predicted k = {fmt(kp, 2)} ({ci_text(lo_p, hi_p, conf, 2)}); needed for both: inside "
            f"[{fmt(k0 - m)}, {fmt(k0 + m)}]; observed/predicted variance from {fmt(float(ratios.min()), 2)} to "
            f"{fmt(float(ratios.max()), 2)} over {len(ratios)} sweep values — {verdict_word(passed)}"
            f"{reasons_text(reasons)}."
        )
        per = [
            {"sweep_value": float(v), "observed_var": float(o), "predicted_var": float(p), "ratio": float(o / p)}
            for v, o, p in zip(data["x"], d.extras["var"][0], np.asarray(data["pred"])[0], strict=True)
        ]
        return self.make_result(
            d,
            statistic_name="observed_variance_exponent",
            threshold=k0,
            confidence=conf,
            effect_size=kp,
            effect_size_name="predicted_variance_exponent",
            n=len(per),
            sentence=sentence,
            details={
                "per_sweep_value": per,
                "data": {**_grid_data(data), "pred": np.asarray(data["pred"])[0].tolist()},
            },
        )

    def fit(self, data: dict[str, Any]) -> dict[str, Any]:
        return {**fit_power_spread(data), "pred": np.asarray(data["pred"], dtype=float).tolist()}

    def default_model(self, design: Design) -> dict[str, Any]:
        pred = 0.01 * design.x() ** self.expected_exponent
        return {**default_power_spread(self.expected_exponent), "pred": pred.tolist()}

    def scenarios(self, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return exponent_scenarios(params, self.expected_exponent, self.margin)

    def simulate(
        self, design: Design, params: dict[str, Any], rng: np.random.Generator, reps: int, family: str
    ) -> dict[str, Any]:
        x = design.x()
        pred = np.asarray(params["pred"], dtype=float)
        pred = pred * np.exp(0.02 * noise(rng, (reps, len(x)), family))  # the probe's own small noise
        return {"y": spread_sim(design, params, power_sd(params, x), rng, reps, family), "pred": pred, "x": x}
