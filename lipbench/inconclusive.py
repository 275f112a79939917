"""INCONCLUSIVE: an equivalence test that did not pass because its interval straddles its margin.

An equivalence test passes when its interval lies inside a band (``power_law``: k0 ± margin).
When it does not, two cases differ: the interval lies wholly outside the band (or, for a test of
several intervals, one of them does) — evidence against the claim, FAIL; or it overlaps an edge
of the band — the design cannot decide, INCONCLUSIVE. The reason says, as benchstat does for too
few samples, how many seeds the design would need: the smallest design, scaling the seeds of the
claim's unit of replication, whose power at the alternative the suite states reaches
``POWER_TARGET``, by the simulation ``check_design`` runs, with the generative model fitted to
these runs' units (their spread, not the default one).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from lipbench.assertions.base import (
    DESIGN_REPLICATES,
    POWER_TARGET,
    RNG_SEED,
    Assertion,
    AssertionResult,
    Design,
)

if TYPE_CHECKING:
    import pandas as pd

    from lipbench.suite import ResolvedClaim

FACTORS = (2, 3, 4, 6, 8)  # the seed multiples tried for the sample size the design would need


def intervals(spec: Assertion, frame: pd.DataFrame) -> list[tuple[float, float, float, float]] | None:
    """(low, high, band low, band high) of every interval the equivalence test needs inside its band;
    None for a test that is not an equivalence test."""
    test = spec.test
    if test not in (
        "power_law",
        "variance_scaling",
        "init_scaling",
        "sde_agreement",
        "variance_prediction",
        "invariance",
    ):
        return None
    d = spec.decide(spec.extract(frame))
    if test in ("power_law", "variance_scaling"):
        band = (spec.expected_exponent - spec.margin, spec.expected_exponent + spec.margin)
        out = [(float(d.ci_low[0]), float(d.ci_high[0]), *band)]
        if test == "variance_scaling":
            out.append((float(d.extras["lo_p"][0]), float(d.extras["hi_p"][0]), *band))
        return out
    if test == "init_scaling":
        band = (1 - spec.tolerance, 1 + spec.tolerance)
        return [(float(lo), float(hi), *band) for lo, hi in zip(d.extras["low"][0], d.extras["high"][0], strict=True)]
    if test == "sde_agreement":
        return [(float(d.ci_low[0]), float(d.ci_high[0]), -spec.tolerance, spec.tolerance)]
    if test == "variance_prediction":
        return [(float(d.ci_low[0]), float(d.ci_high[0]), 1 / spec.factor, spec.factor)]
    if float(d.pvalue[0]) >= spec.alpha:  # invariance: the init spread not shown above the sampling spread
        return [(math.inf, math.inf, 0.0, spec.max_relative_spread)]  # is not a question of width: FAIL
    return [(float(d.ci_low[0]), float(d.ci_high[0]), 0.0, spec.max_relative_spread)]


def straddles(found: list[tuple[float, float, float, float]]) -> bool:
    """No interval lies outside its band and some interval crosses an edge of it."""
    finite = all(math.isfinite(v) for row in found for v in row[:2])
    outside = any(high < lo or low > hi for low, high, lo, hi in found)
    crossing = any(low < lo <= high or low <= hi < high for low, high, lo, hi in found)
    return finite and not outside and crossing


def needed_seeds(claim: ResolvedClaim, result: AssertionResult) -> str:
    """'about N sampling seeds' (or init seeds): the smallest multiple of the design's seeds with power 0.8 at
    the stated alternative under the model fitted to this result's units; or why it cannot be said."""
    spec, c = claim.claim.assertion, claim.claim
    data = (result.details or {}).get("data")
    axis = "init" if spec.test == "init_scaling" else "sampling"
    try:
        params = spec.scenarios(spec.fit(data))["alternative"]
    except (NotImplementedError, KeyError, TypeError, ValueError):
        return "the design's power cannot be simulated from these units"
    records = c.scenario.steps // c.scenario.record_every + 1
    sweep = tuple(c.sweep.values) if c.sweep else None
    for factor in FACTORS:
        init = c.seeds.init * (factor if axis == "init" else 1)
        sampling = c.seeds.sampling * (factor if axis == "sampling" else 1)
        design = Design(sweep, init, sampling, records, c.scenario.steps)
        if spec.structural_problem(design):
            continue
        if power(spec, design, params) >= POWER_TARGET:
            return f"about {init if axis == 'init' else sampling} {axis} seeds (x{factor}) would decide it"
    most = (c.seeds.init if axis == "init" else c.seeds.sampling) * FACTORS[-1]
    return f"more than {most} {axis} seeds would be needed to decide it"


def power(spec: Assertion, design: Design, params: dict[str, Any]) -> float:
    """The pass rate of ``spec`` on ``design`` when its data follow ``params`` (as check_design simulates)."""
    rng = np.random.default_rng(RNG_SEED)
    data = spec.simulate(design, params, rng, DESIGN_REPLICATES, "normal")
    return float(np.mean(spec.decide(data).passed))


def undecided(claim: ResolvedClaim, frame: pd.DataFrame, result: AssertionResult) -> str | None:
    """Why a failed equivalence test is INCONCLUSIVE rather than FAIL; None when it is a FAIL (or passed)."""
    if result.passed:
        return None
    found = intervals(claim.claim.assertion, frame)
    if not found or not straddles(found):
        return None
    return f"the interval straddles the margin: the design cannot decide; {needed_seeds(claim, result)}"
