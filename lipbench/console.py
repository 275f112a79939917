"""What the CLI prints: the consoles, tables printed whole for a log, and one-line verdicts.

`out` is stdout and `errors` stderr; the commands of `lipbench.cli` print through them (a test
swaps `out` for a wide console).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from lipbench.errors import SuiteError
from lipbench.numbers import fmt
from lipbench.outcome import StatOutcome, Verdict
from lipbench.provenance import ENV_BISECT

if TYPE_CHECKING:
    from lipbench.invocation import Invocation

out = Console(stderr=False, highlight=False)
errors = Console(stderr=True, highlight=False)
WHOLE_WIDTH = 100_000  # wider than any table: rich then sizes each column to its content


def verdict_legend() -> str:
    """The verdicts of `run`, what each means and whether it fails the run (exit 1)."""
    width = max(len(v) for v in Verdict)
    lines = [f"  {v:<{width}}  {v.meaning}{_fails_text(v)}" for v in Verdict]
    codes = (
        "exit codes: 0 no verdict fails, 1 some verdict fails (or a file was refused beside claims that ran), "
        f"2 input refused and nothing trained; with {ENV_BISECT}=1, 125 on ERROR or bad input"
    )
    return "verdicts:\n" + "\n".join(lines) + "\n\n" + codes


def _fails_text(verdict: Verdict) -> str:
    if verdict.fails():
        return " (fails the run)"
    return " (fails the run when the claim is strict)" if verdict.fails(strict=True) else ""


def print_whole(table: Table) -> None:
    """A table on stdout; into a file or a pipe (a CI log) at its full width, so no name or number is cut."""
    if out.is_terminal:
        out.print(table)
        return
    width = out.width
    out.width = WHOLE_WIDTH  # (a `width` given to print is capped at the console's)
    try:
        out.print(table)
    finally:
        out.width = width


def styled(verdict: str) -> str:
    """A verdict in rich markup, in its colour (uncoloured when this lipbench does not know it)."""
    known = Verdict.named(verdict)
    return f"[{known.style if known else ''}]{verdict}[/]"


def say_problems(problems: list[SuiteError]) -> None:
    for p in problems:
        errors.print(f"lipbench: error: {p}", markup=False, soft_wrap=True)


def print_addresses(run: Invocation, outcomes) -> None:
    """After an invocation that logged to MLflow: where its runs are in the UI."""
    for line in run.session.addresses(outcomes):
        out.print(line, markup=False, highlight=False, soft_wrap=True)


def print_table(outcomes, problems: list[SuiteError] = ()) -> None:
    table = Table(title="lipbench verdicts", show_lines=False)
    for col in ("claim", "profile", "verdict", "statistic", "threshold", "p", "vs baseline", "runs", "time"):
        table.add_column(col)
    for o in outcomes:
        r, verdict, comparison = o.result, o.verdict, o.comparison
        stat = f"{r.statistic_name} = {fmt(r.statistic)}" if r else "-"
        thr = fmt(r.threshold) if r else "-"
        p = fmt(r.pvalue, 2, missing="-") if r else "-"
        table.add_row(
            o.claim.name,
            o.claim.profile,
            styled(verdict),
            stat,
            thr,
            p,
            _versus(comparison),
            str(len(o.records)),
            f"{o.seconds:.0f} s",
        )
    for problem in problems:  # a file refused before training, beside claims that ran
        table.add_row(Path(problem.file).name, "-", styled(Verdict.ERROR), "-", "-", "-", "-", "0", "-")
    print_whole(table)
    for problem in problems:
        say(Verdict.ERROR, str(problem))
    for o in outcomes:
        verdict, comparison = o.verdict, o.comparison
        if o.sentence:
            say(verdict, f"{o.claim.name}: {o.sentence}")
        if comparison is not None and comparison.sentence:
            out.print(
                f"    baseline: {comparison.sentence}", markup=False, highlight=False, soft_wrap=not out.is_terminal
            )


def say(verdict: str, text: str) -> None:
    """`VERDICT text` on one line (a log reader greps it whole; a terminal wraps it)."""
    out.print(f"{styled(verdict)} ", end="")
    out.print(text, markup=False, highlight=False, soft_wrap=not out.is_terminal)


def _versus(comparison) -> str:
    """The baseline column: the largest |z| of the tracked statistics, or why there is none."""
    if comparison is None or comparison.comparable is None:
        return "new" if comparison is not None and comparison.verdict == Verdict.NEW else "-"
    if not comparison.comparable:
        return "not comparable"
    tested = [c for c in comparison.changes if c.t is not None]
    if not tested:
        return StatOutcome.NOT_COMPARED
    worst = max(tested, key=lambda c: abs(c.t))
    return f"{worst.name}: t = {fmt(worst.t, 2)}"
