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
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats

from lipbench.errors import LipbenchError

__all__ = [
    "ASSERTIONS",
    "AssertionDataError",
    "AssertionResult",
    "AssertionSpec",
    "GrowthTrend",
    "Invariance",
    "MonotoneTrend",
    "PowerLaw",
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
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

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


def _jsonable(value: Any) -> Any:
    """Convert numpy scalars and containers to plain JSON types; NaN and inf become None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


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
        """Test the monotone trend of the final quantity over the sweep."""
        q = self.quantity
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
        sentence = (
            f"Final {q} {verb} with {_sweep_name(records)}: Spearman rho = {_g(rho, 2)} "
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

        worst = min(per_group, key=lambda r: (r["passed"], -r["pvalue"], r["ci_low"]))
        passed = all(r["passed"] for r in per_group)
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
    dominance_p = float(stats.f.sf(f_scaled, k - 1, int(round(k * (m - 1)))))
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
        worst = min(per_group, key=lambda r: (r["passed"], -np.nan_to_num(r["ci_high"], nan=np.inf)))
        passed = all(r["passed"] for r in per_group)
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


# --------------------------------------------------------------------------- registry

AssertionSpec = Annotated[MonotoneTrend | GrowthTrend | PowerLaw | Invariance, Field(discriminator="test")]

ASSERTIONS: dict[str, type[BaseModel]] = {
    "monotone_trend": MonotoneTrend,
    "growth_trend": GrowthTrend,
    "power_law": PowerLaw,
    "invariance": Invariance,
}
