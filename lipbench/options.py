"""The options `lipbench run` and the pytest plugin share: one table, two faces.

Each option is written `--NAME` on the command line and `--lipbench-NAME` under pytest, with the
same type, default, choices and help, so the two faces cannot drift apart.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from lipbench.registry import DEFAULT_ENGINE, ENGINES, EXECUTORS


@dataclass(frozen=True)
class Option:
    name: str  # as on the command line, without dashes: "data-root"
    help: str
    default: Any = None
    type: type | None = None  # None: a string; bool: a flag that is off by default
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    repeat: bool = False  # given once per value, collected in a list
    dest_name: str | None = None  # the attribute, when not the name's

    @property
    def dest(self) -> str:
        return self.dest_name or self.name.replace("-", "_")

    @property
    def pytest_dest(self) -> str:
        return f"lipbench_{self.dest}"

    def kwargs(self) -> dict[str, Any]:
        """What `argparse.ArgumentParser.add_argument` and pytest's `addoption` both take."""
        if self.type is bool:
            return {"action": "store_true", "default": self.default, "help": self.help}
        out: dict[str, Any] = {"default": self.default, "help": self.help}
        if self.repeat:
            out.update(action="append", default=[])
        if self.type is not None:
            out["type"] = self.type
        if self.choices is not None:
            out["choices"] = self.choices
        if self.metavar is not None:
            out["metavar"] = self.metavar
        return out


SHARED_OPTIONS: tuple[Option, ...] = (
    Option(
        "profile",
        "profile of each suite file (default: quick where the file has it, else the file's own settings, "
        "labelled default)",
    ),
    Option("device", "auto | cpu | cuda | cuda:N (default auto)", default="auto"),
    Option(
        "workers",
        "training processes (default: one per GPU, else per core; one inside a pytest-xdist worker)",
        type=int,
    ),
    Option(
        "engine",
        "auto (default): a claim's compatible runs as ensembles, the rest alone; per-run: each run alone; "
        "ensemble: as auto, a lone run too",
        default=DEFAULT_ENGINE,
        choices=ENGINES,
    ),
    Option(
        "executor",
        "local (default): a process pool on this machine; ray: Ray tasks on a Ray cluster",
        default="local",
        choices=EXECUTORS,
    ),
    Option(
        "ray-address",
        "with the ray executor: the cluster to join (HOST:PORT or auto; default RAY_ADDRESS, else a local instance)",
        metavar="ADDR",
    ),
    Option("cache-dir", "run cache folder (default LIPBENCH_CACHE_DIR, else ~/.cache/lipbench/runs)", metavar="DIR"),
    Option("no-cache", "train every run, neither reading nor writing the run cache", default=False, type=bool),
    Option("tracking-uri", "MLflow store (default MLFLOW_TRACKING_URI or MLflow's default)"),
    Option("no-mlflow", "do not log to MLflow (results are still saved)", default=False, type=bool),
    Option("data-root", "dataset folder (default LIPBENCH_DATA or a user cache)"),
    Option("out", "results folder (default: a new lipbench-results/<date>-<time>-<random>)"),
    Option(
        "baselines",
        "baselines folder (default LIPBENCH_BASELINES, else the baselines/ folder above the suite file)",
        metavar="DIR",
    ),
)
#: Options of the commands that select claims, which the pytest plugin takes from its own collection instead.
SELECTION_OPTIONS: tuple[Option, ...] = (
    Option(
        "set",
        "override any field, e.g. --set scenario.steps=200 (repeatable)",
        metavar="KEY=VALUE",
        repeat=True,
        dest_name="overrides",
    ),
)
OPTIONS = {o.name: o for o in (*SHARED_OPTIONS, *SELECTION_OPTIONS)}


def add_to_parser(parser: argparse.ArgumentParser, *names: str, help: str | None = None) -> None:
    """Add the named shared options to an argparse (sub)parser; `help` replaces the table's (one option only)."""
    for name in names:
        kwargs = OPTIONS[name].kwargs()
        if help is not None:
            kwargs["help"] = help
        parser.add_argument(f"--{name}", dest=OPTIONS[name].dest, **kwargs)


def add_to_pytest(group: Any) -> None:
    """Add every shared option to a pytest option group, as `--lipbench-NAME`."""
    for option in SHARED_OPTIONS:
        group.addoption(f"--lipbench-{option.name}", dest=option.pytest_dest, **option.kwargs())
