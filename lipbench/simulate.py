"""Synthetic training records for a claim's own runs, from models the assertions do not assume.

``lipbench calibrate --records`` judges these records through the path a real run takes
(``runner.judge``, then ``baselines.build_baseline`` -> JSON -> ``baselines.judge_against``), so
what it measures includes the records -> units step and the baseline document, and its noise is
not the assertion's own ``simulate()``. Each family breaks one assumption a test could rest on:

- ``fitted``: the location and spreads fitted to the committed baseline, and run noise resampled
  from the baseline's own standardised residuals (its skewness and kurtosis) where it has at least
  ``MIN_POOL`` of them, else normal noise;
- ``normal``: the reference;
- ``lognormal``: run noise with skewness 2 (a log-normal of shape 0.6064);
- ``t3``: run noise from Student's t with 3 degrees of freedom (infinite kurtosis);
- ``init_effect``: an init-seed random effect 4x the sampling spread;
- ``init_specific``: every init seed its own trend (mean zero under the null), its own
  variance exponent (sd 0.5) or its own growth; the claim about init draws in general is false;
- ``uneven_spread``: the sampling spread differs between init seeds (relative variances 0.25 to
  1.75, their mean at the model's spread);
- ``growth_spread``: per-run growth rates with an sd 3x the default (0.15 on the log scale);
- ``saturating``: log K saturates (an exponential approach) with AR(1) increments along each run.

A run's trajectory is a saturating curve from its first to its last value with AR(1) wiggles
between; the judged records (first or last, or the late window) are the model's draws.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lipbench.records import RunRecord
from lipbench.suite import ResolvedClaim

FAMILIES = (
    "fitted",
    "normal",
    "lognormal",
    "t3",
    "init_effect",
    "init_specific",
    "uneven_spread",
    "growth_spread",
    "saturating",
)
LOGNORMAL_SHAPE = 0.6064  # a log-normal with this shape has skewness 2
RECORD_TESTS = ("monotone_trend", "invariance", "power_law", "growth_trend", "init_scaling")
#: The families that change each test's model (the others would repeat the normal row).
RELEVANT = {
    "monotone_trend": ("fitted", "normal", "lognormal", "t3", "init_effect", "init_specific", "uneven_spread"),
    "invariance": ("fitted", "normal", "lognormal", "t3", "init_effect", "uneven_spread"),
    "power_law": ("fitted", "normal", "lognormal", "t3", "init_effect", "init_specific", "uneven_spread"),
    "growth_trend": ("fitted", "normal", "lognormal", "t3", "init_specific", "growth_spread", "saturating"),
    "init_scaling": ("fitted", "normal", "lognormal", "t3"),
}
INIT_SPECIFIC_EXPONENT_SD = 0.5
UNEVEN = (0.25, 1.75)  # the relative sampling variances of the first and the last init seed
# Fewer residuals than this make a lumpy distribution (5 growth residuals drawn with replacement give tied
# runs and false passes no real K would): the fitted family's noise is then normal, at the fitted spreads.
MIN_POOL = 20


def draws(rng: np.random.Generator, shape: tuple[int, ...], family: str, pool: np.ndarray | None = None) -> np.ndarray:
    """Standardised noise (mean 0, sd 1) of the family's run-noise distribution (``fitted``: drawn from `pool`)."""
    if family == "fitted" and pool is not None and len(pool) >= MIN_POOL:
        return rng.choice(pool, size=shape)
    if family == "lognormal":
        s = LOGNORMAL_SHAPE
        z = np.exp(s * rng.standard_normal(shape))
        return (z - math.exp(s * s / 2)) / math.sqrt((math.exp(s * s) - 1) * math.exp(s * s))
    if family == "t3":
        return rng.standard_t(3, shape) / math.sqrt(3.0)
    return rng.standard_normal(shape)


def uneven_weights(n_init: int, family: str) -> np.ndarray:
    """Per init seed, the factor of its sampling sd: spread evenly in variance, mean variance 1."""
    if family != "uneven_spread" or n_init < 2:
        return np.ones(n_init)
    return np.sqrt(np.linspace(*UNEVEN, n_init))


# --------------------------------------------------------------------------- per test: the judged values


def grid_values(
    claim: ResolvedClaim, params: dict[str, Any], family: str, rng: np.random.Generator
) -> tuple[np.ndarray, str, str]:
    """The judged value of every run, y[sweep, init, sampling], the column and which record holds it."""
    spec = claim.claim.assertion
    c = claim.claim
    levels = len(c.sweep.values) if c.sweep else 1
    n_init, n_samp = c.seeds.init, c.seeds.sampling
    w = uneven_weights(n_init, family)[None, :, None]
    if spec.test == "monotone_trend":
        means = np.asarray(params["means"], dtype=float)[:, None, None]
        run_sd = params["run_sd"]
        init_sd = 4 * run_sd if family == "init_effect" else params["init_sd"]
        run = run_sd * w * draws(rng, (levels, n_init, n_samp), family, params.get("residuals"))
        v = means + init_sd * draws(rng, (1, n_init, 1), family) + run
        if family == "init_specific":  # each init draw its own linear trend over the sweep positions, sd min_effect
            pos = (np.arange(levels) - (levels - 1) / 2) / max(levels - 1, 1)
            v = v + spec.min_effect * pos[:, None, None] * rng.standard_normal((1, n_init, 1))
        return (np.exp(v) if spec.scale == "log" else v), spec.quantity, spec.at
    if spec.test == "invariance":
        init_cv = 4 * params["cv"] if family == "init_effect" else params["init_cv"]
        init = 1 + init_cv * rng.standard_normal((1, n_init, 1))
        run = 1 + params["cv"] * w * draws(rng, (levels, n_init, n_samp), family, params.get("residuals"))
        return params["mean"] * init * np.maximum(run, 1e-3), spec.quantity, "final"
    if spec.test == "power_law":
        x = np.asarray(c.sweep.values, dtype=float)
        k = params["exponent"] + np.zeros((1, n_init, 1))
        if family == "init_specific":
            k = k + INIT_SPECIFIC_EXPONENT_SD * rng.standard_normal((1, n_init, 1))
        sd = np.sqrt(np.exp(params["log_level"] + k * np.log(x)[:, None, None]))
        init_sd = 4 * float(np.mean(sd)) if family == "init_effect" else params["init_sd"]
        run = sd * w * draws(rng, (levels, n_init, n_samp), family, params.get("residuals"))
        return params["mean"] + init_sd * rng.standard_normal((1, n_init, 1)) + run, spec.quantity, "final"
    raise ValueError(f"no record-level model for {spec.test}")


def _curves(first: np.ndarray, last: np.ndarray, n_t: int, rng: np.random.Generator) -> np.ndarray:
    """[..., n_t] paths from `first` to `last`: a saturating curve with AR(1) wiggles of 1% that vanish at both ends."""
    frac = (1 - np.exp(-3 * np.linspace(0, 1, n_t))) / (1 - math.exp(-3))
    path = first[..., None] + (last - first)[..., None] * frac
    e = rng.standard_normal((*np.shape(first), n_t))
    ar = np.zeros_like(e)
    for t in range(1, n_t):
        ar[..., t] = 0.8 * ar[..., t - 1] + 0.6 * e[..., t]
    bridge = np.sin(np.pi * np.linspace(0, 1, n_t))  # zero at the first and the last record
    return path * (1 + 0.01 * ar * bridge)


def growth_paths(claim: ResolvedClaim, params: dict[str, Any], family: str, rng: np.random.Generator) -> np.ndarray:
    """log K over every record of every run, paths[sweep, init, sampling, T].

    The late window (the test's) grows by the model's growth, per run; ``saturating`` bends the
    late window (growth fast early in it, slow late) with the same total growth."""
    spec = claim.claim.assertion
    c = claim.claim
    levels = len(c.sweep.values) if c.sweep else 1
    n_init, n_samp = c.seeds.init, c.seeds.sampling
    n_t = c.scenario.steps // c.scenario.record_every + 1
    from lipbench.assertions.trends import late_count

    n_late = late_count(spec.window, n_t)
    shape = (levels, n_init, n_samp)
    growth_sd = 0.15 if family == "growth_spread" else params["growth_sd"]
    g = params["growth"] + growth_sd * draws(rng, (*shape, 1), family, params.get("residuals"))
    if family == "init_specific":
        g = g + growth_sd * rng.standard_normal((1, n_init, 1, 1))
    frac = np.linspace(0.0, 1.0, n_late)
    if family == "saturating":
        frac = (1 - np.exp(-3 * frac)) / (1 - math.exp(-3))
    phi = params["phi"]
    e = draws(rng, (*shape, n_t), family) * params["noise_sd"]
    ar = np.empty_like(e)
    ar[..., 0] = e[..., 0]
    for t in range(1, n_t):
        ar[..., t] = phi * ar[..., t - 1] + math.sqrt(1 - phi * phi) * e[..., t]
    early = np.linspace(0.0, 1.0, n_t - n_late + 1)[:-1]  # before the window: the same growth rate, then the window
    path = np.concatenate([np.broadcast_to(g * early, (*shape, n_t - n_late)), g + g * frac], axis=-1)
    return 1.0 + path + ar


def init_ratios(claim: ResolvedClaim, params: dict[str, Any], family: str, rng: np.random.Generator) -> np.ndarray:
    """sigma / s(sqrt m + sqrt n) per layer and init seed, ratio[layer, init]: one draw per init seed."""
    mean = np.asarray(params["mean"], dtype=float)[:, None]
    sd = np.asarray(params["sd"], dtype=float)[:, None]
    return mean + sd * draws(rng, (len(mean), claim.claim.seeds.init), family, params.get("residuals"))


def standardised(values: np.ndarray) -> np.ndarray | None:
    """Residuals scaled to mean 0 and sd 1 (None when they have no spread)."""
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if v.size < 3 or not np.std(v) > 0:
        return None
    return (v - v.mean()) / v.std()


def baseline_residuals(test: str, data: dict[str, Any]) -> np.ndarray | None:
    """The standardised residuals of a baseline's own units, for the ``fitted`` family's run noise."""
    if test in ("invariance", "power_law"):
        y = np.asarray(data["y"], dtype=float)  # [sweep, init, sampling]
        if test == "invariance":
            y = y / y.mean(axis=-1, keepdims=True)
        dev = y - y.mean(axis=-1, keepdims=True)
        return standardised(dev / np.maximum(dev.std(axis=(-2, -1), keepdims=True), 1e-300))
    if test == "monotone_trend":
        v = np.asarray(data["y"], dtype=float)  # [sweep, blocks]
        v = np.log(v) if (v > 0).all() else v
        if v.shape[1] < 2:
            return None
        return standardised(v - v.mean(axis=1, keepdims=True) - (v - v.mean(axis=1, keepdims=True)).mean(axis=0))
    if test == "growth_trend":
        paths = np.asarray(data["paths"], dtype=float)
        steps = np.asarray(data["steps"], dtype=float)
        t = steps - steps.mean()
        growth = np.sum(paths * t, axis=-1) / np.sum(t * t)
        return standardised(growth - growth.mean(axis=-1, keepdims=True))
    if test == "init_scaling":
        r = np.asarray(data["ratio"], dtype=float)
        return standardised((r - r.mean(axis=-1, keepdims=True)) / r.std(axis=-1, keepdims=True))
    return None


# --------------------------------------------------------------------------- records


def simulate_records(
    claim: ResolvedClaim, params: dict[str, Any], family: str, rng: np.random.Generator
) -> list[RunRecord]:
    """One set of records for the claim's own runs, drawn from the family's model with `params`."""
    c = claim.claim
    spec = c.assertion
    n_t = c.scenario.steps // c.scenario.record_every + 1
    steps = np.arange(n_t, dtype=np.int64) * c.scenario.record_every
    values = list(c.sweep.values) if c.sweep else [None]
    runs = claim.runs()
    base = c.seeds.base
    out = []
    if spec.test == "init_scaling":
        r = init_ratios(claim, params, family, rng)
        for run in runs:
            std = run.scenario.model.init_std if run.scenario.model is not None else 1.0
            metrics: dict[str, np.ndarray] = {}
            for layer in range(r.shape[0]):
                theory = float(std) * (layer + 2.0)  # any positive prediction: only the ratio is judged
                sigma = theory * r[layer, run.init_seed - base]
                metrics[f"sigma_{layer}"] = np.full(n_t, sigma)
                metrics[f"sigma_init_theory_{layer}"] = np.full(n_t, theory)
            metrics["K"] = np.prod([metrics[f"sigma_{i}"] for i in range(r.shape[0])], axis=0)
            metrics["log_K"] = np.log(metrics["K"])
            out.append(_record(run, steps, metrics))
        return out
    if spec.test == "growth_trend":
        paths = growth_paths(claim, params, family, rng)
        for run in runs:
            p = paths[values.index(run.sweep_value), run.init_seed - base, run.sampling_seed - base]
            out.append(_record(run, steps, {spec.quantity: p, "K": np.exp(p)}))
        return out
    y, quantity, at = grid_values(claim, params, family, rng)
    other = y * np.exp(0.3 * rng.standard_normal(y.shape))  # the record the test does not judge
    first, last = (y, other) if at == "initial" else (other, y)
    curves = _curves(first, last, n_t, rng)
    curves[..., 0], curves[..., -1] = first, last
    for run in runs:
        path = curves[values.index(run.sweep_value), run.init_seed - base, run.sampling_seed - base]
        metrics = {quantity: path}
        if quantity == "K":
            metrics["log_K"] = np.log(np.abs(path))
        out.append(_record(run, steps, metrics))
    return out


def _record(run, steps: np.ndarray, metrics: dict[str, np.ndarray]) -> RunRecord:
    return RunRecord(run.claim, run.run_id, run.sweep_value, run.init_seed, run.sampling_seed, steps, metrics)
