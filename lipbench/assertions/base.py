"""What every assertion shares: the result object, tracked statistics, the design, records helpers.

An assertion is a pydantic params model (the ``assertion:`` block of a suite file) that

- states the designs it can never decide on (``structural_problem``) and the generative model of
  its units (``fit``, ``default_model``, ``scenarios``, ``simulate``), from which the design check
  (``lipbench.design.check_design``) simulates its power before any training and ``lipbench
  calibrate`` its error rates;
- turns records into its *data*: a few numpy arrays of the independent units it decides on
  (``extract``), and decides, vectorised over replicates, from such arrays (``decide``);
- wraps both into an ``AssertionResult`` (``evaluate``).

``decide`` is what ``evaluate``, the baseline comparison and the calibration all call, so the
statistic a verdict rests on is the statistic a baseline tracks and the one whose error rates
are measured. Records are a long frame: one row per recorded step of each run, with the columns
``run``, ``step``, ``sweep_value`` (NaN without a sweep), ``init_seed``, ``sampling_seed`` and the
recorded quantities.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy import special, stats

from lipbench.errors import LipbenchError
from lipbench.numbers import fmt
from lipbench.records import jsonable

if TYPE_CHECKING:
    import pandas as pd

RNG_SEED = 20250623  # fixed seed of every resampling and simulation: verdicts reproduce
POWER_TARGET = 0.8  # check_design refuses a design whose power at the stated alternative is below
DESIGN_REPLICATES = 400  # simulated replicates behind check_design's power (Monte-Carlo sd <= 0.025)
NOISE_FAMILIES = ("normal", "skewed")
# A spread at or below this fraction of its level is rounding, not variation (float32's epsilon is 1.2e-7):
# degenerate data (identical draws, paths or values), an ERROR, never a PASS or a FAIL.
ROUNDING = 1e-6
# A test that conditions on the init draws (a permutation within blocks, a variance pooled within init
# seeds) speaks for the draws it ran, and its sentence says so; a claim about networks in general needs
# at least this many of them, since one draw cannot show that another would agree.
MIN_INIT_DRAWS = 2


class AssertionDataError(LipbenchError, ValueError):
    """Records that do not allow an assertion (missing column, too few runs, degenerate values), as one line."""


# --------------------------------------------------------------------------- tracked statistics


@dataclass(frozen=True)
class Tracked:
    """A statistic the verdict rests on, with its standard error and degrees of freedom.

    ``better``: "higher", "lower" or "closer" (to ``target``). ``se`` and ``df`` come from the
    assertion's own unit of replication (``df`` = inf for a standard error from a known sampling
    distribution); ``se`` is None when the design gives no estimate (one block, one run).
    ``scale`` is what the practical-size rule of a baseline comparison is a fraction of.
    """

    name: str
    value: float
    se: float | None
    df: float | None
    better: str
    scale: float
    target: float | None = None
    unit: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: jsonable(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Tracked:
        d = {k: d.get(k) for k in (f.name for f in dataclasses.fields(cls)) if k in d}
        d["value"] = math.nan if d.get("value") is None else float(d["value"])
        if d.get("df") is None and d.get("se") is not None:
            d["df"] = math.inf
        return cls(**d)


# --------------------------------------------------------------------------- result object


@dataclass(frozen=True)
class AssertionResult:
    """Verdict of one assertion on one set of records.

    ``statistic`` is the headline number (``statistic_name``), ``threshold`` what it was held
    against, ``pvalue`` the p-value the verdict used (if any), ``ci_low``/``ci_high`` its interval
    at ``confidence``, ``effect_size`` a size independent of the sample size, ``n`` the number of
    independent units behind the statistic, ``sentence`` one sentence with the figures and the
    verdict, ``tracked`` the statistics a baseline comparison follows, ``details`` small JSON-able
    extras for reports (and ``details["data"]``: the units the verdict was decided on).
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
    tracked: tuple[Tracked, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict in field order, with NaN and infinities as None."""
        out = {f.name: jsonable(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "tracked"}
        out["tracked"] = [t.to_dict() for t in self.tracked]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AssertionResult:
        """Rebuild a result from ``to_dict()`` output (None headline numbers become NaN)."""
        names = [f.name for f in dataclasses.fields(cls)]
        required = [n for n in names if n != "tracked"]
        missing = [k for k in required if k not in d]
        unknown = [k for k in d if k not in names]
        if missing or unknown:
            raise ValueError(f"An AssertionResult dict needs the keys {names}; missing {missing}, unknown {unknown}.")
        values = dict(d)
        for key in ("statistic", "threshold"):
            values[key] = math.nan if values[key] is None else float(values[key])
        values["passed"] = bool(values["passed"])
        values["n"] = int(values["n"])
        values["details"] = dict(values["details"] or {})
        values["tracked"] = tuple(Tracked.from_dict(t) for t in values.get("tracked") or ())
        return cls(**values)


# --------------------------------------------------------------------------- design


@dataclass(frozen=True)
class Design:
    """What a claim plans, before any training: sweep values, seeds and records per run."""

    sweep: tuple[float, ...] | None
    init_seeds: int
    sampling_seeds: int
    records_per_run: int
    steps: int = 0

    @property
    def sweep_values(self) -> int:
        return len(self.sweep) if self.sweep else 1

    @property
    def runs(self) -> int:
        return self.sweep_values * self.init_seeds * self.sampling_seeds

    def x(self) -> np.ndarray:
        """The sweep values; one NaN when there is no sweep."""
        return np.asarray(self.sweep if self.sweep else [math.nan], dtype=float)


# --------------------------------------------------------------------------- formatting


def pct(x: float) -> str:
    return f"{fmt(100 * x, 2)}%" if math.isfinite(x) else "undefined"


def ci_text(low: float | None, high: float | None, confidence: float, digits: int = 3) -> str:
    return f"{fmt(100 * confidence, 3)}% CI [{fmt(low, digits)}, {fmt(high, digits)}]"


def verdict_word(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def failed(*checks: tuple[str, bool]) -> list[str]:
    """Names of the failed criteria, in order."""
    return [name for name, bad in checks if bad]


def reasons_text(reasons: list[str]) -> str:
    return f" ({', '.join(reasons)})" if reasons else ""


def finite_or_none(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def quiet(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a numpy/scipy function with its degenerate-data warnings silenced (results carry NaN)."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return func(*args, **kwargs)


# --------------------------------------------------------------------------- records helpers


def sweep_name(records: pd.DataFrame) -> str:
    return str(records.attrs.get("sweep_name") or "the sweep value")


def at_rounding_level(spread: np.ndarray | float, level: np.ndarray | float) -> np.ndarray:
    """Whether a spread (sd, or a range) is no more than rounding relative to its level (``ROUNDING``)."""
    level = np.abs(np.asarray(level, dtype=float))
    return np.asarray(spread, dtype=float) <= ROUNDING * np.where(level > 0, level, 1.0)


def repeated_units(units: np.ndarray) -> tuple[int, int] | None:
    """The first pair (i, j) of units (rows of ``units[unit, ...]``) that are equal up to rounding, else None.

    Two runs or draws that should be independent but agree to a millionth repeat one draw: counting
    them twice narrows an interval (or gives a zero standard error) that nothing supports.
    """
    flat = np.asarray(units, dtype=float).reshape(len(units), -1)
    level = np.abs(flat).max(axis=1)
    for i in range(len(flat)):
        same = at_rounding_level(np.abs(flat[i + 1 :] - flat[i]).max(axis=1), np.maximum(level[i + 1 :], level[i]))
        if same.any():
            return i, i + 1 + int(np.argmax(same))
    return None


def too_few_init_draws(test: str, design: Design) -> str | None:
    """Why a design has too few init draws for a claim about networks in general (``MIN_INIT_DRAWS``)."""
    if design.init_seeds < MIN_INIT_DRAWS:
        return (
            f"{test} conditions on the init draws it runs, so a claim about networks in general needs at least "
            f"{MIN_INIT_DRAWS} init seeds, but the design has {design.init_seeds}; add init seeds."
        )
    return None


def draws_text(n_init: int) -> str:
    """How a conditional verdict names the population it speaks for."""
    return f"for these {n_init} init draw{'s' if n_init != 1 else ''}"


def check_frame(records: pd.DataFrame, test: str, quantity: str, columns: Sequence[str]) -> None:
    """Raise AssertionDataError unless records hold the columns and a numeric quantity."""
    import pandas as pd  # imported here, not above, so that the suite schema loads without pandas

    if not isinstance(records, pd.DataFrame):
        raise AssertionDataError(f"{test} needs records as a pandas DataFrame, not {type(records).__name__}.")
    if records.empty:
        raise AssertionDataError(f"{test} received no records.")
    missing = [c for c in [*columns, quantity] if c not in records.columns]
    if missing:
        numeric = [str(c) for c in records.select_dtypes("number").columns]
        raise AssertionDataError(
            f"{test} needs the column(s) {missing} in records; numeric columns present: {numeric}."
        )
    if records[quantity].dtype == bool or not pd.api.types.is_numeric_dtype(records[quantity]):
        raise AssertionDataError(f"{test} needs a numeric quantity, but column '{quantity}' is not numeric.")
    if "step" in records and records["step"].isna().any():
        raise AssertionDataError(f"{test} needs a step on every record, but some steps are missing.")


def at_record(records: pd.DataFrame, which: str) -> pd.DataFrame:
    """Each run's first ('initial') or last ('final') record."""
    records = records.reset_index(drop=True)  # idxmax labels must be unique
    pick = records.groupby("run", sort=True)["step"]
    return records.loc[pick.idxmin() if which == "initial" else pick.idxmax()].reset_index(drop=True)


def unit_grid(
    records: pd.DataFrame, test: str, quantity: str, *, at: str = "final", positive: bool = False
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """The judged value of every run as an array y[sweep, init seed, sampling seed], and the sweep values.

    A complete crossed design is required (every sweep value x init seed x sampling seed once):
    the tests read the design's structure from the array's axes. Refuses non-finite values.
    """
    check_frame(records, test, quantity, ["run", "step", "sweep_value", "init_seed", "sampling_seed"])
    rows = at_record(records, at)
    values = rows[quantity].to_numpy(dtype=float)
    bad = rows.loc[~np.isfinite(values), "run"].tolist()
    if bad:
        raise AssertionDataError(
            f"{test} needs a finite {at} {quantity}, but run(s) {bad[:3]} have a missing or infinite value."
        )
    if positive and (values <= 0).any():
        raise AssertionDataError(f"{test} needs a positive {at} {quantity}, but some runs have {quantity} <= 0.")
    return crossed_grid(rows, quantity, test)


def crossed_grid(rows: pd.DataFrame, column: str, test: str) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """One row per run as an array y[sweep, init seed, sampling seed] of `column`, the sweep values
    (None without a sweep) and the seeds; refuses a run that repeats another's seeds and missing runs."""
    values = rows[column].to_numpy(dtype=float)
    sweep = rows["sweep_value"].astype(float)
    if sweep.isna().any() and not sweep.isna().all():
        raise AssertionDataError(f"{test} found runs with and without a sweep_value in the same records.")
    sweep_key = sweep.fillna(-math.inf)
    xs = np.sort(sweep_key.unique())
    inits = np.sort(rows["init_seed"].unique())
    samps = np.sort(rows["sampling_seed"].unique())
    grid = np.full((len(xs), len(inits), len(samps)), np.nan)
    count = np.zeros(grid.shape, dtype=int)
    ix = np.searchsorted(xs, sweep_key.to_numpy())
    ii = np.searchsorted(inits, rows["init_seed"].to_numpy())
    jj = np.searchsorted(samps, rows["sampling_seed"].to_numpy())
    np.add.at(count, (ix, ii, jj), 1)
    grid[ix, ii, jj] = values
    if (count > 1).any():
        _, i, j = np.argwhere(count > 1)[0]
        raise AssertionDataError(
            f"{test} found two runs with the same sweep value, init seed {inits[i]} and sampling seed {samps[j]}: "
            "a run that repeats another's draws is not an independent unit."
        )
    if (count == 0).any():
        raise AssertionDataError(
            f"{test} needs every sweep value x init seed x sampling seed once, but {int((count == 0).sum())} "
            "combinations have no run."
        )
    x = None if sweep.isna().all() else xs
    info = {"init_seeds": [int(i) for i in inits], "sampling_seeds": [int(j) for j in samps]}
    return grid, x, info


# --------------------------------------------------------------------------- shared statistics


def log_variance_moments(df: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Bias and variance of log(s^2) for a normal sample variance with df degrees of freedom.

    E[log s^2] = log sigma^2 + psi(df/2) - log(df/2), Var[log s^2] = psi_1(df/2) (trigamma).
    """
    half = np.asarray(df, dtype=float) / 2
    return special.digamma(half) - np.log(half), special.polygamma(1, half)


def crossed_within_variance(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Within-init variance over sampling seeds, and its degrees of freedom, for y[..., init, sampling].

    Sampling seed j is the same seed under every init seed, so the design is crossed: a sampling
    seed's effect shared across init seeds is counted once (two-way ANOVA without replication):
    MS_s (df J-1) and MS_res (df (I-1)(J-1)); the within-init variance sigma_s^2 + sigma_e^2 is
    (MS_s + (I-1) MS_res) / I, with Satterthwaite's degrees of freedom. With one init seed it is
    the ordinary variance (df J-1).
    """
    n_init, n_samp = y.shape[-2], y.shape[-1]
    if n_init == 1:
        return np.var(y[..., 0, :], axis=-1, ddof=1), np.full(y.shape[:-2], n_samp - 1.0)
    grand = y.mean(axis=(-2, -1), keepdims=True)
    init_means = y.mean(axis=-1, keepdims=True)
    samp_means = y.mean(axis=-2, keepdims=True)
    ms_s = n_init * np.sum((samp_means - grand) ** 2, axis=(-2, -1)) / (n_samp - 1)
    resid = y - init_means - samp_means + grand
    df_res = (n_init - 1) * (n_samp - 1)
    ms_res = np.sum(resid**2, axis=(-2, -1)) / df_res
    a_s, a_r = 1 / n_init, (n_init - 1) / n_init
    var = a_s * ms_s + a_r * ms_res
    with np.errstate(all="ignore"):
        df = var**2 / ((a_s * ms_s) ** 2 / (n_samp - 1) + (a_r * ms_res) ** 2 / df_res)
    df = np.where(np.isfinite(df), df, n_init * (n_samp - 1.0))
    return var, np.clip(df, 1.0, n_init * (n_samp - 1.0))


def pooled_excess_kurtosis(y: np.ndarray) -> np.ndarray:
    """Excess kurtosis of the within-init deviations y[..., sweep, init, sampling], pooled, clipped at 0.

    Heavy tails inflate the variance of a sample variance (Var[s^2] = sigma^4 (2/df + kappa/n)); the
    tests that rest on a variance widen their intervals by this estimate.
    """
    dev = y - y.mean(axis=-1, keepdims=True)
    scale = np.mean(dev**2, axis=-1, keepdims=True)
    with np.errstate(all="ignore"):
        z = np.where(scale > 0, dev / np.sqrt(scale), 0.0)
    m2 = np.mean(z**2, axis=(-3, -2, -1))
    m4 = np.mean(z**4, axis=(-3, -2, -1))
    with np.errstate(all="ignore"):
        kappa = np.where(m2 > 0, m4 / m2**2 - 3.0, 0.0)
    return np.clip(kappa, 0.0, None)


def jackknife_over_sampling_seeds(statistic, y: np.ndarray) -> tuple[np.ndarray, int]:
    """Jackknife standard error of ``statistic(y)`` over the sampling seeds (the last axis of y), and its df.

    A sampling seed is an independently drawn unit of the crossed design (it is shared by every init
    seed and sweep value, so leaving one out removes all of its runs). The jackknife of a variance-based
    statistic does not assume normal runs (it holds under skew and heavy tails, where the trigamma
    variance of log s^2 plus a pooled kurtosis estimate from few runs falls short); its df are J - 1.
    Returns NaN standard errors with fewer than 3 sampling seeds.
    """
    n_samp = y.shape[-1]
    if n_samp < 3:
        return np.full(np.shape(statistic(y)), np.nan), max(0, n_samp - 1)
    with np.errstate(all="ignore"):
        loo = np.stack([statistic(np.delete(y, j, axis=-1)) for j in range(n_samp)], axis=-1)
        spread = np.sum((loo - loo.mean(axis=-1, keepdims=True)) ** 2, axis=-1)
    return np.sqrt((n_samp - 1) / n_samp * spread), n_samp - 1


def effective_df(df: np.ndarray, kappa: np.ndarray, n: float) -> np.ndarray:
    """Degrees of freedom of a variance whose sampling variance is inflated by excess kurtosis kappa."""
    return 2.0 / (2.0 / np.asarray(df, dtype=float) + np.asarray(kappa, dtype=float)[..., None] / n)


def wilson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (scipy's binomtest)."""
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def noise(rng: np.random.Generator, shape: tuple[int, ...], family: str) -> np.ndarray:
    """Standardised noise (mean 0, sd 1): 'normal', or 'skewed' (a log-normal with shape 0.5:
    skewness 1.75, excess kurtosis 5.9), the stress case of the calibration."""
    if family == "normal":
        return rng.standard_normal(shape)
    if family == "skewed":
        s = 0.5
        z = np.exp(s * rng.standard_normal(shape))
        mean, sd = math.exp(s * s / 2), math.sqrt((math.exp(s * s) - 1) * math.exp(s * s))
        return (z - mean) / sd
    raise ValueError(f"`family` must be one of {NOISE_FAMILIES}, not {family!r}.")


# --------------------------------------------------------------------------- the base class


def edge_scenarios(params: dict[str, Any], key: str, null: Any, alternative: Any) -> dict[str, dict[str, Any]]:
    """The model with `key` at the claim's edge (null), at the suite's alternative, and as fitted."""
    return {"null": {**params, key: null}, "alternative": {**params, key: alternative}, "fitted": params}


@dataclass
class Decision:
    """What ``decide`` returns for R replicates: pass flags, the headline statistic and its interval,
    the tracked statistics (name -> (value, se, df) arrays), and per-replicate extras for the sentence."""

    passed: np.ndarray
    statistic: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    pvalue: np.ndarray | None
    tracked: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)


class Assertion(BaseModel):
    """Base of every assertion's params model; see the module docstring for the contract."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    needs_record: ClassVar[tuple[str, ...]] = ()

    # ----------------------------------------------------------------- to implement per test

    def structural_problem(self, design: Design) -> str | None:
        """Why a design can never give this test its data (too few seeds, sweep values, records)."""
        return None

    def extract(self, records: pd.DataFrame) -> dict[str, Any]:
        """The arrays of independent units the test decides on (replicate axis of length 1)."""
        raise NotImplementedError

    def decide(self, data: dict[str, Any]) -> Decision:
        """Decide every replicate of ``data`` at once."""
        raise NotImplementedError

    def result(self, records: pd.DataFrame, data: dict[str, Any], decision: Decision) -> AssertionResult:
        """The result object (with its sentence) of one replicate."""
        raise NotImplementedError

    def tracked_meta(self) -> dict[str, tuple[str, float, float | None]]:
        """Per tracked statistic: (better, scale, target)."""
        return {}

    # The calibration's generative models (lipbench.calibration uses them):
    def fit(self, data: dict[str, Any]) -> dict[str, Any]:
        """Parameters of this test's generative model fitted to a stored baseline's units."""
        raise NotImplementedError

    def default_model(self, design: Design) -> dict[str, Any]:
        """Parameters of the generative model when no baseline exists."""
        raise NotImplementedError

    def scenarios(self, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """The generative model's parameters under the null (claim false, at its edge) and under the
        alternative the suite states (claim true): {'null': ..., 'alternative': ...}."""
        raise NotImplementedError

    def simulate(
        self, design: Design, params: dict[str, Any], rng: np.random.Generator, reps: int, family: str
    ) -> dict[str, Any]:
        """R replicates of the data of ``design`` drawn from the generative model."""
        raise NotImplementedError

    # ----------------------------------------------------------------- shared machinery

    def evaluate(self, records: pd.DataFrame) -> AssertionResult:
        """Decide the claim on ``records``: extract the units, decide, build the result."""
        data = self.extract(records)
        decision = self.decide(data)
        return self.result(records, data, decision)

    def tracked_of(self, decision: Decision, index: int = 0) -> tuple[Tracked, ...]:
        """The tracked statistics of one replicate; a statistic without a finite se has neither se nor df."""
        meta = self.tracked_meta()
        out = []
        for name, (value, se, df) in decision.tracked.items():
            s = float(se[index])
            known = math.isfinite(s)
            out.append(
                Tracked(
                    name, float(value[index]), s if known else None, float(df[index]) if known else None, *meta[name]
                )
            )
        return tuple(out)

    def make_result(
        self,
        d: Decision,
        *,
        statistic_name: str,
        threshold: float,
        confidence: float | None,
        effect_size: float | None,
        effect_size_name: str | None,
        n: int,
        sentence: str,
        details: dict[str, Any],
    ) -> AssertionResult:
        """The result of replicate 0 of a decision: what the decision holds (pass, statistic, p-value,
        interval, tracked statistics) is filled in here; non-finite numbers become None."""
        return AssertionResult(
            test=self.test,
            passed=bool(d.passed[0]),
            statistic=float(d.statistic[0]),
            statistic_name=statistic_name,
            threshold=float(threshold),
            pvalue=None if d.pvalue is None else finite_or_none(float(d.pvalue[0])),
            ci_low=finite_or_none(float(d.ci_low[0])),
            ci_high=finite_or_none(float(d.ci_high[0])),
            confidence=confidence,
            effect_size=finite_or_none(effect_size),
            effect_size_name=effect_size_name,
            n=int(n),
            sentence=sentence,
            details=details,
            tracked=self.tracked_of(d),
        )
