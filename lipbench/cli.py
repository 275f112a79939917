"""`lipbench run | list | show | validate | baseline | compare | report`: a thin face over the library.

Exit codes of `run` (for CI): 0 when every verdict is PASS, IMPROVED, NEW, XFAIL, SKIPPED or a
non-strict XPASS; 1 on any FAIL, REGRESSED, ERROR or strict XPASS; 2 bad input. The verdicts are
`lipbench.outcome.Verdict` (`lipbench run --help` lists them); the baseline tolerance rule is
documented in `lipbench.baselines`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from lipbench import factories, plugins
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
from lipbench.calibration import COLUMNS, RECORD_REPLICATES, calibrate, table_rows, write_outputs
from lipbench.compare import compare_rows, load_side, print_compare, sides
from lipbench.discovery import suite_files
from lipbench.errors import LipbenchError, SuiteError
from lipbench.executors import Interrupted, check_executor
from lipbench.folders import new_results_folder
from lipbench.options import add_to_parser, default_profile
from lipbench.outcome import StatOutcome, Verdict, exit_code
from lipbench.progress import progress_for
from lipbench.report import write_report
from lipbench.results import environment, load_outcome, load_result
from lipbench.runner import run_claims
from lipbench.session import Session
from lipbench.suite import ResolvedClaim, load_claim, without_duplicates

console = Console(stderr=False, highlight=False)
errors = Console(stderr=True, highlight=False)


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

    def selection(p: argparse.ArgumentParser, nargs: str = "+") -> None:
        p.add_argument("paths", nargs=nargs, metavar="PATH", help="suite files or directories of them")
        add_to_parser(p, "profile")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override any field, e.g. --set scenario.steps=200 (repeatable)",
        )

    def training(p: argparse.ArgumentParser) -> None:
        add_to_parser(
            p, "device", "workers", "engine", "executor", "ray-address", "cache-dir", "no-cache", "tracking-uri"
        )
        add_to_parser(p, "no-mlflow", "data-root", "out", "baselines")

    run = sub.add_parser(
        "run",
        help="train every claim's runs and judge them against their baselines",
        epilog=verdict_legend(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    selection(run)
    training(run)
    run.set_defaults(func=cmd_run)

    base = sub.add_parser("baseline", help="store or show the baselines runs are judged against")
    base_sub = base.add_subparsers(dest="baseline_command", required=True)
    update = base_sub.add_parser("update", help="run claims (or read a finished run) and store their baselines")
    update.add_argument("paths", nargs="+", metavar="PATH", help="suite files or directories of them")
    add_to_parser(update, "profile", help="profile to store (default: paper with a GPU, else quick; or the run's)")
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
    add_to_parser(show_base, "profile", help="only this profile (default: every stored profile)")
    add_to_parser(show_base, "baselines")
    show_base.set_defaults(func=cmd_baseline_show)

    comp = sub.add_parser("compare", help="per-claim differences of two runs (results folders or MLflow run ids)")
    comp.add_argument("a", metavar="A")
    comp.add_argument("b", metavar="B")
    comp.add_argument("--tracking-uri", default=None, help="MLflow store of run ids (default MLFLOW_TRACKING_URI)")
    comp.set_defaults(func=cmd_compare)

    cache = sub.add_parser("cache", help="show or trim the cache of finished runs")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True)
    info = cache_sub.add_parser("info", help="where the run cache is, its entries and size")
    add_to_parser(info, "cache-dir")
    info.set_defaults(func=cmd_cache_info)
    prune = cache_sub.add_parser("prune", help="delete cached runs: all of them, or those unused for DAYS")
    add_to_parser(prune, "cache-dir")
    which = prune.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="delete every cached run")
    which.add_argument("--older-than", type=float, metavar="DAYS", help="delete runs unused for more than DAYS")
    prune.set_defaults(func=cmd_cache_prune)

    rep = sub.add_parser("report", help="a self-contained HTML report of a finished run")
    rep.add_argument("results", metavar="RESULTS_DIR", help="results folder (or a claim's MLflow run id)")
    rep.add_argument("--out", default=None, metavar="DIR", help="folder of report.html (default: RESULTS_DIR)")
    rep.add_argument("--tracking-uri", default=None, help="MLflow store of a run id (default MLFLOW_TRACKING_URI)")
    rep.set_defaults(func=cmd_report)

    lst = sub.add_parser("list", help="claims, profiles, runs and model-steps of suites; installed plugins")
    selection(lst, nargs="*")
    lst.add_argument(
        "--plugins", action="store_true", help="list the models, datasets, ... that installed packages register"
    )
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
    cal.add_argument(
        "--record-replicates",
        type=int,
        default=RECORD_REPLICATES,
        help=f"simulated record sets per scenario and family on the record path (default {RECORD_REPLICATES})",
    )
    cal.add_argument(
        "--path",
        choices=("both", "units", "records"),
        default="both",
        help="units: the assertions' own models (fast); records: RunRecords through runner.judge; both (default)",
    )
    cal.add_argument("--out", type=Path, default=Path("results"), help="folder for calibration-<profile>.json/.html")
    cal.add_argument("--baselines", type=Path, default=None, help="baselines folder (default: next to the suites)")
    cal.set_defaults(func=cmd_calibrate, overrides=[])
    return parser


def verdict_legend() -> str:
    """The verdicts of `run`, what each means and whether it fails the run (exit 1)."""
    width = max(len(v) for v in Verdict)
    lines = [f"  {v:<{width}}  {v.meaning}{_fails_text(v)}" for v in Verdict]
    return "verdicts:\n" + "\n".join(lines) + "\n\nexit codes: 0 no verdict fails, 1 some verdict fails, 2 bad input"


def _fails_text(verdict: Verdict) -> str:
    if verdict.fails():
        return " (fails the run)"
    return " (fails the run when the claim is strict)" if verdict.fails(strict=True) else ""


def styled(verdict: str) -> str:
    """A verdict in rich markup, in its colour (uncoloured when this lipbench does not know it)."""
    known = Verdict.named(verdict)
    return f"[{known.style if known else ''}]{verdict}[/]"


def load_claims(args, device: str = "auto") -> tuple[list[ResolvedClaim], list[SuiteError]]:
    """Every loadable claim, and one error per file that is not (so the others can still run)."""
    profile = args.profile or default_profile(device)
    claims, problems = [], []
    for file in suite_files(args.paths):
        try:
            claims.append(load_claim(file, profile, args.overrides))
        except SuiteError as e:
            problems.append(e)
    unique, duplicates = without_duplicates(claims)
    return unique, problems + duplicates


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
    if args.replicates < 50:
        raise LipbenchError(f"--replicates must be at least 50, not {args.replicates}.")
    if args.record_replicates < 20:
        raise LipbenchError(f"--record-replicates must be at least 20, not {args.record_replicates}.")
    args.profile = args.profile or "quick"
    claims, problems = load_claims(args, "cpu")
    for p in problems:
        errors.print(f"lipbench: error: {p}", markup=False, soft_wrap=True)
    paths = ("units", "records") if args.path == "both" else (args.path,)
    rows, seconds = calibrate(
        claims, reps=args.replicates, baselines=args.baselines, record_reps=args.record_replicates, paths=paths
    )
    table = Table(
        title=f"calibration, profile {args.profile}: {args.replicates} replicates per scenario (units), "
        f"{args.record_replicates} (records), {seconds:.0f} s"
    )
    for col in COLUMNS:
        table.add_column(col)
    for cells in table_rows(rows):
        table.add_row(*cells)
    console.print(table)
    for path in write_outputs(rows, args.out, args.profile, seconds, args.replicates, args.record_replicates):
        console.print(f"wrote {path}", markup=False, soft_wrap=True)
    return 2 if problems else 0


def cmd_list(args) -> int:
    if args.plugins:
        list_plugins()
        if not args.paths:
            return 0
    elif not args.paths:
        raise LipbenchError("lipbench list needs suite files or folders (PATH ...), or --plugins")
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
    console.print(table)
    if not found:
        console.print(f"no plugins installed; a package registers them under the entry-point group {plugins.GROUP}")


def cmd_show(args) -> int:
    claim = load_claim(args.path, args.profile, args.overrides)
    data = claim.claim.model_dump(mode="json")
    header = f"# {claim.file} [profile: {claim.profile}] scenario hash {claim.scenario_hash()}"
    console.print(header, markup=False, soft_wrap=True)
    console.print(yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=10_000), markup=False, soft_wrap=True)
    return 0


def _device(args) -> str:
    from lipbench.torch.engine import resolve_device  # torch, only for a command that trains

    try:
        return str(resolve_device(args.device))
    except RuntimeError as e:
        raise LipbenchError(str(e)) from None


def cmd_run(args) -> int:
    device = _device(args)
    claims, problems = load_claims(args, device)
    for p in problems:
        errors.print(f"lipbench: error: {p}", markup=False, soft_wrap=True)
    if not claims:
        return 2
    session = open_session(claims, args, device)
    console.print(
        f"lipbench: {len(claims)} claims, {sum(len(c.runs()) for c in claims)} runs, "
        f"profile {claims[0].profile}, device {device}; results in {session.out}",
        soft_wrap=True,  # a CI log must get the folder's name whole
    )
    outcomes = execute(claims, args, device, session)
    print_table(outcomes)
    return exit_code(outcomes, bad_input=bool(problems))


def cmd_baseline_update(args) -> int:
    """Run the claims (or read --from-run) and store each one that passed; exit 1 if any was refused."""
    if args.from_run:
        return _update_from_run(args)
    device = _device(args)
    claims, problems = load_claims(args, device)
    for p in problems:
        errors.print(f"lipbench: error: {p}", markup=False, soft_wrap=True)
    if problems or not claims:
        return 2
    session = open_session(claims, args, device)
    console.print(
        f"lipbench: running {len(claims)} claims to store their baselines; results in {session.out}", soft_wrap=True
    )
    outcomes = execute(claims, args, device, session)
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
                styled(data["status"]),
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
    if args.older_than is not None and not args.older_than >= 0:
        raise LipbenchError(f"--older-than must be a number of days >= 0, not {args.older_than}.")
    cache = RunCache(args.cache_dir)
    count, freed = cache.prune(None if args.all else args.older_than)
    console.print(f"deleted {count} cached runs ({freed / 1e6:.1f} MB) from {cache.root}", markup=False, soft_wrap=True)
    return 0


def cmd_compare(args) -> int:
    rows = compare_rows(sides(args.a, args.tracking_uri), sides(args.b, args.tracking_uri))
    print_compare(rows, console, args.a, args.b)
    return 0


def cmd_report(args) -> int:
    folders = load_side(args.results, args.tracking_uri)
    source = Path(args.results) if Path(args.results).exists() else folders
    path = write_report(source, args.out)
    console.print(f"report: {path}")
    return 0


def open_session(claims: list[ResolvedClaim], args, device: str) -> Session:
    """The store and experiments first (a store that cannot be used is refused here, before anything
    is trained or written), then this invocation's own results folder. A missing Ray is said first."""
    check_executor(getattr(args, "executor", "local"))

    def warn(text: str) -> None:
        errors.print(text, markup=False, soft_wrap=True)

    session = Session(
        None,
        device,
        tracking_uri=args.tracking_uri,
        mlflow=not args.no_mlflow,
        warn=warn,
        baselines=getattr(args, "baselines", None),
    )
    session.prepare(claims)
    session.out = new_results_folder(args.out)
    return session


def execute(claims: list[ResolvedClaim], args, device: str, session: Session):
    """Run claims showing their progress; each finished claim is saved, drawn and logged at once.

    Every finished run goes to the run cache (unless --no-cache) as it arrives, so an interrupted
    collection resumes where it stopped."""
    cache = None if getattr(args, "no_cache", False) else RunCache(getattr(args, "cache_dir", None))
    finished: list = []

    def done(outcome) -> None:
        session.finish_claim(outcome)
        finished.append(outcome)
        progress.claim_done(outcome, outcome.verdict)

    started = time.perf_counter()
    try:
        with progress_for(console, claims) as progress:
            outcomes = run_claims(
                claims,
                device=device,
                workers=args.workers,
                data_root=args.data_root,
                engine=getattr(args, "engine", "per-run"),
                executor=getattr(args, "executor", "local"),
                ray_address=getattr(args, "ray_address", None),
                cache=cache,
                on_progress=progress.advance,
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
            f"(saved under {session.out}); {kept}",
            markup=False,
            soft_wrap=True,
        )
        raise
    line = f"finished in {time.perf_counter() - started:.0f} s"
    if cache is not None:
        line += f"; reused {cache.reused} cached runs, trained {cache.trained}"
    console.print(line)
    if session.unlogged:
        session.warn(
            f"lipbench: warning: {len(session.unlogged)} of {len(outcomes)} claims are not in the MLflow store "
            f"{session.store_uri} ({', '.join(session.unlogged[:5])}); every result is in {session.out}"
        )
    return outcomes


def print_table(outcomes) -> None:
    table = Table(title="lipbench verdicts", show_lines=False)
    for col in ("claim", "profile", "verdict", "statistic", "threshold", "p", "vs baseline", "runs", "time"):
        table.add_column(col)
    for o in outcomes:
        r, verdict, comparison = o.result, o.verdict, o.comparison
        stat = f"{r.statistic_name} = {r.statistic:.3g}" if r else "-"
        thr = f"{r.threshold:.3g}" if r else "-"
        p = f"{r.pvalue:.2g}" if r and r.pvalue is not None else "-"
        table.add_row(
            o.claim.name,
            o.claim.profile,
            styled(verdict),
            stat,
            thr,
            p,
            _versus(comparison),
            str(len(o.records)),
            f"{o.seconds:.0f} s",
        )
    console.print(table)
    for o in outcomes:
        verdict, comparison = o.verdict, o.comparison
        if o.sentence:
            console.print(f"{styled(verdict)} {o.claim.name}: ", end="")
            console.print(o.sentence, markup=False, highlight=False)
        if comparison is not None and comparison.sentence:
            console.print(f"    baseline: {comparison.sentence}", markup=False, highlight=False)


def _versus(comparison) -> str:
    """The baseline column: the largest |z| of the tracked statistics, or why there is none."""
    if comparison is None or comparison.comparable is None:
        return "new" if comparison is not None and comparison.verdict == Verdict.NEW else "-"
    if not comparison.comparable:
        return "not comparable"
    zs = [c for c in comparison.changes if c.z is not None]
    if not zs:
        return StatOutcome.NOT_COMPARED
    worst = max(zs, key=lambda c: abs(c.z))
    return f"{worst.name}: t = {worst.z:.2g}"


if __name__ == "__main__":
    sys.exit(main())
