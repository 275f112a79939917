"""Statistical assertions that turn training records into PASS/FAIL verdicts.

One module per family: ``trends`` (monotone_trend, growth_trend), ``variance`` (power_law,
invariance), ``init`` (init_scaling) and ``sde`` (sde_agreement, variance_prediction,
variance_scaling); ``base`` holds what they share. A suite file's ``assertion:`` block is validated
into one of these models through ``AssertionSpec`` (discriminated by ``test``).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from lipbench.assertions.base import (
    Assertion,
    AssertionDataError,
    AssertionResult,
    Decision,
    Design,
    Tracked,
    design_power,
)
from lipbench.assertions.init import InitScaling
from lipbench.assertions.sde import SDE_TERMS, SDEAgreement, VariancePrediction, VarianceScaling
from lipbench.assertions.trends import GrowthTrend, MonotoneTrend
from lipbench.assertions.variance import Invariance, PowerLaw

__all__ = [
    "ASSERTIONS",
    "SDE_TERMS",
    "Assertion",
    "AssertionDataError",
    "AssertionResult",
    "AssertionSpec",
    "Decision",
    "Design",
    "GrowthTrend",
    "InitScaling",
    "Invariance",
    "MonotoneTrend",
    "PowerLaw",
    "SDEAgreement",
    "Tracked",
    "VariancePrediction",
    "VarianceScaling",
    "design_power",
]

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

ASSERTIONS: dict[str, type[Assertion]] = {
    "monotone_trend": MonotoneTrend,
    "growth_trend": GrowthTrend,
    "power_law": PowerLaw,
    "invariance": Invariance,
    "sde_agreement": SDEAgreement,
    "variance_prediction": VariancePrediction,
    "variance_scaling": VarianceScaling,
    "init_scaling": InitScaling,
}
