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
below. Exit codes for CI: 0 when every verdict is PASS, IMPROVED, NEW, XFAIL, SKIPPED or a
non-strict XPASS; 1 on any FAIL, REGRESSED, ERROR or strict XPASS; 2 on bad input.

The tolerance rule
------------------
Each claim tracks one or two statistics of its assertion, each with a direction that is
better: ``monotone_trend`` Spearman's rho and the effect size (log ratio or difference of the
extreme sweep values' mean final quantity), both better further in the claimed direction;
``power_law`` the exponent k, better closer to ``expected_exponent`` (the change is
``|k_base - e| - |k_new - e|``); ``invariance`` the largest within-init CV over sweep values,
better smaller; ``growth_trend`` the smallest late Theil–Sen slope over sweep values, better
larger. The seed-to-seed variability of each statistic is measured, not assumed: its standard
error is the sd of ``N_BOOTSTRAP`` bootstrap replicates that resample runs within each cell of
the design (runs of one sweep value; sampling seeds of one (sweep value, init seed) for
``power_law`` and ``invariance``), so the design itself is kept. A statistic moved
significantly when ``|z| > Z_CRITICAL`` (3.29, two-sided p < 0.001), where ``z = change /
sqrt(se_base**2 + se_new**2)`` (Welch-like: both runs' errors; one side's error stands in for
a side that has none); 0.001 keeps the chance of a false REGRESSED below about 1% over the ~10
statistics of a collection. It moved by a practical amount when ``|change| > MIN_CHANGE *
scale`` (10%, asv's default factor 1.1), with a scale stored per statistic: 1 for rho (its
range is [-1, 1]), ``|expected_exponent|`` for k (1 when that is 0), the claim's own
``max_relative_spread`` for the CV, and the baseline's own value for effect sizes and slopes.
REGRESSED needs both in the bad direction for some statistic; IMPROVED needs both in the good
direction for some statistic and no regression; anything else is PASS. A statistic whose runs
are too few to bootstrap (a design cell with one run) is reported as not compared, never
guessed. A baseline from another device kind (``environment.device``: "cpu" or the GPU's
name) is compared with both thresholds multiplied by ``OTHER_DEVICE_FACTOR`` (2: other
kernels round differently, and SGD turns rounding into trajectories as different as another
seed's), and the verdict says so.

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
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from lipbench.errors import LipbenchError
from lipbench.records import jsonable, records_frame
from lipbench.runner import ERROR, FAIL, PASS, SKIPPED, XFAIL, XPASS, ClaimOutcome
from lipbench.suite import ResolvedClaim, load_claim

BASELINE_VERSION = 1
REGRESSED, IMPROVED, NEW = "REGRESSED", "IMPROVED", "NEW"
VERDICTS = (PASS, FAIL, REGRESSED, IMPROVED, NEW, ERROR, XFAIL, XPASS, SKIPPED)
FAILING = (FAIL, REGRESSED, ERROR)

Z_CRITICAL = 3.29  # two-sided p < 0.001 under a normal approximation
MIN_CHANGE = 0.10  # practical size: a tenth of the statistic's scale (asv's default factor 1.1)
OTHER_DEVICE_FACTOR = 2.0  # both thresholds, when the baseline's device kind is another
N_BOOTSTRAP = 2000  # bootstrap replicates of each tracked statistic (sd known to ~1.6%)
RNG_SEED = 20250623  # fixed: the same records always give the same standard errors
ENV_BASELINES = "LIPBENCH_BASELINES"

TOLERANCE_RULE = (
    "REGRESSED/IMPROVED iff a tracked statistic moved in the bad/good direction with "
    "|z| > z_critical (z = change / sqrt(se_base^2 + se_new^2), se = bootstrap sd over runs "
    "resampled within design cells) AND |change| > min_change * scale; both thresholds x "
    "other_device_factor when the baseline's device kind differs."
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


def file_claim(claim: ResolvedClaim) -> ResolvedClaim | None:
    """The claim as its suite file defines it for the same profile, without `--set`; None if unreadable."""
    try:
        return load_claim(claim.file, None if claim.profile == "default" else claim.profile)
    except (LipbenchError, OSError):
        return None


def scenario_dump(claim: ResolvedClaim) -> dict[str, Any]:
    """What the scenario hash covers, as a plain dict (to name the keys that differ)."""
    return claim.claim.model_dump(mode="json", exclude={"claim", "paper", "expect_reason"})


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


@dataclass(frozen=True)
class Tracked:
    """One statistic a baseline tracks: its value, bootstrap standard error and better direction.

    ``better`` is "higher", "lower" or "closer" (to ``target``); ``scale`` is what MIN_CHANGE
    is a fraction of. ``se`` is None when the runs are too few to bootstrap.
    """

    name: str
    value: float
    se: float | None
    better: str
    scale: float
    target: float | None = None
    n: int = 0
    method: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: jsonable(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Tracked:
        d = dict(d)
        d["value"] = math.nan if d.get("value") is None else float(d["value"])
        return cls(**d)


def final_values(outcome: ClaimOutcome, quantity: str) -> pd.DataFrame:
    """One row per finished run: sweep_value, init_seed, sampling_seed and its final `quantity` as value."""
    df = records_frame(outcome.records)
    if df.empty or quantity not in df:
        return pd.DataFrame(columns=["run", "sweep_value", "init_seed", "sampling_seed", "value"])
    df = df.reset_index(drop=True)
    final = df.loc[df.groupby("run", sort=True)["step"].idxmax()]
    final = final[["run", "sweep_value", "init_seed", "sampling_seed", quantity]].rename(columns={quantity: "value"})
    return final[np.isfinite(final["value"].astype(float))].reset_index(drop=True)


def summarise(outcome: ClaimOutcome) -> dict[str, Any]:
    """The numbers a baseline keeps: mean, sd and n of the final quantity per sweep value; the tracked statistics."""
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
    tracked: list[Tracked] = []
    if outcome.result is not None and len(final):
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            # The SDE-validation and init tests track no statistic yet: their baselines keep the
            # assertion and the per-sweep summary, and the verdict is the assertion's.
            tracker = TRACKERS.get(spec.test)
            tracked = tracker(outcome, spec, final) if tracker else []
    return {
        "quantity": quantity,
        "final_mean": float(final["value"].mean()) if len(final) else None,
        "runs": len(final),
        "per_sweep": per_sweep,
        "tracked": [t.to_dict() for t in tracked],
    }


def _by_sweep(final: pd.DataFrame) -> list[tuple[float | None, pd.DataFrame]]:
    sweep = final["sweep_value"].astype(float)
    if sweep.isna().all():
        return [(None, final)] if len(final) else []
    return [(float(v), g) for v, g in final.groupby(sweep, sort=True)]


def _bootstrap_se(samples: list[np.ndarray], statistic: Callable[..., Any], vectorized: bool = True) -> float | None:
    """sd of the bootstrap replicates, each sample (design cell) resampled on its own; None if a cell has < 2 runs."""
    if not samples or any(len(s) < 2 for s in samples):
        return None
    res = stats.bootstrap(
        tuple(samples),
        statistic,
        n_resamples=N_BOOTSTRAP,
        vectorized=vectorized,
        paired=False,
        method="percentile",
        rng=np.random.default_rng(RNG_SEED),
    )
    dist = np.asarray(res.bootstrap_distribution, dtype=float)
    dist = dist[np.isfinite(dist)]
    return float(np.std(dist, ddof=1)) if len(dist) >= N_BOOTSTRAP // 2 else None


def _monotone(outcome: ClaimOutcome, spec: Any, final: pd.DataFrame) -> list[Tracked]:
    groups = _by_sweep(final)
    if len(groups) < 2 or groups[0][0] is None:
        return []
    xs = [v for v, _ in groups]
    samples = [g["value"].to_numpy(float) for _, g in groups]
    better = "higher" if spec.direction == "increasing" else "lower"

    def rho(*ys: np.ndarray, axis: int = -1) -> np.ndarray:
        y = np.concatenate(ys, axis=-1)
        x = np.broadcast_to(np.concatenate([np.full(s.shape[-1], v) for s, v in zip(ys, xs, strict=True)]), y.shape)
        return stats.pearsonr(stats.rankdata(x, axis=-1), stats.rankdata(y, axis=-1), axis=-1).statistic

    def effect(*ys: np.ndarray, axis: int = -1) -> np.ndarray:
        first, last = ys[0].mean(axis=-1), ys[-1].mean(axis=-1)
        return np.log(last / first) if spec.scale == "log" else last - first

    n = len(final)
    r, e = float(rho(*samples)), float(effect(*samples))
    name = "log_ratio_extreme_group_means" if spec.scale == "log" else "difference_extreme_group_means"
    how = "bootstrap sd, runs resampled within each sweep value"
    return [
        Tracked("spearman_rho", r, _bootstrap_se(samples, rho), better, 1.0, n=n, method=how),
        Tracked(name, e, _bootstrap_se(samples, effect), better, abs(e), n=n, method=how),
    ]


def _cells(final: pd.DataFrame) -> tuple[list[float | None], list[np.ndarray], list[float | None]]:
    """Design cells (sweep value, init seed) in order: their sweep values and final values."""
    keys, samples = [], []
    for value, group in _by_sweep(final):
        for _, cell in group.groupby("init_seed", sort=True):
            keys.append(value)
            samples.append(cell["value"].to_numpy(float))
    return keys, samples, list(dict.fromkeys(keys))


def _power_law(outcome: ClaimOutcome, spec: Any, final: pd.DataFrame) -> list[Tracked]:
    keys, samples, sweeps = _cells(final)
    if len(sweeps) < 3 or any(v is None or v <= 0 for v in sweeps):
        return []
    lx = np.log(np.asarray(sweeps, dtype=float))
    xc = lx - lx.mean()
    members = [[i for i, k in enumerate(keys) if k == v] for v in sweeps]

    def exponent(*cells: np.ndarray, axis: int = -1) -> np.ndarray:
        var = [np.var(c, axis=-1, ddof=1) for c in cells]
        y = np.log(np.stack([np.mean([var[i] for i in idx], axis=0) for idx in members], axis=-1))
        return (y * xc).sum(axis=-1) / (xc**2).sum()  # least-squares slope of log var on log sweep

    target = spec.expected_exponent
    se = _bootstrap_se(samples, exponent) if all(len(s) >= 2 for s in samples) else None
    how = "bootstrap sd, sampling seeds resampled within each (sweep value, init seed)"
    scale = abs(target) or 1.0
    return [Tracked("power_law_exponent", float(exponent(*samples)), se, "closer", scale, target, len(final), how)]


def _invariance(outcome: ClaimOutcome, spec: Any, final: pd.DataFrame) -> list[Tracked]:
    keys, samples, sweeps = _cells(final)
    members = [[i for i, k in enumerate(keys) if k == v] for v in sweeps]
    if not samples or any(len(idx) < 2 for idx in members):
        return []

    def worst_cv(*cells: np.ndarray, axis: int = -1) -> np.ndarray:
        cv2 = [np.var(c, axis=-1, ddof=1) / np.mean(c, axis=-1) ** 2 for c in cells]
        per_sweep = [np.sqrt(np.mean([cv2[i] for i in idx], axis=0)) for idx in members]
        return np.max(np.stack(per_sweep, axis=-1), axis=-1)

    how = "bootstrap sd, sampling seeds resampled within each (sweep value, init seed)"
    value = float(worst_cv(*samples))
    se = _bootstrap_se(samples, worst_cv)
    return [Tracked("within_init_cv", value, se, "lower", spec.max_relative_spread, n=len(final), method=how)]


def _growth(outcome: ClaimOutcome, spec: Any, final: pd.DataFrame) -> list[Tracked]:
    df = records_frame(outcome.records)
    if df.empty or spec.quantity not in df:
        return []
    tables = []
    for _, group in _by_sweep(df.assign(value=df[spec.quantity])):
        table = group.groupby(["step", "run"])["value"].mean().unstack("run").sort_index()
        late = min(len(table), math.ceil(spec.window * len(table) - 1e-9))  # the assertion's late window
        if late < 3 or not np.isfinite(table.to_numpy(float)).all():
            return []
        tables.append((table.index.to_numpy(float)[-late:], table.to_numpy(float)[-late:]))

    def slope_of(group: int, runs: tuple[int, ...]) -> float:
        steps, values = tables[group]
        return float(stats.theilslopes(values[:, list(runs)].mean(axis=1), steps).slope) * 1000

    cached = lru_cache(maxsize=4096)(slope_of)

    def worst_slope(*idx: np.ndarray) -> float:  # a resample of runs is a multiset: cache by its sorted runs
        return min(cached(g, tuple(sorted(int(i) for i in runs))) for g, runs in enumerate(idx))

    samples = [np.arange(values.shape[1]) for _, values in tables]
    value = worst_slope(*samples)
    se = _bootstrap_se(samples, worst_slope, vectorized=False)
    how = "bootstrap sd, runs resampled within each sweep value"
    name = "late_slope_per_1000_steps"
    return [Tracked(name, value, se, "higher", abs(value), n=int(sum(len(s) for s in samples)), method=how)]


TRACKERS: dict[str, Callable[[ClaimOutcome, Any, pd.DataFrame], list[Tracked]]] = {
    "monotone_trend": _monotone,
    "power_law": _power_law,
    "invariance": _invariance,
    "growth_trend": _growth,
}


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
            "z_critical": Z_CRITICAL,
            "min_change": MIN_CHANGE,
            "other_device_factor": OTHER_DEVICE_FACTOR,
            "n_bootstrap": N_BOOTSTRAP,
        },
        "environment": {
            k: env.get(k) for k in ("lipbench", "torch", "python", "device", "git_commit", "date") if k in env
        },
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
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BaselineError(f"{path}: cannot be read as JSON ({e})") from None
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != BASELINE_VERSION:
        raise BaselineError(
            f"{path}: schema_version {version!r}; this lipbench reads {BASELINE_VERSION}; "
            "store it again with `lipbench baseline update`"
        )
    return data


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
    if outcome.status != PASS and not force:
        return None, f"{claim.name}: not stored: it is {outcome.status}, not PASS; pass --force to store it anyway"
    if hash_problem and not force:
        return None, f"{claim.name}: not stored: {hash_problem}; pass --force to store it anyway"
    path = baseline_path(root, claim.collection, claim.name, claim.profile)
    verdict = verdict_of(outcome)
    was = f", {verdict} against the baseline it replaces" if verdict not in (outcome.status, NEW) else ""
    write_baseline(build_baseline(outcome, env), path)
    return path, f"{claim.name}: stored {path} ({outcome.status}{was})"


def _relative(path: str | Path) -> str:
    p = Path(path)
    try:
        return p.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return p.as_posix()


# --------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class StatChange:
    """How one tracked statistic moved against the baseline; `change` > 0 is better."""

    name: str
    better: str
    baseline: float
    current: float
    change: float
    z: float | None
    size: float | None  # |change| / scale
    z_critical: float
    min_change: float
    # regressed | improved | within tolerance | significant but small | large but not significant | not compared
    outcome: str

    def to_dict(self) -> dict[str, Any]:
        return {k: jsonable(v) for k, v in asdict(self).items()}

    def text(self) -> str:
        arrow = f"{self.name} {_fmt(self.baseline)} → {_fmt(self.current)}"
        if self.outcome == "not compared":
            return f"{arrow} (not compared: too few runs to measure its seed-to-seed variability)"
        z = "undefined" if self.z is None else _fmt(self.z, 2)
        size = "undefined" if self.size is None else f"{_fmt(100 * self.size, 2)}%"
        return f"{arrow} ({self.outcome}: z = {z}, size = {size} of its scale)"


def compare_tracked(base: Tracked, new: Tracked, factor: float = 1.0) -> StatChange:
    """Apply the tolerance rule (module docstring) to one statistic."""
    z_crit, min_change = Z_CRITICAL * factor, MIN_CHANGE * factor
    if base.better == "higher":
        change = new.value - base.value
    elif base.better == "lower":
        change = base.value - new.value
    else:
        change = abs(base.value - base.target) - abs(new.value - base.target)

    def result(z: float | None, size: float | None, outcome: str) -> StatChange:
        return StatChange(base.name, base.better, base.value, new.value, change, z, size, z_crit, min_change, outcome)

    if not (math.isfinite(base.value) and math.isfinite(new.value)):
        return result(None, None, "not compared")
    ses = [s for s in (base.se, new.se) if s is not None and math.isfinite(s)]
    if not ses:
        return result(None, None, "not compared")
    se_base = base.se if base.se is not None else ses[0]  # a side without an error: assume the other's
    se_new = new.se if new.se is not None else ses[0]
    se = math.hypot(se_base, se_new)
    z = change / se if se > 0 else (0.0 if change == 0 else math.copysign(math.inf, change))
    size = abs(change) / base.scale if base.scale > 0 else (0.0 if change == 0 else math.inf)
    significant, large = abs(z) > z_crit, size > min_change
    if significant and large:
        outcome = "improved" if change > 0 else "regressed"
    elif significant:
        outcome = "significant but small"
    elif large:
        outcome = "large but not significant"
    else:
        outcome = "within tolerance"
    return result(z, size, outcome)


@dataclass(frozen=True)
class Comparison:
    """The final verdict of a claim and how its baseline comparison got there."""

    verdict: str
    status: str
    baseline: str | None = None  # the baseline file, when there is one
    comparable: bool | None = None  # None: nothing to compare with
    factor: float = 1.0
    notes: tuple[str, ...] = ()
    changes: tuple[StatChange, ...] = ()
    sweep_changes: tuple[dict[str, Any], ...] = ()
    summary: dict[str, Any] = field(default_factory=dict)
    baseline_environment: dict[str, Any] = field(default_factory=dict)

    @property
    def sentence(self) -> str:
        head = {
            REGRESSED: "regressed against the baseline",
            IMPROVED: "improved on the baseline",
        }.get(self.verdict, "")
        parts = [p for p in (head, *(c.text() for c in self.changes), *self.notes) if p]
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "status": self.status,
            "baseline": self.baseline,
            "comparable": self.comparable,
            "factor": self.factor,
            "notes": list(self.notes),
            "changes": [c.to_dict() for c in self.changes],
            "sweep_changes": [jsonable(s) for s in self.sweep_changes],
            "baseline_environment": jsonable(self.baseline_environment),
            "sentence": self.sentence,
        }


def compare_summaries(
    base: dict[str, Any], new: dict[str, Any], factor: float = 1.0
) -> tuple[list[StatChange], list[dict[str, Any]], list[str]]:
    """Tracked-statistic changes, per-sweep-value changes of the final quantity (Welch z, for reading), notes."""
    notes: list[str] = []
    new_tracked = {t["name"]: Tracked.from_dict(t) for t in new.get("tracked", [])}
    changes = []
    for t in base.get("tracked", []):
        b = Tracked.from_dict(t)
        if b.name in new_tracked:
            changes.append(compare_tracked(b, new_tracked[b.name], factor))
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
) -> Comparison:
    """The verdict of `outcome` against `baseline` (None: there is none; `problem`: it could not be read).

    `file_hash` / `file_scenario` describe the suite file's claim without `--set` overrides.
    """
    status, where = outcome.status, None if path is None else _relative(path)
    if status in (ERROR, SKIPPED) or outcome.result is None:
        return Comparison(status, status, where, None)
    summary = summary if summary is not None else summarise(outcome)
    if status in (XFAIL, XPASS):  # expected to fail: its numbers are kept, but not judged
        return Comparison(status, status, where, None, summary=summary)
    if problem is not None:
        return Comparison(status, status, where, False, notes=(f"not comparable: {problem}",), summary=summary)
    if baseline is None:
        verdict = NEW if status == PASS else status
        file, profile = _relative(outcome.claim.file), outcome.claim.profile
        hint = f"store one with `lipbench baseline update {file} --profile {profile}`"
        return Comparison(verdict, status, where, None, notes=(f"no baseline at {where}; {hint}",), summary=summary)

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
    factor = 1.0
    if env.get("device") != device:
        factor = OTHER_DEVICE_FACTOR
        notes.append(
            f"baseline taken on {env.get('device')!r}, this run on {device!r}: "
            f"compared with a band {OTHER_DEVICE_FACTOR:g}x wider"
        )
    changes, sweep_changes, more = compare_summaries(baseline.get("summary") or {}, summary, factor)
    notes += more
    if status == FAIL:
        verdict = FAIL
    elif any(c.outcome == "regressed" for c in changes):
        verdict = REGRESSED
    elif any(c.outcome == "improved" for c in changes):
        verdict = IMPROVED
    else:
        verdict = PASS
    return Comparison(
        verdict, status, where, True, factor, tuple(notes), tuple(changes), tuple(sweep_changes), summary, env
    )


def verdict_for(outcome: ClaimOutcome, root: str | Path, device: str) -> Comparison:
    """Find the claim's baseline under `root` and judge against it (what Session.finish_claim calls)."""
    claim = outcome.claim
    path = baseline_path(root, claim.collection, claim.name, claim.profile)
    baseline, problem = None, None
    if path.exists():
        try:
            baseline = read_baseline(path)
        except BaselineError as e:
            problem = str(e)
    original = file_claim(claim)
    return judge_against(
        outcome,
        baseline,
        device=device,
        path=path,
        file_hash=original.scenario_hash() if original else None,
        file_scenario=scenario_dump(original) if original else None,
        problem=problem,
    )


# --------------------------------------------------------------------------- verdicts and exit codes


def attach(outcome: ClaimOutcome, comparison: Comparison) -> None:
    """Put the final verdict on the outcome: `outcome.verdict` (str) and `outcome.comparison`."""
    outcome.verdict = comparison.verdict  # type: ignore[attr-defined]
    outcome.comparison = comparison  # type: ignore[attr-defined]


def verdict_of(outcome: ClaimOutcome) -> str:
    """The final verdict: the baseline comparison's when there was one, else the runner's status."""
    return getattr(outcome, "verdict", None) or outcome.status


def comparison_of(outcome: ClaimOutcome) -> Comparison | None:
    return getattr(outcome, "comparison", None)


def is_failure(verdict: str, strict: bool = False) -> bool:
    """Whether a verdict fails a CI job: FAIL, REGRESSED, ERROR, and XPASS of a strict claim."""
    return verdict in FAILING or (verdict == XPASS and strict)


def exit_code(outcomes: Iterable[ClaimOutcome], bad_input: bool = False) -> int:
    """2 on bad input, else 1 if any verdict fails, else 0."""
    if bad_input:
        return 2
    failed = any(is_failure(verdict_of(o), o.claim.claim.strict) for o in outcomes)
    return 1 if failed else 0


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "undefined" if x is None or math.isnan(x) else ("inf" if x > 0 else "-inf")
    return f"{x:.{digits}g}"
