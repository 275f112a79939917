"""`lipbench run | list | show | validate | baseline | compare | explain | history | report`: the CLI.

Exit codes of `run` (for CI): 0 when every verdict is PASS, IMPROVED, NEW, XFAIL, SKIPPED or a
non-strict XPASS or INCONCLUSIVE; 1 on any FAIL, REGRESSED, ERROR or strict XPASS or INCONCLUSIVE (a
malformed file beside claims that ran counts as an ERROR); 2 when input was refused and nothing trained; with
LIPBENCH_BISECT=1 in the environment, 125 instead on ERROR or bad input. Every command goes through
`lipbench.invocation` for its claims: one profile rule, every input checked before anything trains.
The verdicts are `lipbench.outcome.Verdict` (`lipbench run --help` lists them); the baseline tolerance rule is
documented in `lipbench.baselines`.
"""

from __future__ import annotations

import argparse
import atexit
import shlex
import signal
import sys
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import yaml
from rich.table import Table

from lipbench import console, factories, invocation, plugins
from lipbench.assertions import plugin_assertion
from lipbench.baselines import (
    BaselineError,
    changed_keys,
    default_root,
    read_baseline,
    scenario_dump,
    store,
)
from lipbench.cache import RunCache
from lipbench.calibration import COLUMNS, calibrate, table_rows, write_outputs
from lipbench.compare import compare_rows, compare_table, load_side, sides
from lipbench.design import design_check
from lipbench.discovery import suite_files
from lipbench.errors import LipbenchError, SuiteError
from lipbench.executors import Interrupted, exit_at_once
from lipbench.explain import explain
from lipbench.folders import writable_folder
from lipbench.history import from_mlflow, from_results, print_history, series
from lipbench.numbers import fmt
from lipbench.options import add_to_parser
from lipbench.outcome import exit_code
from lipbench.progress import progress_for
from lipbench.provenance import BISECT_SKIP, bisecting
from lipbench.report import write_history_page, write_report
from lipbench.results import environment, load_outcome, load_result
from lipbench.suite import BASE_PROFILE, ResolvedClaim, load_claim


def _ignore_signals_if(stopped: threading.Event) -> None:
    """After a stop, the last exit hook: Python resets its signal handlers to the default at finalization, and a
    second Ctrl-C then would kill the process (status -2) while it is already exiting 130; now it is ignored.
    (Ignoring, not blocking: a thread of a native library that does not block it would take the signal.)"""
    if stopped.is_set():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    as_program = argv is None  # the process ends when this returns (not a call from Python)
    stopped = threading.Event()
    if as_program:
        atexit.register(_ignore_signals_if, stopped)  # registered first, so it runs after Ray's and MLflow's hooks
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: bad input is exit 2, or 125 for `git bisect run`
        return BISECT_SKIP if bisecting() and e.code == 2 else (e.code or 0)
    try:
        return args.func(args)
    except LipbenchError as e:
        console.errors.print(f"lipbench: error: {e}", markup=False, soft_wrap=True)
        return BISECT_SKIP if bisecting() else e.exit_code
    except OSError as e:  # a path that cannot be read or written: one line naming it, never a traceback
        where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f) or "a file"
        console.errors.print(f"lipbench: error: {where}: {e.strerror or e}", markup=False, soft_wrap=True)
        return BISECT_SKIP if bisecting() else 2
    except KeyboardInterrupt as e:
        if as_program:  # stopping: a further signal, while the process saves and exits, exits at once
            stopped.set()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, exit_at_once)
        if not isinstance(e, Interrupted):
            console.errors.print("lipbench: interrupted; finished claims are saved under the results folder")
        if args.command in ("run", "baseline"):
            console.errors.print(
                f"lipbench: resume with: {shlex.join(['lipbench', *argv])}", markup=False, soft_wrap=True
            )
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lipbench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def selection(p: argparse.ArgumentParser, nargs: str = "+") -> None:
        p.add_argument("paths", nargs=nargs, metavar="PATH", help="suite files or directories of them")
        add_to_parser(p, "profile", "set")

    def training(p: argparse.ArgumentParser) -> None:
        add_to_parser(
            p, "device", "workers", "engine", "executor", "ray-address", "cache-dir", "no-cache", "tracking-uri"
        )
        add_to_parser(p, "no-mlflow", "data-root", "out", "baselines")

    run = sub.add_parser(
        "run",
        help="train every claim's runs and judge them against their baselines",
        epilog=console.verdict_legend(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    selection(run)
    training(run)
    run.set_defaults(func=cmd_run)

    base = sub.add_parser("baseline", help="store or show the baselines runs are judged against")
    base_sub = base.add_subparsers(dest="baseline_command", required=True)
    update = base_sub.add_parser("update", help="run claims (or read a finished run) and store their baselines")
    update.add_argument("paths", nargs="+", metavar="PATH", help="suite files or directories of them")
    add_to_parser(
        update,
        "profile",
        help="profile to store (default: quick where the file has it, else the file's own settings; or the run's)",
    )
    add_to_parser(update, "from-run", "force")
    training(update)
    update.set_defaults(func=cmd_baseline_update, overrides=[])
    show_base = base_sub.add_parser("show", help="table of the stored baselines of suite files")
    show_base.add_argument("paths", nargs="+", metavar="PATH", help="suite files or directories of them")
    add_to_parser(show_base, "profile", help="only this profile (default: every stored profile)")
    add_to_parser(show_base, "baselines")
    show_base.set_defaults(func=cmd_baseline_show)

    comp = sub.add_parser("compare", help="per-claim differences of two runs (results folders or MLflow run ids)")
    comp.add_argument("a", metavar="A")
    comp.add_argument("b", metavar="B")
    add_to_parser(comp, "tracking-uri", help="MLflow store of run ids (default MLFLOW_TRACKING_URI)")
    comp.set_defaults(func=cmd_compare)

    expl = sub.add_parser("explain", help="which layers and forces a claim's judged statistics come from")
    expl.add_argument("results", metavar="RESULTS", help="results folder (or a claim's folder, or its MLflow run id)")
    add_to_parser(expl, "against", "tracking-uri")
    expl.set_defaults(func=cmd_explain)

    hist = sub.add_parser("history", help="each claim's tracked statistics over stored runs, by date and commit")
    hist.add_argument("path", metavar="PATH", help="suite file or folder of them: the claims to show")
    hist.add_argument("results", nargs="*", metavar="RESULTS_DIR", help="results folders (default: the MLflow store)")
    add_to_parser(hist, "profile", help="only this profile (default: every profile)")
    add_to_parser(hist, "tracking-uri")
    add_to_parser(hist, "html")
    hist.set_defaults(func=cmd_history, overrides=[])

    cache = sub.add_parser("cache", help="show or trim the cache of finished runs")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True)
    info = cache_sub.add_parser("info", help="where the run cache is, its entries and size")
    add_to_parser(info, "cache-dir")
    info.set_defaults(func=cmd_cache_info)
    prune = cache_sub.add_parser("prune", help="delete cached runs: all of them, or those unused for DAYS")
    add_to_parser(prune, "cache-dir")
    which = prune.add_mutually_exclusive_group(required=True)
    add_to_parser(which, "all", "older-than")
    prune.set_defaults(func=cmd_cache_prune)

    rep = sub.add_parser("report", help="a self-contained HTML report of a finished run")
    rep.add_argument("results", metavar="RESULTS_DIR", help="results folder (or a claim's MLflow run id)")
    add_to_parser(rep, "out", help="folder of report.html (default: RESULTS_DIR)")
    add_to_parser(rep, "tracking-uri", help="MLflow store of a run id (default MLFLOW_TRACKING_URI)")
    add_to_parser(rep, "history")
    rep.set_defaults(func=cmd_report)

    lst = sub.add_parser("list", help="claims, profiles, runs and model-steps of suites; installed plugins")
    selection(lst, nargs="*")
    add_to_parser(lst, "plugins")
    lst.set_defaults(func=cmd_list)

    show = sub.add_parser("show", help="print the resolved claim of one suite file")
    show.add_argument("path", metavar="FILE")
    add_to_parser(show, "profile", "set")
    show.set_defaults(func=cmd_show)

    val = sub.add_parser("validate", help="check suite files (every profile) without running them")
    selection(val)
    add_to_parser(val, "baselines")
    val.set_defaults(func=cmd_validate)

    cal = sub.add_parser(
        "calibrate",
        help="measure each claim's false-pass rate, power and baseline false-alarm rate by simulation (no training)",
    )
    selection(cal)
    add_to_parser(cal, "replicates", "record-replicates", "path")
    add_to_parser(cal, "out", help="folder for calibration-<profile>.json/.html (default: results)")
    add_to_parser(cal, "baselines")
    cal.set_defaults(func=cmd_calibrate, overrides=[])
    return parser


def load_claims(args) -> tuple[list[ResolvedClaim], list[SuiteError]]:
    """Every loadable claim of the command's paths (the one profile rule), and one error per file that is not."""
    return invocation.load_claims(args.paths, args.profile, getattr(args, "overrides", ()))


def cmd_validate(args) -> int:
    """Exit 2 for a file that cannot be loaded; 1 for a design that cannot reach its power under some profile
    (`run` makes it an ERROR verdict, exit 1); else 0. An expected failure's power shortfall is a note."""
    claims, problems = load_claims(args)
    console.say_problems(problems)
    designs = 0
    root = Path(args.baselines) if args.baselines else None
    for c in claims:
        for profile in c.profiles or (BASE_PROFILE,):
            resolved = c if profile == c.profile else load_claim(c.file, profile, args.overrides)
            check = design_check(resolved, root)
            if check.problem:
                line = f"lipbench: error: {c.file}: seeds/sweep: [profile {profile}] {check.problem}"
                console.errors.print(line, markup=False, soft_wrap=True)
                designs += 1
            elif check.note:
                line = f"lipbench: note: {c.file}: [profile {profile}, expect: fail] {check.note}"
                console.errors.print(line, markup=False, soft_wrap=True)
    if not problems and not designs:
        console.out.print(f"{len(claims)} suite files are valid (every profile)")
    return 2 if problems else 1 if designs else 0


def cmd_calibrate(args) -> int:
    if args.replicates < 50:
        raise LipbenchError(f"--replicates must be at least 50, not {args.replicates}.")
    if args.record_replicates < 20:
        raise LipbenchError(f"--record-replicates must be at least 20, not {args.record_replicates}.")
    claims, problems = load_claims(args)
    console.say_problems(problems)
    if not claims:
        return 2
    out = writable_folder(args.out or "results", "pass --out with a folder you can write")  # before any simulation
    profile = "-".join(sorted({c.profile for c in claims}))
    paths = ("units", "records") if args.path == "both" else (args.path,)
    rows, seconds = calibrate(
        claims,
        reps=args.replicates,
        baselines=Path(args.baselines) if args.baselines else None,
        record_reps=args.record_replicates,
        paths=paths,
    )
    table = Table(
        title=f"calibration, profile {profile}: {args.replicates} replicates per scenario (units), "
        f"{args.record_replicates} (records), {seconds:.0f} s"
    )
    for col in COLUMNS:
        table.add_column(col)
    for cells in table_rows(rows):
        table.add_row(*cells)
    console.print_whole(table)
    for path in write_outputs(rows, out, profile, seconds, args.replicates, args.record_replicates):
        console.out.print(f"wrote {path}", markup=False, soft_wrap=True)
    return 2 if problems else 0


def cmd_list(args) -> int:
    if args.plugins:
        list_plugins()
        if not args.paths:
            return 0
    elif not args.paths:
        raise LipbenchError("lipbench list needs suite files or folders (PATH ...), or --plugins")
    claims, problems = load_claims(args)
    table = Table(title=f"claims (profile: the one named, else {invocation.FALLBACK_PROFILE} where the file has it)")
    for col in ("collection", "claim", "profile", "profiles", "test", "sweep", "runs", "model-steps"):
        table.add_column(col, justify="right" if col in ("runs", "model-steps") else "left")
    for c in claims:
        sweep = f"{c.sweep_name} x{len(c.claim.sweep.values)}" if c.claim.sweep else "-"
        table.add_row(
            c.collection,
            c.name,
            c.profile,
            ", ".join(c.profiles),
            c.claim.assertion.test,
            sweep,
            str(len(c.runs())),
            f"{c.model_steps():,}",
        )
    console.print_whole(table)
    console.say_problems(problems)
    return 2 if problems else 0


def list_plugins() -> None:
    """The names installed packages register (entry-point group lipbench.plugins), each checked by importing it."""
    found = plugins.installed()
    table = Table(title=f"plugins (entry-point group {plugins.GROUP})")
    for col in ("kind", "name", "callable", "from", "status"):
        table.add_column(col)
    for plugin in found:
        status = plugin.problem
        if status is None:
            try:
                if plugin.kind == "assertion":
                    plugin_assertion(plugin.name, plugin.target)
                else:
                    factories.resolve(plugin.target)
                status = "ok"
            except factories.FactoryError as e:
                status = str(e)
        table.add_row(plugin.kind, plugin.name, plugin.target, plugin.distribution, status)
    console.print_whole(table)
    if not found:
        console.out.print(f"no plugins installed; a package registers them under the entry-point group {plugins.GROUP}")


def cmd_show(args) -> int:
    claims, problems = invocation.load_claims([args.path], args.profile, args.overrides)
    if problems:
        raise problems[0]
    [claim] = claims
    data = claim.claim.model_dump(mode="json")
    header = f"# {claim.file} [profile: {claim.profile}] scenario hash {claim.scenario_hash()}"
    console.out.print(header, markup=False, soft_wrap=True)
    console.out.print(
        yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=10_000), markup=False, soft_wrap=True
    )
    return 0


def cmd_run(args) -> int:
    claims, problems = load_claims(args)
    console.say_problems(problems)
    if not claims:
        return BISECT_SKIP if bisecting() else 2
    run = open_invocation(claims, args)
    console.out.print(
        f"lipbench: {len(claims)} claims, {sum(len(c.runs()) for c in claims)} runs, "
        f"profile {', '.join(sorted({c.profile for c in claims}))}, device {run.device}; results in {run.out}",
        soft_wrap=True,  # a CI log must get the folder's name whole
    )
    outcomes = execute(claims, run)
    console.print_table(outcomes, problems)
    console.print_addresses(run, outcomes)
    return exit_code(outcomes, bad_input=bool(problems), bisect=bisecting())


def cmd_baseline_update(args) -> int:
    """Run the claims (or read --from-run) and store each one that passed; exit 1 if any was refused."""
    if args.from_run:
        return _update_from_run(args)
    claims, problems = load_claims(args)
    console.say_problems(problems)
    if problems or not claims:
        return 2
    run = open_invocation(claims, args)
    console.out.print(
        f"lipbench: running {len(claims)} claims to store their baselines; results in {run.out}", soft_wrap=True
    )
    outcomes = execute(claims, run)
    console.print_table(outcomes)
    console.print_addresses(run, outcomes)
    env = environment(run.device)
    refused = 0
    for o in outcomes:
        path, message = store(
            o, Path(args.baselines) if args.baselines else default_root(o.claim.file), env, force=args.force
        )
        refused += path is None
        (console.out if path else console.errors).print(message, markup=False, soft_wrap=True)
    return 1 if refused else 0


def _update_from_run(args) -> int:
    found = {}
    for folder in load_side(args.from_run, args.tracking_uri):
        data = load_result(folder)
        found[(data["collection"], data["claim"], data["profile"])] = folder
    matched, refused = 0, 0
    for file in suite_files(args.paths):
        named = load_claim(file, args.profile, fallback=invocation.FALLBACK_PROFILE)
        for (collection, name, profile), folder in sorted(found.items()):
            if (collection, name) != (named.collection, named.name) or (args.profile and profile != args.profile):
                continue
            matched += 1
            outcome = load_outcome(folder)
            current = load_claim(file, profile)
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
            (console.out if path else console.errors).print(message, markup=False, soft_wrap=True)
    if not matched:
        console.errors.print(
            f"lipbench: error: {args.from_run} holds no result of the claims in {', '.join(args.paths)}"
        )
        return 2
    return 1 if refused else 0


def cmd_baseline_show(args) -> int:
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
                console.errors.print(f"lipbench: error: {e}", markup=False, soft_wrap=True)
                bad += 1
                continue
            shown += 1
            profile = data["profile"]
            try:
                current = load_claim(file, profile).scenario_hash()
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
                console.styled(data["status"]),
                f"{a['statistic_name']} = {fmt(a['statistic'])}" if a.get("statistic") is not None else "-",
                tracked or "-",
                f"{env.get('date', '-')}\n{env.get('device', '-')} @ {env.get('git_commit') or '-'}",
                f"{data['scenario_hash']}\n{same}",
            )
    console.print_whole(table)
    if not shown and not bad:
        console.out.print("no baselines stored for these suites; store them with `lipbench baseline update PATH`")
    return 2 if bad else 0


def cmd_cache_info(args) -> int:
    info = RunCache(args.cache_dir).info()
    console.out.print(f"run cache: {info.path}", markup=False, soft_wrap=True)
    console.out.print(f"{info.entries} cached runs, {info.bytes / 1e6:.1f} MB")
    if info.entries:
        when = {
            k: datetime.fromtimestamp(v).strftime("%Y-%m-%d %H:%M") for k, v in (("o", info.oldest), ("n", info.newest))
        }
        console.out.print(f"last used: oldest {when['o']}, newest {when['n']}")
    return 0


def cmd_cache_prune(args) -> int:
    if args.older_than is not None and not args.older_than >= 0:
        raise LipbenchError(f"--older-than must be a number of days >= 0, not {args.older_than}.")
    cache = RunCache(args.cache_dir)
    count, freed = cache.prune(None if args.all else args.older_than)
    console.out.print(
        f"deleted {count} cached runs ({freed / 1e6:.1f} MB) from {cache.root}", markup=False, soft_wrap=True
    )
    return 0


def cmd_compare(args) -> int:
    rows = compare_rows(sides(args.a, args.tracking_uri), sides(args.b, args.tracking_uri))
    console.print_whole(compare_table(rows, args.a, args.b))
    return 0


def cmd_explain(args) -> int:
    explain(args.results, args.against, console.out, args.tracking_uri)
    return 0


def cmd_history(args) -> int:
    claims = [load_claim(file, args.profile) for file in suite_files([args.path])]
    keys = {(c.collection, c.name, args.profile or "*") for c in claims}
    if args.results:
        points = from_results(args.results)
    else:
        points = from_mlflow(args.tracking_uri, {c.collection for c in claims})
    found = series(points, keys)
    if not found:
        raise LipbenchError(f"no stored run of the claims in {args.path} ({', '.join(args.results) or 'MLflow store'})")
    print_history(found, console.out)
    if args.html:
        path = write_history_page(found, args.html)
        console.out.print(f"history: {path}", markup=False, soft_wrap=True)
    return 0


def cmd_report(args) -> int:
    folders = load_side(args.results, args.tracking_uri)
    source = Path(args.results) if Path(args.results).exists() else folders
    points = from_results(args.history) if args.history else None
    path = write_report(source, args.out, history=points)
    console.out.print(f"report: {path}")
    return 0


def open_invocation(claims: list[ResolvedClaim], args) -> invocation.Invocation:
    """Every input checked, the store and experiments opened, the results folder made: before anything trains."""

    def warn(text: str) -> None:
        console.errors.print(text, markup=False, soft_wrap=True)

    return invocation.Invocation(invocation.Options.of(args), claims, warn)


def execute(claims: list[ResolvedClaim], run: invocation.Invocation):
    """Run claims showing their progress; each finished claim is saved, drawn and logged at once.

    Every finished run goes to the run cache (unless --no-cache) as it arrives, so an interrupted
    collection resumes where it stopped."""
    cache, session = run.cache, run.session
    finished: list = []

    def done(outcome, folder) -> None:
        finished.append(outcome)
        progress.claim_done(outcome, outcome.verdict)

    started = time.perf_counter()
    try:
        with progress_for(console.out, claims) as progress:
            outcomes = run.run(claims, on_progress=progress.advance, on_claim_done=done)
    except Interrupted as e:
        kept = (
            f"{cache.reused + cache.written} finished runs are kept in the run cache {cache.root}"
            if cache is not None
            else "runs are not cached (--no-cache)"
        )
        console.errors.print(
            f"lipbench: interrupted ({e.signal_name}): {len(finished)} of {len(claims)} claims finished "
            f"(saved under {session.out}); {kept}",
            markup=False,
            soft_wrap=True,
        )
        raise
    line = f"finished in {time.perf_counter() - started:.0f} s"
    if cache is not None:
        line += f"; reused {cache.reused} cached runs, trained {cache.trained}"
    console.out.print(line)
    if session.unlogged:
        session.warn(
            f"lipbench: warning: {len(session.unlogged)} of {len(outcomes)} claims are not in the MLflow store "
            f"{session.store_uri} ({', '.join(session.unlogged[:5])}); every result is in {session.out}"
        )
    return outcomes


if __name__ == "__main__":
    sys.exit(main())
