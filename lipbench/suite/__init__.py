"""Suite files: one YAML file is one claim of the paper, validated by a strict schema.

A file holds the claim (scenario + sweep + seeds + assertion) and named `profiles` that
override parts of it. Resolution order: file -> profile -> `--set key.path=value`; the
result goes through the same validation whatever its origin, and any problem becomes one
`SuiteError` line naming the file, the key path (as written by the user: `profiles.quick...`
or `--set ...` when it came from there) and what is allowed.

Input is strict: a key given twice in one mapping (YAML would keep the last silently) and a
number that is not finite (`.nan`, `.inf`, `-.inf`, also through a profile or `--set`) are
refused when the file is loaded, before any training.

`include: base.yaml` (or a list of paths), each relative to the including file, merges the
included mappings under the file's own keys: the file's keys win, mappings are merged deeply,
lists are replaced, and of several includes a later one wins over an earlier one. Included files
may include others; a cycle is refused. Base files meant only to be included are named `_*.yaml`
or kept in a folder whose name starts with `_` (e.g. `suites/_base/`); a folder search
(lipbench.discovery) skips them, so they are never collected as claims.
"""

from __future__ import annotations

from lipbench.registry import DATASETS, MODELS, OPTIMIZERS, SCHEDULES  # as the schema names them
from lipbench.suite.loading import BASE_PROFILE, Layer, claim_from_mapping, load_claim, parse_override, resolve_claim
from lipbench.suite.messages import PATTERN_HELP
from lipbench.suite.planning import PROSE_KEYS, ClaimKey, ResolvedClaim, RunSpec, name_taken, without_duplicates
from lipbench.suite.schema import (
    EMPIRICAL_HOW,
    CallableSpec,
    Claim,
    DatasetSpec,
    GradientSpec,
    Kwargs,
    LipschitzSpec,
    ModelSpec,
    OptimizerSpec,
    Probability,
    RecordName,
    RegularisersSpec,
    RunFunctionSpec,
    Scenario,
    ScheduleSpec,
    Seeds,
    Strict,
    Sweep,
    claim_model,
    empirical_note,
    nested_models,
    sgd_theory_problem,
)

__all__ = [
    "BASE_PROFILE",
    "DATASETS",
    "EMPIRICAL_HOW",
    "MODELS",
    "OPTIMIZERS",
    "PATTERN_HELP",
    "PROSE_KEYS",
    "SCHEDULES",
    "CallableSpec",
    "Claim",
    "ClaimKey",
    "DatasetSpec",
    "GradientSpec",
    "Kwargs",
    "Layer",
    "LipschitzSpec",
    "ModelSpec",
    "OptimizerSpec",
    "Probability",
    "RecordName",
    "RegularisersSpec",
    "ResolvedClaim",
    "RunFunctionSpec",
    "RunSpec",
    "Scenario",
    "ScheduleSpec",
    "Seeds",
    "Strict",
    "Sweep",
    "claim_from_mapping",
    "claim_model",
    "empirical_note",
    "load_claim",
    "name_taken",
    "nested_models",
    "parse_override",
    "resolve_claim",
    "sgd_theory_problem",
    "without_duplicates",
]
