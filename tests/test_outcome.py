"""The outcome vocabulary: the verdict table, exit codes, the one regressed rule, and that no other
module of the package spells a verdict."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from builders import baseline_of, synthetic_outcome, write_claim

from lipbench.assertions.base import verdict_word
from lipbench.baselines import judge_against, summarise
from lipbench.compare import JUDGEMENT, Side, compare_rows
from lipbench.errors import LipbenchError
from lipbench.outcome import STATUSES, ClaimOutcome, Comparison, StatChange, StatOutcome, Verdict, decide, exit_code
from lipbench.results import load_outcome
from lipbench.suite import load_claim

PACKAGE = Path(__file__).resolve().parents[1] / "lipbench"

#: verdict: (fails a CI job, fails it for a strict claim)
TABLE = {
    Verdict.PASS: (False, False),
    Verdict.FAIL: (True, True),
    Verdict.REGRESSED: (True, True),
    Verdict.IMPROVED: (False, False),
    Verdict.NEW: (False, False),
    Verdict.ERROR: (True, True),
    Verdict.XFAIL: (False, False),
    Verdict.XPASS: (False, True),
    Verdict.SKIPPED: (False, False),
    Verdict.INCONCLUSIVE: (False, True),
}


def test_every_verdict_has_a_decision() -> None:
    assert set(TABLE) == set(Verdict)
    assert [str(v) for v in Verdict] == [v.name for v in Verdict]  # serialised as today: its name


@pytest.mark.parametrize("verdict", list(Verdict))
def test_failing_and_exit_code_table(verdict: Verdict) -> None:
    fails, fails_strict = TABLE[verdict]
    assert (verdict.fails(), verdict.fails(strict=True)) == (fails, fails_strict)
    assert (verdict.exit_code(), verdict.exit_code(strict=True)) == (int(fails), int(fails_strict))
    assert verdict.meaning and verdict.style and verdict.colour.startswith("#")


def test_a_verdict_is_its_name_everywhere() -> None:
    assert json.dumps({"verdict": Verdict.REGRESSED}) == '{"verdict": "REGRESSED"}'
    assert f"[{Verdict.NEW}]" == "[NEW]" and str(Verdict.XPASS) == "XPASS"
    assert Verdict("PASS") is Verdict.PASS and Verdict.named("MAYBE") is None
    assert tuple(map(Verdict, ("PASS", "FAIL", "ERROR", "XFAIL", "XPASS", "SKIPPED"))) == STATUSES


@pytest.mark.parametrize(
    ("verdicts", "strict", "code"),
    [
        ([], False, 0),
        (["PASS", "IMPROVED", "NEW", "XFAIL", "SKIPPED", "XPASS"], False, 0),
        (["PASS", "IMPROVED", "NEW", "XFAIL", "SKIPPED", "XPASS"], True, 1),
        (["NEW", "REGRESSED", "IMPROVED"], False, 1),
        (["SKIPPED", "ERROR"], False, 1),
        (["XFAIL", "FAIL", "REGRESSED", "ERROR"], True, 1),
    ],
)
def test_exit_code_of_a_mix(tmp_path: Path, verdicts: list[str], strict: bool, code: int) -> None:
    claim = load_claim(write_claim(tmp_path, "label_noise", strict=strict), "quick")
    outcomes = []
    for name in verdicts:
        verdict = Verdict(name)
        outcome = ClaimOutcome(claim, verdict if verdict in STATUSES else Verdict.PASS)
        outcome.attach(Comparison(verdict, outcome.status))
        assert outcome.verdict is verdict and outcome.fails == verdict.fails(strict)
        outcomes.append(outcome)
    assert exit_code(outcomes) == code
    assert exit_code(outcomes, bad_input=True) == (max(code, 1) if outcomes else 2)  # a refused file: an ERROR
    assert exit_code(outcomes, bad_input=True, bisect=True) == 125  # git bisect run: skip this commit
    assert exit_code(outcomes, bisect=True) == (125 if "ERROR" in verdicts else code)


def test_an_outcome_starts_with_its_status_as_verdict(tmp_path: Path) -> None:
    claim = load_claim(write_claim(tmp_path, "label_noise"), "quick")
    outcome = ClaimOutcome(claim, "XFAIL")
    assert outcome.status is Verdict.XFAIL and outcome.verdict is Verdict.XFAIL and outcome.comparison is None


def change(outcome: StatOutcome) -> StatChange:
    return StatChange("stat", "higher", 1.0, 1.0, 0.0, 0.0, 0.0, 3.0, 0.1, outcome)


@pytest.mark.parametrize(
    ("moves", "verdict"),
    [
        ([], Verdict.PASS),
        ([StatOutcome.WITHIN_TOLERANCE, StatOutcome.NOT_COMPARED], Verdict.PASS),
        ([StatOutcome.SIGNIFICANT_BUT_SMALL, StatOutcome.LARGE_BUT_NOT_SIGNIFICANT], Verdict.PASS),
        ([StatOutcome.WITHIN_TOLERANCE, StatOutcome.IMPROVED], Verdict.IMPROVED),
        ([StatOutcome.IMPROVED, StatOutcome.REGRESSED], Verdict.REGRESSED),
    ],
)
def test_the_regressed_rule(moves: list[StatOutcome], verdict: Verdict) -> None:
    assert decide(change(m) for m in moves) is verdict


def _side(folder: Path, outcome: ClaimOutcome) -> dict[tuple[str, str, str], Side]:
    claim = outcome.claim
    result = {
        "collection": claim.collection,
        "claim": claim.name,
        "profile": claim.profile,
        "scenario_hash": claim.scenario_hash(),
        "status": outcome.status,
        "summary": summarise(outcome),
        "environment": {"device": "cpu"},
    }
    side = Side(folder, result)
    return {side.key: side}


def test_compare_and_baselines_give_the_same_verdict(tmp_path: Path) -> None:
    """B judged against A by `lipbench compare` reads as the verdict of B against A's baseline."""
    folder = tmp_path / "coll"
    draws = {
        f"{name} x{strength} seed {seed}": synthetic_outcome(folder, name, seed=seed, strength=strength)
        for name, strengths in (("label_noise", (1.0, 0.5, 0.45)), ("sampling", (1.0,)), ("growth", (1.0, 0.6)))
        for strength in strengths
        for seed in (0, 1)
    }
    seen = set()
    for a_name, a in draws.items():
        for b_name, b in draws.items():
            if a.claim.name != b.claim.name:
                continue
            verdict = judge_against(b, baseline_of(a), device="cpu").verdict
            [row] = compare_rows(_side(folder, a), _side(folder, b))
            assert row["judgement"] == JUDGEMENT[verdict], (a_name, b_name, verdict, row["judgement"])
            seen.add(verdict)
    assert seen == {Verdict.PASS, Verdict.REGRESSED, Verdict.IMPROVED}  # every branch of the rule was compared


# --------------------------------------------------------------------------- one place that spells a verdict

#: The assertions package is below the outcome module (it may not import it); its sentences end in
#: its own PASS or FAIL, which `test_the_assertion_word_is_the_verdict` keeps equal to the verdicts.
ALLOWED = {("assertions/base.py", "PASS"), ("assertions/base.py", "FAIL")}
WORDS = {str(v) for v in Verdict} | {str(m) for m in StatOutcome}


def _docstrings(tree: ast.AST) -> set[int]:
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))]
    return {
        id(node.body[0].value)
        for node in nodes
        if node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }


def spelled_verdicts(source: str) -> list[tuple[int, str]]:
    """(line, word) of every string constant outside docstrings that is a verdict or a statistic's outcome."""
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    return sorted(
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in WORDS and id(node) not in docstrings
    )


def test_the_scanner_finds_a_spelled_verdict() -> None:
    source = '"""PASS"""\ndef f():\n    """REGRESSED"""\n    return "REGRESSED" if x else f"{y} IMPROVED"\n'
    source += 'Z = "regressed"\n'
    assert spelled_verdicts(source) == [(4, "REGRESSED"), (5, "regressed")]


def test_only_the_outcome_module_spells_a_verdict() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        where = path.relative_to(PACKAGE).as_posix()
        if where == "outcome.py":
            continue
        source = path.read_text()
        found += [(where, line, word) for line, word in spelled_verdicts(source) if (where, word) not in ALLOWED]
        assert "type: ignore[attr-defined]" not in source, where
    assert not found, f"verdicts spelled outside lipbench/outcome.py: {found}"


def test_the_assertion_word_is_the_verdict() -> None:
    assert (verdict_word(True), verdict_word(False)) == (Verdict.PASS, Verdict.FAIL)


# --------------------------------------------------------------------------- saved results


def test_a_saved_result_with_an_unknown_verdict_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "result.json").write_text(
        json.dumps({"status": "MAYBE", "claim": "c", "collection": "s", "file": "c.yaml", "profile": "quick"})
    )
    with pytest.raises(LipbenchError, match=r"result\.json: status 'MAYBE' is not a verdict of this lipbench"):
        load_outcome(tmp_path)


# --------------------------------------------------------------------------- the legends


def test_run_help_lists_every_verdict_with_its_meaning_and_exit_code() -> None:
    from lipbench.cli import build_parser

    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    text = subparsers.choices["run"].format_help()
    for verdict in Verdict:
        line = next(line for line in text.splitlines() if line.split()[:1] == [str(verdict)])
        assert verdict.meaning in line
        assert ("(fails the run" in line) == verdict.fails(strict=True), line
    assert "exit codes: 0 no verdict fails, 1 some verdict fails" in text
    assert "2 input refused and nothing trained" in text


def test_report_legend_and_badges_say_what_a_verdict_means() -> None:
    from lipbench.report import _badge, _legend

    legend = _legend(["REGRESSED", "NEW", "FROM-A-NEWER-LIPBENCH"])
    assert Verdict.REGRESSED.meaning in legend and Verdict.NEW.meaning in legend
    assert Verdict.PASS.meaning not in legend and "FROM-A-NEWER" not in legend
    assert f"background:{Verdict.XPASS.colour}' title='{Verdict.XPASS.meaning}'>XPASS</span>" in _badge("XPASS")
    assert f"background:{Verdict.SKIPPED.colour}' title=''>OTHER</span>" in _badge("OTHER")
