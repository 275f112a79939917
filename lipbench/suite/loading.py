"""Reading suite files: strict YAML (no key twice), `include:`, profiles and `--set`, into a `ResolvedClaim`."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from lipbench import factories
from lipbench.assertions import ASSERTIONS
from lipbench.discovery import collection_of
from lipbench.errors import SuiteError
from lipbench.factories import did_you_mean as _did_you_mean
from lipbench.suite.messages import _axis_problem, _explain, _has_path
from lipbench.suite.planning import ResolvedClaim, _set_path, _sweep_scenario
from lipbench.suite.schema import EMPIRICAL_HOW, Claim, claim_model, sgd_theory_problem


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=v` -> ("a.b", v) with v parsed as YAML (numbers, booleans, lists)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise SuiteError("--set", text, "expected key.path=value, e.g. --set scenario.steps=200")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


#: The label of a claim resolved without a profile (the file's own settings); `--profile default` names it.
BASE_PROFILE = "default"


def load_claim(
    path: str | Path,
    profile: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    fallback: str | None = None,
) -> ResolvedClaim:
    """Load and validate one suite file; every profile is validated, `profile` is resolved.

    Without `profile` the claim is resolved for `fallback` when the file has that profile, else for
    the file's own settings (labelled "default"); `lipbench.invocation.PROFILE_RULE` is the rule.
    """
    path = Path(path)
    raw, layers = _read_suite(path)
    return resolve_claim(path, raw, layers, profile, overrides, fallback)


def claim_from_mapping(
    data: dict[str, Any],
    profile: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    collection: str = "python",
    fallback: str | None = None,
) -> ResolvedClaim:
    """A claim written in Python, as the mapping a suite file would hold, validated exactly like one.

    Errors name `<collection>/<name>.yaml` (no such file is written) and the key path.
    """
    data = copy.deepcopy(dict(data))
    path = Path(collection) / f"{data.get('name', 'claim')}.yaml"
    return resolve_claim(path, data, [(path, data)], profile, overrides, fallback)


def resolve_claim(
    path: Path,
    raw: dict[str, Any],
    layers: list[Layer],
    profile: str | None,
    overrides: list[str] | tuple[str, ...],
    fallback: str | None = None,
) -> ResolvedClaim:
    """Validate a suite's mapping (every profile) and resolve `profile` and `overrides`; `path` names it."""
    raw = dict(raw)
    profiles = raw.pop("profiles", None) or {}
    if not isinstance(profiles, dict) or not all(isinstance(v, dict) for v in profiles.values()):
        raise SuiteError(path, "profiles", "must map profile names to mappings of overrides")
    if BASE_PROFILE in profiles:
        raise SuiteError(path, f"profiles.{BASE_PROFILE}", "is the name of the file's own settings; rename it")
    if profile is None and fallback in profiles:
        profile = fallback
    elif profile == BASE_PROFILE:
        profile = None
    raw.setdefault("name", path.stem.replace(" ", "_").lower())
    try:
        sets = [parse_override(o) for o in overrides]
    except SuiteError as e:
        raise SuiteError(path, f"--set {e.key}", e.message) from None
    # The file itself first, so a broken file reports its own key, not one a profile happens to touch
    # (or "no profile"). No overrides are applied yet, so no error is blamed on a --set.
    file_claim = _validate(path, raw, "", {}, [], layers)
    unset = {"": file_claim}
    for name, body in profiles.items():
        unset[name] = _validate(path, _merge(raw, body), f"profiles.{name}", body, [], layers)
    if profile is None:
        data, origin, body = raw, "", {}
    elif profile in profiles:
        data, origin, body = _merge(raw, profiles[profile]), f"profiles.{profile}", profiles[profile]
    else:
        hint = _did_you_mean(profile, profiles)
        available = ", ".join(profiles) or "none"
        raise SuiteError(path, "profiles", f"no profile {profile!r}{hint}; this file has: {available}")
    if not sets:
        claim = unset[profile or ""]
    else:
        for key, value in sets:
            data = _apply_set(path, data, key, value)
        claim = _validate(path, data, origin, body, sets, layers)
    label = profile or BASE_PROFILE
    return ResolvedClaim(claim, path, label, collection_of(path), tuple(profiles), unset[profile or ""])


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: str, first: int, second: int) -> None:
        super().__init__(key)
        self.key, self.first, self.second = key, first, second


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one silently).

    Mappings are built after the whole document is composed, in no nested order, so the key path of
    every mapping node is indexed first (`construct_document`) for the error to name.
    """

    def construct_document(self, node: yaml.Node) -> Any:
        self._paths: dict[int, tuple[str, ...]] = {}
        self._index(node, ())
        return super().construct_document(node)

    def _index(self, node: yaml.Node, path: tuple[str, ...]) -> None:
        if id(node) in self._paths:  # an alias of a node seen before
            return
        if isinstance(node, yaml.MappingNode):
            self._paths[id(node)] = path
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    self._index(value_node, (*path, str(key_node.value)))
        elif isinstance(node, yaml.SequenceNode):
            self._paths[id(node)] = path
            for i, item in enumerate(node.value):
                self._index(item, (*path, str(i)))

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue  # `<<: *anchor` may override keys; that is what it is for
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                path = ".".join((*self._paths.get(id(node), ()), str(key)))
                raise _DuplicateKey(path, seen[key], line)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SuiteError(path, "", f"cannot be read ({e.__class__.__name__}: {e})") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except _DuplicateKey as e:
        raise SuiteError(
            path, e.key, f"key given twice (lines {e.first} and {e.second}); remove one of the two"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SuiteError(path, "", f"not valid YAML ({where}{problem}); fix the syntax there") from None
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise SuiteError(path, "", f"is {kind}; a suite file is a mapping with schema_version, claim, scenario, ...")
    return data


#: A file and the mapping written in it (without `include`), highest precedence first.
Layer = tuple[Path, dict[str, Any]]


def _read_suite(path: Path, chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], list[Layer]]:
    """The file with its includes merged under it, and its layers (to tell which file set a key)."""
    chain = (*chain, path)
    try:
        raw = _read_yaml(path)
    except SuiteError as e:
        if len(chain) == 1:
            raise
        raise SuiteError(e.file, e.key, f"{e.message} (included by {chain[-2]})") from None
    if "include" not in raw:
        return raw, [(path, raw)]
    names = raw.pop("include")
    names = [names] if isinstance(names, str) else names
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise SuiteError(path, "include", "must be a path relative to this file, or a list of such paths")
    base: dict[str, Any] = {}
    below: list[Layer] = []
    for name in names:
        target = path.parent / name
        if target.resolve() in {c.resolve() for c in chain}:
            cycle = _chain_text((*chain, target))
            raise SuiteError(path, "include", f"includes form a cycle: {cycle}; remove one of these includes")
        if not target.is_file():
            raise SuiteError(path, "include", f"{name!r} is not a file ({target}); paths are relative to this file")
        data, layers = _read_suite(target, chain)
        base = _merge(base, data)  # a later include wins over an earlier one
        below = layers + below
    return _merge(base, raw), [(path, raw), *below]


def _chain_text(chain: tuple[Path, ...]) -> str:
    """`a.yaml -> _base/b.yaml`: paths relative to the folder of the first file."""
    root = chain[0].parent
    return " -> ".join(os.path.relpath(p, root) for p in chain)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _apply_set(path: Path, data: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    keys = key.split(".")
    node: Any = data
    for i, k in enumerate(keys[:-1]):
        node = node.get(k) if isinstance(node, dict) else None
        if node is None:
            node = {}  # a missing section is created; the schema then says whether it is allowed
        elif not isinstance(node, dict):
            raise SuiteError(path, f"--set {key}", f"{'.'.join(keys[: i + 1])} is not a section")
    out = copy.deepcopy(data)
    _set_path(out, keys, value)
    return out


def _validate(
    path: Path, data: dict[str, Any], origin: str, body: dict, sets: list, layers: list[Layer] | None = None
) -> Claim:
    def where(loc: tuple[str, ...]) -> str:
        key = ".".join(loc)
        if any(k == key or key.startswith(k + ".") for k, _ in sets):
            return f"--set {key}"
        if origin and loc and _has_path(body, loc):
            return f"{origin}.{key}"
        return key

    def fail(loc: tuple[str, ...], message: str) -> SuiteError:
        key = where(loc)
        if not key.startswith("--set ") and layers and len(layers) > 1:
            # A value that came from an included file: say which file to fix.
            source = next((f for f, own in layers if _has_path(own, tuple(key.split(".")))), path)
            if source != path:
                message = f"{message} (set in {os.path.relpath(source, path.parent)}, included by this file)"
        return SuiteError(path, key, message)

    try:
        model = claim_model(data)
    except factories.FactoryError as e:  # the plugin that registers this test does not import, or is no test
        raise fail(("assertion", "test"), str(e)) from None
    try:
        claim = model.model_validate(data)
    except ValidationError as e:
        errs = e.errors()
        # A misspelt key also makes its correct spelling "missing": report the misspelling.
        err = next((x for x in errs if x["type"] == "extra_forbidden"), errs[0])
        loc = [str(p) for p in err["loc"] if not str(p).startswith("function-")]
        if len(loc) > 1 and loc[0] == "assertion" and loc[1] in ASSERTIONS:
            del loc[1]  # pydantic's discriminator tag is not a key the user wrote
        raise fail(tuple(loc), _explain(err, data, tuple(loc))) from None
    scenarios = [claim.scenario]
    if claim.sweep is not None:
        problem = _axis_problem(claim.sweep.axis)
        if problem:
            raise fail(("sweep", "axis"), problem)
        for i, value in enumerate(claim.sweep.values):
            try:
                scenarios.append(_sweep_scenario(claim, value))
            except ValidationError as e:
                err = e.errors()[0]
                loc = ".".join(str(p) for p in err["loc"])
                raise fail(
                    ("sweep", "values", str(i)),
                    f"{value!r} is not allowed for {claim.sweep.axis} ({loc}: {err['msg']})",
                ) from None
    theory = next(filter(None, map(sgd_theory_problem, scenarios)), None)
    if theory is not None and claim.expect != "empirical":
        loc, why = theory
        raise fail(loc, f"{why}; {EMPIRICAL_HOW}")
    return claim
