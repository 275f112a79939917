"""The design check: before any training, can this claim's design give its test the data, and the power?

A design (sweep values, init and sampling seeds, records per run) is refused when the test can never
decide on it (``Assertion.structural_problem``) or when its simulated power at the alternative the
suite states is below ``POWER_TARGET``. The power is simulated, with normal noise, under a generative
model of the test's units: fitted to the claim's stored baseline where one exists whose scenario equals
this one apart from its seeds and its `expect` (the spread these runs really have), else the
assertion's default model. A design change that alters only the seeds keeps the fitted model: that is
how a design is resized.

A profile that expects the claim to fail (``expect: fail``) states already that it does not confirm
the claim; its power shortfall is not an ERROR but a note the XFAIL or XPASS sentence carries, so that
an XFAIL of an underpowered design is not read as evidence against the claim. A structural problem is
an ERROR for every profile.
"""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lipbench.assertions.base import DESIGN_REPLICATES, POWER_TARGET, RNG_SEED, Assertion, Design, wilson
from lipbench.baselines import BaselineError, baseline_path, changed_keys, default_root, read_baseline, scenario_dump
from lipbench.numbers import fmt
from lipbench.records import jsonable
from lipbench.suite import ResolvedClaim

#: Keys whose change leaves each run's distribution as it was: a baseline that differs from the claim in
#: these only still describes its runs' spread (the seeds resize the design; `expect` is what the suite
#: expects of the verdict).
SAME_RUNS = ("seeds.", "expect:")
DEFAULT_LABEL = "the assertion's default model"


@dataclass(frozen=True)
class DesignModel:
    """The generative model a design is sized on: its parameters, and where they come from."""

    params: dict[str, Any]
    source: str  # "baseline" (fitted to a stored baseline's units) or "default"
    path: Path | None = None  # the baseline fitted (or, with "default", the one that gave no model)
    units: dict[str, Any] | None = None  # the baseline's units it was fitted to

    @property
    def label(self) -> str:
        shown = self.path and (self.path.relative_to(Path.cwd()) if self.path.is_relative_to(Path.cwd()) else self.path)
        if self.source == "baseline":
            return f"the model fitted to the stored baseline {shown}"
        if shown:
            return f"{DEFAULT_LABEL} (the stored baseline {shown} gives no model to fit)"
        return f"{DEFAULT_LABEL} (no stored baseline of this scenario)"


@dataclass(frozen=True)
class DesignCheck:
    problem: str | None  # an ERROR before training
    note: str | None = None  # an expected failure's power shortfall, for its sentence


def stored_units(claim: ResolvedClaim, root: Path | None = None) -> tuple[dict[str, Any], Path] | None:
    """The units the claim's stored baseline was decided on, if a readable baseline exists whose scenario
    differs from this claim's at most in its seeds (and what it expects)."""
    path = baseline_path(root if root is not None else default_root(claim.file), *claim.key)
    if not path.exists():
        return None
    try:
        doc = read_baseline(path)
    except BaselineError:
        return None
    if doc.get("scenario_hash") != claim.scenario_hash():
        changed = changed_keys(doc.get("scenario") or {}, scenario_dump(claim))
        if not changed or any(not key.startswith(SAME_RUNS) for key in changed):
            return None
    data = (doc.get("assertion") or {}).get("details", {}).get("data")
    return (data, path) if data else None


def design_model(claim: ResolvedClaim, root: Path | None = None) -> DesignModel:
    """The generative model's parameters: fitted to the claim's stored baseline units, else the defaults."""
    spec = claim.claim.assertion
    stored = stored_units(claim, root)
    if stored is not None:
        params = fitted_model(spec, claim.design, stored[0])
        if params is not None:
            return DesignModel(params, "baseline", stored[1], stored[0])
    return DesignModel(spec.default_model(claim.design), "default", stored[1] if stored else None)


def fitted_model(spec: Assertion, design: Design, data: dict[str, Any]) -> dict[str, Any] | None:
    """The model fitted to units (a baseline's, or a result's), if they give one `design` can be simulated from
    (units edited by hand, of data the test cannot fit, or of a test without a model give None, not a traceback)."""
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params = spec.fit(data)
            if not all(np.isfinite(v).all() for v in _numbers(params)):
                return None
            alternative = spec.scenarios(params)["alternative"]
            spec.decide(spec.simulate(design, alternative, np.random.default_rng(0), 2, "normal"))
    except (NotImplementedError, ValueError, KeyError, TypeError, IndexError, ArithmeticError):
        return None
    return params


def _numbers(params: dict[str, Any]) -> list[np.ndarray]:
    return [np.asarray(v, dtype=float) for v in params.values() if isinstance(v, (int, float, list))]


@functools.lru_cache(maxsize=256)
def _design_power_cached(
    cls: type[Assertion], spec_json: str, design: Design, model_json: str | None
) -> tuple[float, float]:
    spec = cls.model_validate_json(spec_json)
    model = json.loads(model_json) if model_json is not None else spec.default_model(design)
    params = spec.scenarios(model)["alternative"]
    rng = np.random.default_rng(RNG_SEED)
    data = spec.simulate(design, params, rng, DESIGN_REPLICATES, "normal")
    passes = int(np.sum(spec.decide(data).passed))
    return passes / DESIGN_REPLICATES, wilson(passes, DESIGN_REPLICATES)[1]


def design_power(spec: Assertion, design: Design, model: dict[str, Any] | None = None) -> tuple[float, float]:
    """Simulated power (and its 95% upper bound) of ``spec`` on ``design`` at its stated alternative, with
    normal noise, under `model` (None: its default generative model); cached per (spec, design, model)."""
    model_json = None if model is None else json.dumps(model, sort_keys=True, default=jsonable)
    return _design_power_cached(type(spec), spec.model_dump_json(), design, model_json)


def power_problem(
    spec: Assertion, design: Design, model: dict[str, Any] | None = None, model_label: str = DEFAULT_LABEL
) -> str | None:
    """Why `design` cannot reach power 0.8 at the stated alternative under `model`; None if it can."""
    power, high = design_power(spec, design, model)
    if high >= POWER_TARGET:
        return None
    return (
        f"{spec.test} with this design ({design.sweep_values} sweep values x {design.init_seeds} init x "
        f"{design.sampling_seeds} sampling seeds) has power {fmt(power, 2)} at the alternative it states "
        f"under {model_label} (simulated, 95% upper bound {fmt(high, 2)}), below {POWER_TARGET}; "
        "add seeds or sweep values."
    )


def check_design(
    spec: Assertion,
    *,
    sweep_values: int | Sequence[float],
    init_seeds: int,
    sampling_seeds: int,
    records_per_run: int,
    steps: int = 0,
) -> str | None:
    """Why a planned design (given by its counts) can never pass, or cannot reach power 0.8 at the stated
    alternative under the assertion's default model; None if fine. A claim's design: ``design_check``."""
    sweep = None
    if isinstance(sweep_values, int):
        sweep = tuple(float(v) for v in range(1, sweep_values + 1)) if sweep_values > 1 else None
    elif len(sweep_values) > 0:
        sweep = tuple(float(v) for v in sweep_values)
    design = Design(sweep, init_seeds, sampling_seeds, records_per_run, steps)
    return spec.structural_problem(design) or power_problem(spec, design)


def design_check(claim: ResolvedClaim, root: Path | None = None) -> DesignCheck:
    """Why the claim's design cannot be run (None if it can), and an expected failure's power note.

    `root`: the baselines folder (None: ``baselines.default_root`` of the suite file)."""
    spec, design = claim.claim.assertion, claim.design
    problem = spec.structural_problem(design)
    if problem:
        return DesignCheck(problem)
    model = design_model(claim, root)
    shortfall = power_problem(spec, design, model.params, model.label)
    if shortfall and claim.claim.expect == "fail":
        return DesignCheck(None, shortfall)
    return DesignCheck(shortfall)
