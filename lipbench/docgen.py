"""The suite file reference, docs/suite-reference.md, generated from the schema itself.

`suite_reference()` walks the pydantic models of `lipbench.suite` (from `Claim` down through every
nested section) and the assertion models registered in `lipbench.assertions.ASSERTIONS`, and
writes one table per section: each key's type, default and allowed values (Literal values and the
bounds of Field constraints), with a description taken, in this order, from the field's own
`description`, an attribute docstring, a comment on the field's line, or `NOTES` below. Nothing
about a key's type or limits is written by hand, so the page cannot drift from what validation
accepts; `tests/test_docs.py` fails when the committed page differs from the generated one.

    python -m lipbench.docgen            # rewrite docs/suite-reference.md
    python -m lipbench.docgen --check    # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import ast
import inspect
import io
import re
import sys
import textwrap
import tokenize
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from lipbench import suite
from lipbench.assertions import ASSERTIONS
from lipbench.suite import Claim, nested_models

__all__ = ["NOTES", "REFERENCE", "main", "suite_reference"]

#: Where the page lives, relative to the repository root.
REFERENCE = Path("docs/suite-reference.md")

#: Descriptions of keys whose schema carries none, by dotted key path. A description in the schema
#: (Field(description=...), an attribute docstring or a comment on the field's line) takes precedence.
#: Links are written from the repository root; the page gets them relative to its own folder.
NOTES: dict[str, str] = {
    "schema_version": "Version of the file format.",
    "name": (
        "The claim's id: its results folder, its MLflow parent run and its pytest item. When absent, the file "
        "name (lower-cased, spaces replaced by `_`)."
    ),
    "claim": "The claim, in one sentence.",
    "paper": "Where the paper shows it (section, figure). Prose: it enters no computation and no scenario hash.",
    "scenario": "What one training run does.",
    "sweep": "One number of the scenario varied over a list of values; without it every run uses the scenario.",
    "seeds": "How many init and sampling seeds each sweep value gets.",
    "assertion": (
        "The statistical test that judges the claim; its `test` key selects it: a built-in test, or one an "
        "installed package registers ([plugins](docs/extending.md#plugins))."
    ),
    "expect": (
        "`fail` marks a claim known not to reproduce: reported XFAIL while it fails and XPASS when it holds "
        "(both exit 0); a design short of power under the model fitted to its baseline is not refused for it, "
        "and its sentence says so. `empirical` asks a claim whose theory assumes plain SGD (the SDE terms, the "
        "variance prediction) of another optimiser or schedule: it runs, is judged as usual, and its verdict says so."
    ),
    "expect_reason": "One sentence on why the claim does not reproduce; required with `expect: fail`.",
    "strict": "With `expect: fail`, an XPASS fails the run (exit 1).",
    "scenario.model": "The network.",
    "scenario.dataset": "The data.",
    "scenario.optimizer": "The optimiser (torch.optim) and its learning-rate schedule.",
    "scenario.steps": "SGD steps of each run.",
    "scenario.record_every": (
        "Steps between records; step 0 and the last step are always recorded. May not exceed `steps`."
    ),
    "scenario.label_noise": (
        "Probability with which each training label is replaced, once before training, by a class drawn "
        "uniformly (possibly the true one)."
    ),
    "scenario.gradient": "What is done to the mini-batch gradient before the step.",
    "scenario.sampling": (
        "`with_replacement`: each batch is `batch_size` independent uniform draws; `without_replacement`: "
        "shuffled epochs of distinct samples, an epoch's incomplete tail dropped (`batch_size` may not exceed "
        "the training set)."
    ),
    "scenario.record": (
        "Every record holds each layer's sigma_max (`sigma_<l>`), `K` and `log_K`; `loss` and `accuracy` add "
        "those on 1,024 training samples. `sde` adds the SDE terms of that step (mu, beta^2, eps, the "
        "discrete-time term, per layer and for the network) and `init` each layer's random-matrix prediction "
        "s(sqrt m + sqrt n). Every engine records the same columns. A run whose sigma or (recorded) loss is "
        "not finite stops there, reported as diverged at that step."
    ),
    "scenario.device": (
        "`cuda`: the claim needs a GPU and is SKIPPED without one; `any`: it runs wherever lipbench runs."
    ),
    "scenario.regularisers": "Training-time regularisers, each off by default.",
    "scenario.model.hidden": "The MLP's hidden widths (the paper: 512, 256). Ignored by the ConvNet.",
    "scenario.model.width": (
        "Output channels of the ConvNet's first convolution; the second and third have 2x and 4x, the hidden "
        "linear layer 8x (the paper: 32). Ignored by the MLP."
    ),
    "scenario.model.dropout": (
        "Switch for the paper's dropout layers, at fixed rates: ConvNet 0.2 after the second and third "
        "convolutions and 0.3 in the classifier; MLP 0.2 after each hidden layer."
    ),
    "scenario.model.batch_norm": "ConvNet only: BatchNorm2d without running statistics after the third convolution.",
    "scenario.model.init": (
        "`default`: PyTorch's own initialisation (Kaiming-uniform weights, uniform biases); `normal`: i.i.d. "
        "N(0, init_std^2) weights and zero biases. Either way the init seed alone fixes the weights."
    ),
    "scenario.model.init_std": "Entry standard deviation of `init: normal`.",
    "scenario.dataset.name": (
        "`digits` (scikit-learn's 8x8 digits) and `synthetic` need no download; the others are read from "
        "torchvision's layout under the data root."
    ),
    "scenario.dataset.train_size": "Keep the first this many training samples (standardisation uses them only).",
    "scenario.dataset.test_size": "Keep the first this many test samples.",
    "scenario.dataset.synthetic_shape": "`synthetic` only: image shape (channels, height, width).",
    "scenario.dataset.synthetic_classes": "`synthetic` only: number of classes.",
    "scenario.dataset.synthetic_size": "`synthetic` only: training samples (the test split holds a quarter as many).",
    "scenario.optimizer.lr": "Learning rate (the schedule's base).",
    "scenario.optimizer.batch_size": "Mini-batch size b.",
    "scenario.optimizer.weight_decay": "Adds `weight_decay * W` to each gradient (its drift enters mu).",
    "scenario.gradient.scale": "alpha: the applied gradient is `scale * g_hat + noise`.",
    "scenario.gradient.noise": "Distribution of the noise added to every gradient entry, drawn anew each step.",
    "scenario.gradient.noise_std": (
        "Standard deviation of that noise per entry (uniform noise is drawn on [-sqrt(3) std, +sqrt(3) std])."
    ),
    "sweep.axis": (
        "A key path under `scenario` that names one number, e.g. `scenario.label_noise` or "
        "`scenario.optimizer.batch_size`."
    ),
    "sweep.values": "The values; each must itself be valid for the swept key, and no two may print alike.",
    "seeds.init": "Init seeds per sweep value: run i starts from weights drawn with seed `base + i`.",
    "seeds.sampling": (
        "Sampling seeds per init seed: seed `base + j`, with the init seed, drives mini-batches, label "
        "corruption and gradient noise."
    ),
    "seeds.base": "Offset of every seed; changing it must not change a verdict.",
}

_SCALARS = {int: "integer", float: "number", str: "string", bool: "boolean", type(None): "null"}
_PLURALS = {"integer": "integers", "number": "numbers", "string": "strings", "boolean": "booleans"}


# ------------------------------------------------------------------------------------------ text helpers


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _code(value: str) -> str:
    return f"``{value}``" if "`" in value else f"`{value}`"


def _markdown(doc: str) -> str:
    """A docstring or note as markdown: dedented, reST ``literals`` as `code`, and links to pages of
    the docs folder (written from the repository root, as everywhere in the source) made relative
    to the page, which lives in that folder."""
    text = re.sub(r"``([^`]+)``", r"`\1`", inspect.cleandoc(doc)).strip()
    return re.sub(r"\]\(docs/", "](", text)


def _first_paragraph(doc: str | None) -> str:
    return _markdown(doc).split("\n\n")[0].replace("\n", " ") if doc else ""


def _own_doc(model: type) -> str | None:
    """The model's own docstring (pydantic's BaseModel docstring is not inherited by the page)."""
    doc = model.__dict__.get("__doc__")
    return doc if doc and doc.strip() else None


def _value(value: Any) -> str:
    """A default as it would be written in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '""' if value == "" else value
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


# ------------------------------------------------------------------------------------------ schema helpers


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _metadata(tp: Any) -> tuple[Any, list[Any]]:
    """(the bare type, the constraint objects of its Annotated layers)."""
    meta: list[Any] = []
    while typing.get_origin(tp) is Annotated:
        args = typing.get_args(tp)
        tp = args[0]
        for m in args[1:]:
            meta += list(m.metadata) if isinstance(m, FieldInfo) else [m]
    return tp, meta


def _constraints(meta: list[Any], kind: str) -> list[str]:
    """Field constraints in words: bounds, lengths, a pattern, finiteness."""
    out: list[str] = []
    for m in meta:
        for attr, words in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="), ("multiple_of", "a multiple of")):
            if getattr(m, attr, None) is not None:
                out.append(f"{words} {_value(getattr(m, attr))}")
        unit = "characters" if kind == "string" else "items"
        if getattr(m, "min_length", None) is not None:
            n = m.min_length
            out.append("not empty" if n == 1 else f"at least {n} {unit}")
        if getattr(m, "max_length", None) is not None:
            out.append(f"at most {m.max_length} {unit}")
        if getattr(m, "pattern", None) is not None:
            pattern = m.pattern if isinstance(m.pattern, str) else m.pattern.pattern
            out.append(f"matches {_code(pattern)}")
        if getattr(m, "allow_inf_nan", None) is False:
            out.append("finite")
    return out


class _Renderer:
    """Types and allowed values of one field, with links to the sections of nested models."""

    def __init__(self, anchors: dict[type, tuple[str, str]]):
        self.anchors = anchors

    def type_of(self, tp: Any) -> str:
        tp, _ = _metadata(tp)
        if tp in _SCALARS:
            return _SCALARS[tp]
        if _is_model(tp):
            anchor = self.anchors.get(tp)
            return f"mapping ([{anchor[0]}](#{anchor[1]}))" if anchor else "mapping"
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is Literal:
            kinds = sorted({_SCALARS.get(type(a), type(a).__name__) for a in args})
            return " or ".join(kinds)
        if _is_union(tp):
            parts: list[str] = []
            for arg in args:
                part = self.type_of(arg)
                if part not in parts:
                    parts.append(part)
            return " or ".join(parts)
        if origin in (list, set, frozenset) or (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
            item = self.type_of(args[0]) if args else "any"
            return f"list of {_PLURALS.get(item, item)}"
        if origin is tuple:
            items = [self.type_of(a) for a in args]
            if len(set(items)) == 1:
                return f"list of {len(items)} {_PLURALS.get(items[0], items[0])}"
            return "list [" + ", ".join(items) + "]"
        if origin is dict:
            return f"mapping of {self.type_of(args[0])} to {self.type_of(args[1])}" if args else "mapping"
        if tp is Any:
            return "any"
        return getattr(tp, "__name__", str(tp))

    def allowed(self, tp: Any, field_meta: list[Any]) -> str:
        bare, meta = _metadata(tp)
        kind = self.type_of(bare)
        parts = _constraints([*field_meta, *meta], kind)
        origin, args = typing.get_origin(bare), typing.get_args(bare)
        if origin is Literal:
            parts.insert(0, ", ".join(_code(_value(a)) for a in args))
        elif _is_union(bare):
            for arg in args:
                inner = self.allowed(arg, [])
                if inner and inner not in parts:
                    parts.append(inner)
        elif origin in (list, tuple, set, frozenset) and args:
            item_meta = _metadata(args[0])[1]
            item_literal = typing.get_origin(_metadata(args[0])[0]) is Literal
            inner = self.allowed(args[0], [])
            if inner and (item_meta or item_literal):
                parts.append(f"each {inner}" if not item_literal else f"each one of {inner}")
        return "; ".join(parts)


# ------------------------------------------------------------------------------------------ descriptions


def _source_docs(model: type) -> dict[str, str]:
    """Field name -> its attribute docstring, else the comment on its line(s), from the class source."""
    docs: dict[str, str] = {}
    for klass in reversed(model.__mro__):
        if not _is_model(klass) or klass is BaseModel:
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
            tree = ast.parse(source)
            comments = {
                tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                if tok.type == tokenize.COMMENT
            }
        except (OSError, TypeError, SyntaxError, tokenize.TokenError):
            continue
        body = next((n.body for n in tree.body if isinstance(n, ast.ClassDef)), [])
        for i, node in enumerate(body):
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            after = body[i + 1] if i + 1 < len(body) else None
            value = after.value if isinstance(after, ast.Expr) else None
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                docs[node.target.id] = inspect.cleandoc(value.value)
                continue
            lines = range(node.lineno, (node.end_lineno or node.lineno) + 1)
            text = " ".join(comments[n] for n in lines if n in comments)
            if text:
                docs[node.target.id] = text
    return docs


def _description(path: str, name: str, field: FieldInfo, source: dict[str, str]) -> str:
    text = field.description or source.get(name) or NOTES.get(path, "")
    return _markdown(text) if text else ""


def _default(field: FieldInfo, anchor: tuple[str, str] | None) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        try:
            value = field.default_factory()  # type: ignore[call-arg]
        except TypeError:
            return "computed"
    else:
        value = field.default
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        return f"[its defaults](#{anchor[1]})" if anchor else "its defaults"
    return _code(_value(value))


# ------------------------------------------------------------------------------------------ the page


def _registry() -> tuple[str, dict[str, type[BaseModel]]]:
    """The key of `Claim` that holds the assertion, and the registered assertion models by test name."""
    registry = {str(name): model for name, model in ASSERTIONS.items()}
    models = set(registry.values())
    key = next(
        (n for n, f in Claim.model_fields.items() if set(nested_models(f.annotation)) & models),
        "assertion",
    )
    return key, registry


def _sections(root: type[BaseModel], skip: str) -> list[tuple[str, type[BaseModel]]]:
    """(dotted path, model) of `root` and every model nested in it, depth first; `skip` is left out."""
    out: list[tuple[str, type[BaseModel]]] = []
    seen: set[type] = set()

    def walk(model: type[BaseModel], path: str) -> None:
        if model in seen:
            return
        seen.add(model)
        out.append((path, model))
        for name, field in model.model_fields.items():
            if not path and name == skip:
                continue
            for sub in nested_models(field.annotation):
                walk(sub, f"{path}.{name}" if path else name)

    walk(root, "")
    return out


def _table(
    model: type[BaseModel], path: str, render: _Renderer, anchors: dict[type, tuple[str, str]], special: Callable
) -> list[str]:
    source = _source_docs(model)
    rows = ["| key | type | default | allowed | description |", "|---|---|---|---|---|"]
    for name, field in model.model_fields.items():
        key = f"{path}.{name}" if path else name
        shown = field.alias or name
        custom = special(key, field)
        if custom is not None:
            kind, allowed = custom
        else:
            kind, allowed = render.type_of(field.annotation), render.allowed(field.annotation, list(field.metadata))
        nested = nested_models(field.annotation)
        anchor = anchors.get(nested[0]) if len(nested) == 1 else None
        cells = [_code(shown), kind, _default(field, anchor), allowed, _description(key, name, field, source)]
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return rows


def _config_line(model: type[BaseModel]) -> str:
    config = getattr(model, "model_config", {}) or {}
    parts = []
    if config.get("extra") == "forbid":
        parts.append("keys not listed here are refused")
    if config.get("allow_inf_nan") is False:
        parts.append("numbers must be finite")
    return (parts[0][0].upper() + "; ".join(parts)[1:] + ".") if parts else ""


def suite_reference() -> str:
    """The markdown of docs/suite-reference.md, built from the schema's models by introspection."""
    key, registry = _registry()
    sections = _sections(Claim, key)
    headings = {model: ("Top level" if not path else _code(path)) for path, model in sections}
    anchors = {model: (path or "top level", _slug(headings[model].replace("`", ""))) for path, model in sections}
    discriminator = Claim.model_fields[key].discriminator if key in Claim.model_fields else None
    test_key = discriminator if isinstance(discriminator, str) else "test"
    test_heading = {name: f"`{test_key}: {name}`" for name in registry}
    test_anchor = {name: _slug(h.replace("`", "")) for name, h in test_heading.items()}
    render = _Renderer(anchors)

    def special(path: str, field: FieldInfo) -> tuple[str, str] | None:
        if path == key:
            links = ", ".join(f"[{_code(name)}](#{test_anchor[name]})" for name in registry)
            return f"mapping ([{key}](#{_slug(key)}))", f"`{test_key}`: one of {links}, or an installed plugin's test"
        return None

    lines = [
        "# Suite file reference",
        "",
        "<!-- Generated by `python -m lipbench.docgen` from lipbench/suite/ and the models of",
        "     lipbench.assertions.ASSERTIONS. Do not edit: change the schema and regenerate. -->",
        "",
        "A suite file is one YAML mapping: one claim of the paper, the training runs that test it and the",
        "statistical test that judges them. This page lists every key the schema accepts, section by",
        "section: its type, its default (`required` when it has none) and the values allowed.",
        "",
        "Sections:",
        "",
    ]
    for _path, model in sections:
        lines.append(f"- [{anchors[model][0]}](#{anchors[model][1]})")
    lines.append("- [profiles](#profiles)")
    lines.append(f"- [{key}](#{_slug(key)}): " + ", ".join(f"[{n}](#{test_anchor[n]})" for n in registry))
    lines.append("")
    if suite.__doc__:
        lines += ["## How a suite file is read", "", _markdown(suite.__doc__), ""]

    for path, model in sections:
        lines += [f"## {headings[model]}", ""]
        intro = (_own_doc(model) or NOTES.get(path, "")) if path else ""
        if intro:
            lines += [_markdown(intro), ""]
        config = _config_line(model)
        if config:
            lines += [config, ""]
        lines += [*_table(model, path, render, anchors, special), ""]

    lines += [
        "## `profiles`",
        "",
        "A mapping from a profile name to a partial suite file: any of the keys above, nested the same way.",
        "`lipbench run --profile NAME` (pytest: `--lipbench-profile NAME`) merges the profile over the file",
        "(mappings key by key, lists and values replaced), then applies each `--set key.path=value` (the",
        "value parsed as YAML). Every profile of a file is validated when the file is loaded, and asking",
        "for a profile the file lacks is an error. Without `--profile`, every command, the Python API and the",
        "pytest plugin take `quick` where the file has it, else the file's own settings, labelled `default`",
        "(`--profile default` names them; no profile may be called `default`).",
        "",
        f"## `{key}`",
        "",
        f"One mapping; its `{test_key}` key selects the test, and each test takes the keys of its own table.",
        _markdown(
            "An installed package may register more tests ([plugins](docs/extending.md#plugins)); such a\n"
            "test takes the keys its own class declares, and `lipbench list --plugins` shows it."
        ),
        "",
        "| test | what it checks |",
        "|---|---|",
    ]
    for name, model in registry.items():
        lines.append(f"| [{_code(name)}](#{test_anchor[name]}) | {_cell(_first_paragraph(_own_doc(model)))} |")
    lines.append("")
    for name, model in registry.items():
        lines += [f"### {test_heading[name]}", ""]
        doc = _own_doc(model)
        if doc:
            lines += [_markdown(doc), ""]
        needs = getattr(model, "needs_record", ())
        if needs:
            listed = ", ".join(_code(str(n)) for n in needs)
            lines += [f"Needs {listed} in `scenario.record`.", ""]
        if not _is_model(model):
            continue
        # Models nested in a test's parameters get their own tables below the test's.
        nested = [(p, m) for p, m in _sections(model, "")[1:] if m not in anchors]
        own = dict(anchors)
        for sub_path, sub in nested:
            own[sub] = (sub_path, _slug(f"{test_key}: {name}, {sub_path}"))
        for sub_path, sub in [("", model), *nested]:
            if sub_path:
                lines += [f"#### `{test_key}: {name}`, `{sub_path}`", ""]
                sub_doc = _own_doc(sub)
                if sub_doc:
                    lines += [_markdown(sub_doc), ""]
            config = _config_line(sub)
            if config:
                lines += [config, ""]
            where = f"{key}.{name}.{sub_path}" if sub_path else f"{key}.{name}"
            lines += [*_table(sub, where, _Renderer(own), own, lambda *_: None), ""]
    return "\n".join(lines).rstrip() + "\n"


def note_paths() -> Iterator[str]:
    """Every key path of the schema (suite sections only), as NOTES keys them."""
    key, _ = _registry()
    for path, model in _sections(Claim, key):
        if path:
            yield path
        for name in model.model_fields:
            yield f"{path}.{name}" if path else name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lipbench.docgen", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page differs from the generated text")
    parser.add_argument(
        "--output", type=Path, default=Path(__file__).resolve().parents[1] / REFERENCE, help="the page to write"
    )
    args = parser.parse_args(argv)
    text = suite_reference()
    current = args.output.read_text(encoding="utf-8") if args.output.exists() else None
    if args.check:
        if current != text:
            print(f"{args.output} is out of date: run `python -m lipbench.docgen`", file=sys.stderr)
            return 1
        return 0
    if current != text:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
