"""Statistical assertions that turn training records into PASS/FAIL verdicts.

Each claim of the paper is checked by one params model (``MonotoneTrend``, ``GrowthTrend``,
``PowerLaw``, ``Invariance``). A model validates its own thresholds, tells the runner before
any training whether a planned design can ever reach its verdict (``check_design``), and turns
a long-format ``records`` frame into an ``AssertionResult`` (``evaluate``). Every test wraps a
scipy.stats function; nothing here re-implements one.

``records`` has one row per recorded step of each run, with the columns ``run``, ``step``,
``sweep_value`` (NaN without a sweep), ``init_seed``, ``sampling_seed`` and numeric quantities
(``K``, ``log_K``, ``loss``, ...). The final value of a run is its row with the largest step.
A frame may name its sweep in ``records.attrs["sweep_name"]``; sentences use that name.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats

from lipbench.errors import LipbenchError
from lipbench.records import jsonable

__all__ = [
    "ASSERTIONS",
    "AssertionDataError",
    "AssertionResult",
    "AssertionSpec",
    "GrowthTrend",
    "InitScaling",
    "Invariance",
    "MonotoneTrend",
    "PowerLaw",
    "SDEAgreement",
    "VariancePrediction",
    "VarianceScaling",
]

RNG_SEED = 20250623  # fixed seed of every bootstrap and permutation test: verdicts reproduce
N_RESAMPLES = 9999  # bootstrap and Monte Carlo permutation resamples
PERMUTATION_BELOW = 30  # Spearman p-values for fewer runs come from a permutation test


class AssertionDataError(LipbenchError, ValueError):
    """Records that do not allow an assertion (missing column, too few runs), as one line."""


# --------------------------------------------------------------------------- result object


@dataclass(frozen=True)
class AssertionResult:
    """Verdict of one assertion on one set of records.

    Attributes
    ----------
    test : str
        Name of the assertion, e.g. ``"monotone_trend"``.
    passed : bool
        Whether the claim holds under the assertion's criteria.
    statistic, statistic_name : float, str
        The headline number and its name.
    threshold : float
        What the headline number was compared with.
    pvalue : float or None
        The p-value the verdict used, if the test has one.
    ci_low, ci_high, confidence : float or None
        Confidence interval of the headline number and its level.
    effect_size, effect_size_name : float or None, str or None
        A size of the effect, independent of the sample size.
    n : int
        Sample size behind the headline number (runs, or points of a fit or window).
    sentence : str
        One sentence: what was tested, the figures and the verdict.
    details : dict
        Small JSON-able extras (per-group values) for reports.
    """

    test: str
    passed: bool
    statistic: float
    statistic_name: str
    threshold: float
    pvalue: float | None
    ci_low: float | None
    ci_high: float | None
    confidence: float | None
    effect_size: float | None
    effect_size_name: str | None
    n: int
    sentence: str
    details: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict in field order, with NaN and infinities as None."""
        return {f.name: jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AssertionResult:
        """Rebuild a result from ``to_dict()`` output (None headline numbers become NaN)."""
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [k for k in names if k not in d]
        unknown = [k for k in d if k not in names]
        if missing or unknown:
            raise ValueError(
                f"An AssertionResult dict needs exactly the keys {names}; missing {missing}, unknown {unknown}."
            )
        values = dict(d)
        for key in ("statistic", "threshold"):
            values[key] = math.nan if values[key] is None else float(values[key])
        values["passed"] = bool(values["passed"])
        values["n"] = int(values["n"])
        values["details"] = dict(values["details"] or {})
        return cls(**values)


# --------------------------------------------------------------------------- formatting


def _g(x: float | None, digits: int = 3) -> str:
    """Format a number to a few significant digits; 'undefined' for None or NaN."""
    if x is None or not math.isfinite(x):
        return "undefined" if x is None or math.isnan(x) else ("inf" if x > 0 else "-inf")
    rounded = float(f"{x:.{digits}g}")
    return f"{rounded:.7g}" if 1e-4 <= abs(rounded) < 1e6 else f"{rounded:.{digits}g}"


def _pct(x: float) -> str:
    return f"{_g(100 * x, 2)}%" if math.isfinite(x) else "undefined"


def _ci(low: float | None, high: float | None, confidence: float, digits: int = 3) -> str:
    return f"{_g(100 * confidence, 3)}% CI [{_g(low, digits)}, {_g(high, digits)}]"


def _verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def _failed(*checks: tuple[str, bool]) -> list[str]:
    """Names of the failed criteria, in order."""
    return [name for name, bad in checks if bad]


def _reasons(reasons: list[str]) -> str:
    return f" ({', '.join(reasons)})" if reasons else ""


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


# --------------------------------------------------------------------------- records helpers


def _sweep_name(records: pd.DataFrame) -> str:
    return str(records.attrs.get("sweep_name") or "the sweep value")


def _check_frame(records: pd.DataFrame, test: str, quantity: str, columns: Sequence[str]) -> None:
    """Raise AssertionDataError unless records holds the columns and a numeric quantity."""
    if not isinstance(records, pd.DataFrame):
        raise AssertionDataError(f"{test} needs records as a pandas DataFrame, not {type(records).__name__}.")
    if records.empty:
        raise AssertionDataError(f"{test} received no records.")
    needed = [*columns, quantity]
    missing = [c for c in needed if c not in records.columns]
    if missing:
        numeric = [str(c) for c in records.select_dtypes("number").columns]
        raise AssertionDataError(
            f"{test} needs the column(s) {missing} in records; numeric columns present: {numeric}."
        )
    if records[quantity].dtype == bool or not pd.api.types.is_numeric_dtype(records[quantity]):
        raise AssertionDataError(f"{test} needs a numeric quantity, but column '{quantity}' is not numeric.")
    if records["step"].isna().any():
        raise AssertionDataError(f"{test} needs a step on every record, but some steps are missing.")


def _final_values(records: pd.DataFrame, test: str, quantity: str, columns: Sequence[str]) -> pd.DataFrame:
    """Return one row per run (its largest step) with the columns and the quantity as 'value'."""
    _check_frame(records, test, quantity, ["run", "step", *columns])
    records = records.reset_index(drop=True)  # idxmax labels must be unique
    final = records.loc[records.groupby("run", sort=True)["step"].idxmax()]
    final = final[["run", *columns, quantity]].rename(columns={quantity: "value"})
    final = final.reset_index(drop=True)
    bad = final.loc[~np.isfinite(final["value"].astype(float)), "run"].tolist()
    if bad:
        raise AssertionDataError(
            f"{test} needs a finite final {quantity}, but run(s) {bad[:3]} end with a missing or infinite value."
        )
    return final


def _sweep_groups(frame: pd.DataFrame, test: str) -> list[tuple[float | None, pd.DataFrame]]:
    """Split a frame by sweep_value; a frame without a sweep (all NaN) is one group keyed None."""
    sweep = frame["sweep_value"].astype(float)
    if sweep.isna().all():
        return [(None, frame)]
    if sweep.isna().any():
        raise AssertionDataError(f"{test} found runs with and without a sweep_value in the same records.")
    return [(float(v), g) for v, g in frame.groupby(sweep, sort=True)]


def _deciding(groups: list[dict[str, Any]], badness: Callable[[dict[str, Any]], Any]) -> tuple[dict[str, Any], bool]:
    """The group a verdict reports (a failing one first, then the largest `badness`) and whether all pass."""
    return max(groups, key=lambda r: (not r["passed"], badness(r))), all(r["passed"] for r in groups)


def _worst_label(records: pd.DataFrame, value: float | None, count: int) -> str:
    """Name the reported sweep value when a test ran once per sweep value."""
    if value is None:
        return ""
    return f" (worst of {count} sweep values: {_sweep_name(records)} = {_g(value)})"


def _require_sweep(final: pd.DataFrame, test: str, quantity: str, minimum: int) -> np.ndarray:
    sweep = final["sweep_value"].astype(float).to_numpy()
    if np.isnan(sweep).all():
        raise AssertionDataError(f"{test} needs a sweep, but sweep_value is NaN for every run.")
    if np.isnan(sweep).any():
        raise AssertionDataError(f"{test} needs a sweep_value on every run, but some runs have none.")
    count = len(np.unique(sweep))
    if count < minimum:
        raise AssertionDataError(
            f"{test} on {quantity} needs at least {minimum} distinct sweep values, but records have {count}."
        )
    return sweep


def _quiet(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a scipy function with its degenerate-data warnings silenced (results carry NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return func(*args, **kwargs)


def _bootstrap_ci(
    data: tuple[np.ndarray, ...], statistic: Callable[..., Any], confidence: float, paired: bool
) -> tuple[float, float, str]:
    """Bootstrap CI (BCa, falling back to percentile when BCa is undefined), fixed rng."""
    for method in ("BCa", "percentile"):
        res = _quiet(
            stats.bootstrap,
            data,
            statistic,
            paired=paired,
            vectorized=True,
            axis=-1,
            confidence_level=confidence,
            method=method,
            n_resamples=N_RESAMPLES,
            rng=np.random.default_rng(RNG_SEED),
        )
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(low) and math.isfinite(high):
            return low, high, method
    return low, high, "percentile"


# --------------------------------------------------------------------------- monotone_trend


def _rank_correlation(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman's rho along an axis (Pearson's r of average ranks), for resampling tests."""
    rx = stats.rankdata(x, axis=axis)
    ry = stats.rankdata(y, axis=axis)
    return _quiet(stats.pearsonr, rx, ry, axis=axis).statistic


def _spearman(x: np.ndarray, y: np.ndarray, alternative: str) -> tuple[float, float, str]:
    """Spearman rho with a one-sided p-value: permutation test for few runs, else t approximation."""
    rho = float(_quiet(stats.spearmanr, x, y).statistic)
    if len(x) < PERMUTATION_BELOW:
        res = _quiet(
            stats.permutation_test,
            (x, y),
            _rank_correlation,
            permutation_type="pairings",
            vectorized=True,
            n_resamples=N_RESAMPLES,
            alternative=alternative,
            rng=np.random.default_rng(RNG_SEED),
        )
        return rho, float(res.pvalue), "permutation"
    return rho, float(_quiet(stats.spearmanr, x, y, alternative=alternative).pvalue), "t-approximation"


class MonotoneTrend(BaseModel):
    """Claim: the final quantity moves monotonically with the sweep value.

    Spearman's rho between sweep value and final quantity over all runs, one-sided in
    ``direction`` (a permutation p-value below 30 runs, scipy's t approximation above).
    Passes iff p < ``alpha``, rho has the claimed sign with ``|rho| >= min_abs_rho``, and,
    with ``monotone_means``, the per-sweep-value means of the quantity are strictly monotone.
    ``at: initial`` reads each run's first record (K_0) instead of its last.
    ``scale`` only changes the effect size (log ratio or difference of the extreme group
    means): ranks ignore it, and means are of the quantity itself, as the paper plots them.
    """

    model_config = ConfigDict(extra="forbid")

    test: Literal["monotone_trend"] = "monotone_trend"
    quantity: str = Field("K", min_length=1)
    direction: Literal["increasing", "decreasing"]
    alpha: float = Field(0.01, gt=0, le=0.5)
    min_abs_rho: float = Field(0.5, ge=0, le=1)
    monotone_means: bool = True
    scale: Literal["linear", "log"] = "log"
    confidence: float = Field(0.95, gt=0.5, lt=1)
    at: Literal["final", "initial"] = "final"

    def check_design(
        self, *, sweep_values: int, init_seeds: int, sampling_seeds: int, records_per_run: int
    ) -> str | None:
        """Return why the planned design can never pass, or None if it can."""
        if sweep_values < 2:
            return f"monotone_trend needs at least 2 sweep values, but the design has {sweep_values}."
        per_value = init_seeds * sampling_seeds
        n = sweep_values * per_value
        if n < 3:
            return f"monotone_trend needs at least 3 runs, but the design has {n}."
        x = np.repeat(np.arange(sweep_values, dtype=float), per_value)
        y = np.arange(n, dtype=float) * (1 if self.direction == "increasing" else -1)
        rho, p, _ = _spearman(x, y, "greater" if self.direction == "increasing" else "less")
        if p >= self.alpha:
            return (
                f"monotone_trend with {sweep_values} sweep values x {per_value} runs each can reach "
                f"p = {_g(p, 2)} at best, never below alpha = {self.alpha}."
            )
        if abs(rho) < self.min_abs_rho:
            return (
                f"monotone_trend with {sweep_values} sweep values x {per_value} runs each can reach "
                f"|rho| = {_g(abs(rho), 2)} at best, below min_abs_rho = {self.min_abs_rho}."
            )
        return None

    def evaluate(self, records: pd.DataFrame) -> AssertionResult:
        """Test the monotone trend of the final (or, with at='initial', the first) quantity over the sweep."""
        q = self.quantity
        if self.at == "initial":
            _check_frame(records, self.test, q, ["run", "step"])
            records = records[records["step"] == records.groupby("run")["step"].transform("min")]
        final = _final_values(records, self.test, q, ["sweep_value"])
        x = _require_sweep(final, self.test, q, 2)
        y = final["value"].to_numpy(dtype=float)
        if len(y) < 3:
            raise AssertionDataError(f"monotone_trend needs at least 3 runs, but records have {len(y)}.")
        if self.scale == "log" and (y <= 0).any():
            raise AssertionDataError(f"monotone_trend with scale='log' needs a positive final {q}.")
        increasing = self.direction == "increasing"
        rho, p, p_method = _spearman(x, y, "greater" if increasing else "less")
        low, high, ci_method = _bootstrap_ci((x, y), _rank_correlation, self.confidence, paired=True)

        groups = final.groupby("sweep_value", sort=True)["value"].agg(["mean", "std", "count"])
        means = groups["mean"].to_numpy()
        steps = np.diff(means)
        monotone = bool(np.all(steps > 0) if increasing else np.all(steps < 0))
        if self.scale == "log":
            effect, effect_name = float(np.log(means[-1] / means[0])), "log_ratio_extreme_group_means"
        else:
            effect, effect_name = float(means[-1] - means[0]), "difference_extreme_group_means"

        significant = p < self.alpha
        sign_ok = rho > 0 if increasing else rho < 0
        large = abs(rho) >= self.min_abs_rho
        passed = bool(significant and sign_ok and large and (monotone or not self.monotone_means))

        verb = "increases" if increasing else "decreases"
        means_text = f"group means {'strictly' if monotone else 'not strictly'} {self.direction}"
        reasons = _failed(
            ("p not below alpha", not significant),
            ("wrong sign", not sign_ok and math.isfinite(rho)),
            ("|rho| below the floor", not large),
            ("group means not monotone", self.monotone_means and not monotone),
        )
        start = "Initial" if self.at == "initial" else "Final"
        sentence = (
            f"{start} {q} {verb} with {_sweep_name(records)}: Spearman rho = {_g(rho, 2)} "
            f"({_ci(low, high, self.confidence, 2)}, p = {_g(p, 2)}, needed < {self.alpha}, "
            f"|rho| >= {self.min_abs_rho}), {means_text} — {_verdict(passed)}"
            + f"{_reasons(reasons) if not passed else ''}."
        )
        details = {
            "groups": [
                {
                    "sweep_value": float(v),
                    "mean": float(r["mean"]),
                    "sd": float(r["std"]),
                    "n": int(r["count"]),
                }
                for v, r in groups.iterrows()
            ],
            "monotone_means": monotone,
            "pvalue_method": p_method,
            "ci_method": ci_method,
            "scale": self.scale,
        }
        return AssertionResult(
            test=self.test,
            passed=passed,
            statistic=rho,
            statistic_name="spearman_rho",
            threshold=self.alpha,
            pvalue=p,
            ci_low=_finite_or_none(low),
            ci_high=_finite_or_none(high),
            confidence=self.confidence,
            effect_size=effect,
            effect_size_name=effect_name,
            n=len(y),
            sentence=sentence,
            details=details,
        )


# --------------------------------------------------------------------------- growth_trend


def _late_count(window: float, records_per_run: int) -> int:
    """Number of records in the late window: the last ceil(window * records) of them."""
    return min(records_per_run, math.ceil(window * records_per_run - 1e-9))


def _growth_one(steps: np.ndarray, y: np.ndarray, model: GrowthTrend) -> dict[str, Any]:
    """Trend tests on one averaged trajectory's late window."""
    mk = _quiet(stats.kendalltau, steps, y, alternative="greater")
    increments = np.diff(y)
    inc = _quiet(stats.wilcoxon, increments, alternative="greater")
    ts = _quiet(stats.theilslopes, y, steps, alpha=model.confidence)
    p_mk = float(mk.pvalue) if math.isfinite(mk.pvalue) else 1.0  # constant y: no trend shown
    p_inc = float(inc.pvalue) if math.isfinite(inc.pvalue) else 1.0
    span = float(steps[-1] - steps[0])
    change = float(ts.slope) * span
    if model.quantity.startswith("log_"):  # a log quantity: growth of its exponential
        effect = math.expm1(change)
    else:
        start = float(ts.intercept + ts.slope * steps[0])
        effect = change / abs(start) if start != 0 else math.nan
    reasons = _failed(
        ("Mann–Kendall p not below alpha", p_mk >= model.alpha),
        ("increments p not below alpha", p_inc >= model.alpha),
        ("slope CI reaches 0", not ts.low_slope > 0),
    )
    return {
        "passed": not reasons,
        "reasons": reasons,
        "slope": float(ts.slope) * 1000,
        "ci_low": float(ts.low_slope) * 1000,
        "ci_high": float(ts.high_slope) * 1000,
        "pvalue": max(p_mk, p_inc),
        "mann_kendall_tau": float(mk.statistic),
        "mann_kendall_pvalue": p_mk,
        "increments_wilcoxon_pvalue": p_inc,
        "effect_size": effect,
        "first_step": int(steps[0]),
        "last_step": int(steps[-1]),
        "n_points": len(y),
    }


class GrowthTrend(BaseModel):
    """Claim: the quantity keeps increasing late in training, with no plateau.

    The quantity is averaged across runs at each step (per sweep value when there is a sweep),
    and the last ``window`` fraction of the records (the last ceil(window * records)) is tested:
    Mann–Kendall (``kendalltau`` of y on step, one-sided), a one-sided Wilcoxon signed-rank test
    that the increments between consecutive records are positive (a driftless random walk passes
    Mann–Kendall far more often than ``alpha``; its increments do not), and a Theil–Sen slope
    whose ``confidence`` CI must lie above 0. Passes iff both p < ``alpha`` and the CI low > 0;
    with a sweep every value must pass and the worst one is reported.
    """

    model_config = ConfigDict(extra="forbid")

    test: Literal["growth_trend"] = "growth_trend"
    quantity: str = Field("log_K", min_length=1)
    window: float = Field(0.5, gt=0, le=1)
    alpha: float = Field(0.01, gt=0, le=0.5)
    confidence: float = Field(0.95, gt=0.5, lt=1)

    def check_design(
        self, *, sweep_values: int, init_seeds: int, sampling_seeds: int, records_per_run: int
    ) -> str | None:
        """Return why the planned design can never pass, or None if it can."""
        n_late = _late_count(self.window, records_per_run)
        if n_late < 3:
            return f"growth_trend needs at least 3 records in its late window, but the design gives {n_late}."
        best = float(_quiet(stats.wilcoxon, np.arange(1.0, n_late), alternative="greater").pvalue)
        if best >= self.alpha:
            return (
                f"growth_trend's late window of {n_late} records can reach an increments p-value of "
                f"{_g(best, 2)} at best, never below alpha = {self.alpha}."
            )
        return None

    def evaluate(self, records: pd.DataFrame) -> AssertionResult:
        """Test late growth of the run-averaged quantity."""
        q = self.quantity
        _check_frame(records, self.test, q, ["run", "step", "sweep_value"])
        per_group = []
        for value, group in _sweep_groups(records, self.test):
            table = group.groupby(["step", "run"])[q].mean().unstack("run").sort_index()
            where = "" if value is None else f" at sweep value {_g(value)}"
            if not np.isfinite(table.to_numpy(dtype=float)).all():
                raise AssertionDataError(
                    f"growth_trend needs runs that share a step grid and a finite {q}, but runs{where} do not."
                )
            n_late = _late_count(self.window, len(table))
            if n_late < 3:
                raise AssertionDataError(
                    f"growth_trend needs at least 3 records in its late window, but runs{where} give {n_late}."
                )
            late = table.iloc[-n_late:]
            res = _growth_one(late.index.to_numpy(dtype=float), late.mean(axis=1).to_numpy(dtype=float), self)
            per_group.append({"sweep_value": value, "n_runs": int(table.shape[1]), **res})

        worst, passed = _deciding(per_group, lambda r: (r["pvalue"], -r["ci_low"]))
        base = q[4:] if q.startswith("log_") else None
        effect_name = f"relative_growth_of_{base}" if base else f"relative_change_of_{q}"
        which = _worst_label(records, worst["sweep_value"], len(per_group))
        effect = worst["effect_size"]
        verb = "grew" if not effect < 0 else "shrank"
        grew = f"{base} {verb} {_pct(abs(effect))}" if base else f"{q} changed {_pct(effect)}"
        sentence = (
            f"Run-averaged {q} keeps increasing over the last {_pct(self.window)} of records{which}: "
            f"Theil–Sen slope = {_g(worst['slope'], 2)} per 1000 steps "
            f"({_ci(worst['ci_low'], worst['ci_high'], self.confidence, 2)}, needed > 0), "
            f"Mann–Kendall p = {_g(worst['mann_kendall_pvalue'], 2)} and increments Wilcoxon p = "
            f"{_g(worst['increments_wilcoxon_pvalue'], 2)} (needed < {self.alpha}), {grew} "
            f"over the window — {_verdict(passed)}{_reasons(worst['reasons'])}."
        )
        return AssertionResult(
            test=self.test,
            passed=passed,
            statistic=worst["slope"],
            statistic_name="theil_sen_slope_per_1000_steps",
            threshold=0.0,
            pvalue=worst["pvalue"],
            ci_low=worst["ci_low"],
            ci_high=worst["ci_high"],
            confidence=self.confidence,
            effect_size=_finite_or_none(worst["effect_size"]),
            effect_size_name=effect_name,
            n=worst["n_points"],
            sentence=sentence,
            details={"window": self.window, "groups": per_group},
        )


# --------------------------------------------------------------------------- power_law


class PowerLaw(BaseModel):
    """Claim: the across-sampling-seed variance of the final quantity scales as sweep^k.

    For each (sweep value, init seed) the unbiased variance over sampling seeds of the final
    quantity is averaged over init seeds; ``linregress`` fits log(var) = a + k log(sweep).
    The CI is k ± t((1 + confidence)/2, n - 2) * stderr. Passes iff the CI contains
    ``expected_exponent``, excludes 0, and is at most ``max_ci_width`` wide.
    """

    model_config = ConfigDict(extra="forbid")

    test: Literal["power_law"] = "power_law"
    quantity: str = Field("K", min_length=1)
    expected_exponent: float = Field(-1.0, allow_inf_nan=False)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    max_ci_width: float = Field(3.0, gt=0)

    def check_design(
        self, *, sweep_values: int, init_seeds: int, sampling_seeds: int, records_per_run: int
    ) -> str | None:
        """Return why the planned design can never pass, or None if it can."""
        if sweep_values < 3:
            return (
                f"power_law needs at least 3 sweep values to fit a slope with a CI, but the design has {sweep_values}."
            )
        if sampling_seeds < 2:
            return f"power_law needs at least 2 sampling seeds for a variance, but the design has {sampling_seeds}."
        if init_seeds < 1:
            return "power_law needs at least 1 init seed, but the design has none."
        return None

    def evaluate(self, records: pd.DataFrame) -> AssertionResult:
        """Fit the variance-vs-sweep exponent on log-log axes."""
        q = self.quantity
        final = _final_values(records, self.test, q, ["sweep_value", "init_seed", "sampling_seed"])
        sweep = _require_sweep(final, self.test, q, 3)
        if (sweep <= 0).any():
            raise AssertionDataError("power_law needs positive sweep values to take their log.")
        cells = final.groupby(["sweep_value", "init_seed"], sort=True)["value"].agg(["var", "count"])
        thin = cells[cells["count"] < 2]
        if not thin.empty:
            (v, i), _ = next(iter(thin.iterrows()))
            raise AssertionDataError(
                f"power_law needs at least 2 sampling seeds per (sweep value, init seed), "
                f"but sweep value {_g(v)} with init seed {i} has 1."
            )
        per_sweep = cells.groupby(level="sweep_value").agg(
            variance=("var", "mean"), n_init_seeds=("var", "size"), n_runs=("count", "sum")
        )
        if (per_sweep["variance"] <= 0).any():
            v = per_sweep.index[per_sweep["variance"] <= 0][0]
            raise AssertionDataError(
                f"power_law needs a positive variance of final {q}, but it is 0 at sweep value {_g(v)}."
            )
        x = np.log(per_sweep.index.to_numpy(dtype=float))
        y = np.log(per_sweep["variance"].to_numpy(dtype=float))
        fit = _quiet(stats.linregress, x, y)
        n = len(x)
        half = float(stats.t.ppf((1 + self.confidence) / 2, n - 2)) * float(fit.stderr)
        k, low, high = float(fit.slope), float(fit.slope) - half, float(fit.slope) + half
        width = high - low
        contains = low <= self.expected_exponent <= high
        excludes_zero = not (low <= 0 <= high)
        narrow = width <= self.max_ci_width
        passed = bool(contains and excludes_zero and narrow)

        reasons = _failed(
            (f"CI misses {_g(self.expected_exponent)}", not contains),
            ("CI contains 0", not excludes_zero),
            ("CI too wide", not narrow),
        )
        sentence = (
            f"Across-sampling-seed variance of final {q} scales as {_sweep_name(records)}^k with "
            f"k = {_g(k, 2)} over {n} sweep values ({_ci(low, high, self.confidence, 2)}, width "
            f"{_g(width, 2)}; needed: contains {_g(self.expected_exponent)}, excludes 0, width <= "
            f"{_g(self.max_ci_width)}), r^2 = {_g(fit.rvalue**2, 2)} — {_verdict(passed)}" + f"{_reasons(reasons)}."
        )
        details = {
            "variances": [
                {
                    "sweep_value": float(v),
                    "variance": float(r["variance"]),
                    "n_init_seeds": int(r["n_init_seeds"]),
                    "n_runs": int(r["n_runs"]),
                }
                for v, r in per_sweep.iterrows()
            ],
            "intercept": float(fit.intercept),
            "intercept_stderr": float(fit.intercept_stderr),
            "slope_stderr": float(fit.stderr),
            "ci_width": width,
            "df": n - 2,
        }
        return AssertionResult(
            test=self.test,
            passed=passed,
            statistic=k,
            statistic_name="power_law_exponent",
            threshold=self.expected_exponent,
            pvalue=float(fit.pvalue),
            ci_low=low,
            ci_high=high,
            confidence=self.confidence,
            effect_size=float(fit.rvalue**2),
            effect_size_name="r_squared",
            n=n,
            sentence=sentence,
            details=details,
        )


# --------------------------------------------------------------------------- invariance


def _pooled_cv(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
    """sqrt of the mean over init seeds of var/mean^2 (each sample: one init seed's runs)."""
    cv2 = [np.var(s, axis=axis, ddof=1) / np.mean(s, axis=axis) ** 2 for s in samples]
    return np.sqrt(np.mean(np.stack(cv2), axis=0))


def _invariance_one(final: pd.DataFrame, model: Invariance, where: str) -> dict[str, Any]:
    """Within- and between-init spreads of one sweep value's final values."""
    groups = [(int(i), g["value"].to_numpy(dtype=float)) for i, g in final.groupby("init_seed", sort=True)]
    if len(groups) < 2:
        raise AssertionDataError(f"invariance needs at least 2 init seeds, but records{where} have {len(groups)}.")
    fewest = min(len(v) for _, v in groups)
    if fewest < 3:
        raise AssertionDataError(
            f"invariance needs at least 3 sampling seeds per init seed, but records{where} have {fewest}."
        )
    if any(v.mean() <= 0 for _, v in groups):
        raise AssertionDataError(f"invariance needs a positive mean final {model.quantity}{where}.")
    samples = tuple(v for _, v in groups)
    within = float(_pooled_cv(*samples))
    low, high, method = _bootstrap_ci(samples, _pooled_cv, model.confidence, paired=False)
    means = np.array([v.mean() for v in samples])
    k, m = len(samples), float(np.mean([len(v) for v in samples]))
    within_var = float(np.mean([v.var(ddof=1) for v in samples]))
    # The spread of per-init means holds sampling noise too (var/m): subtract it to get the init component.
    between = float(np.sqrt(max(0.0, np.var(means, ddof=1) - within_var / m)) / np.mean(means))
    ratio = within / between if between > 0 else math.inf
    anova = _quiet(stats.f_oneway, *samples)
    # One-sided test of H0 "init spread <= sampling spread" (sigma_b^2 <= sigma_w^2): under equality
    # E[MS_between] = (1 + m) sigma_w^2, so F / (1 + m) ~ F(k - 1, k (m - 1)).
    f_scaled = float(anova.statistic) / (1.0 + m) if np.isfinite(anova.statistic) else math.inf
    dominance_p = float(stats.f.sf(f_scaled, k - 1, round(k * (m - 1))))
    reasons = _failed(
        ("CI high not below the spread threshold", not high < model.max_relative_spread),
        ("within/between ratio not below its limit", not ratio < model.max_spread_ratio),
        ("init spread not significantly above the sampling spread", not dominance_p < model.alpha),
    )
    return {
        "passed": not reasons,
        "reasons": reasons,
        "within_cv": within,
        "ci_low": low,
        "ci_high": high,
        "ci_method": method,
        "between_cv": between,
        "ratio": ratio,
        "init_effect_f": float(anova.statistic),
        "init_dominance_pvalue": dominance_p,
        "init_effect_pvalue": float(anova.pvalue),
        "n_runs": int(sum(len(v) for v in samples)),
        "per_init": [
            {"init_seed": i, "mean": float(v.mean()), "sd": float(v.std(ddof=1)), "n": len(v)} for i, v in groups
        ],
    }


class Invariance(BaseModel):
    """Claim: with the init seed fixed, the sampling seed barely changes the final quantity.

    within = pooled coefficient of variation across sampling seeds (sqrt of the mean over
    init seeds of var/mean^2); between = CV across init seeds of the per-init means. Its
    ``confidence`` CI comes from ``bootstrap`` resampling sampling seeds within each init
    seed. between = CV of the init-seed variance component (the spread of per-init means less
    the sampling noise they carry). Passes iff the CI high < ``max_relative_spread``,
    within/between < ``max_spread_ratio``, and a one-sided F test rejects "init spread <=
    sampling spread" at ``alpha`` (F / (1 + m) ~ F(k-1, k(m-1)) under equality). With a
    sweep every value must pass and the worst one is reported.
    """

    model_config = ConfigDict(extra="forbid")

    test: Literal["invariance"] = "invariance"
    quantity: str = Field("K", min_length=1)
    max_relative_spread: float = Field(0.05, gt=0)
    max_spread_ratio: float = Field(1.0, gt=0)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    alpha: float = Field(0.05, gt=0, le=0.5)

    def check_design(
        self, *, sweep_values: int, init_seeds: int, sampling_seeds: int, records_per_run: int
    ) -> str | None:
        """Return why the planned design can never pass, or None if it can."""
        if init_seeds < 2:
            return f"invariance needs at least 2 init seeds to compare spreads, but the design has {init_seeds}."
        if sampling_seeds < 3:
            return f"invariance needs at least 3 sampling seeds per init seed, but the design has {sampling_seeds}."
        return None

    def evaluate(self, records: pd.DataFrame) -> AssertionResult:
        """Compare the sampling-seed spread with its threshold and with the init-seed spread."""
        q = self.quantity
        final = _final_values(records, self.test, q, ["sweep_value", "init_seed", "sampling_seed"])
        per_group = []
        for value, group in _sweep_groups(final, self.test):
            where = "" if value is None else f" at sweep value {_g(value)}"
            per_group.append({"sweep_value": value, **_invariance_one(group, self, where)})
        worst, passed = _deciding(per_group, lambda r: np.nan_to_num(r["ci_high"], nan=np.inf))
        which = _worst_label(records, worst["sweep_value"], len(per_group))
        sentence = (
            f"Sampling seed barely moves final {q} with the init seed fixed{which}: within-init CV = "
            f"{_pct(worst['within_cv'])} ({_g(100 * self.confidence)}% CI [{_pct(worst['ci_low'])}, "
            f"{_pct(worst['ci_high'])}], needed < {_pct(self.max_relative_spread)}), within/between-init "
            f"ratio = {_g(worst['ratio'], 2)} (needed < {_g(self.max_spread_ratio)}), init spread above "
            f"sampling spread at p = {_g(worst['init_dominance_pvalue'], 2)} (needed < {_g(self.alpha)}) — "
            f"{_verdict(passed)}{_reasons(worst['reasons'])}."
        )
        return AssertionResult(
            test=self.test,
            passed=passed,
            statistic=worst["within_cv"],
            statistic_name="within_init_cv",
            threshold=self.max_relative_spread,
            pvalue=_finite_or_none(worst["init_dominance_pvalue"]),
            ci_low=_finite_or_none(worst["ci_low"]),
            ci_high=_finite_or_none(worst["ci_high"]),
            confidence=self.confidence,
            effect_size=_finite_or_none(worst["ratio"]),
            effect_size_name="within_between_cv_ratio",
            n=worst["n_runs"],
            sentence=sentence,
            details={"groups": per_group},
        )


# --------------------------------------------------------------------------- SDE records helpers

SDE_TERMS = ("sde_mu", "sde_eps", "sde_beta2", "sde_drift")


def _t_interval(values: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """Mean and Student-t interval of the mean (scipy's one-sample t test)."""
    res = _quiet(stats.ttest_1samp, values, 0.0)
    ci = res.confidence_interval(confidence_level=confidence)
    return float(np.mean(values)), float(ci.low), float(ci.high)


def _sde_runs(records: pd.DataFrame, test: str) -> pd.DataFrame:
    """One row per run: log K at the first and last record, K_T, and the trapezoid integrals over
    steps of every SDE term (``int_mu``, ``int_eps``, ``int_beta2``, ``int_drift``, ``int_disc``).

    The terms recorded at step s describe the step s -> s + 1; integrating over the record grid
    (trapezoid rule) counts every training step once, up to the grid's quadrature error.
    """
    _check_frame(records, test, "log_K", ["run", "step", "sweep_value", "init_seed", "sampling_seed", *SDE_TERMS])
    has_disc = "sde_disc" in records.columns
    rows = []
    for run, g in records.groupby("run", sort=True):
        g = g.sort_values("step")
        if len(g) < 2:
            raise AssertionDataError(f"{test} needs at least 2 records per run to integrate, but run {run} has 1.")
        cols = ["log_K", *SDE_TERMS, *(["sde_disc"] if has_disc else [])]
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
    runs["observed"] = runs["log_KT"] - runs["log_K0"]
    runs["K_T"] = np.exp(runs["log_KT"])
    # PAPER.md §2: E[K_T] = K_0 exp(int (mu + eps)), Var[K_T] = E[K_T]^2 (exp(int beta^2) - 1).
    runs["predicted_mean"] = np.exp(runs["log_K0"] + runs["int_mu"] + runs["int_eps"])
    runs["predicted_var"] = runs["predicted_mean"] ** 2 * np.expm1(runs["int_beta2"])
    return runs


def _runs_by_sweep(runs: pd.DataFrame, test: str) -> list[tuple[float | None, pd.DataFrame]]:
    sweep = runs["sweep_value"].astype(float)
    if sweep.isna().all():
        return [(None, runs)]
    if sweep.isna().any():
        raise AssertionDataError(f"{test} found runs with and without a sweep_value in the same records.")
    return [(float(v), g) for v, g in runs.groupby(sweep, sort=True)]


# --------------------------------------------------------------------------- sde_agreement


class SDEAgreement(BaseModel):
    """Claim (PAPER.md §2, Thm. 16/17): the measured terms predict the observed change of log K.

    For each run, observed = log K_T - log K_0 and predicted = int_0^T (mu + eps - beta^2/2) dt,
    the recorded network terms integrated over the record grid (trapezoid). The statistic is the
    mean over runs of the relative error (predicted - observed) / |observed|, with a Student-t
    ``confidence`` interval. Passes iff the interval lies inside [-``tolerance``, +``tolerance``]
    (with a sweep: for every sweep value; the worst is reported). Beside it, never judged, the
    prediction with the discrete-time correction (int of ``sde_disc``: 1/2 lr^2 Q(G)/sigma less
    mu^2/(2 sigma^2) per layer, what SGD's finite step adds to E[d log K]) and each term's
    cumulative contribution.

    Thresholds, fixed before any run: ``tolerance = 0.25`` because (a) the paper's own checks are
    visual overlays of predicted and observed trajectories, for which a quarter of the change is
    the coarsest disagreement still read as agreement, (b) it is tight enough to catch a missing
    term: with eps near mu (our earlier small-batch measurement), leaving eps out errs by ~50-100%,
    and (c) the record-grid quadrature of a smooth drift errs by far less (< 5% at >= 20 records
    per run, the suites' designs). 95% t interval: the across-run spread of the error (probe noise,
    one mini-batch per record) widens it, so few or noisy runs cannot pass by chance.
    """

    model_config = ConfigDict(extra="forbid")
    needs_record: ClassVar[tuple[str, ...]] = ("sde",)

    test: Literal["sde_agreement"] = "sde_agreement"
    tolerance: float = Field(0.25, gt=0)
    confidence: float = Field(0.95, gt=0.5, lt=1)

    def check_design(
        self, *, sweep_values: int, init_seeds: int, sampling_seeds: int, records_per_run: int
    ) -> str | None:
        """Return why the planned design can never pass, or None if it can."""
        per_value = init_seeds * sampling_seeds
        if per_value < 3:
            return (
                f"sde_agreement needs at least 3 runs per sweep value for a t interval, but the design has {per_value}."
            )
        if records_per_run < 2:
            return f"sde_agreement integrates the terms over records, but the design gives {records_per_run} per run."
        return None

    def evaluate(self, records: pd.DataFrame) -> AssertionResult:
        """Compare the integrated drift with the observed change of log K, run by run."""
        runs = _sde_runs(records, self.test)
        groups = []
        for value, g in _runs_by_sweep(runs, self.test):
            if len(g) < 2:
                raise AssertionDataError(f"sde_agreement needs at least 2 runs per sweep value, but has {len(g)}.")
            obs = g["observed"].to_numpy()
            if (obs == 0).any():
                raise AssertionDataError("sde_agreement needs a non-zero observed change of log K in every run.")
            rel = (g["int_drift"].to_numpy() - obs) / np.abs(obs)
            mean, low, high = _t_interval(rel, self.confidence)
            rel_disc = (g["int_drift"].to_numpy() + g["int_disc"].to_numpy() - obs) / np.abs(obs)
            inside = bool(-self.tolerance <= low and high <= self.tolerance)
            groups.append(
                {
                    "sweep_value": value,
                    "passed": inside,
                    "relative_error": mean,
                    "ci_low": low,
                    "ci_high": high,
                    "relative_error_with_discrete": float(np.mean(rel_disc)),
                    "observed": float(obs.mean()),
                    "predicted": float(g["int_drift"].mean()),
                    "predicted_with_discrete": float((g["int_drift"] + g["int_disc"]).mean()),
                    "int_mu": float(g["int_mu"].mean()),
                    "int_eps": float(g["int_eps"].mean()),
                    "int_minus_half_beta2": float(-g["int_beta2"].mean() / 2),
                    "int_disc": float(g["int_disc"].mean()),
                    "n_runs": len(g),
                    "per_run": [
                        {"run": r, "observed": float(o), "predicted": float(p), "relative_error": float(e)}
                        for r, o, p, e in zip(g["run"], obs, g["int_drift"], rel, strict=True)
                    ],
                }
            )
        worst, passed = _deciding(groups, lambda r: max(abs(r["ci_low"]), abs(r["ci_high"])))
        which = _worst_label(records, worst["sweep_value"], len(groups))
        w = worst
        sentence = (
            f"Integrated SDE drift int(mu + eps - beta^2/2) = {_g(w['predicted'])} predicts the observed change "
            f"of log K = {_g(w['observed'])}{which} with relative error {_pct(w['relative_error'])} "
            f"({_g(100 * self.confidence)}% CI [{_pct(w['ci_low'])}, {_pct(w['ci_high'])}], needed within "
            f"±{_pct(self.tolerance)}) over {w['n_runs']} runs; terms: int mu = {_g(w['int_mu'])}, int eps = "
            f"{_g(w['int_eps'])}, -int beta^2/2 = {_g(w['int_minus_half_beta2'])}; with the discrete-time term "
            f"(+{_g(w['int_disc'])}) the prediction is {_g(w['predicted_with_discrete'])} (relative error "
            f"{_pct(w['relative_error_with_discrete'])}) — {_verdict(passed)}."
        )
        return AssertionResult(
            test=self.test,
            passed=passed,
            statistic=w["relative_error"],
            statistic_name="relative_error_of_predicted_dlogK",
            threshold=self.tolerance,
            pvalue=None,
            ci_low=_finite_or_none(w["ci_low"]),
            ci_high=_finite_or_none(w["ci_high"]),
            confidence=self.confidence,
            effect_size=_finite_or_none(w["relative_error_with_discrete"]),
            effect_size_name="relative_error_with_discrete_correction",
            n=w["n_runs"],
            sentence=sentence,
            details={"groups": groups},
        )


# --------------------------------------------------------------------------- variance_prediction


def _chi2_ratio_bounds(df: float, confidence: float) -> tuple[float, float]:
    """(low, high) multipliers of a sample variance with df degrees of freedom: its chi-square CI."""
    a = (1 - confidence) / 2
    return df / float(stats.chi2.ppf(1 - a, df)), df / float(stats.chi2.ppf(a, df))


class VariancePrediction(BaseModel):
    """Claim (PAPER.md §2): Var[K_T] = E[K_T]^2 (exp(int beta^2) - 1) predicts the across-sampling-seed variance.

    Within each init seed, the unbiased variance of K_T over sampling seeds is pooled
    (df = sum of n_i - 1) and divided by the mean predicted Var[K_T] of the same runs (each run's
    own E[K_T] and int beta^2, trapezoid over its records): ratio = sum df_i s_i^2 / sum df_i p_i.
    Its ``confidence`` interval is the chi-square interval of the pooled variance (normal K_T,
    the prediction taken as known). Passes iff the interval lies inside [1/``factor``,
    ``factor``]; with a sweep every value must pass and the worst is reported.

    Thresholds, fixed before any run: ``factor = 10``. The paper states its model's limits
    (Gaussian, layer-wise independent noise; continuous time), so only order-of-magnitude
    agreement can be asked of Var[K_T]; a factor of 10 is the loosest band in which the prediction
    still says something about the size of the variance. With 8 sampling seeds (df = 7) the 95%
    chi-square interval spans a factor of 9.3, so a pass needs the point ratio within about
    [0.23, 4.3]; ``check_design`` rejects designs whose interval can never fit in the band.
    """

    model_config = ConfigDict(extra="forbid")
    needs_record: ClassVar[tuple[str, ...]] = ("sde",)

    test: Literal["variance_prediction"] = "variance_prediction"
    factor: float = Field(10.0, gt=1)
    confidence: float = Field(0.95, gt=0.5, lt=1)

    def check_design(
        self, *, sweep_values: int, init_seeds: int, sampling_seeds: int, records_per_run: int
    ) -> str | None:
        """Return why the planned design can never pass, or None if it can."""
        if sampling_seeds < 2:
            return f"variance_prediction needs at least 2 sampling seeds, but the design has {sampling_seeds}."
        if records_per_run < 2:
            return (
                f"variance_prediction integrates beta^2 over records, but the design gives {records_per_run} per run."
            )
        df = init_seeds * (sampling_seeds - 1)
        low, high = _chi2_ratio_bounds(df, self.confidence)
        if high / low >= self.factor**2:
            return (
                f"variance_prediction with df = {df} has a {_g(100 * self.confidence)}% interval spanning a factor "
                f"of {_g(high / low, 2)}, which never fits inside [1/{_g(self.factor)}, {_g(self.factor)}]; "
                "add sampling seeds."
            )
        return None

    def evaluate(self, records: pd.DataFrame) -> AssertionResult:
        """Compare the pooled across-sampling-seed variance of K_T with the predicted Var[K_T]."""
        runs = _sde_runs(records, self.test)
        groups = []
        for value, g in _runs_by_sweep(runs, self.test):
            cells = g.groupby("init_seed").agg(
                var=("K_T", "var"),
                n=("K_T", "size"),
                pred=("predicted_var", "mean"),
                mean_K=("K_T", "mean"),
                int_beta2=("int_beta2", "mean"),
                var_logK=("log_KT", "var"),
            )
            cells = cells[cells["n"] >= 2]
            if cells.empty:
                raise AssertionDataError("variance_prediction needs at least 2 sampling seeds per init seed.")
            df = (cells["n"] - 1).to_numpy(dtype=float)
            observed = float((df * cells["var"]).sum() / df.sum())
            predicted = float((df * cells["pred"]).sum() / df.sum())
            if predicted <= 0:
                raise AssertionDataError("variance_prediction needs a positive predicted variance (int beta^2 > 0).")
            ratio = observed / predicted
            mlow, mhigh = _chi2_ratio_bounds(df.sum(), self.confidence)
            low, high = ratio * mlow, ratio * mhigh
            groups.append(
                {
                    "sweep_value": value,
                    "passed": bool(low >= 1 / self.factor and high <= self.factor),
                    "ratio": ratio,
                    "ci_low": low,
                    "ci_high": high,
                    "observed_var": observed,
                    "predicted_var": predicted,
                    "observed_var_log_K": float((df * cells["var_logK"]).sum() / df.sum()),
                    "predicted_var_log_K": float((df * cells["int_beta2"]).sum() / df.sum()),
                    "mean_K_T": float(g["K_T"].mean()),
                    "df": int(df.sum()),
                    "n_runs": len(g),
                }
            )
        worst, passed = _deciding(groups, lambda r: abs(math.log(r["ratio"])) if r["ratio"] > 0 else math.inf)
        which = _worst_label(records, worst["sweep_value"], len(groups))
        w = worst
        sentence = (
            f"Across-sampling-seed variance of K_T = {_g(w['observed_var'])} vs predicted Var[K_T] = "
            f"{_g(w['predicted_var'])}{which}: observed/predicted = {_g(w['ratio'])} "
            f"({_ci(w['ci_low'], w['ci_high'], self.confidence)}, df = {w['df']}, needed within "
            f"[{_g(1 / self.factor)}, {_g(self.factor)}]); on log K: {_g(w['observed_var_log_K'])} vs int beta^2 = "
            f"{_g(w['predicted_var_log_K'])} — {_verdict(passed)}."
        )
        return AssertionResult(
            test=self.test,
            passed=passed,
            statistic=w["ratio"],
            statistic_name="observed_over_predicted_variance",
            threshold=self.factor,
            pvalue=None,
            ci_low=_finite_or_none(w["ci_low"]),
            ci_high=_finite_or_none(w["ci_high"]),
            confidence=self.confidence,
            effect_size=_finite_or_none(math.log10(w["ratio"])) if w["ratio"] > 0 else None,
            effect_size_name="log10_ratio",
            n=w["n_runs"],
            sentence=sentence,
            details={"groups": groups},
        )


# --------------------------------------------------------------------------- variance_scaling


def _loglog_fit(x: np.ndarray, y: np.ndarray, confidence: float) -> dict[str, float]:
    fit = _quiet(stats.linregress, np.log(x), np.log(y))
    half = float(stats.t.ppf((1 + confidence) / 2, len(x) - 2)) * float(fit.stderr)
    k = float(fit.slope)
    return {"exponent": k, "ci_low": k - half, "ci_high": k + half, "r_squared": float(fit.rvalue**2)}


class VarianceScaling(BaseModel):
    """Claim (PAPER.md §3 batch, Prop. 21): predicted AND observed Var[K_T] both scale like b^k, k = -1.

    Per sweep value (the batch size): observed = mean over init seeds of the unbiased variance of
    K_T across sampling seeds (as ``power_law``), predicted = mean over runs of the predicted
    Var[K_T] (as ``variance_prediction``). ``linregress`` fits log(variance) on log(sweep) for
    each; CI = k ± t((1 + confidence)/2, n - 2) stderr. Passes iff BOTH intervals reach
    ``expected_exponent`` ± ``exponent_margin``, exclude 0 and are at most ``max_ci_width`` wide.
    The statistic is the observed exponent; the predicted one and the per-value ratios are in the
    sentence and details.

    Thresholds, fixed before any run: those of ``suites/implications/batch_size.yaml``
    (expected -1, 95%, width <= 3), so the observed half is the same test as that claim and the
    two can be read side by side; and ``exponent_margin = 0.1``, because the predicted variance is
    nearly noise-free (its CI can be narrower than 0.01) while Prop. 21's 1/b is exact only at
    fixed weights: trajectories (E[K_T], the path of beta^2) differ across b and expm1 bends the
    log. ±0.1 over the sweep's factor of 16 in b is a 32% change of variance, far below what a
    variance from <= 16 seeds resolves (95% chi-square interval: a factor of 9 at df = 7).
    """

    model_config = ConfigDict(extra="forbid")
    needs_record: ClassVar[tuple[str, ...]] = ("sde",)

    test: Literal["variance_scaling"] = "variance_scaling"
    expected_exponent: float = Field(-1.0, allow_inf_nan=False)
    exponent_margin: float = Field(0.1, ge=0)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    max_ci_width: float = Field(3.0, gt=0)

    def check_design(
        self, *, sweep_values: int, init_seeds: int, sampling_seeds: int, records_per_run: int
    ) -> str | None:
        """Return why the planned design can never pass, or None if it can."""
        if sweep_values < 3:
            return f"variance_scaling needs at least 3 sweep values to fit a slope, but the design has {sweep_values}."
        if sampling_seeds < 2:
            return (
                f"variance_scaling needs at least 2 sampling seeds for a variance, but the design has {sampling_seeds}."
            )
        if records_per_run < 2:
            return f"variance_scaling integrates beta^2 over records, but the design gives {records_per_run} per run."
        return None

    def evaluate(self, records: pd.DataFrame) -> AssertionResult:
        """Fit both variance-vs-sweep exponents on log-log axes."""
        runs = _sde_runs(records, self.test)
        if runs["sweep_value"].isna().any():
            raise AssertionDataError("variance_scaling needs a sweep (the batch size) on every run.")
        per = []
        for value, g in runs.groupby("sweep_value", sort=True):
            cells = g.groupby("init_seed")["K_T"].agg(["var", "count"])
            if (cells["count"] < 2).any():
                raise AssertionDataError(
                    f"variance_scaling needs 2 or more sampling seeds per init seed, but sweep value {_g(value)} has 1."
                )
            per.append(
                {
                    "sweep_value": float(value),
                    "observed_var": float(cells["var"].mean()),
                    "predicted_var": float(g["predicted_var"].mean()),
                    "n_runs": len(g),
                }
            )
        if len(per) < 3:
            raise AssertionDataError(f"variance_scaling needs at least 3 sweep values, but records have {len(per)}.")
        x = np.array([p["sweep_value"] for p in per])
        if (x <= 0).any():
            raise AssertionDataError("variance_scaling needs positive sweep values to take their log.")
        fits = {}
        for key in ("observed", "predicted"):
            y = np.array([p[f"{key}_var"] for p in per])
            if (y <= 0).any():
                raise AssertionDataError(f"variance_scaling needs a positive {key} variance at every sweep value.")
            f = _loglog_fit(x, y, self.confidence)
            width = f["ci_high"] - f["ci_low"]
            k0, m = self.expected_exponent, self.exponent_margin
            f["reasons"] = _failed(
                (f"CI misses {_g(k0)} ± {_g(m)}", not (f["ci_low"] <= k0 + m and k0 - m <= f["ci_high"])),
                ("CI contains 0", f["ci_low"] <= 0 <= f["ci_high"]),
                ("CI too wide", not width <= self.max_ci_width),
            )
            f["passed"] = not f["reasons"]
            fits[key] = f
        for p in per:
            p["ratio"] = p["observed_var"] / p["predicted_var"]
        passed = fits["observed"]["passed"] and fits["predicted"]["passed"]
        o, pr = fits["observed"], fits["predicted"]
        ratios = [p["ratio"] for p in per]
        sentence = (
            f"Var[K_T] scales as {_sweep_name(records)}^k: observed k = {_g(o['exponent'], 2)} "
            f"({_ci(o['ci_low'], o['ci_high'], self.confidence, 2)}), predicted k = {_g(pr['exponent'], 2)} "
            f"({_ci(pr['ci_low'], pr['ci_high'], self.confidence, 2)}); needed for both: reaches "
            f"{_g(self.expected_exponent)} ± {_g(self.exponent_margin)}, excludes 0, width <= "
            f"{_g(self.max_ci_width)}; observed/predicted "
            f"variance from {_g(min(ratios), 2)} to {_g(max(ratios), 2)} over {len(per)} sweep values — "
            f"{_verdict(passed)}"
            + _reasons([f"observed: {r}" for r in o["reasons"]] + [f"predicted: {r}" for r in pr["reasons"]])
            + "."
        )
        return AssertionResult(
            test=self.test,
            passed=passed,
            statistic=o["exponent"],
            statistic_name="observed_variance_exponent",
            threshold=self.expected_exponent,
            pvalue=None,
            ci_low=_finite_or_none(o["ci_low"]),
            ci_high=_finite_or_none(o["ci_high"]),
            confidence=self.confidence,
            effect_size=_finite_or_none(pr["exponent"]),
            effect_size_name="predicted_variance_exponent",
            n=len(per),
            sentence=sentence,
            details={"per_sweep_value": per, "observed_fit": o, "predicted_fit": pr},
        )


# --------------------------------------------------------------------------- init_scaling


class InitScaling(BaseModel):
    """Claim (PAPER.md §3 init): at init sigma_max of each m x n layer is about s (sqrt m + sqrt n).

    At each run's first record, ratio_l = sigma_l / sigma_init_theory_l (the engine records the
    prediction with ``record: [init]``, s the entry std of the init scheme). Per layer, the mean
    ratio over all runs (sweep values pooled: the ratio is scale-free) gets a Student-t
    ``confidence`` interval. Passes iff every layer's interval lies inside [1 - ``tolerance``,
    1 + ``tolerance``]; the worst layer is reported.

    Thresholds, fixed before any run: ``tolerance = 0.05``. s(sqrt m + sqrt n) is the
    large-matrix edge; at finite size sigma_max sits below it by the Tracy-Widom term,
    relative shift (1/sqrt m + 1/sqrt n)^(1/3) TW / (2 (sqrt m + sqrt n)) with E[TW1] = -1.21,
    sd 1.27 (Johnstone 2001): under 1.1% for the MLPs' hidden layers, but -2.3% with sd 2.4% per
    draw for the 10 x 256 output layer. A 5% band is "about" in the paper's sense and fails a
    prediction off by more than 5%; for the output layer, whose 12-run t interval reaches ~1.8%
    below its mean, the criterion sits near its edge (the quick profile measured 0.965, CI
    [0.947, 0.982]: a finite-size shortfall, reported, not tuned away). Convolutions with few
    input channels are smaller still (32 x 9 predicts -6%): keep them out of this claim.
    """

    model_config = ConfigDict(extra="forbid")
    needs_record: ClassVar[tuple[str, ...]] = ("init",)

    test: Literal["init_scaling"] = "init_scaling"
    tolerance: float = Field(0.05, gt=0, lt=1)
    confidence: float = Field(0.95, gt=0.5, lt=1)

    def check_design(
        self, *, sweep_values: int, init_seeds: int, sampling_seeds: int, records_per_run: int
    ) -> str | None:
        """Return why the planned design can never pass, or None if it can."""
        n = sweep_values * init_seeds * sampling_seeds
        if n < 3:
            return f"init_scaling needs at least 3 runs for its t intervals, but the design has {n}."
        return None

    def evaluate(self, records: pd.DataFrame) -> AssertionResult:
        """Compare every layer's sigma_max at init with s (sqrt m + sqrt n)."""
        layers = sorted(
            int(c.rsplit("_", 1)[1])
            for c in records.columns
            if c.startswith("sigma_init_theory_") and c.rsplit("_", 1)[1].isdigit()
        )
        if not layers:
            raise AssertionDataError("init_scaling needs sigma_init_theory_<l> columns; add 'init' to scenario.record.")
        _check_frame(records, self.test, "sigma_0", ["run", "step", *(f"sigma_{i}" for i in layers)])
        first = records[records["step"] == records.groupby("run")["step"].transform("min")]
        first = first.drop_duplicates("run")
        if len(first) < 2:
            raise AssertionDataError(f"init_scaling needs at least 2 runs, but records have {len(first)}.")
        per_layer = []
        for i in layers:
            ratio = (first[f"sigma_{i}"] / first[f"sigma_init_theory_{i}"]).to_numpy(dtype=float)
            if not np.isfinite(ratio).all():
                raise AssertionDataError(f"init_scaling needs finite sigma_{i} and its prediction at the first record.")
            mean, low, high = _t_interval(ratio, self.confidence)
            per_layer.append(
                {
                    "layer": i,
                    "mean_ratio": mean,
                    "ci_low": low,
                    "ci_high": high,
                    "sd": float(np.std(ratio, ddof=1)),
                    "passed": bool(low >= 1 - self.tolerance and high <= 1 + self.tolerance),
                }
            )
        worst, passed = _deciding(per_layer, lambda r: max(abs(r["ci_low"] - 1), abs(r["ci_high"] - 1)))
        means = ", ".join(f"{_g(r['mean_ratio'])}" for r in per_layer)
        sentence = (
            f"At init sigma_max / s(sqrt m + sqrt n) per layer = [{means}] over {len(first)} runs; worst layer "
            f"{worst['layer']}: {_g(worst['mean_ratio'])} ({_ci(worst['ci_low'], worst['ci_high'], self.confidence)}, "
            f"needed within [{_g(1 - self.tolerance)}, {_g(1 + self.tolerance)}]) — {_verdict(passed)}."
        )
        return AssertionResult(
            test=self.test,
            passed=passed,
            statistic=worst["mean_ratio"],
            statistic_name="sigma_over_theory_worst_layer",
            threshold=self.tolerance,
            pvalue=None,
            ci_low=_finite_or_none(worst["ci_low"]),
            ci_high=_finite_or_none(worst["ci_high"]),
            confidence=self.confidence,
            effect_size=_finite_or_none(worst["mean_ratio"] - 1),
            effect_size_name="relative_deviation_worst_layer",
            n=len(first),
            sentence=sentence,
            details={"layers": per_layer},
        )


# --------------------------------------------------------------------------- registry

AssertionSpec = Annotated[
    MonotoneTrend
    | GrowthTrend
    | PowerLaw
    | Invariance
    | SDEAgreement
    | VariancePrediction
    | VarianceScaling
    | InitScaling,
    Field(discriminator="test"),
]

ASSERTIONS: dict[str, type[BaseModel]] = {
    "monotone_trend": MonotoneTrend,
    "growth_trend": GrowthTrend,
    "power_law": PowerLaw,
    "invariance": Invariance,
    "sde_agreement": SDEAgreement,
    "variance_prediction": VariancePrediction,
    "variance_scaling": VarianceScaling,
    "init_scaling": InitScaling,
}
