"""The outcome vocabulary: what a finished claim is called, what that means, and what it does to a CI job.

Every status and verdict is a member of `Verdict`, and its table (failing or not, colours, meaning)
lives here and nowhere else. The runner gives a claim its *status* (PASS, FAIL, ERROR, XFAIL, XPASS,
SKIPPED, INCONCLUSIVE); the baseline comparison (`lipbench.baselines`) turns it into the final
*verdict*, which adds REGRESSED, IMPROVED and NEW. Exit codes for CI: 0 when every verdict is PASS,
IMPROVED, NEW, XFAIL, SKIPPED or a non-strict XPASS or INCONCLUSIVE; 1 on any FAIL, REGRESSED, ERROR
or strict XPASS or INCONCLUSIVE; 2 on bad input; 125 instead of 1 or 2 on ERROR or bad input when
$LIPBENCH_BISECT is set (`git bisect run` skips such a commit).

INCONCLUSIVE is an equivalence test whose interval straddles an edge of its margin: the design
cannot decide, which is no evidence against the claim (FAIL is: the interval lies outside the
margin). It does not fail a run unless the claim is strict, like XPASS; its baseline comparison
still runs, so a tracked statistic that regressed makes it REGRESSED.

Each tracked statistic of a comparison moves in one of the `StatOutcome` ways; `decide` is the one
rule that turns those movements into REGRESSED, IMPROVED or PASS, for a baseline comparison and for
`lipbench compare` alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from lipbench.assertions import AssertionResult
from lipbench.errors import LipbenchError
from lipbench.numbers import fmt
from lipbench.provenance import BISECT_SKIP
from lipbench.records import RunRecord, jsonable
from lipbench.suite import ResolvedClaim


class _Name(str, Enum):
    """A `str` enum whose members print, format and serialise as their value (`enum.StrEnum` of Python 3.11)."""

    __str__ = str.__str__
    __format__ = str.__format__


class Verdict(_Name):
    """A claim's status or final verdict; a `str`, so it serialises as its name ("PASS").

    Per member: `failing` (it fails a CI job), `failing_if_strict` (it does so for a claim with
    `strict: true`), `style` (rich) and `colour` (HTML report) and a one-line `meaning`.
    """

    failing: bool
    failing_if_strict: bool
    style: str
    colour: str
    meaning: str

    def __new__(cls, value: str, failing: bool, failing_if_strict: bool, style: str, colour: str, meaning: str):
        member = str.__new__(cls, value)
        member._value_ = value
        member.failing, member.failing_if_strict = failing, failing_if_strict
        member.style, member.colour, member.meaning = style, colour, meaning
        return member

    PASS = "PASS", False, False, "green", "#1a7f37", "the assertion held, within tolerance of any comparable baseline"
    FAIL = "FAIL", True, True, "red", "#cf222e", "the assertion did not hold"
    REGRESSED = (
        "REGRESSED",
        True,
        True,
        "bold red",
        "#cf222e",
        "the assertion held, but a tracked statistic got significantly and substantially worse than the baseline",
    )
    IMPROVED = (
        "IMPROVED",
        False,
        False,
        "cyan",
        "#0969da",
        "the assertion held and a tracked statistic got significantly and substantially better (none worse)",
    )
    NEW = "NEW", False, False, "blue", "#0969da", "the assertion held; there is no baseline to compare with"
    ERROR = "ERROR", True, True, "bold red", "#cf222e", "a run failed, or the claim could not be judged"
    XFAIL = "XFAIL", False, False, "yellow", "#9a6700", "expected to fail (expect: fail), and it did"
    XPASS = "XPASS", False, True, "magenta", "#8250df", "expected to fail, but the assertion held"
    SKIPPED = "SKIPPED", False, False, "dim", "#6e7781", "not run: it needs a CUDA device and none is in use"
    INCONCLUSIVE = (
        "INCONCLUSIVE",
        False,
        True,
        "yellow",
        "#bf8700",
        "the interval straddles the claim's margin: the design cannot decide (the sentence says how many seeds would)",
    )

    def fails(self, strict: bool = False) -> bool:
        """Whether it fails a CI job, for a claim that is `strict` (only XPASS depends on it)."""
        return self.failing_if_strict if strict else self.failing

    def exit_code(self, strict: bool = False) -> int:
        """Its contribution to the exit code of a run: 1 if it fails, else 0."""
        return 1 if self.fails(strict) else 0

    @classmethod
    def named(cls, text: str) -> Verdict | None:
        """The verdict spelled `text` (as a saved file holds it), None if there is none."""
        try:
            return cls(text)
        except ValueError:
            return None


#: The runner's statuses (before any baseline comparison); INCONCLUSIVE only for an equivalence test.
STATUSES = (Verdict.PASS, Verdict.FAIL, Verdict.ERROR, Verdict.XFAIL, Verdict.XPASS, Verdict.SKIPPED)


class StatOutcome(_Name):
    """How one tracked statistic moved against its baseline (the tolerance rule of `lipbench.baselines`)."""

    REGRESSED = "regressed"  # significant and large, the bad way
    IMPROVED = "improved"  # significant and large, the good way
    WITHIN_TOLERANCE = "within tolerance"
    SIGNIFICANT_BUT_SMALL = "significant but small"
    LARGE_BUT_NOT_SIGNIFICANT = "large but not significant"
    NOT_COMPARED = "not compared"  # no standard error on one side, or a value that is not finite


@dataclass(frozen=True)
class StatChange:
    """How one tracked statistic moved against the baseline; `change` > 0 is better.

    ``t`` is Welch's t of the change, ``df`` its Welch-Satterthwaite degrees of freedom, ``t_critical``
    the |t| that two-sided ``alpha`` needs at that df.
    """

    name: str
    better: str
    baseline: float
    current: float
    change: float
    t: float | None
    size: float | None  # |change| / scale
    t_critical: float | None
    min_change: float
    outcome: StatOutcome
    df: float | None = None
    pvalue: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: jsonable(v) for k, v in asdict(self).items()}

    def text(self) -> str:
        arrow = f"{self.name} {fmt(self.baseline)} → {fmt(self.current)}"
        if self.outcome == StatOutcome.NOT_COMPARED:
            return f"{arrow} (not compared: the design gives no standard error for it)"
        t = "undefined" if self.t is None else fmt(self.t, 2)
        df = "inf" if self.df is None or not math.isfinite(self.df) else fmt(self.df, 2)
        size = "undefined" if self.size is None else f"{fmt(100 * self.size, 2)}%"
        return f"{arrow} ({self.outcome}: t = {t}, df = {df}, p = {fmt(self.pvalue, 2)}, size = {size} of its scale)"


def decide(changes: Iterable[StatChange]) -> Verdict:
    """The rule: REGRESSED if any statistic regressed, else IMPROVED if any improved, else PASS."""
    moved = {c.outcome for c in changes}
    if StatOutcome.REGRESSED in moved:
        return Verdict.REGRESSED
    if StatOutcome.IMPROVED in moved:
        return Verdict.IMPROVED
    return Verdict.PASS


@dataclass(frozen=True)
class Comparison:
    """The final verdict of a claim and how its baseline comparison got there."""

    verdict: Verdict
    status: Verdict
    baseline: str | None = None  # the baseline file, when there is one
    comparable: bool | None = None  # None: nothing to compare with
    notes: tuple[str, ...] = ()
    changes: tuple[StatChange, ...] = ()
    sweep_changes: tuple[dict[str, Any], ...] = ()
    summary: dict[str, Any] = field(default_factory=dict)
    baseline_environment: dict[str, Any] = field(default_factory=dict)
    attribution: tuple[dict[str, Any], ...] = ()  # lipbench.attribution.compare
    forces: tuple[dict[str, Any], ...] = ()  # lipbench.forces.compare
    environment_differences: tuple[str, ...] = ()
    explanation: str = ""  # which layers and forces carry the change (REGRESSED, IMPROVED)

    @property
    def sentence(self) -> str:
        head = {
            Verdict.REGRESSED: "regressed against the baseline",
            Verdict.IMPROVED: "improved on the baseline",
        }.get(self.verdict, "")
        env = "environment differs: " + ", ".join(self.environment_differences) if self.environment_differences else ""
        parts = [p for p in (head, self.explanation, *(c.text() for c in self.changes), env, *self.notes) if p]
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "status": self.status,
            "baseline": self.baseline,
            "comparable": self.comparable,
            "notes": list(self.notes),
            "changes": [c.to_dict() for c in self.changes],
            "sweep_changes": [jsonable(s) for s in self.sweep_changes],
            "baseline_environment": jsonable(self.baseline_environment),
            "attribution": [jsonable(a) for a in self.attribution],
            "forces": [jsonable(f) for f in self.forces],
            "environment_differences": list(self.environment_differences),
            "explanation": self.explanation,
            "sentence": self.sentence,
        }


@dataclass
class ClaimOutcome:
    """A finished claim: its runs, its assertion result, the runner's status and the final verdict.

    `verdict` starts as the `status`; `attach` replaces it with the baseline comparison's.
    """

    claim: ResolvedClaim
    status: Verdict
    records: list[RunRecord] = field(default_factory=list)
    result: AssertionResult | None = None
    error: str | None = None
    seconds: float = 0.0
    verdict: Verdict | None = None  # None when constructed: the status
    comparison: Comparison | None = None

    def __post_init__(self) -> None:
        self.status = Verdict(self.status)
        self.verdict = Verdict(self.verdict or self.status)

    def attach(self, comparison: Comparison) -> None:
        """Take the final verdict from a baseline comparison."""
        self.comparison, self.verdict = comparison, comparison.verdict

    @property
    def fails(self) -> bool:
        """Whether the final verdict fails a CI job (a strict claim's XPASS does)."""
        return Verdict(self.verdict).fails(self.claim.claim.strict)

    @property
    def sentence(self) -> str:
        if self.error:
            return self.error
        return self.result.sentence if self.result else ""


def exit_code(outcomes: Iterable[ClaimOutcome], bad_input: bool = False, bisect: bool = False) -> int:
    """The exit code of an invocation: 2 when input was refused and nothing ran; else 1 if any final verdict
    fails or some input was refused (`bad_input`: a malformed file beside claims that ran, an ERROR of its
    own), else 0. With `bisect`, bad input or an ERROR is 125: `git bisect run` skips a commit it cannot test."""
    outcomes = list(outcomes)
    if bisect and (bad_input or any(o.verdict == Verdict.ERROR for o in outcomes)):
        return BISECT_SKIP
    if bad_input and not outcomes:
        return LipbenchError.exit_code
    code = max((Verdict(o.verdict).exit_code(o.claim.claim.strict) for o in outcomes), default=0)
    return max(code, Verdict.ERROR.exit_code()) if bad_input else code
