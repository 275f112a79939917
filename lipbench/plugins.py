"""Plugins: names that installed packages register under the entry-point group `lipbench.plugins`.

Each entry point is one name of one kind, written `<kind>.<name>` and pointing at a callable:

    [project.entry-points."lipbench.plugins"]
    "model.own-mlp" = "own_code.model:OwnMLP"
    "run.own-loop" = "own_code.loop:train"

Kinds: model, dataset, optimizer, schedule, run, assertion. A suite then writes the plugin's name
where it would write a built-in one (`model: {name: own-mlp}`, `assertion: {test: my_test}`), the
name appears among the allowed values of error messages, and `lipbench list --plugins` shows every
installed one and the distribution it comes from. Only the package metadata is read to list names;
a plugin's module is imported when a suite uses it. An assertion plugin points at a subclass of
`lipbench.assertions.Assertion` whose `test` field is `Literal["<name>"]`
(`lipbench.assertions.plugin_assertion` checks it).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import metadata

GROUP = "lipbench.plugins"
KINDS = ("model", "dataset", "optimizer", "schedule", "run", "assertion")


@dataclass(frozen=True)
class Plugin:
    """One registered name: its kind, the callable it stands for and the distribution that registers it."""

    kind: str
    name: str
    target: str  # "package.module:callable"
    distribution: str  # "own-code 0.1.0"
    problem: str | None = None  # why the entry point cannot be used, if it cannot


@functools.cache
def installed() -> tuple[Plugin, ...]:
    """Every entry point of the group, sorted by kind and name (read once per process)."""
    found = []
    for ep in metadata.entry_points(group=GROUP):
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "?"
        kind, dot, name = ep.name.partition(".")
        problem = None
        if not dot or kind not in KINDS or not name:
            problem = f"entry point {ep.name!r} is not <kind>.<name> with kind one of {', '.join(KINDS)}"
        elif ":" not in ep.value:
            problem = f"entry point {ep.name!r} points at {ep.value!r}, not at 'package.module:callable'"
        found.append(Plugin(kind, name, ep.value, dist, problem))
    return tuple(sorted(found, key=lambda p: (p.kind, p.name)))


def names(kind: str) -> tuple[str, ...]:
    """The usable plugin names of one kind."""
    return tuple(p.name for p in installed() if p.kind == kind and p.problem is None)


def target(kind: str, name: str) -> str | None:
    """The "package.module:callable" a plugin name stands for, or None if no plugin has that name."""
    return next((p.target for p in installed() if p.kind == kind and p.name == name and p.problem is None), None)
