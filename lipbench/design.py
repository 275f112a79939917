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

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lipbench.assertions.base import Assertion, Design
from lipbench.baselines import BaselineError, baseline_path, changed_keys, default_root, read_baseline, scenario_dump
from lipbench.suite import ResolvedClaim

#: Keys whose change leaves each run's distribution as it was: a baseline that differs from the claim in
#: these only still describes its runs' spread (the seeds resize the design; `expect` is what the suite
#: expects of the verdict).
SAME_RUNS = ("seeds.", "expect:")


@dataclass(frozen=True)
class DesignModel:
    """The generative model a design is sized on: its parameters, and where they come from."""

    params: dict[str, Any]
    source: str  # "baseline" (fitted to a stored baseline's units) or "default"
    path: Path | None = None  # the baseline fitted (or, with "default", the one that gave no model)

    @property
    def label(self) -> str:
        shown = self.path and (self.path.relative_to(Path.cwd()) if self.path.is_relative_to(Path.cwd()) else self.path)
        if self.source == "baseline":
            return f"the model fitted to the stored baseline {shown}"
        if shown:
            return f"the assertion's default model (the stored baseline {shown} gives no model to fit)"
        return "the assertion's default model (no stored baseline of this scenario)"


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
        params = _fitted(spec, claim.design, stored[0])
        if params is not None:
            return DesignModel(params, "baseline", stored[1])
    return DesignModel(spec.default_model(claim.design), "default", stored[1] if stored else None)


def _fitted(spec: Assertion, design: Design, data: dict[str, Any]) -> dict[str, Any] | None:
    """The model fitted to a baseline's units, if they give one this design can be simulated from (a baseline
    edited by hand, or of data the test cannot fit, gives None rather than a traceback before training)."""
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params = spec.fit(data)
            if not all(np.isfinite(v).all() for v in _numbers(params)):
                return None
            alternative = spec.scenarios(params)["alternative"]
            spec.decide(spec.simulate(design, alternative, np.random.default_rng(0), 2, "normal"))
    except (ValueError, KeyError, TypeError, IndexError, ArithmeticError):
        return None
    return params


def _numbers(params: dict[str, Any]) -> list[np.ndarray]:
    return [np.asarray(v, dtype=float) for v in params.values() if isinstance(v, (int, float, list))]


def design_check(claim: ResolvedClaim, root: Path | None = None) -> DesignCheck:
    """Why the claim's design cannot be run (None if it can), and an expected failure's power note.

    `root`: the baselines folder (None: ``baselines.default_root`` of the suite file)."""
    spec, design = claim.claim.assertion, claim.design
    problem = spec.structural_problem(design)
    if problem:
        return DesignCheck(problem)
    model = design_model(claim, root)
    shortfall = spec.power_problem(design, model.params, model.label)
    if shortfall and claim.claim.expect == "fail":
        return DesignCheck(None, shortfall)
    return DesignCheck(shortfall)
