"""Statistical assertions that turn training records into PASS/FAIL verdicts.

One module per family: ``trends`` (monotone_trend, growth_trend), ``variance`` (power_law,
invariance), ``init`` (init_scaling) and ``sde`` (sde_agreement, variance_prediction,
variance_scaling); ``base`` holds what they share. A suite file's ``assertion:`` block is validated
into one of these models through ``AssertionSpec`` (discriminated by ``test``).

An installed package may add a test under the entry-point group ``lipbench.plugins``
(``assertion.<name>``, see lipbench.plugins): ``available_tests`` lists it beside the built-in ones
from the package metadata alone, ``assertion_model`` imports and checks it when a suite names it.
"""

from __future__ import annotations

import typing
from typing import Annotated, Literal

from pydantic import Field

from lipbench import factories, plugins
from lipbench.assertions.base import (
    Assertion,
    AssertionDataError,
    AssertionResult,
    Decision,
    Design,
    Tracked,
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
    "assertion_model",
    "available_tests",
    "plugin_assertion",
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


def available_tests() -> list[str]:
    """Every test a suite may name: the built-in ones, then those installed plugins register (metadata only)."""
    return [*ASSERTIONS, *(name for name in plugins.names("assertion") if name not in ASSERTIONS)]


def assertion_model(test: str) -> type[Assertion] | None:
    """The params model of `test`: a built-in one, or an installed plugin's (imported and checked here).

    None when no test has that name; `factories.FactoryError` when a plugin's cannot be used.
    """
    if test in ASSERTIONS:
        return ASSERTIONS[test]
    reference = plugins.target("assertion", test)
    return None if reference is None else plugin_assertion(test, reference)


def plugin_assertion(test: str, reference: str) -> type[Assertion]:
    """Import the class a plugin registers as `assertion.<test>` and check that it is such a test.

    It must subclass `Assertion`, declare `test: Literal["<test>"]` (the discriminator a suite's
    `test:` key selects it by) and not take a built-in test's name.
    """
    found = factories.resolve(reference)
    if not (isinstance(found, type) and issubclass(found, Assertion)):
        what = f"class {found.__name__}" if isinstance(found, type) else f"a {type(found).__name__}"
        raise factories.FactoryError(f"{reference!r} is {what}, not a subclass of lipbench.assertions.Assertion")
    if test in ASSERTIONS:
        raise factories.FactoryError(f"{reference!r} is registered as {test!r}, a built-in test's name; rename it")
    field = found.model_fields.get("test")
    annotation = None if field is None else field.annotation
    if typing.get_origin(annotation) is not Literal or typing.get_args(annotation) != (test,):
        raise factories.FactoryError(
            f"{reference!r} must declare the field test: Literal[{test!r}], the name it is registered under"
        )
    return found
