"""A claim resolved for one profile, and the runs it plans (`ResolvedClaim`, `RunSpec`)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lipbench.assertions.base import Design
from lipbench.errors import SuiteError
from lipbench.suite.schema import Claim, Scenario

#: A claim's identity in a run: two collections may hold claims of the same name, and a claim runs per profile.
ClaimKey = tuple[str, str, str]  # (collection, name, profile)


@dataclass(frozen=True)
class RunSpec:
    """One training run of a claim: the scenario with its sweep value applied, and its seeds."""

    claim: str
    run_id: str
    scenario: Scenario
    sweep_value: float | None
    init_seed: int
    sampling_seed: int
    key: ClaimKey | None = None  # the claim's (collection, name, profile): the runner judges its records together


#: The prose of a claim: it does not decide the numbers, so the scenario hash leaves it out.
PROSE_KEYS = frozenset({"claim", "paper", "expect_reason"})


@dataclass(frozen=True)
class ResolvedClaim:
    """A claim resolved for one profile, ready to plan runs from.

    `file_claim` is the claim as its suite file defines it for this profile, before any `--set`
    (None when unknown, e.g. rebuilt from a results folder). Both scenario hashes are computed once,
    here: `scenario_hash()` of the claim as it runs, `file_hash` of `file_claim`.
    """

    claim: Claim
    file: Path
    profile: str
    collection: str
    profiles: tuple[str, ...]
    file_claim: Claim | None = field(default=None, compare=False, repr=False)
    file_hash: str | None = field(init=False, compare=False, repr=False)
    _hash: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        run_hash = _scenario_hash(self.claim)
        unset = self.file_claim
        file_hash = None if unset is None else run_hash if unset == self.claim else _scenario_hash(unset)
        object.__setattr__(self, "_hash", run_hash)  # a frozen dataclass: set once, here
        object.__setattr__(self, "file_hash", file_hash)

    @property
    def name(self) -> str:
        return self.claim.name

    @property
    def key(self) -> ClaimKey:
        return (self.collection, self.name, self.profile)

    @property
    def sweep_name(self) -> str | None:
        return self.claim.sweep.axis.rsplit(".", 1)[-1] if self.claim.sweep else None

    def runs(self) -> list[RunSpec]:
        c = self.claim
        values: list[float | None] = list(c.sweep.values) if c.sweep else [None]
        runs = []
        for value in values:
            scenario = c.scenario if value is None else _sweep_scenario(c, value)
            for i in range(c.seeds.init):
                for j in range(c.seeds.sampling):
                    init_seed, sampling_seed = c.seeds.base + i, c.seeds.base + j
                    tag = "" if value is None else f"{self.sweep_name}={value:g}-"
                    run_id = f"{c.name}-{tag}init{init_seed}-samp{sampling_seed}"
                    runs.append(RunSpec(c.name, run_id, scenario, value, init_seed, sampling_seed, self.key))
        return runs

    def scenario_hash(self) -> str:
        """A hash of everything that decides the numbers (not the prose): baselines compare only equal hashes."""
        return self._hash

    def model_steps(self) -> int:
        return sum(r.scenario.steps for r in self.runs())

    @property
    def design(self) -> Design:
        """What the claim plans, as its assertion's design check and calibration read it."""
        c = self.claim
        return Design(
            tuple(c.sweep.values) if c.sweep else None,
            c.seeds.init,
            c.seeds.sampling,
            c.scenario.steps // c.scenario.record_every + 1,
            c.scenario.steps,
        )


def without_duplicates(claims: list[ResolvedClaim]) -> tuple[list[ResolvedClaim], list[SuiteError]]:
    """The first claim of each (collection, name, profile), and a `name_taken` error for each later one."""
    seen: dict[ClaimKey, Path] = {}
    unique, problems = [], []
    for claim in claims:
        if claim.key in seen:
            problems.append(name_taken(claim, seen[claim.key]))
            continue
        seen[claim.key] = claim.file
        unique.append(claim)
    return unique, problems


def name_taken(claim: ResolvedClaim, other: str | Path) -> SuiteError:
    """A second claim of the same name in one collection: results and baselines are kept per collection and name."""
    message = f"{claim.name!r} is also the name of {other} in collection {claim.collection!r}; names must differ"
    return SuiteError(claim.file, "name", message + " within a collection")


def _scenario_hash(claim: Claim) -> str:
    """Fields left at their defaults do not enter the hash, so a field added to the schema later, with a
    default that keeps the old behaviour, leaves stored baselines comparable. (Changing what a default
    means is a schema change that needs new baselines.) The assertion's test name is kept even though
    it is its own default.
    """
    payload = claim.model_dump(mode="json", exclude=set(PROSE_KEYS), exclude_defaults=True)
    payload.setdefault("assertion", {})["test"] = claim.assertion.test
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _sweep_scenario(claim: Claim, value: float) -> Scenario:
    data = claim.scenario.model_dump()
    _set_path(data, claim.sweep.axis.split(".")[1:], value)
    return Scenario.model_validate(data)


def _set_path(data: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        if data.get(key) is None:  # a missing or unset (null) section: the schema then says what it needs
            data[key] = {}
        data = data[key]
    data[keys[-1]] = value
