"""Thousands of mutated suite files thrown at the loader: each is a valid claim or one `LipbenchError` line.

A mutation replaces one value anywhere in a real claim's tree (a section, a key, a list item) by a
value of another YAML type (null, a boolean, a number, text, a list, a mapping, a non-finite float),
deletes it, or adds an unknown key; the file is written as YAML and loaded as `lipbench run` loads it.
Hypothesis draws the mutations from a fixed seed, so a run is repeatable.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import yaml
from conftest import TINY_SUITE
from hypothesis import HealthCheck, example, given, seed, settings
from hypothesis import strategies as st

from lipbench.errors import LipbenchError
from lipbench.suite import ResolvedClaim, load_claim, parse_override

MUTATIONS = 2_000

#: The claim mutated: the tiny test suite with every section a suite file may hold.
BASE: dict[str, Any] = {
    **copy.deepcopy(TINY_SUITE),
    "paper": "§8.2",
    "expect": "pass",
    "profiles": {"quick": {"scenario": {"steps": 3}}, "paper": {"seeds": {"init": 3}}},
}
BASE["scenario"] = {
    **BASE["scenario"],
    "gradient": {"scale": 1.0, "noise": "none", "noise_std": 0.0},
    "regularisers": {"mixup": 0.0},
    "record": ["sigma", "K", "loss", "accuracy"],
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["mlp", "digits", "monotone_trend", "scenario.steps", "quick", "sgd", "1e-3", ".nan"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


PATHS = _paths(BASE)


def _mutate(data: dict[str, Any], path: tuple[Any, ...], action: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(data)
    parent = out
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if action == "delete":
        del parent[last]
    elif action == "add" and isinstance(parent, dict):
        parent[f"{last}_extra"] = value
    else:
        parent[last] = value
    return out


@seed(20260101)
@settings(
    max_examples=MUTATIONS,
    deadline=None,
    derandomize=False,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    path=st.sampled_from(PATHS),
    action=st.sampled_from(["replace", "replace", "replace", "delete", "add"]),
    value=values,
)
@example(path=("scenario",), action="replace", value={"\n": None})  # a key holding a line break
def test_a_mutated_suite_file_loads_or_is_one_line(tmp_path: Path, path, action: str, value: Any) -> None:
    data = _mutate(BASE, path, action, value)
    file = tmp_path / "mutated.yaml"
    file.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    for profile in ("quick", None):
        try:
            claim = load_claim(file, profile)
        except LipbenchError as e:
            text = str(e)
            assert "\n" not in text and text.startswith(str(file)), text
            continue
        assert isinstance(claim, ResolvedClaim)
        assert claim.runs() and claim.scenario_hash()


@seed(20260102)
@settings(max_examples=200, deadline=None, database=None)
@given(key=st.sampled_from([".".join(map(str, p)) for p in PATHS]), value=values)
def test_any_set_override_loads_or_is_one_line(tmp_path_factory, key: str, value: Any) -> None:
    folder = tmp_path_factory.mktemp("set")
    file = folder / "tiny.yaml"
    file.write_text(yaml.safe_dump(BASE, sort_keys=False))
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    if text.endswith("..."):
        text = text[:-3].strip()
    if isinstance(value, float) and not math.isfinite(value):
        text = str(value)
    try:
        parse_override(f"{key}={text}")
        claim = load_claim(file, "quick", [f"{key}={text}"])
    except LipbenchError as e:
        assert "\n" not in str(e), str(e)
        return
    assert claim.runs()
