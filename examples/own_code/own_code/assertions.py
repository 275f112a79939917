"""A test of this package's own, registered with lipbench as the plugin `assertion.sampling_noise`.

lipbench's `invariance` bounds the spread of K across sampling seeds from above (the sampling seed
barely matters); this test bounds it from below (the sampling seed matters at all). Together they
bracket the mini-batch noise of the loop: a loop whose batches ignore the sampling seed passes
neither, and this one says so as a FAIL. It builds on the helpers every lipbench assertion uses
(`lipbench.assertions.base`) and imports no torch, so suites that name it validate quickly.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field
from scipy import stats

from lipbench.assertions.base import (
    Assertion,
    AssertionResult,
    Decision,
    Design,
    crossed_within_variance,
    edge_scenarios,
    effective_df,
    fmt,
    jackknife_over_sampling_seeds,
    log_variance_moments,
    pct,
    pooled_excess_kurtosis,
    sweep_name,
    unit_grid,
    verdict_word,
)
from lipbench.assertions.variance import simulate_relative_spread


class SamplingNoise(Assertion):
    """Claim: with the init seed fixed, different sampling seeds end at measurably different values.

    In the paper's SDE view of training (§7) the mini-batch gradient noise is the diffusion term of
    log K, so runs that differ only in their sampling seed drift apart. Statistic: the within-init
    coefficient of variation (CV) of the final quantity over sampling seeds, from the crossed init x
    sampling design as `invariance` computes it (Satterthwaite's degrees of freedom, narrowed by the
    excess kurtosis). Passes iff its one-sided (1 - ``alpha``) lower bound is above
    ``min_relative_spread``: the lower of the chi-square bound and a t bound from the jackknife of
    log CV^2 over sampling seeds, which keeps a skewed K from passing too often (``lipbench
    calibrate``: at alpha 5%, 0.5% false passes under skewed noise, 8.8% with the chi-square bound
    alone). With a sweep every sweep value must pass and the worst is reported.
    Zero spread (every sampling seed gives the same run) is this claim's negation: a FAIL.
    ``alternative_cv`` is the CV at which ``check_design`` asks for power 0.8.
    """

    test: Literal["sampling_noise"] = "sampling_noise"
    quantity: str = Field("K", min_length=1)
    min_relative_spread: float = Field(0.002, gt=0)
    alpha: float = Field(0.05, gt=0, le=0.5)
    alternative_cv: float = Field(0.01, gt=0)

    def structural_problem(self, design: Design) -> str | None:
        if design.sampling_seeds < 3:
            return f"sampling_noise needs at least 3 sampling seeds, but the design has {design.sampling_seeds}."
        if self.alternative_cv <= self.min_relative_spread:
            return "sampling_noise needs alternative_cv above min_relative_spread."
        return None

    def extract(self, records) -> dict[str, Any]:
        grid, x, info = unit_grid(records, self.test, self.quantity, positive=True)
        return {"y": grid[None], "x": x, **info}

    def decide(self, data: dict[str, Any]) -> Decision:
        y = np.asarray(data["y"], dtype=float)  # [R, sweep, init, sampling]
        rel = y / y.mean(axis=-1, keepdims=True)
        cv2, df = crossed_within_variance(rel)  # [R, sweep]
        df = np.minimum(df, effective_df(df, pooled_excess_kurtosis(rel), y.shape[-2] * y.shape[-1]))
        cv = np.sqrt(cv2)
        low = np.sqrt(df * cv2 / stats.chi2.ppf(1 - self.alpha, df))
        high = np.sqrt(df * cv2 / stats.chi2.ppf(self.alpha, df))
        # A skewed K makes the chi-square lower bound too high (the kurtosis of few runs is underestimated):
        # the bound is also taken from the jackknife of log CV^2 over sampling seeds, and the lower one kept.
        se_jack, df_jack = jackknife_over_sampling_seeds(_log_cv2, y)
        with np.errstate(all="ignore"):
            low_jack = np.exp((np.log(cv2) - stats.t.isf(self.alpha, max(df_jack, 1)) * se_jack) / 2)
        low = np.fmin(low, low_jack)  # fmin: a NaN jackknife (equal runs) leaves the chi-square bound
        worst = np.argmin(low, axis=-1)
        pick = np.arange(y.shape[0])
        se = cv * np.sqrt(log_variance_moments(df)[1]) / 2  # delta method on log cv
        return Decision(
            passed=np.all(low > self.min_relative_spread, axis=-1),
            statistic=cv[pick, worst],
            ci_low=low[pick, worst],
            ci_high=high[pick, worst],
            pvalue=None,
            tracked={"within_init_cv": (cv[pick, worst], se[pick, worst], df[pick, worst])},
            extras={"worst": worst, "cv": cv, "low": low, "df": df},
        )

    def tracked_meta(self) -> dict[str, tuple[str, float, float | None]]:
        return {"within_init_cv": ("higher", self.min_relative_spread, None)}

    def result(self, records, data: dict[str, Any], d: Decision) -> AssertionResult:
        w = int(d.extras["worst"][0])
        cv, low, df = float(d.statistic[0]), float(d.ci_low[0]), float(d.extras["df"][0][w])
        passed = bool(d.passed[0])
        x, y = data["x"], np.asarray(data["y"])[0]
        which = "" if x is None else f" (worst of {len(x)} sweep values: {sweep_name(records)} = {fmt(float(x[w]))})"
        figures = (
            f"within-init CV = {pct(cv)} (one-sided {fmt(100 * (1 - self.alpha), 3)}% lower bound {pct(low)}, "
            f"df = {fmt(df, 3)}, needed > {pct(self.min_relative_spread)})"
        )
        if np.all(y[w].max(axis=-1) == y[w].min(axis=-1)):  # equal runs, not a CV rounded to zero
            sentence = (
                f"Every sampling seed gives the same final {self.quantity}{which}: {figures}; the mini-batches do "
                f"not depend on the sampling seed, check that the sampling stream reaches the batch sampler — "
                f"{verdict_word(passed)}."
            )
        else:
            sentence = (
                f"Sampling seed moves final {self.quantity} with the init seed fixed{which}: {figures} — "
                f"{verdict_word(passed)}{'' if passed else ' (lower bound not above the floor)'}."
            )
        groups = [
            {
                "sweep_value": None if x is None else float(x[s]),
                "within_cv": float(d.extras["cv"][0][s]),
                "ci_low": float(d.extras["low"][0][s]),
                "df": float(d.extras["df"][0][s]),
            }
            for s in range(y.shape[0])
        ]
        return self.make_result(
            d,
            statistic_name="within_init_cv",
            threshold=self.min_relative_spread,
            confidence=1 - 2 * self.alpha,
            effect_size=cv / self.min_relative_spread,
            effect_size_name="cv_over_floor",
            n=int(y[w].size),
            sentence=sentence,
            details={
                "groups": groups,
                "data": {
                    "y": y.tolist(),
                    "x": None if x is None else [float(v) for v in x],
                    "init_seeds": data["init_seeds"],
                    "sampling_seeds": data["sampling_seeds"],
                },
            },
        )

    # ----------------------------------------------------------------- generative model (check_design, calibrate)

    def fit(self, data: dict[str, Any]) -> dict[str, Any]:
        y = np.asarray(data["y"], dtype=float)[None]
        cv2, _ = crossed_within_variance(y / y.mean(axis=-1, keepdims=True))
        init_means = y.mean(axis=-1) / y.mean(axis=(-2, -1))[..., None]
        init_cv = float(np.std(init_means, ddof=1)) if y.shape[-2] > 1 else 0.0
        return {"cv": float(np.sqrt(cv2.min())), "init_cv": init_cv, "mean": float(y.mean())}

    def default_model(self, design: Design) -> dict[str, Any]:
        return {"cv": self.alternative_cv, "init_cv": 4 * self.alternative_cv, "mean": 1.0}

    def scenarios(self, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return edge_scenarios(params, "cv", self.min_relative_spread, self.alternative_cv)

    def simulate(
        self, design: Design, params: dict[str, Any], rng: np.random.Generator, reps: int, family: str
    ) -> dict[str, Any]:
        return simulate_relative_spread(design, params, rng, reps, family)  # lipbench's invariance model


def _log_cv2(y: np.ndarray) -> np.ndarray:
    """log of the within-init squared CV of y[..., sweep, init, sampling] (the jackknife's statistic)."""
    with np.errstate(all="ignore"):
        return np.log(crossed_within_variance(y / y.mean(axis=-1, keepdims=True))[0])
