"""A suite file's problems in one line each: pydantic's error, the allowed keys or values, a did-you-mean."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel

from lipbench import factories
from lipbench.assertions import Assertion, assertion_model, available_tests
from lipbench.factories import did_you_mean as _did_you_mean
from lipbench.suite.schema import Claim, Scenario, nested_models

#: pydantic error types of numeric fields: with a .nan / .inf input, the message says "finite".
_NUMBER_KINDS = frozenset(
    {
        "finite_number",
        "int_parsing",
        "float_parsing",
        "greater_than",
        "greater_than_equal",
        "less_than",
        "less_than_equal",
    }
)


def _not_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, str):
        return value.strip().lower().lstrip("+-").lstrip(".") in {"nan", "inf", "infinity"}
    return False


def _finite_message(value: Any) -> str:
    if isinstance(value, float):
        shown = ".nan" if math.isnan(value) else ".inf" if value > 0 else "-.inf"
    else:
        shown = repr(value)
    return f"must be a finite number, got {shown}; replace it with a finite value"


def _axis_problem(axis: str) -> str | None:
    """Why a sweep axis names no numeric key of the scenario, or None."""
    model: Any = Scenario
    keys = axis.split(".")[1:]
    for i, key in enumerate(keys):
        here = ".".join(["scenario", *keys[:i]])
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return f"{axis!r} goes inside {here}, which is a value, not a section"
        if key not in model.model_fields:
            allowed = list(model.model_fields)
            return f"{axis!r} names no key of {here}{_did_you_mean(key, allowed)}; allowed there: {', '.join(allowed)}"
        model = _field_model(model, key, {})
    if isinstance(model, type) and issubclass(model, BaseModel):
        return f"{axis!r} is a section; sweep one number inside it: {', '.join(model.model_fields)}"
    return None


def _has_path(body: dict, loc: tuple[str, ...]) -> bool:
    node: Any = body
    for k in loc:
        if isinstance(node, list) and k.isdigit() and int(k) < len(node):
            node = node[int(k)]
        elif isinstance(node, dict) and k in node:
            node = node[k]
        else:
            return False
    return True


PATTERN_HELP = {
    "name": "must be lower-case letters, digits, '_' or '-', starting with a letter or digit",
    "sweep.axis": "must be a key path under scenario, e.g. scenario.label_noise or scenario.optimizer.batch_size",
}


def _explain(err: dict[str, Any], data: dict[str, Any], loc: tuple[str, ...]) -> str:
    """pydantic's message, plus the allowed keys / values and a did-you-mean where we can tell."""
    kind, msg = err["type"], err["msg"]
    if kind in _NUMBER_KINDS and _not_finite(err["input"]):
        return _finite_message(err["input"])  # nan also fails every bound, with a less helpful message
    if kind == "factory":  # already names the callable and the problem (lipbench.factories)
        return msg
    if kind == "extra_forbidden":
        allowed = _allowed_keys(data, loc[:-1])
        hint = _did_you_mean(loc[-1], allowed)
        return f"unknown key{hint}; allowed here: {', '.join(allowed)}"
    if kind == "missing":
        model = _section_model(data, loc[:-1])
        if model is None:
            return "required key is missing"
        required = ", ".join(k for k, f in model.model_fields.items() if f.is_required())
        return f"required key is missing; {'this section' if loc[:-1] else 'a suite file'} needs {required}"
    if kind == "literal_error":
        expected = [s.strip(" '") for s in err["ctx"]["expected"].replace(" or ", ", ").split(",")]
        hint = _did_you_mean(str(err["input"]), expected)
        return f"{err['input']!r} is not allowed{hint}; {msg[0].lower()}{msg[1:]}"
    if kind == "union_tag_invalid":
        tag, tests = err["ctx"]["tag"], available_tests()
        return f"unknown test {tag!r}{_did_you_mean(tag, tests)}; available: {', '.join(tests)}"
    if kind == "union_tag_not_found":
        return f"names no test; add `test:` with one of {', '.join(available_tests())}"
    if kind == "string_pattern_mismatch" and ".".join(loc) in PATTERN_HELP:
        return f"{PATTERN_HELP['.'.join(loc)]} (got {err['input']!r})"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        allowed = _allowed_keys(data, loc)
        keys = f" (keys: {', '.join(allowed)})" if allowed else ""
        return f"must be a mapping{keys}, got {type(err['input']).__name__}"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    got = err["input"]
    return msg if got == "" or got is None or isinstance(got, dict) else f"{msg} (got {got!r})"


def _section_model(data: dict[str, Any], loc: tuple[str, ...]) -> type[BaseModel] | None:
    model: Any = Claim
    node: Any = data
    for key in loc:
        if key.isdigit() or not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        node = node.get(key, {}) if isinstance(node, dict) else {}
        model = _field_model(model, key, node)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _allowed_keys(data: dict[str, Any], loc: tuple[str, ...]) -> list[str]:
    model = _section_model(data, loc)
    return list(model.model_fields) if model is not None else []


def _field_model(model: type[BaseModel], key: str, node: Any) -> Any:
    if issubclass(model, Claim) and key == "assertion":
        return _test_model(node.get("test")) if isinstance(node, dict) else None
    field = model.model_fields.get(key)
    found = nested_models(field.annotation) if field is not None else []
    return found[0] if found else None


def _test_model(test: Any) -> type[Assertion] | None:
    try:
        return assertion_model(test) if isinstance(test, str) else None
    except factories.FactoryError:
        return None
