"""Trend claims: a quantity moves monotonically with a sweep value; a quantity keeps growing in time."""

from __future__ import annotations

import functools
import itertools
import math
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field
from scipy import stats

from lipbench.assertions.base import (
    RNG_SEED,
    Assertion,
    AssertionDataError,
    AssertionResult,
    Decision,
    Design,
    at_rounding_level,
    check_frame,
    draws_text,
    edge_scenarios,
    failed,
    fmt,
    noise,
    pct,
    quiet,
    reasons_text,
    repeated_units,
    sweep_name,
    too_few_init_draws,
    unit_grid,
    verdict_word,
)

if TYPE_CHECKING:
    import pandas as pd

EXACT_UP_TO = 8  # sweep values up to which the permutation null is enumerated exactly (8! orders)
MONTE_CARLO_NULL = 200_000  # draws of the permutation null beyond that
DEFAULT_RUN_SD = 0.05  # run-to-run sd of the judged quantity (log scale: 5%) when nothing is known
RUN_VAR_FLOOR = 1e-12  # a fitted run variance at or below this is rounding (sd 1e-6 on the log scale)


# --------------------------------------------------------------------------- monotone_trend


@functools.lru_cache(maxsize=64)
def _block_null(levels: int, blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """Null distribution of the sum over blocks of sum d^2 (Spearman's footrule of squares) when each
    block's order is a uniformly random permutation: (values, probabilities), values ascending."""
    if levels <= EXACT_UP_TO:
        ranks = np.arange(levels)
        d2 = np.array([int(np.sum((ranks - np.array(p)) ** 2)) for p in itertools.permutations(range(levels))])
        single = np.bincount(d2).astype(float) / len(d2)
        total = np.array([1.0])
        for _ in range(blocks):
            total = np.convolve(total, single)
        support = np.arange(len(total), dtype=float)
        keep = total > 0
        return support[keep], total[keep]
    rng = np.random.default_rng(RNG_SEED)
    perms = rng.permuted(np.tile(np.arange(levels), (MONTE_CARLO_NULL, blocks, 1)), axis=-1)
    sums = np.sum((perms - np.arange(levels)) ** 2, axis=(-2, -1))
    values, counts = np.unique(sums, return_counts=True)
    return values.astype(float), counts / counts.sum()


def blocked_spearman(y: np.ndarray) -> np.ndarray:
    """Spearman's rho between the sweep position (axis -2) and y, per block: y[..., sweep, block]."""
    ranks = stats.rankdata(y, axis=-2)
    levels = y.shape[-2]
    pos = np.arange(1, levels + 1, dtype=float)[:, None] - (levels + 1) / 2
    centred = ranks - ranks.mean(axis=-2, keepdims=True)
    with np.errstate(all="ignore"):
        return np.sum(pos * centred, axis=-2) / np.sqrt(np.sum(pos**2) * np.sum(centred**2, axis=-2))


def blocked_spearman_pvalue(mean_rho: np.ndarray, levels: int, blocks: int, increasing: bool) -> np.ndarray:
    """One-sided p-value of the mean within-block rho under the within-block permutation null."""
    values, probs = _block_null(levels, blocks)
    scale = levels * (levels * levels - 1) / 6.0
    observed = (1.0 - np.asarray(mean_rho)) * scale * blocks  # sum of d^2 that gives this mean rho
    cdf = np.concatenate([[0.0], np.cumsum(probs)])
    if increasing:  # small sums of d^2 are strong increasing trends
        idx = np.searchsorted(values, observed + 1e-7, side="right")
        return np.clip(cdf[idx], 0.0, 1.0)
    idx = np.searchsorted(values, observed - 1e-7, side="left")
    return np.clip(1.0 - cdf[idx], 0.0, 1.0)


class MonotoneTrend(Assertion):
    """Claim: the judged quantity moves monotonically with the sweep value.

    Unit: a block of runs that share their init and sampling seeds (one run per sweep value), so
    that the init draw, which is repeated at every sweep value, is compared only with itself.
    Statistic: the mean over blocks of Spearman's rho between sweep value and quantity; its
    p-value comes from permuting the sweep values within each block (exact below nine sweep
    values, Page's trend test in rank form), which conditions on the init draws: the verdict speaks
    for the draws that were run (its sentence says so), and fewer than 2 are refused. Passes iff
    p < ``alpha``, the mean rho has the claimed sign and ``|rho| >= min_abs_rho``. ``min_effect``
    is the alternative the claim must detect: a
    change of the mean of log quantity (``scale: log``) or of the quantity (``linear``) between the
    extreme sweep values, in equal steps; ``check_design`` refuses a design with power below 0.8
    there. ``at: initial`` judges each run's first record (K_0).
    """

    test: Literal["monotone_trend"] = "monotone_trend"
    quantity: str = Field("K", min_length=1)
    direction: Literal["increasing", "decreasing"]
    alpha: float = Field(0.01, gt=0, le=0.5)
    min_abs_rho: float = Field(0.5, ge=0, le=1)
    min_effect: float = Field(0.2, gt=0)
    scale: Literal["linear", "log"] = "log"
    at: Literal["final", "initial"] = "final"

    @property
    def increasing(self) -> bool:
        return self.direction == "increasing"

    def structural_problem(self, design: Design) -> str | None:
        if design.sweep_values < 2:
            return f"monotone_trend needs at least 2 sweep values, but the design has {design.sweep_values}."
        blocks = design.init_seeds * design.sampling_seeds
        best = float(blocked_spearman_pvalue(np.array(1.0), design.sweep_values, blocks, True))
        if best >= self.alpha:
            return (
                f"monotone_trend with {design.sweep_values} sweep values x {blocks} seed blocks can reach "
                f"p = {fmt(best, 2)} at best, never below alpha = {self.alpha}; add init seeds."
            )
        return too_few_init_draws(self.test, design)

    def extract(self, records: pd.DataFrame) -> dict[str, Any]:
        grid, x, info = unit_grid(records, self.test, self.quantity, at=self.at, positive=self.scale == "log")
        if x is None or len(x) < 2:
            raise AssertionDataError(f"monotone_trend needs at least 2 sweep values, but records have {grid.shape[0]}.")
        what = f"{'initial' if self.at == 'initial' else 'final'} {self.quantity}"
        if at_rounding_level(np.ptp(grid), np.abs(grid).max()):
            raise AssertionDataError(
                f"monotone_trend: every run has the same {what} ({fmt(float(grid.flat[0]))}, up to rounding): "
                "a constant quantity has no trend to test; check that the sweep reaches the runs."
            )
        blocks = grid.reshape(grid.shape[0], -1).T  # [block, sweep], blocks ordered init-major
        pair = repeated_units(blocks)
        if pair is not None:
            n_samp = grid.shape[2]
            (i1, j1), (i2, j2) = divmod(pair[0], n_samp), divmod(pair[1], n_samp)
            seeds, samps = info["init_seeds"], info["sampling_seeds"]
            raise AssertionDataError(
                f"monotone_trend: the seed blocks (init {seeds[i1]}, sampling {samps[j1]}) and (init {seeds[i2]}, "
                f"sampling {samps[j2]}) give the same {what} at every sweep value (up to rounding): one draw "
                "counted as two independent blocks; give every block its own draw."
            )
        return {"y": grid[None], "x": x, **info}

    def _effects(self, y: np.ndarray) -> np.ndarray:
        """Per block, the change between the extreme sweep values (log ratio or difference)."""
        if self.scale == "log":
            return np.log(y[:, -1] / y[:, 0])
        return y[:, -1] - y[:, 0]

    def decide(self, data: dict[str, Any]) -> Decision:
        y = np.asarray(data["y"], dtype=float)  # [R, sweep, init, sampling]
        reps, levels = y.shape[0], y.shape[1]
        blocks = y.reshape(reps, levels, -1)  # one block per (init, sampling) pair
        n_blocks = blocks.shape[-1]
        rho_b = blocked_spearman(blocks)
        rho = np.nanmean(rho_b, axis=-1)
        p = blocked_spearman_pvalue(rho, levels, n_blocks, self.increasing)
        effects = quiet(self._effects, blocks)
        effect = effects.mean(axis=-1)
        sign_ok = rho > 0 if self.increasing else rho < 0
        passed = (p < self.alpha) & sign_ok & (np.abs(rho) >= self.min_abs_rho)
        df = np.full(reps, n_blocks - 1.0)
        # Only the effect is tracked for baselines: rho is a bounded rank statistic that takes a few values
        # with few sweep values, so two runs of blocks often give a zero spread and a t test on it is
        # meaningless (it raised 1 % false alarms at 0.5 % with 3 blocks x 4 values).
        se_eff = (
            quiet(np.std, effects, axis=-1, ddof=1) / math.sqrt(n_blocks) if n_blocks > 1 else np.full(reps, np.nan)
        )
        return Decision(
            passed=passed,
            statistic=rho,
            ci_low=np.full(reps, np.nan),
            ci_high=np.full(reps, np.nan),
            pvalue=p,
            tracked={self._effect_name: (effect, se_eff, df)},
            extras={"means": y.reshape(reps, levels, -1).mean(axis=-1), "blocks": n_blocks},
        )

    @property
    def _effect_name(self) -> str:
        return "log_ratio_extreme_values" if self.scale == "log" else "difference_extreme_values"

    def tracked_meta(self) -> dict[str, tuple[str, float, float | None]]:
        better = "higher" if self.increasing else "lower"
        return {self._effect_name: (better, self.min_effect, None)}

    def result(self, records: pd.DataFrame, data: dict[str, Any], d: Decision) -> AssertionResult:
        rho, p, effect = float(d.statistic[0]), float(d.pvalue[0]), float(d.tracked[self._effect_name][0][0])
        passed = bool(d.passed[0])
        means = d.extras["means"][0]
        x = data["x"]
        sign_ok = rho > 0 if self.increasing else rho < 0
        reasons = failed(
            ("p not below alpha", not p < self.alpha),
            ("wrong sign", not sign_ok and math.isfinite(rho)),
            ("|rho| below the floor", not abs(rho) >= self.min_abs_rho),
        )
        start = "Initial" if self.at == "initial" else "Final"
        verb = "increases" if self.increasing else "decreases"
        what = "log ratio" if self.scale == "log" else "difference"
        sentence = (
            f"{start} {self.quantity} {verb} with {sweep_name(records)}: mean within-block Spearman rho = "
            f"{fmt(rho, 2)} over {d.extras['blocks']} seed blocks x {len(x)} values (within-block permutation "
            f"p = {fmt(p, 2)}, needed < {self.alpha}; |rho| >= {self.min_abs_rho}), {what} of the extreme "
            f"values {fmt(effect, 3)}; {draws_text(len(data['init_seeds']))} (the permutation conditions on them) "
            f"— {verdict_word(passed)}{reasons_text(reasons) if not passed else ''}."
        )
        per_block = np.asarray(data["y"])[0].reshape(len(x), -1)
        details = {
            "groups": [
                {
                    "sweep_value": float(v),
                    "mean": float(m),
                    "sd": float(np.std(row, ddof=1)) if row.size > 1 else None,
                    "n": int(row.size),
                }
                for v, m, row in zip(x, means, per_block, strict=True)
            ],
            "monotone_means": bool(np.all(np.diff(means) > 0) if self.increasing else np.all(np.diff(means) < 0)),
            "pvalue_method": "within-block permutation (exact)"
            if len(x) <= EXACT_UP_TO
            else "within-block permutation",
            "scale": self.scale,
            "data": {
                "y": per_block.tolist(),
                "x": [float(v) for v in x],
                "init_seeds": data["init_seeds"],
                "sampling_seeds": data["sampling_seeds"],
            },
        }
        return self.make_result(
            d,
            statistic_name="mean_block_spearman_rho",
            threshold=self.alpha,
            confidence=None,
            effect_size=effect,
            effect_size_name=self._effect_name,
            n=int(d.extras["blocks"]),
            sentence=sentence,
            details=details,
        )

    # ----------------------------------------------------------------- generative model

    def _to_model_scale(self, y: np.ndarray) -> np.ndarray:
        return np.log(y) if self.scale == "log" else y

    def fit(self, data: dict[str, Any]) -> dict[str, Any]:
        v = self._to_model_scale(np.asarray(data["y"], dtype=float))  # [sweep, blocks]
        means = v.mean(axis=1)
        block = (v - means[:, None]).mean(axis=0)
        resid = v - means[:, None] - block[None, :]
        levels, blocks = v.shape
        run_var = float(np.sum(resid**2) / max(1, (levels - 1) * (blocks - 1))) if blocks > 1 else 0.0
        block_var = float(np.var(block, ddof=1)) if blocks > 1 else 0.0
        return {
            "means": means.tolist(),
            "init_sd": math.sqrt(max(0.0, block_var - run_var / levels)),
            # A spread within floating-point rounding is a deterministic relation (K_0 = s^L x draw), not
            # run noise: simulating it would give tied values. The null then takes the default spread.
            "run_sd": math.sqrt(run_var) if run_var > RUN_VAR_FLOOR else DEFAULT_RUN_SD,
        }

    def default_model(self, design: Design) -> dict[str, Any]:
        return {"means": [0.0] * design.sweep_values, "init_sd": 0.05, "run_sd": DEFAULT_RUN_SD}

    def scenarios(self, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
        levels = len(params["means"])
        centre = float(np.mean(params["means"]))
        step = (self.min_effect if self.increasing else -self.min_effect) / (levels - 1)
        alternative = centre + step * (np.arange(levels) - (levels - 1) / 2)
        return {
            "null": {**params, "means": [centre] * levels},
            "alternative": {**params, "means": alternative.tolist()},
            "fitted": params,
        }

    def simulate(
        self, design: Design, params: dict[str, Any], rng: np.random.Generator, reps: int, family: str
    ) -> dict[str, Any]:
        levels, n_init, n_samp = design.sweep_values, design.init_seeds, design.sampling_seeds
        means = np.asarray(params["means"], dtype=float)[None, :, None, None]
        init = params["init_sd"] * noise(rng, (reps, 1, n_init, 1), family)
        run = params["run_sd"] * noise(rng, (reps, levels, n_init, n_samp), family)
        v = means + init + run
        y = np.exp(v) if self.scale == "log" else v
        return {"y": y, "x": design.x()}


# --------------------------------------------------------------------------- growth_trend


def late_count(window: float, records_per_run: int) -> int:
    """Number of records in the late window: the last ceil(window * records) of them."""
    return min(records_per_run, math.ceil(window * records_per_run - 1e-9))


class GrowthTrend(Assertion):
    """Claim: the quantity keeps growing late in training, with no plateau.

    Unit: a run. Each run's late window (the last ``window`` fraction of its records) gets a
    least-squares slope; its growth is the slope times the window's length in steps (for
    ``log_K``: the log of K's growth factor over the window). A one-sided t test over runs
    rejects "growth <= ``min_growth``" (a plateau, or growth too slow to matter) at ``alpha``;
    with a sweep every sweep value must pass and the worst one is reported. Records along one run
    are autocorrelated, so no test treats a record as a unit. ``alternative_growth`` is the growth
    at which ``check_design`` asks for power 0.8.
    """

    test: Literal["growth_trend"] = "growth_trend"
    quantity: str = Field("log_K", min_length=1)
    window: float = Field(0.5, gt=0, le=1)
    alpha: float = Field(0.01, gt=0, le=0.5)
    min_growth: float = Field(0.05, gt=0)
    alternative_growth: float = Field(0.2, gt=0)

    def structural_problem(self, design: Design) -> str | None:
        n_late = late_count(self.window, design.records_per_run)
        if n_late < 3:
            return f"growth_trend needs at least 3 records in its late window, but the design gives {n_late}."
        runs = design.init_seeds * design.sampling_seeds
        if runs < 2:
            return f"growth_trend needs at least 2 runs per sweep value (the unit is a run), but the design has {runs}."
        if self.alternative_growth <= self.min_growth:
            return "growth_trend needs alternative_growth above min_growth."
        return None

    def extract(self, records: pd.DataFrame) -> dict[str, Any]:
        q = self.quantity
        check_frame(records, self.test, q, ["run", "step", "sweep_value", "init_seed", "sampling_seed"])
        sweep = records["sweep_value"].astype(float)
        if sweep.isna().any() and not sweep.isna().all():
            raise AssertionDataError("growth_trend found runs with and without a sweep_value in the same records.")
        paths, xs = [], []
        steps = None
        for value, group in records.assign(_s=sweep.fillna(-math.inf)).groupby("_s", sort=True):
            table = group.groupby(["step", "run"])[q].mean().unstack("run").sort_index()
            where = "" if value == -math.inf else f" at sweep value {fmt(value)}"
            values = table.to_numpy(dtype=float)
            if not np.isfinite(values).all():
                raise AssertionDataError(
                    f"growth_trend needs runs that share a step grid and a finite {q}, but runs{where} do not."
                )
            n_late = late_count(self.window, len(table))
            if n_late < 3:
                raise AssertionDataError(
                    f"growth_trend needs at least 3 records in its late window, but runs{where} give {n_late}."
                )
            if table.shape[1] < 2:
                raise AssertionDataError(f"growth_trend needs at least 2 runs per sweep value, but runs{where} are 1.")
            these = table.index.to_numpy(dtype=float)[-n_late:]
            if steps is not None and (len(these) != len(steps) or not np.allclose(these, steps)):
                raise AssertionDataError("growth_trend needs the same record grid at every sweep value.")
            steps = these
            paths.append(values[-n_late:].T)  # [runs, T]
            xs.append(None if value == -math.inf else float(value))
        if len({p.shape[0] for p in paths}) > 1:
            raise AssertionDataError("growth_trend needs the same number of runs at every sweep value.")
        for value, p in zip(xs, paths, strict=True):
            where = "" if value is None else f" at sweep value {fmt(value)}"
            if at_rounding_level(np.ptp(p, axis=1), np.abs(p).max(axis=1)).all():
                raise AssertionDataError(
                    f"growth_trend: {q} is constant over the late window in every run{where} (up to rounding): "
                    "nothing was trained, so neither growth nor a plateau can be told; check the learning rate."
                )
            pair = repeated_units(p)
            if pair is not None:
                raise AssertionDataError(
                    f"growth_trend: two runs{where} have the same {q} path over the late window (up to rounding): "
                    "one draw counted as two independent runs; check that the init and sampling seeds reach them."
                )
        return {"paths": np.stack(paths)[None], "steps": steps, "x": xs}

    def decide(self, data: dict[str, Any]) -> Decision:
        paths = np.asarray(data["paths"], dtype=float)  # [R, sweep, runs, T]
        steps = np.asarray(data["steps"], dtype=float)
        t = steps - steps.mean()
        slope = np.sum(paths * t, axis=-1) / np.sum(t * t)
        growth = slope * (steps[-1] - steps[0])  # [R, sweep, runs]
        n = growth.shape[-1]
        mean = growth.mean(axis=-1)
        sd = growth.std(axis=-1, ddof=1)
        se = sd / math.sqrt(n)
        with np.errstate(all="ignore"):
            tstat = (mean - self.min_growth) / se
        tstat = np.where(se > 0, tstat, np.where(mean > self.min_growth, np.inf, -np.inf))
        p = stats.t.sf(tstat, n - 1)
        worst = np.argmax(p, axis=-1)  # [R]
        pick = np.arange(len(worst))
        q = stats.t.ppf(1 - self.alpha, n - 1)
        low = mean - q * se
        high = mean + q * se
        passed = np.all(p < self.alpha, axis=-1)
        return Decision(
            passed=passed,
            statistic=mean[pick, worst],
            ci_low=low[pick, worst],
            ci_high=high[pick, worst],
            pvalue=p[pick, worst],
            tracked={"late_growth": (mean[pick, worst], se[pick, worst], np.full(len(worst), n - 1.0))},
            extras={"worst": worst, "growth": growth, "p": p, "sd": sd},
        )

    def tracked_meta(self) -> dict[str, tuple[str, float, float | None]]:
        return {"late_growth": ("higher", self.alternative_growth, None)}

    def result(self, records: pd.DataFrame, data: dict[str, Any], d: Decision) -> AssertionResult:
        w = int(d.extras["worst"][0])
        growth = d.extras["growth"][0]  # [sweep, runs]
        mean, p = float(d.statistic[0]), float(d.pvalue[0])
        passed = bool(d.passed[0])
        x = data["x"][w]
        which = "" if x is None else f" (worst of {len(data['x'])} sweep values: {sweep_name(records)} = {fmt(x)})"
        steps = data["steps"]
        log = self.quantity.startswith("log_")
        grew = f"; {self.quantity[4:]} grew by a factor {fmt(math.exp(mean), 3)}" if log else ""
        sentence = (
            f"{self.quantity} keeps growing over the last {pct(self.window)} of records (steps {int(steps[0])}-"
            f"{int(steps[-1])}){which}: mean growth over the window = {fmt(mean, 3)} over {growth.shape[1]} runs "
            f"(one-sided {fmt(100 * (1 - self.alpha), 3)}% lower bound {fmt(float(d.ci_low[0]), 3)}; "
            f"t test of growth > {fmt(self.min_growth)}: p = {fmt(p, 2)}, needed < {self.alpha}){grew} — "
            f"{verdict_word(passed)}{'' if passed else ' (growth not shown above min_growth)'}."
        )
        groups = [
            {
                "sweep_value": xv,
                "mean_growth": float(g.mean()),
                "sd": float(sd),
                "pvalue": float(pv),
                "per_run": [float(v) for v in g],
            }
            for xv, g, sd, pv in zip(data["x"], growth, d.extras["sd"][0], d.extras["p"][0], strict=True)
        ]
        details = {
            "window": self.window,
            "min_growth": self.min_growth,
            "groups": groups,
            "data": {
                "paths": np.asarray(data["paths"])[0].tolist(),
                "steps": [float(s) for s in steps],
                "x": data["x"],
            },
        }
        return self.make_result(
            d,
            statistic_name="late_growth_over_window",
            threshold=self.min_growth,
            confidence=1 - 2 * self.alpha,
            effect_size=math.expm1(mean) if log else None,
            effect_size_name="relative_growth_over_window" if log else None,
            n=int(growth.shape[1]),
            sentence=sentence,
            details=details,
        )

    # ----------------------------------------------------------------- generative model

    def fit(self, data: dict[str, Any]) -> dict[str, Any]:
        paths = np.asarray(data["paths"], dtype=float)  # [sweep, runs, T]
        steps = np.asarray(data["steps"], dtype=float)
        t = steps - steps.mean()
        slope = np.sum((paths - paths.mean(axis=-1, keepdims=True)) * t, axis=-1) / np.sum(t * t)
        growth = slope * (steps[-1] - steps[0])
        resid = paths - paths.mean(axis=-1, keepdims=True) - slope[..., None] * t
        inc = resid.reshape(-1, resid.shape[-1])
        phi = float(np.clip(np.mean([_lag1(r) for r in inc]), 0.0, 0.95))
        return {
            "growth": float(growth.mean()),
            "growth_sd": float(np.std(growth, ddof=1)) if growth.size > 1 else 0.05,
            "noise_sd": float(np.std(resid)),
            "phi": phi,
            "T": len(steps),
        }

    def default_model(self, design: Design) -> dict[str, Any]:
        return {
            "growth": self.alternative_growth,
            "growth_sd": 0.05,
            "noise_sd": 0.01,
            "phi": 0.5,
            "T": late_count(self.window, max(design.records_per_run, 3)),
        }

    def scenarios(self, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return edge_scenarios(params, "growth", self.min_growth, self.alternative_growth)

    def simulate(
        self, design: Design, params: dict[str, Any], rng: np.random.Generator, reps: int, family: str
    ) -> dict[str, Any]:
        levels, runs, n_t = design.sweep_values, design.init_seeds * design.sampling_seeds, int(params["T"])
        g = params["growth"] + params["growth_sd"] * noise(rng, (reps, levels, runs, 1), family)
        frac = np.linspace(0.0, 1.0, n_t)
        e = noise(rng, (reps, levels, runs, n_t), family) * params["noise_sd"]
        phi = params["phi"]
        ar = np.empty_like(e)
        ar[..., 0] = e[..., 0]
        for k in range(1, n_t):  # AR(1) deviations: persistent noise along a run
            ar[..., k] = phi * ar[..., k - 1] + math.sqrt(1 - phi * phi) * e[..., k]
        paths = g * frac + ar
        steps = np.linspace(0.0, float(max(n_t - 1, 1)) * 100, n_t)
        return {"paths": paths, "steps": steps, "x": list(design.sweep or [None])}


def _lag1(r: np.ndarray) -> float:
    r = r - r.mean()
    denom = float(np.sum(r * r))
    return float(np.sum(r[1:] * r[:-1]) / denom) if denom > 0 else 0.0
