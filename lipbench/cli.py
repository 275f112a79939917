"""`lipbench run | list | show | validate | baseline | compare | report`: a thin face over the library.

Exit codes of `run` (for CI): 0 when every verdict is PASS, IMPROVED, NEW, XFAIL, SKIPPED or a
non-strict XPASS; 1 on any FAIL, REGRESSED, ERROR or strict XPASS; 2 bad input. The verdicts
and the baseline tolerance rule are documented in `lipbench.baselines`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lipbench.errors import LipbenchError, SuiteError
from lipbench.executors import EXECUTORS, Interrupted
from lipbench.runner import ENGINES
from lipbench.suite import ResolvedClaim, load_claim, suite_files

console = Console(stderr=False, highlight=False)
errors = Console(stderr=True, highlight=False)

STYLE = {
    "PASS": "green",
    "FAIL": "red",
    "ERROR": "bold red",
    "XFAIL": "yellow",
    "XPASS": "magenta",
    "SKIPPED": "dim",
    "REGRESSED": "bold red",
    "IMPROVED": "cyan",
    "NEW": "blue",
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except LipbenchError as e:
        errors.print(f"lipbench: error: {e}", markup=False, soft_wrap=True)
        return e.exit_code
    except KeyboardInterrupt as e:
        if not isinstance(e, Interrupted):
            errors.print("lipbench: interrupted; finished claims are saved under the results folder")
        if args.command in ("run", "baseline"):
            errors.print(f"lipbench: resume with: {shlex.join(['lipbench', *argv])}", markup=False, soft_wrap=True)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lipbench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def selection(p: argparse.ArgumentParser) -> None:
        p.add_argument("paths", nargs="+", metavar="PATH", help="suite files or directories of them")
        p.add_argument("--profile", help="profile of each suite to use (default: paper with a GPU, else quick)")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override any field, e.g. --set scenario.steps=200 (repeatable)",
        )

    def training(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
        p.add_argument("--workers", type=int, default=None, help="worker processes (default: GPUs, else cores)")
        p.add_argument(
            "--engine",
            choices=ENGINES,
            default="per-run",
            help="per-run trains each run alone; ensemble/auto train a claim's compatible runs as one vmapped ensemble",
        )
        p.add_argument(
            "--executor",
            choices=EXECUTORS,
            default="local",
            help="local (default): a process pool on this machine; ray: Ray tasks on a Ray cluster",
        )
        p.add_argument(
            "--ray-address",
            default=None,
            metavar="ADDR",
            help="with --executor ray: cluster to join (HOST:PORT or auto; default RAY_ADDRESS, else a local instance)",
        )
        cache_option(p)
        p.add_argument("--no-cache", action="store_true", help="train every run, neither reading nor writing the cache")
        p.add_argument("--tracking-uri", default=None, help="MLflow store (default MLFLOW_TRACKING_URI or ./mlflow.db)")
        p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow (results are still saved)")
        p.add_argument("--data-root", default=None, help="dataset folder (default LIPBENCH_DATA or a user cache)")
        p.add_argument("--out", default=None, help="results folder (default lipbench-results/<time>)")
        baselines_option(p)

    def cache_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--cache-dir",
            default=None,
            metavar="DIR",
            help="run cache folder (default LIPBENCH_CACHE_DIR, else ~/.cache/lipbench/runs)",
        )

    def baselines_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--baselines",
            default=None,
            metavar="DIR",
            help="baselines folder (default LIPBENCH_BASELINES, else the baselines/ folder above the suite file)",
        )

    run = sub.add_parser("run", help="train every claim's runs and judge them against their baselines")
    selection(run)
    training(run)
    run.set_defaults(func=cmd_run)

    base = sub.add_parser("baseline", help="store or show the baselines runs are judged against")
    base_sub = base.add_subparsers(dest="baseline_command", required=True)
    update = base_sub.add_parser("update", help="run claims (or read a finished run) and store their baselines")
    update.add_argument("paths", nargs="+", metavar="PATH", help="suite files or directories of them")
    update.add_argument("--profile", help="profile to store (default: paper with a GPU, else quick; or the run's)")
    update.add_argument(
        "--from-run",
        default=None,
        metavar="RESULTS_OR_RUN_ID",
        help="store from a finished run (a results folder or a claim's MLflow run id) instead of running",
    )
    update.add_argument(
        "--force", action="store_true", help="store claims that did not PASS, or whose scenario differs"
    )
    training(update)
    update.set_defaults(func=cmd_baseline_update, overrides=[])
    show_base = base_sub.add_parser("show", help="table of the stored baselines of suite files")
    show_base.add_argument("paths", nargs="+", metavar="PATH", help="suite files or directories of them")
    show_base.add_argument("--profile", help="only this profile (default: every stored profile)")
    baselines_option(show_base)
    show_base.set_defaults(func=cmd_baseline_show)

    comp = sub.add_parser("compare", help="per-claim differences of two runs (results folders or MLflow run ids)")
    comp.add_argument("a", metavar="A")
    comp.add_argument("b", metavar="B")
    comp.add_argument("--tracking-uri", default=None, help="MLflow store of run ids (default MLFLOW_TRACKING_URI)")
    comp.set_defaults(func=cmd_compare)

    cache = sub.add_parser("cache", help="show or trim the cache of finished runs")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True)
    info = cache_sub.add_parser("info", help="where the run cache is, its entries and size")
    cache_option(info)
    info.set_defaults(func=cmd_cache_info)
    prune = cache_sub.add_parser("prune", help="delete cached runs: all of them, or those unused for DAYS")
    cache_option(prune)
    which = prune.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="delete every cached run")
    which.add_argument("--older-than", type=float, metavar="DAYS", help="delete runs unused for more than DAYS")
    prune.set_defaults(func=cmd_cache_prune)

    rep = sub.add_parser("report", help="a self-contained HTML report of a finished run")
    rep.add_argument("results", metavar="RESULTS_DIR", help="results folder (or a claim's MLflow run id)")
    rep.add_argument("--out", default=None, metavar="DIR", help="folder of report.html (default: RESULTS_DIR)")
    rep.add_argument("--tracking-uri", default=None, help="MLflow store of a run id (default MLFLOW_TRACKING_URI)")
    rep.set_defaults(func=cmd_report)

    lst = sub.add_parser("list", help="claims, profiles, runs and model-steps of suites")
    selection(lst)
    lst.set_defaults(func=cmd_list)

    show = sub.add_parser("show", help="print the resolved claim of one suite file")
    show.add_argument("path", metavar="FILE")
    show.add_argument("--profile")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    show.set_defaults(func=cmd_show)

    val = sub.add_parser("validate", help="check suite files (every profile) without running them")
    selection(val)
    val.set_defaults(func=cmd_validate)

    cal = sub.add_parser(
        "calibrate",
        help="measure each claim's false-pass rate, power and baseline false-alarm rate by simulation (no training)",
    )
    selection(cal)
    cal.add_argument("--replicates", type=int, default=2000, help="simulated replicates per scenario (default 2000)")
    cal.add_argument("--out", type=Path, default=Path("results"), help="folder for calibration-<profile>.json/.html")
    cal.add_argument("--baselines", type=Path, default=None, help="baselines folder (default: next to the suites)")
    cal.set_defaults(func=cmd_calibrate, overrides=[])
    return parser


def default_profile(device: str = "auto") -> str:
    if device.startswith("cuda"):
        return "paper"
    if device == "cpu":
        return "quick"
    import torch

    return "paper" if torch.cuda.is_available() else "quick"


def load_claims(args, device: str = "auto") -> tuple[list[ResolvedClaim], list[SuiteError]]:
    """Every loadable claim, and one error per file that is not (so the others can still run)."""
    profile = args.profile or default_profile(device)
    claims, problems = [], []
    for file in suite_files(args.paths):
        try:
            claims.append(load_claim(file, profile, args.overrides))
        except SuiteError as e:
            problems.append(e)
    seen: dict[str, Path] = {}
    unique = []
    for c in claims:  # the runner keys claims by name: a second claim of the same name is not run
        if c.name in seen:
            problems.append(
                SuiteError(c.file, "name", f"{c.name!r} is also the name of {seen[c.name]}; names must differ")
            )
            continue
        seen[c.name] = c.file
        unique.append(c)
    return unique, problems


def cmd_validate(args) -> int:
    claims, problems = load_claims(args, "cpu")
    for p in problems:
        errors.print(f"lipbench: error: {p}", markup=False, soft_wrap=True)
    for c in claims:
        design = c.design_problem()
        if design:
            errors.print(f"lipbench: error: {c.file}: seeds/sweep: {design}", markup=False, soft_wrap=True)
            problems.append(SuiteError(c.file, "seeds", design))
    if not problems:
        console.print(f"{len(claims)} suite files are valid")
    return 2 if problems else 0


def cmd_calibrate(args) -> int:
    from lipbench.calibration import COLUMNS, calibrate, table_rows, write_outputs

    if args.replicates < 50:
        raise LipbenchError(f"--replicates must be at least 50, not {args.replicates}.")
    args.profile = args.profile or "quick"
    claims, problems = load_claims(args, "cpu")
    for p in problems:
        errors.print(f"lipbench: error: {p}", markup=False, soft_wrap=True)
    rows, seconds = calibrate(claims, reps=args.replicates, baselines=args.baselines)
    table = Table(
        title=f"calibration, profile {args.profile}: {args.replicates} replicates per scenario, {seconds:.0f} s"
    )
    for col in COLUMNS:
        table.add_column(col)
    for cells in table_rows(rows):
        table.add_row(*cells)
    console.print(table)
    for path in write_outputs(rows, args.out, args.profile, seconds, args.replicates):
        console.print(f"wrote {path}", markup=False, soft_wrap=True)
    return 2 if problems else 0


def cmd_list(args) -> int:
    claims, problems = load_claims(args, "cpu")
    table = Table(title=f"profile: {args.profile or default_profile('cpu')}")
    for col in ("collection", "claim", "profiles", "test", "sweep", "runs", "model-steps"):
        table.add_column(col, justify="right" if col in ("runs", "model-steps") else "left")
    for c in claims:
        sweep = f"{c.sweep_name} x{len(c.claim.sweep.values)}" if c.claim.sweep else "-"
        table.add_row(
            c.collection,
            c.name,
            ", ".join(c.profiles),
            c.claim.assertion.test,
            sweep,
            str(len(c.runs())),
            f"{c.model_steps():,}",
        )
    console.print(table)
    for p in problems:
        errors.print(f"lipbench: error: {p}", markup=False, soft_wrap=True)
    return 2 if problems else 0


def cmd_show(args) -> int:
    import yaml

    claim = load_claim(args.path, args.profile, args.overrides)
    data = claim.claim.model_dump(mode="json")
    header = f"# {claim.file} [profile: {claim.profile}] scenario hash {claim.scenario_hash()}"
    console.print(header, markup=False, soft_wrap=True)
    console.print(yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=10_000), markup=False, soft_wrap=True)
    return 0


def _device(args) -> str:
    from lipbench.engine import resolve_device

    try:
        return str(resolve_device(args.device))
    except RuntimeError as e:
        raise LipbenchError(str(e)) from None


def cmd_run(args) -> int:
    from lipbench.baselines import exit_code

    device = _device(args)
    claims, problems = load_claims(args, device)
    for p in problems:
        errors.print(f"lipbench: error: {p}", markup=False, soft_wrap=True)
    if not claims:
        return 2
    out = Path(args.out or Path("lipbench-results") / datetime.now().strftime("%Y%m%d-%H%M%S"))
    console.print(
        f"lipbench: {len(claims)} claims, {sum(len(c.runs()) for c in claims)} runs, "
        f"profile {claims[0].profile}, device {device}; results in {out}"
    )
    outcomes = execute(claims, args, device, out)
    print_table(outcomes)
    return exit_code(outcomes, bad_input=bool(problems))


def cmd_baseline_update(args) -> int:
    """Run the claims (or read --from-run) and store each one that passed; exit 1 if any was refused."""
    from lipbench.baselines import default_root, store
    from lipbench.results import environment

    if args.from_run:
        return _update_from_run(args)
    device = _device(args)
    claims, problems = load_claims(args, device)
    for p in problems:
        errors.print(f"lipbench: error: {p}", markup=False, soft_wrap=True)
    if problems or not claims:
        return 2
    out = Path(args.out or Path("lipbench-results") / datetime.now().strftime("%Y%m%d-%H%M%S"))
    console.print(f"lipbench: running {len(claims)} claims to store their baselines; results in {out}")
    outcomes = execute(claims, args, device, out)
    print_table(outcomes)
    env = environment(device)
    refused = 0
    for o in outcomes:
        path, message = store(
            o, Path(args.baselines) if args.baselines else default_root(o.claim.file), env, force=args.force
        )
        refused += path is None
        (console if path else errors).print(message, markup=False, soft_wrap=True)
    return 1 if refused else 0


def _update_from_run(args) -> int:
    from lipbench.baselines import changed_keys, default_root, scenario_dump, store
    from lipbench.compare import load_side
    from lipbench.results import load_outcome, load_result

    found = {}
    for folder in load_side(args.from_run, args.tracking_uri):
        data = load_result(folder)
        found[(data["collection"], data["claim"], data["profile"])] = folder
    matched, refused = 0, 0
    for file in suite_files(args.paths):
        named = load_claim(file, args.profile)
        for (collection, name, profile), folder in sorted(found.items()):
            if (collection, name) != (named.collection, named.name) or (args.profile and profile != args.profile):
                continue
            matched += 1
            outcome = load_outcome(folder)
            current = load_claim(file, None if profile == "default" else profile)
            problem = None
            if outcome.claim.scenario_hash() != current.scenario_hash():
                keys = changed_keys(scenario_dump(current), scenario_dump(outcome.claim))
                problem = (
                    f"the run's scenario differs from {file} [{profile}] ({'; '.join(keys[:4]) or 'hash only'}): "
                    "it ran with --set, or the file changed since"
                )
            root = Path(args.baselines) if args.baselines else default_root(file)
            path, message = store(
                outcome, root, load_result(folder)["environment"], force=args.force, hash_problem=problem
            )
            refused += path is None
            (console if path else errors).print(message, markup=False, soft_wrap=True)
    if not matched:
        errors.print(f"lipbench: error: {args.from_run} holds no result of the claims in {', '.join(args.paths)}")
        return 2
    return 1 if refused else 0


def cmd_baseline_show(args) -> int:
    from lipbench.baselines import BaselineError, default_root, read_baseline

    table = Table(title="stored baselines")
    for col in ("claim", "profile", "status", "statistic", "tracked (value ± se)", "taken", "scenario"):
        table.add_column(col)
    shown, bad = 0, 0
    for file in suite_files(args.paths):
        named = load_claim(file, args.profile)
        root = Path(args.baselines) if args.baselines else default_root(file)
        pattern = f"{named.name}.{args.profile}.json" if args.profile else f"{named.name}.*.json"
        for path in sorted((root / named.collection).glob(pattern)):
            try:
                data = read_baseline(path)
            except BaselineError as e:
                errors.print(f"lipbench: error: {e}", markup=False, soft_wrap=True)
                bad += 1
                continue
            shown += 1
            profile = data["profile"]
            try:
                current = load_claim(file, None if profile == "default" else profile).scenario_hash()
                same = (
                    "same as the file's"
                    if current == data["scenario_hash"]
                    else f"[red]file's is now {current} (file or schema changed): not comparable[/]"
                )
            except SuiteError:
                same = f"[red]profile {profile!r} is gone from the file[/]"
            a, env = data["assertion"], data.get("environment", {})
            tracked = "\n".join(
                f"{t['name']} = {t['value']:.3g} ± {'-' if t['se'] is None else format(t['se'], '.2g')}"
                for t in data["summary"].get("tracked", [])
                if t["value"] is not None
            )
            table.add_row(
                f"{data['collection']}/{data['claim']}",
                profile,
                f"[{STYLE.get(data['status'], '')}]{data['status']}[/]",
                f"{a['statistic_name']} = {a['statistic']:.3g}" if a.get("statistic") is not None else "-",
                tracked or "-",
                f"{env.get('date', '-')}\n{env.get('device', '-')} @ {env.get('git_commit') or '-'}",
                f"{data['scenario_hash']}\n{same}",
            )
    console.print(table)
    if not shown and not bad:
        console.print("no baselines stored for these suites; store them with `lipbench baseline update PATH`")
    return 2 if bad else 0


def cmd_cache_info(args) -> int:
    from lipbench.cache import RunCache

    info = RunCache(args.cache_dir).info()
    console.print(f"run cache: {info.path}", markup=False, soft_wrap=True)
    console.print(f"{info.entries} cached runs, {info.bytes / 1e6:.1f} MB")
    if info.entries:
        when = {
            k: datetime.fromtimestamp(v).strftime("%Y-%m-%d %H:%M") for k, v in (("o", info.oldest), ("n", info.newest))
        }
        console.print(f"last used: oldest {when['o']}, newest {when['n']}")
    return 0


def cmd_cache_prune(args) -> int:
    from lipbench.cache import RunCache

    if args.older_than is not None and not args.older_than >= 0:
        raise LipbenchError(f"--older-than must be a number of days >= 0, not {args.older_than}.")
    cache = RunCache(args.cache_dir)
    count, freed = cache.prune(None if args.all else args.older_than)
    console.print(f"deleted {count} cached runs ({freed / 1e6:.1f} MB) from {cache.root}", markup=False, soft_wrap=True)
    return 0


def cmd_compare(args) -> int:
    from lipbench.compare import compare_rows, print_compare, sides

    rows = compare_rows(sides(args.a, args.tracking_uri), sides(args.b, args.tracking_uri))
    print_compare(rows, console, args.a, args.b)
    return 0


def cmd_report(args) -> int:
    from lipbench.compare import load_side
    from lipbench.report import write_report

    folders = load_side(args.results, args.tracking_uri)
    source = Path(args.results) if Path(args.results).exists() else folders
    path = write_report(source, args.out)
    console.print(f"report: {path}")
    return 0


def execute(claims: list[ResolvedClaim], args, device: str, out: Path):
    """Run claims with progress bars; each finished claim is saved, drawn and logged at once."""
    from lipbench.baselines import verdict_of
    from lipbench.cache import RunCache
    from lipbench.executors import check_executor
    from lipbench.runner import run_claims
    from lipbench.session import Session

    executor = getattr(args, "executor", "local")
    check_executor(executor)  # Ray missing: say so before anything is created
    cache = None if getattr(args, "no_cache", False) else RunCache(getattr(args, "cache_dir", None))

    def warn(text: str) -> None:
        errors.print(text, markup=False, soft_wrap=True)

    session = Session(
        out,
        device,
        tracking_uri=args.tracking_uri,
        mlflow=not args.no_mlflow,
        warn=warn,
        baselines=getattr(args, "baselines", None),
    )
    session.prepare(claims)

    finished: list = []

    def done(outcome) -> None:
        session.finish_claim(outcome)
        finished.append(outcome)
        verdict = verdict_of(outcome)
        progress.update(tasks[outcome.claim.name], description=f"{outcome.claim.name} [{verdict}]")

    def advance(claim, done_runs: int, total: int) -> None:
        progress.update(tasks[claim.name], completed=done_runs, total=total)

    started = time.perf_counter()
    try:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=not console.is_terminal,
        ) as progress:
            tasks = {c.name: progress.add_task(c.name, total=len(c.runs())) for c in claims}
            outcomes = run_claims(
                claims,
                device=device,
                workers=args.workers,
                data_root=args.data_root,
                engine=getattr(args, "engine", "per-run"),
                executor=executor,
                ray_address=getattr(args, "ray_address", None),
                cache=cache,
                on_progress=advance,
                on_claim_done=done,
            )
    except Interrupted as e:
        kept = (
            f"{cache.reused + cache.written} finished runs are kept in the run cache {cache.root}"
            if cache is not None
            else "runs are not cached (--no-cache)"
        )
        errors.print(
            f"lipbench: interrupted ({e.signal_name}): {len(finished)} of {len(claims)} claims finished "
            f"(saved under {out}); {kept}",
            markup=False,
            soft_wrap=True,
        )
        raise
    line = f"finished in {time.perf_counter() - started:.0f} s"
    if cache is not None:
        line += f"; reused {cache.reused} cached runs, trained {cache.trained}"
    console.print(line)
    return outcomes


def print_table(outcomes) -> None:
    from lipbench.baselines import comparison_of, verdict_of

    table = Table(title="lipbench verdicts", show_lines=False)
    for col in ("claim", "profile", "verdict", "statistic", "threshold", "p", "vs baseline", "runs", "time"):
        table.add_column(col)
    for o in outcomes:
        r, verdict, comparison = o.result, verdict_of(o), comparison_of(o)
        stat = f"{r.statistic_name} = {r.statistic:.3g}" if r else "-"
        thr = f"{r.threshold:.3g}" if r else "-"
        p = f"{r.pvalue:.2g}" if r and r.pvalue is not None else "-"
        table.add_row(
            o.claim.name,
            o.claim.profile,
            f"[{STYLE.get(verdict, '')}]{verdict}[/]",
            stat,
            thr,
            p,
            _versus(comparison),
            str(len(o.records)),
            f"{o.seconds:.0f} s",
        )
    console.print(table)
    for o in outcomes:
        verdict, comparison = verdict_of(o), comparison_of(o)
        if o.sentence:
            console.print(f"[{STYLE.get(verdict, '')}]{verdict}[/] {o.claim.name}: ", end="")
            console.print(o.sentence, markup=False, highlight=False)
        if comparison is not None and comparison.sentence:
            console.print(f"    baseline: {comparison.sentence}", markup=False, highlight=False)


def _versus(comparison) -> str:
    """The baseline column: the largest |z| of the tracked statistics, or why there is none."""
    if comparison is None or comparison.comparable is None:
        return "new" if comparison is not None and comparison.verdict == "NEW" else "-"
    if not comparison.comparable:
        return "not comparable"
    zs = [c for c in comparison.changes if c.z is not None]
    if not zs:
        return "not compared"
    worst = max(zs, key=lambda c: abs(c.z))
    return f"{worst.name}: t = {worst.z:.2g}"


if __name__ == "__main__":
    sys.exit(main())
