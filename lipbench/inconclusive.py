"""INCONCLUSIVE: an equivalence test that did not pass because its interval straddles its margin.

An equivalence test passes when its interval lies inside a band (``power_law``: k0 ± margin).
When it does not, two cases differ: the interval lies wholly outside the band (or, for a test of
several intervals, one of them does) — evidence against the claim, FAIL; or it overlaps an edge
of the band — the design cannot decide, INCONCLUSIVE. The reason says, as benchstat does for too
few samples, how many seeds the design would need: the smallest design, scaling the seeds of the
claim's unit of replication, whose power at the alternative the suite states reaches
``POWER_TARGET``, by the simulation the design check runs (``lipbench.design``), with the model fitted to
these runs' units (their spread, not the default one).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

from lipbench.assertions.base import POWER_TARGET, Assertion, AssertionResult, Decision, Design
from lipbench.design import design_power, fitted_model

if TYPE_CHECKING:
    import pandas as pd

    from lipbench.suite import ResolvedClaim

FACTORS = (2, 3, 4, 6, 8)  # the seed multiples tried for the sample size the design would need


EQUIVALENCE = ("power_law", "variance_scaling", "init_scaling", "sde_agreement", "variance_prediction", "invariance")

Interval = tuple[np.ndarray, np.ndarray, float, float]  # low[R], high[R], band low, band high


def intervals_of(spec: Assertion, d: Decision) -> list[Interval] | None:
    """Every interval (over the decision's replicates) that the equivalence test needs inside its band;
    None for a test that is not an equivalence test."""
    test = spec.test
    if test not in EQUIVALENCE:
        return None
    if test in ("power_law", "variance_scaling"):
        band = (spec.expected_exponent - spec.margin, spec.expected_exponent + spec.margin)
        out = [(d.ci_low, d.ci_high, *band)]
        if test == "variance_scaling":
            out.append((d.extras["lo_p"], d.extras["hi_p"], *band))
        return out
    if test == "init_scaling":
        band = (1 - spec.tolerance, 1 + spec.tolerance)
        low, high = np.asarray(d.extras["low"]), np.asarray(d.extras["high"])  # [R, layer]
        return [(low[:, k], high[:, k], *band) for k in range(low.shape[1])]
    if test == "sde_agreement":
        return [(d.ci_low, d.ci_high, -spec.tolerance, spec.tolerance)]
    if test == "variance_prediction":
        return [(d.ci_low, d.ci_high, 1 / spec.factor, spec.factor)]
    # invariance: an init spread not shown above the sampling spread is not a question of width: FAIL
    shown = np.asarray(d.pvalue) < spec.alpha
    return [(np.where(shown, d.ci_low, np.inf), np.where(shown, d.ci_high, np.inf), 0.0, spec.max_relative_spread)]


def straddling(found: list[Interval]) -> np.ndarray:
    """Per replicate: no interval lies outside its band and some interval crosses an edge of it."""
    finite = np.all([np.isfinite(low) & np.isfinite(high) for low, high, _, _ in found], axis=0)
    outside = np.any([(high < lo) | (low > hi) for low, high, lo, hi in found], axis=0)
    crossing = np.any(
        [((low < lo) & (lo <= high)) | ((low <= hi) & (hi < high)) for low, high, lo, hi in found], axis=0
    )
    return finite & ~outside & crossing


def straddles(found: list[tuple[float, float, float, float]]) -> bool:
    """`straddling` of one replicate's intervals given as numbers."""
    arrays = [(np.array([low]), np.array([high]), lo, hi) for low, high, lo, hi in found]
    return bool(straddling(arrays)[0])


def inconclusive_rate(
    spec: Assertion, design: Design, params: dict[str, Any], rng: np.random.Generator, reps: int, family: str = "normal"
) -> float | None:
    """The share of `reps` simulated replicates (the calibration's generative model at `params`) that are
    INCONCLUSIVE: not passed, with an interval straddling its band; None for a test without a band."""
    flags = undecided_flags(spec, spec.decide(spec.simulate(design, params, rng, reps, family)))
    return None if flags is None else float(np.mean(flags))


def undecided_flags(spec: Assertion, decision: Decision) -> np.ndarray | None:
    """Per replicate of `decision`: INCONCLUSIVE (not passed, an interval straddling its band); None for a test
    without a band."""
    found = intervals_of(spec, decision)
    if found is None:
        return None
    return ~np.asarray(decision.passed) & straddling(found)


def needed_seeds(claim: ResolvedClaim, result: AssertionResult) -> str:
    """'about N sampling seeds' (or init seeds): the smallest multiple of the design's seeds with power 0.8 at
    the stated alternative under the model fitted to this result's units; or why it cannot be said."""
    spec, c = claim.claim.assertion, claim.claim
    data = (result.details or {}).get("data")
    axis = "init" if spec.test == "init_scaling" else "sampling"
    model = fitted_model(spec, claim.design, data) if data else None
    if model is None:
        return "the design's power cannot be simulated from these units"
    for factor in FACTORS:
        init = c.seeds.init * (factor if axis == "init" else 1)
        sampling = c.seeds.sampling * (factor if axis == "sampling" else 1)
        design = dataclasses.replace(claim.design, init_seeds=init, sampling_seeds=sampling)
        if spec.structural_problem(design):
            continue
        if design_power(spec, design, model)[0] >= POWER_TARGET:
            return f"about {init if axis == 'init' else sampling} {axis} seeds (x{factor}) would decide it"
    most = (c.seeds.init if axis == "init" else c.seeds.sampling) * FACTORS[-1]
    return f"more than {most} {axis} seeds would be needed to decide it"


def undecided(claim: ResolvedClaim, frame: pd.DataFrame, result: AssertionResult, reason: bool = True) -> str | None:
    """Why a failed equivalence test is INCONCLUSIVE rather than FAIL; None when it is a FAIL (or passed).

    With `reason=False` the sample size the design would need is not simulated (the calibration, which
    counts verdicts and reads no sentence): the status is the same."""
    if result.passed:
        return None
    spec = claim.claim.assertion
    found = intervals_of(spec, spec.decide(spec.extract(frame)))
    if not found or not straddling(found)[0]:
        return None
    why = "the interval straddles the margin: the design cannot decide"
    return f"{why}; {needed_seeds(claim, result)}" if reason else why
