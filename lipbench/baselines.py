"""Stored baselines, and the verdict of a finished claim against its baseline.

A baseline is ``baselines/<collection>/<claim>.<profile>.json``: the assertion result, the
summary numbers behind it, the tolerance rule, the scenario hash and the environment. It is
written by ``lipbench baseline update`` and read by every run (CLI and pytest alike, through
``Session.finish_claim``).

Verdicts
--------
``ERROR``, ``SKIPPED``, ``XFAIL`` and ``XPASS`` are the runner's and pass through unchanged.
``FAIL`` means the assertion failed, whatever the baseline says. A claim whose assertion
passed is ``NEW`` without a baseline, else ``REGRESSED``, ``IMPROVED`` or ``PASS`` by the rule
below (``lipbench.outcome.decide``). What each verdict means and which of them fail a CI job is
``lipbench.outcome.Verdict``.

The tolerance rule
------------------
Each assertion names the statistics its verdict rests on (``AssertionResult.tracked``), each with
a standard error and degrees of freedom from the assertion's own unit of replication: the mean
within-block Spearman rho and the extreme-value log ratio of ``monotone_trend`` (blocks of seeds,
df = blocks - 1), the mean late growth of ``growth_trend`` (runs), the exponent of ``power_law``
and ``variance_scaling`` (from the known sampling distribution of a variance, df = inf), the
within-init CV of ``invariance`` (its chi-square degrees of freedom), the worst layer's ratio of
``init_scaling`` (init draws), the relative error of ``sde_agreement`` (runs) and the log variance
ratio of ``variance_prediction``. The baseline and the new run are two samples: the change of a
statistic gets Welch's t, t = change / sqrt(se_base^2 + se_new^2), with Welch-Satterthwaite
degrees of freedom, and is significant when its two-sided p-value is below ``ALPHA``
(0.005). It is large when ``|change| > MIN_CHANGE * scale`` (10% of a scale stored per statistic:
1 for rho, the claim's margin or limit for exponents, CVs and ratios, its minimum effect for
effects). REGRESSED needs both in the bad direction for some statistic; IMPROVED needs both in the
good direction and no regression; anything else is PASS. A statistic without a standard error (a
design with one block) is reported as not compared, never guessed. The false-alarm rate of this
rule when only the seeds change is measured per claim by ``lipbench calibrate``. A baseline taken
on another device kind is compared by the same rule (another device's rounding makes trajectories
differ as another seed's do, which is the variation the rule is calibrated for) and the verdict
says so.

What "the same scenario" means
------------------------------
A baseline stores the hash of the resolved claim it was taken from (everything that decides
the numbers: scenario, sweep, seeds, assertion; not the prose). A run compares with it when
its own hash is equal, or when the suite file without ``--set`` overrides has that hash: then
``--set`` changed the scenario of a benchmark that is otherwise unchanged, which is exactly
what a regression test must catch (a learning rate broken on the command line), so it is
compared and the verdict names the changed keys. A baseline whose hash matches neither (the
suite file was edited, or it was stored from a ``--set`` run) is "not comparable": the
verdict is the assertion's and a note says why, never a silent comparison.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from lipbench import attribution, forces
from lipbench.assertions import Tracked
from lipbench.assertions.base import at_record
from lipbench.documents import BASELINE_VERSION, BaselineDoc, load_document
from lipbench.errors import DocumentError, LipbenchError
from lipbench.outcome import ClaimOutcome, Comparison, StatChange, StatOutcome, Verdict, decide
from lipbench.provenance import EXPLAINING, environment_differences
from lipbench.records import jsonable, records_frame
from lipbench.suite import PROSE_KEYS, Claim, ResolvedClaim


def conv_meaning_changed(outcome: ClaimOutcome) -> bool:
    """Whether K of this claim's runs means something else than in a format 2 baseline: before format 3 a
    conv layer's sigma was its reshaped kernel's; now it is, unless `lipschitz.conv: reshaped`, the operator's
    norm or its bound. The runs' summaries name their conv layers (sigma_bracket_<l>)."""
    if outcome.claim.claim.scenario.lipschitz.conv == "reshaped":
        return False
    return any(key.startswith("sigma_bracket_") for record in outcome.records for key in record.summary)


ALPHA = 0.005  # two-sided significance of a change: at most 0.5% false flags per statistic when only seeds change
MIN_CHANGE = 0.10  # practical size: a tenth of the statistic's scale (asv's default factor 1.1)
ENV_BASELINES = "LIPBENCH_BASELINES"

TOLERANCE_RULE = (
    "REGRESSED/IMPROVED iff a tracked statistic moved in the bad/good direction with a Welch t test "
    "p < alpha (t = change / sqrt(se_base^2 + se_new^2), Welch-Satterthwaite df, se and df from the "
    "assertion's unit of replication) AND |change| > min_change * scale."
)


class BaselineError(LipbenchError):
    """A baseline file that cannot be read or written, as one line."""


# --------------------------------------------------------------------------- where baselines live


def default_root(suite_file: str | Path | None = None) -> Path:
    """$LIPBENCH_BASELINES, else the `baselines/` folder of the suite file's nearest ancestor, else ./baselines."""
    if os.environ.get(ENV_BASELINES):
        return Path(os.environ[ENV_BASELINES])
    if suite_file is not None:
        for parent in Path(suite_file).resolve().parents:
            if (parent / "baselines").is_dir():
                return parent / "baselines"
    return Path("baselines")


def baseline_path(root: str | Path, collection: str, claim: str, profile: str) -> Path:
    return Path(root) / collection / f"{claim}.{profile}.json"


def scenario_dump(claim: ResolvedClaim | Claim) -> dict[str, Any]:
    """What the scenario hash covers, as a plain dict (to name the keys that differ)."""
    resolved = claim.claim if isinstance(claim, ResolvedClaim) else claim
    return resolved.model_dump(mode="json", exclude=set(PROSE_KEYS))


def changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """'key.path: old -> new' for every leaf that differs."""
    out: list[str] = []
    for key in [*old, *(k for k in new if k not in old)]:
        a, b = old.get(key, "(absent)"), new.get(key, "(absent)")
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a} → {b}")
    return out


# --------------------------------------------------------------------------- summary numbers


def final_values(outcome: ClaimOutcome, quantity: str) -> pd.DataFrame:
    """One row per finished run: sweep_value, init_seed, sampling_seed and the `quantity` its assertion judges
    (the first record for a test judged ``at: initial``, else the last) as value."""
    df = records_frame(outcome.records)
    if df.empty or quantity not in df:
        return pd.DataFrame(columns=["run", "sweep_value", "init_seed", "sampling_seed", "value"])
    at = getattr(outcome.claim.claim.assertion, "at", "final")
    rows = at_record(df, at)
    final = rows[["run", "sweep_value", "init_seed", "sampling_seed", quantity]].rename(columns={quantity: "value"})
    return final[np.isfinite(final["value"].astype(float))].reset_index(drop=True)


def summarise(outcome: ClaimOutcome) -> dict[str, Any]:
    """The numbers a baseline keeps: mean, sd and n of the judged quantity per sweep value, and the
    statistics the assertion's verdict rests on (with their standard errors)."""
    spec = outcome.claim.claim.assertion
    quantity = getattr(spec, "quantity", "K")
    final = final_values(outcome, quantity)
    per_sweep = []
    for value, group in _by_sweep(final):
        v = group["value"].to_numpy(float)
        per_sweep.append(
            {
                "sweep_value": value,
                "mean": float(v.mean()),
                "sd": float(v.std(ddof=1)) if len(v) > 1 else None,
                "n": len(v),
            }
        )
    tracked = outcome.result.tracked if outcome.result is not None else ()
    frame = records_frame(outcome.records)
    return {
        "quantity": quantity,
        "final_mean": float(final["value"].mean()) if len(final) else None,
        "runs": len(final),
        "per_sweep": per_sweep,
        "tracked": [t.to_dict() for t in tracked],
        "attribution": attribution.summarise(spec, frame) if outcome.result is not None else [],
        "forces": forces.summarise(frame) if not frame.empty else None,
    }


def _by_sweep(final: pd.DataFrame) -> list[tuple[float | None, pd.DataFrame]]:
    sweep = final["sweep_value"].astype(float)
    if sweep.isna().all():
        return [(None, final)] if len(final) else []
    return [(float(v), g) for v, g in final.groupby(sweep, sort=True)]


# --------------------------------------------------------------------------- baseline files


def build_baseline(outcome: ClaimOutcome, env: dict[str, Any], summary: dict[str, Any] | None = None) -> dict[str, Any]:
    """The baseline document of a finished claim, keys in a fixed order."""
    if outcome.result is None:
        raise BaselineError(f"{outcome.claim.name}: no assertion result to store ({outcome.status})")
    claim = outcome.claim
    return {
        "schema_version": BASELINE_VERSION,
        "collection": claim.collection,
        "claim": claim.name,
        "profile": claim.profile,
        "file": _relative(claim.file),
        "scenario_hash": claim.scenario_hash(),
        "status": outcome.status,
        "assertion": outcome.result.to_dict(),
        "summary": summary if summary is not None else summarise(outcome),
        "tolerance": {
            "rule": TOLERANCE_RULE,
            "alpha": ALPHA,
            "min_change": MIN_CHANGE,
        },
        "environment": {k: env.get(k) for k in (*EXPLAINING, "git_commit", "git_dirty", "date") if k in env},
        "scenario": scenario_dump(claim),
    }


def write_baseline(data: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(jsonable(data), indent=2, ensure_ascii=False) + "\n")
    tmp.replace(path)  # never a half-written baseline
    return path


def read_baseline(path: str | Path) -> dict[str, Any]:
    """A stored baseline, checked (lipbench.documents); `BaselineError` names the file and key when it is not one."""
    try:
        return load_document(path, BaselineDoc)
    except DocumentError as e:
        raise BaselineError(str(e)) from None


def store(
    outcome: ClaimOutcome,
    root: str | Path,
    env: dict[str, Any],
    *,
    force: bool = False,
    hash_problem: str | None = None,
) -> tuple[Path | None, str]:
    """Write the claim's baseline; returns (path, message), path None when refused.

    A claim that did not PASS (or whose scenario differs from its suite file's,
    `hash_problem`) is refused unless `force`; one without an assertion result always is.
    """
    claim = outcome.claim
    if outcome.result is None:
        return None, f"{claim.name}: not stored: {outcome.status} has no assertion result ({outcome.sentence})"
    if outcome.status != Verdict.PASS and not force:
        return None, (
            f"{claim.name}: not stored: it is {outcome.status}, not {Verdict.PASS}; pass --force to store it anyway"
        )
    if hash_problem and not force:
        return None, f"{claim.name}: not stored: {hash_problem}; pass --force to store it anyway"
    path = baseline_path(root, claim.collection, claim.name, claim.profile)
    verdict = outcome.verdict
    was = f", {verdict} against the baseline it replaces" if verdict not in (outcome.status, Verdict.NEW) else ""
    write_baseline(build_baseline(outcome, env), path)
    return path, f"{claim.name}: stored {path} ({outcome.status}{was})"


def _relative(path: str | Path) -> str:
    p = Path(path)
    try:
        return p.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return p.as_posix()


# --------------------------------------------------------------------------- comparison


def welch(
    change: float, se_a: float, df_a: float | None, se_b: float, df_b: float | None
) -> tuple[float, float, float]:
    """Welch's t of a difference of two estimates with standard errors and degrees of freedom (None or inf: a
    standard error from a known distribution): (t, Welch-Satterthwaite df, two-sided p)."""
    var = se_a**2 + se_b**2
    if var <= 0:
        t = 0.0 if change == 0 else math.copysign(math.inf, change)
        return t, math.inf, 1.0 if change == 0 else 0.0
    terms = [v**2 / d for v, d in ((se_a**2, df_a), (se_b**2, df_b)) if d is not None and math.isfinite(d) and d > 0]
    df = var**2 / sum(terms) if terms and sum(terms) > 0 else math.inf
    t = change / math.sqrt(var)
    return t, df, float(2 * stats.t.sf(abs(t), df)) if math.isfinite(df) else float(2 * stats.norm.sf(abs(t)))


def compare_tracked(base: Tracked, new: Tracked) -> StatChange:
    """Apply the tolerance rule (module docstring) to one statistic."""
    if base.better == "higher":
        change = new.value - base.value
    elif base.better == "lower":
        change = base.value - new.value
    else:
        change = abs(base.value - base.target) - abs(new.value - base.target)

    def result(z, size, crit, outcome, df=None, p=None) -> StatChange:
        return StatChange(
            base.name, base.better, base.value, new.value, change, z, size, crit, MIN_CHANGE, outcome, df, p
        )

    if not (math.isfinite(base.value) and math.isfinite(new.value)) or base.se is None or new.se is None:
        return result(None, None, None, StatOutcome.NOT_COMPARED)
    # "closer" compares distances to the target; the t test is on the values themselves.
    diff = new.value - base.value
    t, df, p = welch(diff, base.se, base.df, new.se, new.df)
    crit = float(stats.t.isf(ALPHA / 2, df)) if math.isfinite(df) else float(stats.norm.isf(ALPHA / 2))
    size = abs(change) / base.scale if base.scale > 0 else (0.0 if change == 0 else math.inf)
    significant, large = p < ALPHA, size > MIN_CHANGE
    if significant and large and change != 0:
        outcome = StatOutcome.IMPROVED if change > 0 else StatOutcome.REGRESSED
    elif significant:
        outcome = StatOutcome.SIGNIFICANT_BUT_SMALL
    elif large:
        outcome = StatOutcome.LARGE_BUT_NOT_SIGNIFICANT
    else:
        outcome = StatOutcome.WITHIN_TOLERANCE
    return result(math.copysign(abs(t), change), size, crit, outcome, df, p)  # z > 0: moved the better way


def compare_summaries(
    base: dict[str, Any], new: dict[str, Any]
) -> tuple[list[StatChange], list[dict[str, Any]], list[str]]:
    """Tracked-statistic changes, per-sweep-value changes of the final quantity (Welch z, for reading), notes."""
    notes: list[str] = []
    new_tracked = {t["name"]: Tracked.from_dict(t) for t in new.get("tracked", [])}
    changes = []
    for t in base.get("tracked", []):
        b = Tracked.from_dict(t)
        if b.name in new_tracked:
            changes.append(compare_tracked(b, new_tracked[b.name]))
        else:
            notes.append(f"{b.name} is in the baseline but not in this run")
    new_sweep = {s["sweep_value"]: s for s in new.get("per_sweep", [])}
    sweep_changes = []
    for s in base.get("per_sweep", []):
        n = new_sweep.get(s["sweep_value"])
        if n is None:
            continue
        var = sum((x["sd"] or 0.0) ** 2 / x["n"] for x in (s, n) if x["n"])
        diff = n["mean"] - s["mean"]
        z = diff / math.sqrt(var) if var > 0 else None
        sweep_changes.append(
            {"sweep_value": s["sweep_value"], "baseline_mean": s["mean"], "current_mean": n["mean"], "z": z}
        )
    return changes, sweep_changes, notes


def judge_against(
    outcome: ClaimOutcome,
    baseline: dict[str, Any] | None,
    *,
    device: str,
    path: str | Path | None = None,
    file_hash: str | None = None,
    file_scenario: dict[str, Any] | None = None,
    summary: dict[str, Any] | None = None,
    problem: str | None = None,
    env: dict[str, Any] | None = None,
) -> Comparison:
    """The verdict of `outcome` against `baseline` (None: there is none; `problem`: it could not be read).

    `file_hash` / `file_scenario` describe the suite file's claim without `--set` overrides; `env` is this
    run's environment (`lipbench.results.environment`), whose differences from the baseline's are listed.
    """
    status, where, run_env = outcome.status, None if path is None else _relative(path), env
    if status in (Verdict.ERROR, Verdict.SKIPPED) or outcome.result is None:
        return Comparison(status, status, where, None)
    summary = summary if summary is not None else summarise(outcome)
    if status in (Verdict.XFAIL, Verdict.XPASS):  # expected to fail: its numbers are kept, but not judged
        return Comparison(status, status, where, None, summary=summary)
    if problem is not None:
        return Comparison(status, status, where, False, notes=(f"not comparable: {problem}",), summary=summary)
    if baseline is None:
        verdict = Verdict.NEW if status == Verdict.PASS else status
        file, profile = _relative(outcome.claim.file), outcome.claim.profile
        hint = f"store one with `lipbench baseline update {file} --profile {profile}`"
        return Comparison(verdict, status, where, None, notes=(f"no baseline at {where}; {hint}",), summary=summary)

    if baseline.get("schema_version") == 2 and conv_meaning_changed(outcome):
        note = (
            "not comparable: the baseline (format 2) took a conv layer's sigma of its reshaped kernel, this run of "
            "the convolution operator (scenario.lipschitz.conv); run `lipbench baseline update` to store it again"
        )
        return Comparison(status, status, where, False, notes=(note,), summary=summary)
    run_hash = outcome.claim.scenario_hash()
    env = baseline.get("environment") or {}
    stored = baseline.get("scenario_hash")
    notes: list[str] = []
    if stored != run_hash and stored == file_hash:
        keys = changed_keys(file_scenario or {}, scenario_dump(outcome.claim)) if file_scenario else []
        notes.append(
            "scenario changed by --set ("
            + ("; ".join(keys) or "keys unknown")
            + "): compared with the suite file's baseline"
        )
    elif stored != run_hash:
        keys = changed_keys(baseline.get("scenario") or {}, scenario_dump(outcome.claim))
        what = "; ".join(keys[:4]) + (f"; and {len(keys) - 4} more" if len(keys) > 4 else "")
        note = (
            f"not comparable: the baseline's scenario hash {stored} differs from this run's {run_hash}"
            + (f" ({what})" if what else "")
            + "; run `lipbench baseline update` to store the new scenario"
        )
        return Comparison(status, status, where, False, notes=(note,), summary=summary, baseline_environment=env)
    if env.get("device") != device:
        notes.append(
            f"baseline taken on {env.get('device')!r}, this run on {device!r}: compared as a new draw of seeds"
        )
    base_summary = baseline.get("summary") or {}
    changes, sweep_changes, more = compare_summaries(base_summary, summary)
    notes += more
    verdict = decide(changes)
    if status == Verdict.FAIL or (status == Verdict.INCONCLUSIVE and verdict != Verdict.REGRESSED):
        verdict = status
    layers = attribution.compare(base_summary.get("attribution") or [], summary.get("attribution") or [])
    moved = base_summary.get("forces") and summary.get("forces")
    terms = forces.compare(base_summary["forces"], summary["forces"]) if moved else []
    if baseline.get("schema_version") == 2:
        notes.append("the baseline (format 2) holds no per-layer contributions: the change is not attributed")
    return Comparison(
        verdict,
        status,
        where,
        True,
        tuple(notes),
        tuple(changes),
        tuple(sweep_changes),
        summary,
        env,
        attribution=tuple(layers),
        forces=tuple(terms),
        environment_differences=tuple(environment_differences(env, run_env or {})),
        explanation=explain(changes, layers, terms) if verdict in (Verdict.REGRESSED, Verdict.IMPROVED) else "",
    )


def explain(changes: list[StatChange], layers: list[dict[str, Any]], terms: list[dict[str, Any]]) -> str:
    """The clause of the verdict that names where the moved statistic's change comes from."""
    moved = next((c.name for c in changes if c.outcome in (StatOutcome.REGRESSED, StatOutcome.IMPROVED)), None)
    parts = [attribution.clause(layers, moved), forces.clause(terms)]
    return "; ".join(p for p in parts if p)


def verdict_for(outcome: ClaimOutcome, root: str | Path, device: str, env: dict[str, Any] | None = None) -> Comparison:
    """Find the claim's baseline under `root` and judge against it (what Session.finish_claim calls)."""
    claim = outcome.claim
    path = baseline_path(root, claim.collection, claim.name, claim.profile)
    baseline, problem = None, None
    if path.exists():
        try:
            baseline = read_baseline(path)
        except BaselineError as e:
            problem = str(e)
    return judge_against(
        outcome,
        baseline,
        device=device,
        path=path,
        file_hash=claim.file_hash,
        file_scenario=scenario_dump(claim.file_claim) if claim.file_claim else None,
        problem=problem,
        env=env,
    )
