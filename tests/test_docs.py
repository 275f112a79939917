"""The documentation: the generated suite reference is current, and every cited file exists.

The citation checks read every file `git ls-files` lists (text files only) and look for two kinds
of reference: a markdown file name or a path under the docs folder written anywhere, and the target
of a markdown link (in markdown files, outside code blocks), with its #anchor. Each must name a
file or folder of the repository; an anchor must name a heading of the linked page.
"""

from __future__ import annotations

import os
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from lipbench import docgen

ROOT = Path(__file__).resolve().parents[1]

# A markdown file name, possibly with folders; not part of a URL or a longer path.
MD_NAME = re.compile(r"(?<![\w./:-])((?:[\w.-]+/)*[\w-][\w.-]*\.md)(?![\w-])")
# A path under the docs folder, ending in a name character (so "docs/..." is not one).
DOCS_PATH = re.compile(r"(?<![\w./:-])(docs/[\w./-]*[\w-])")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


@cache
def tracked() -> tuple[str, ...]:
    """Tracked files that exist in the working tree, relative to the repository root."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: no list of tracked files")
    return tuple(sorted(p for p in out.split("\0") if p and (ROOT / p).is_file()))


@cache
def folders() -> frozenset[str]:
    return frozenset(str(parent) for p in tracked() for parent in Path(p).parents if str(parent) != ".")


def text_of(path: str) -> str | None:
    data = (ROOT / path).read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def exists(path: str, base: str) -> str | None:
    """The repository path `path` names, read from the root or from folder `base`, if it exists."""
    path = path.rstrip("/")
    candidates = [path.lstrip("/")] if path.startswith("/") else [os.path.join(base, path), path]
    for candidate in candidates:
        normal = os.path.normpath(candidate)
        if normal in tracked() or normal in folders() or normal == ".":
            return normal
    return None


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup and punctuation dropped, lower case, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: str) -> set[str]:
    text = FENCE.sub("", text_of(path) or "")
    seen: dict[str, int] = {}
    out = set()
    for match in HEADING.finditer(text):
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


# ---------------------------------------------------------------------------------- the reference


def test_suite_reference_is_generated_from_the_current_schema():
    committed = ROOT / docgen.REFERENCE
    assert committed.exists(), f"{docgen.REFERENCE} is missing: run `python -m lipbench.docgen`"
    assert committed.read_text(encoding="utf-8") == docgen.suite_reference(), (
        f"{docgen.REFERENCE} differs from the schema: run `python -m lipbench.docgen` and commit it"
    )


def test_notes_describe_keys_that_exist():
    known = set(docgen.note_paths())
    stale = sorted(set(docgen.NOTES) - known)
    assert not stale, f"lipbench.docgen.NOTES describes keys the schema no longer has: {stale}"


def test_every_key_and_test_is_listed():
    from lipbench.assertions import ASSERTIONS

    text = docgen.suite_reference()
    for path in docgen.note_paths():
        assert f"`{path.rsplit('.', 1)[-1]}`" in text, path
    for name, model in ASSERTIONS.items():
        assert f"### `test: {name}`" in text
        for field in model.model_fields:
            assert f"| `{field}` |" in text, (name, field)


class _Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")

    depth: Annotated[int, Field(ge=1, le=3)] = 2


class _ToyTest(BaseModel):
    """Claim: a toy claim, for the generator's own test.

    It passes when ``level`` is small.
    """

    model_config = ConfigDict(extra="forbid")

    test: Literal["toy_test"] = "toy_test"
    level: float = Field(0.1, gt=0, lt=1)
    mode: Literal["a", "b"] = "a"  # how the toy decides
    names: list[str] = Field(default_factory=lambda: ["x"], min_length=1)
    inner: _Inner = _Inner()


def test_a_new_assertion_gets_its_section(monkeypatch):
    import lipbench.assertions

    monkeypatch.setitem(lipbench.assertions.ASSERTIONS, "toy_test", _ToyTest)
    text = docgen.suite_reference()
    section = text[text.index("### `test: toy_test`") :]
    assert "It passes when `level` is small." in section
    assert "| `level` | number | `0.1` | > 0; < 1 |" in section
    assert "| `mode` | string | `a` | `a`, `b` | how the toy decides |" in section
    assert "| `names` | list of strings | `[x]` | not empty |" in section
    assert "#### `test: toy_test`, `inner`" in section
    assert "| `depth` | integer | `2` | >= 1; <= 3 |" in section
    assert "[`toy_test`](#test-toy_test)" in text


def test_check_reports_a_stale_page(tmp_path, capsys):
    page = tmp_path / "reference.txt"
    page.write_text("old\n")
    assert docgen.main(["--check", "--output", str(page)]) == 1
    assert docgen.main(["--output", str(page)]) == 0
    assert docgen.main(["--check", "--output", str(page)]) == 0
    assert page.read_text() == docgen.suite_reference()


# ---------------------------------------------------------------------------------- citations


def test_every_cited_file_exists():
    missing = []
    for path in tracked():
        text = text_of(path)
        if text is None:
            continue
        base = os.path.dirname(path)
        for pattern in (MD_NAME, DOCS_PATH):
            for match in pattern.finditer(text):
                if exists(match.group(1), base) is None:
                    missing.append(f"{path}:{line_of(text, match.start())}: {match.group(1)}")
    assert not missing, "files cited but not in the repository:\n" + "\n".join(sorted(set(missing)))


def test_every_markdown_link_resolves():
    broken = []
    for path in tracked():
        if not path.endswith(".md"):
            continue
        text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text_of(path) or "")
        base = os.path.dirname(path)
        for match in LINK.finditer(text):
            target = match.group(1)
            if SCHEME.match(target):
                continue
            file, _, anchor = target.partition("#")
            where = f"{path}:{line_of(text, match.start())}: {target}"
            found = exists(file, base) if file else path
            if found is None:
                broken.append(f"{where} (no such file)")
            elif anchor and found.endswith(".md") and anchor not in anchors(found):
                broken.append(f"{where} (no such heading)")
    assert not broken, "markdown links that lead nowhere:\n" + "\n".join(broken)
