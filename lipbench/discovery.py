"""Finding suite files: which files under a folder are claims, and which collection each belongs to.

Only names are looked at (nothing is parsed), so the CLI and the pytest plugin can find claims
without loading the schema. Base files meant only to be included (`include:` in a suite file) are
named `_*.yaml` or kept in a folder whose name starts with `_` (e.g. `suites/_base/`); a folder
search skips them, so they are never collected as claims.
"""

from __future__ import annotations

from pathlib import Path

from lipbench.errors import SuiteError

SUITE_SUFFIXES = (".yaml", ".yml")


def suite_files(paths: list[str | Path]) -> list[Path]:
    """Suite files named by `paths`: files as given, directories searched recursively, sorted.

    A directory search skips base files (see `is_base_file`); a file named explicitly is loaded as given.
    """
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = (f for f in p.rglob("*") if f.suffix in SUITE_SUFFIXES and f.is_file())
            files += sorted(f for f in found if not is_base_file(f, p))
        elif p.is_file():
            files.append(p)
        else:
            raise SuiteError(p, "", "no such file or directory")
    if not files:
        raise SuiteError(", ".join(map(str, paths)), "", "holds no suite files (*.yaml, *.yml)")
    return files


def is_base_file(path: str | Path, root: str | Path) -> bool:
    """A file only to be included, not a claim: its name, or a folder's below `root`, starts with `_`."""
    parts = Path(path).relative_to(root).parts
    return any(part.startswith("_") for part in parts)


def collection_of(path: str | Path) -> str:
    """The collection of a suite file: the name of its folder (results and baselines are kept per collection)."""
    return Path(path).parent.name or "suites"
