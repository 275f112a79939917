"""Progress where there is no terminal: a plain line per finished claim and, at most every 30 s, the
runs done out of the total with the time left; rich's bars on a terminal."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from lipbench.outcome import ClaimOutcome
from lipbench.progress import BarProgress, LineProgress, Throttle, duration, progress_for
from lipbench.suite import load_claim

ROOT = Path(__file__).resolve().parents[1]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_throttle_says_due_at_most_once_per_interval() -> None:
    clock = FakeClock()
    throttle = Throttle(30, clock)
    seen = []
    for t in (0, 10, 29.9, 30, 31, 59.9, 60, 200, 201):
        clock.now = 1000.0 + t
        seen.append(throttle.due())
    assert seen == [False, False, False, True, False, False, True, True, False]


def test_line_progress_prints_claims_as_they_finish_and_throttled_status_lines(write_suite) -> None:
    clock = FakeClock()
    first, second = load_claim(write_suite("first"), "quick"), load_claim(write_suite("second"), "quick")
    stream = io.StringIO()
    progress = LineProgress(Console(file=stream, width=40), [first, second], every=30, clock=clock)
    assert (progress.planned, sum(progress.planned.values())) == ({first.key: 6, second.key: 6}, 12)

    for done, t in ((1, 5), (2, 20), (3, 30), (4, 45)):  # 3 runs in the first 30 s: one line, at 30 s
        clock.now = 1000.0 + t
        progress.advance(first, done, 6)
    assert stream.getvalue().splitlines() == ["lipbench: 3/12 runs done in 30 s, about 1 min 30 s left"]

    clock.now = 1000.0 + 61
    progress.advance(first, 6, 6)
    progress.claim_done(ClaimOutcome(first, "PASS", seconds=61.0), "PASS")
    progress.claim_done(ClaimOutcome(second, "SKIPPED"), "SKIPPED")  # a skipped claim's runs count as done
    lines = stream.getvalue().splitlines()  # a long line is never wrapped, even on a 40-column console
    assert lines[1:] == [
        "lipbench: 6/12 runs done in 1 min 01 s, about 1 min 01 s left",
        f"lipbench: [1/2] PASS {first.collection}/first (0 runs, 1 min 01 s)",
        f"lipbench: [2/2] SKIPPED {second.collection}/second (0 runs, 0 s)",
    ]
    assert progress.status() == "lipbench: 12/12 runs done in 1 min 01 s, about 0 s left"


def test_no_estimate_before_the_first_run_is_done(write_suite) -> None:
    clock = FakeClock()
    claim = load_claim(write_suite("only"), "quick")
    progress = LineProgress(Console(file=io.StringIO()), [claim], clock=clock)
    clock.now += 45
    assert progress.status() == "lipbench: 0/6 runs done in 45 s"


def test_durations_read_as_time() -> None:
    assert [duration(s) for s in (0.4, 59, 60, 200, 3599, 3600, 7500)] == [
        "0 s",
        "59 s",
        "1 min 00 s",
        "3 min 20 s",
        "59 min 59 s",
        "1 h 00 min",
        "2 h 05 min",
    ]


def test_a_terminal_gets_bars_and_anything_else_lines(write_suite) -> None:
    claims = [load_claim(write_suite("one"), "quick")]
    assert isinstance(progress_for(Console(file=io.StringIO(), force_terminal=True), claims), BarProgress)
    assert isinstance(progress_for(Console(file=io.StringIO(), force_terminal=False), claims), LineProgress)


def test_lipbench_run_into_a_pipe_prints_plain_lines(write_suite, tmp_path: Path) -> None:
    """A non-interactive stdout (a CI log): a line per claim, no bars, no cursor movement, no colour."""
    write_suite("first")
    path = write_suite("second", {"assertion": {"direction": "decreasing"}})  # a FAIL, exit 1
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    done = subprocess.run(
        [
            *(sys.executable, "-m", "lipbench.cli", "run", str(path.parent), "--workers", "1", "--profile", "quick"),
            *("--device", "cpu", "--no-mlflow", "--out", str(tmp_path / "out")),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0] == f"lipbench: 2 claims, 12 runs, profile quick, device cpu; results in {tmp_path / 'out'}"
    parsed = [re.fullmatch(r"lipbench: \[(\d)/2\] (\w+) (\S+) \(6 runs, \d+ s\)", line) for line in lines]
    finished = [m.groups() for m in parsed if m]
    assert [index for index, _, _ in finished] == ["1", "2"], done.stdout
    assert {name.split("/")[-1]: verdict for _, verdict, name in finished} == {"first": "NEW", "second": "FAIL"}
    assert "\x1b" not in done.stdout  # no colour, no cursor movement
    assert "━" not in done.stdout.split("lipbench verdicts")[0]  # no bars before the verdict table
