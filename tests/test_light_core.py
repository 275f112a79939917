"""The light core: the schema and the command line's face load without torch (and the schema without pandas).

Each check runs in a fresh interpreter, since this test process has imported torch long before.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap

import pytest

SHOW_LOADED = "print(sorted(m for m in ('torch', 'pandas') if m in sys.modules))"


def _loaded(code: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", f"import sys\n{textwrap.dedent(code)}\n{SHOW_LOADED}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return ast.literal_eval(done.stdout.strip().splitlines()[-1])


def test_the_suite_schema_imports_neither_torch_nor_pandas() -> None:
    assert _loaded("import lipbench.suite") == []


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"]], ids=["lipbench", "lipbench-run"])
def test_the_command_lines_help_does_not_load_torch(argv: list[str]) -> None:
    code = f"""
    from lipbench.cli import main
    try:
        main({argv!r})
    except SystemExit as e:
        assert e.code == 0, e.code
    """
    assert "torch" not in _loaded(code)


def test_validating_a_suite_does_not_load_torch(write_suite) -> None:
    path = write_suite("light")
    code = f"""
    from lipbench.cli import main
    assert main(["validate", {str(path)!r}]) == 0
    """
    assert "torch" not in _loaded(code)


def test_grouping_a_claims_runs_into_ensembles_does_not_load_torch(write_suite) -> None:
    path = write_suite("grouped")
    code = f"""
    from lipbench.runner import _units
    from lipbench.suite import load_claim
    specs = load_claim({str(path)!r}).runs()
    units = _units(specs, "ensemble", n_workers=1)
    assert sorted(s.run_id for u in units for s in u) == sorted(s.run_id for s in specs)
    assert len(units) < len(specs), [len(u) for u in units]  # the seeds of a sweep value train as one
    """
    assert "torch" not in _loaded(code)
