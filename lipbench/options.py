"""Every option of lipbench's commands, in one table; those `lipbench run` and the pytest plugin share, two faces.

Each shared option is written `--NAME` on the command line and `--lipbench-NAME` under pytest, with
the same type, default, choices and help, so the two faces cannot drift apart. The options of one
command (`COMMAND_OPTIONS`) are declared here too, so that every flag and its default is read from
one place (`lipbench.invocation.Options`, the plugin's settings and `lipbench.calibration` take their
defaults from this table).
"""

from __future__ import annotations

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
    nargs: str | None = None  # "+": one flag followed by one or more values

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
        if self.nargs is not None:
            out["nargs"] = self.nargs
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
UNIT_REPLICATES = 2000  # calibrate, per scenario and noise family: a rate near 1% known to about ±0.45% (95%)
RECORD_REPLICATES = 300  # calibrate, per scenario and family on the record path (a set judged as a run is: ~10 ms)
#: Options of one command each: baseline update (from-run, force), explain (against), history (html), cache prune
#: (all, older-than), report (history), list (plugins), calibrate (replicates, record-replicates, path).
COMMAND_OPTIONS: tuple[Option, ...] = (
    Option(
        "from-run",
        "store from a finished run (a results folder or a claim's MLflow run id) instead of running",
        metavar="RESULTS_OR_RUN_ID",
    ),
    Option("force", "store claims that did not PASS, or whose scenario differs", False, bool),
    Option("against", "a baseline file or folder, or a results folder", metavar="BASELINE|RESULTS"),
    Option("html", "also write the figures to an HTML page", metavar="FILE"),
    Option("all", "delete every cached run", False, bool),
    Option("older-than", "delete runs unused for more than DAYS", type=float, metavar="DAYS"),
    Option("history", "draw each claim's history from these runs", metavar="RESULTS_DIR", nargs="+"),
    Option("plugins", "the models, datasets, ... that installed packages register", False, bool),
    Option(
        "replicates",
        f"simulated replicates per scenario on the unit path (default {UNIT_REPLICATES})",
        UNIT_REPLICATES,
        int,
    ),
    Option(
        "record-replicates",
        f"simulated record sets per scenario and family on the record path (default {RECORD_REPLICATES})",
        RECORD_REPLICATES,
        int,
    ),
    Option(
        "path",
        "units, the assertions' own models (fast); records, RunRecords through runner.judge; both (default)",
        "both",
        choices=("both", "units", "records"),
    ),
)
OPTIONS = {o.name: o for o in (*SHARED_OPTIONS, *SELECTION_OPTIONS, *COMMAND_OPTIONS)}


def add_to_parser(parser: Any, *names: str, help: str | None = None) -> None:
    """Add the named options to an argparse (sub)parser or group; `help` replaces the table's (one option only)."""
    for name in names:
        kwargs = OPTIONS[name].kwargs()
        if help is not None:
            kwargs["help"] = help
        parser.add_argument(f"--{name}", dest=OPTIONS[name].dest, **kwargs)


def add_to_pytest(group: Any) -> None:
    """Add every shared option to a pytest option group, as `--lipbench-NAME`."""
    for option in SHARED_OPTIONS:
        group.addoption(f"--lipbench-{option.name}", dest=option.pytest_dest, **option.kwargs())
