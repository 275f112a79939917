"""How `lipbench run` shows a collection's progress: bars on a terminal, plain lines elsewhere.

A terminal gets rich's live bars, one per claim. A stream that is not a terminal (a CI log, a
cluster job's output file) cannot redraw, so it gets a plain line as each claim finishes and, at
most every `every` seconds, the runs done out of the total with an estimate of the time left.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lipbench.outcome import ClaimOutcome
from lipbench.suite import ResolvedClaim

Clock = Callable[[], float]
EVERY = 30.0  # seconds between two status lines, at least


class Throttle:
    """True at most once every `every` seconds of `clock` (the first time: `every` after creation)."""

    def __init__(self, every: float = EVERY, clock: Clock = time.monotonic):
        self.every, self.clock = every, clock
        self.last = clock()

    def due(self) -> bool:
        now = self.clock()
        if now - self.last < self.every:
            return False
        self.last = now
        return True


def duration(seconds: float) -> str:
    """`45 s`, `3 min 20 s`, `2 h 05 min`."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def label(claim: ResolvedClaim) -> str:
    """collection/name: two collections may hold claims of the same name."""
    return f"{claim.collection}/{claim.name}"


class LineProgress:
    """Plain lines for a stream that is not a terminal."""

    def __init__(
        self, console: Console, claims: list[ResolvedClaim], every: float = EVERY, clock: Clock = time.monotonic
    ):
        self.console, self.clock = console, clock
        self.planned = {c.key: len(c.runs()) for c in claims}
        self.done: dict[tuple[str, str, str], int] = dict.fromkeys(self.planned, 0)
        self.finished = 0
        self.started = clock()
        self.throttle = Throttle(every, clock)

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def advance(self, claim: ResolvedClaim, done_runs: int, total: int) -> None:
        self.done[claim.key] = done_runs
        if self.throttle.due():
            self._print(self.status())

    def claim_done(self, outcome: ClaimOutcome, verdict: str) -> None:
        key = outcome.claim.key
        self.done[key] = self.planned.get(key, 0)  # a skipped claim's runs will never come: count them done
        self.finished += 1
        self._print(
            f"lipbench: [{self.finished}/{len(self.planned)}] {verdict} {label(outcome.claim)} "
            f"({len(outcome.records)} runs, {duration(outcome.seconds)})"
        )

    def status(self) -> str:
        """`lipbench: 12/40 runs done in 1 min 30 s, about 3 min 30 s left` (no estimate before a run is done)."""
        done, total = sum(self.done.values()), sum(self.planned.values())
        elapsed = self.clock() - self.started
        left = f", about {duration(elapsed * (total - done) / done)} left" if done else ""
        return f"lipbench: {done}/{total} runs done in {duration(elapsed)}{left}"

    def _print(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)


class BarProgress:
    """rich's live bars on a terminal: one per claim, its verdict in its label once it is known."""

    def __init__(self, console: Console, claims: list[ResolvedClaim]):
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        )
        self.tasks = {c.key: self.progress.add_task(label(c), total=len(c.runs())) for c in claims}

    def __enter__(self) -> BarProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def advance(self, claim: ResolvedClaim, done_runs: int, total: int) -> None:
        self.progress.update(self.tasks[claim.key], completed=done_runs, total=total)

    def claim_done(self, outcome: ClaimOutcome, verdict: str) -> None:
        claim = outcome.claim
        self.progress.update(self.tasks[claim.key], description=f"{label(claim)} [{verdict}]")


def progress_for(console: Console, claims: list[ResolvedClaim]) -> BarProgress | LineProgress:
    """Bars when `console` is a terminal, plain lines otherwise."""
    return BarProgress(console, claims) if console.is_terminal else LineProgress(console, claims)
