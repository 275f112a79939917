"""What a verdict's error rates are, measured by simulating each claim's own design (``lipbench calibrate``).

For every claim: the design (sweep values, init and sampling seeds, records per run) comes from
its suite file at the chosen profile; a generative model of the units its assertion decides on
comes from the stored baseline's units where one exists (``Assertion.fit``), else from the
assertion's defaults (``Assertion.default_model``). Then, with normal and with skewed,
heavy-tailed noise (log-normal, skewness 1.75, excess kurtosis 5.9), it measures

- the false-pass rate under the null (the claim false, at the edge of its margin or without a
  trend), which must not exceed the assertion's alpha;
- the power at the alternative the suite states, which must reach 0.8;
- the false-alarm rate of the baseline comparison when only the seeds change (two independent
  draws of the fitted model compared by the tolerance rule), which must not exceed 0.5% per
  comparison;

each with a 95% Wilson interval. No training happens: it runs on a CPU in minutes.

Two paths measure these rates. The unit path (``path="units"``) draws the assertion's units from
its own ``simulate()``, fast and with many replicates, but from the structure the test assumes. The
record path (``path="records"``, ``lipbench.simulate``) draws whole ``RunRecord`` sets for the
claim's own runs from families the tests do not assume (skewed and heavy-tailed noise, init random
effects, init-specific trends and exponents, uneven spreads, per-run growth spread, saturating
curves) and judges each through ``runner.judge``, and its baseline false alarm through
``build_baseline`` -> JSON -> ``judge_against``: the path ``lipbench run`` takes.
"""

from __future__ import annotations

import html
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lipbench import simulate
from lipbench.assertions.base import NOISE_FAMILIES, POWER_TARGET, RNG_SEED, Assertion, Design, wilson
from lipbench.baselines import ALPHA, build_baseline, compare_tracked, judge_against
from lipbench.design import design_model
from lipbench.inconclusive import EQUIVALENCE, undecided_flags
from lipbench.options import RECORD_REPLICATES, UNIT_REPLICATES
from lipbench.outcome import StatOutcome, Verdict
from lipbench.runner import judge
from lipbench.suite import ResolvedClaim

MOVED = (StatOutcome.REGRESSED, StatOutcome.IMPROVED)  # a false alarm when only the seeds changed
FALSE_ALARM_TARGET = ALPHA  # per comparison


@dataclass(frozen=True)
class Rate:
    rate: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, hits: np.ndarray) -> Rate:
        k, n = int(np.sum(hits)), int(np.size(hits))
        low, high = wilson(k, n)
        return cls(k / n, low, high, n)


@dataclass(frozen=True)
class CalibrationRow:
    """One claim under one noise family."""

    collection: str
    claim: str
    profile: str
    test: str
    family: str
    model: str  # "baseline" (fitted to its stored units) or "default"
    alpha: float
    false_pass: Rate
    power: Rate
    false_alarm: Rate | None  # None: the design gives no standard error to compare with
    runs: int
    path: str = "units"  # "units": the assertion's own simulate(); "records": RunRecords through runner.judge
    errors: float = 0.0  # the share of simulated record sets judged ERROR (degenerate draws)
    # INCONCLUSIVE (an equivalence interval straddling its margin): its share at the stated alternative and
    # under the null; None for a test that is not an equivalence test
    inconclusive: Rate | None = None
    inconclusive_null: Rate | None = None

    @classmethod
    def of(
        cls,
        claim: ResolvedClaim,
        family: str,
        model: str,
        false_pass: Rate,
        power: Rate,
        alarm: Rate | None,
        runs: int,
        path: str = "units",
        errors: float = 0.0,
        inconclusive: tuple[Rate | None, Rate | None] = (None, None),
    ) -> CalibrationRow:
        """The row of `claim` (its names, test and nominal alpha) under one noise family."""
        spec = claim.claim.assertion
        return cls(
            claim.collection,
            claim.name,
            claim.profile,
            spec.test,
            family,
            model,
            nominal_alpha(spec),
            false_pass,
            power,
            alarm,
            runs,
            path,
            errors,
            *inconclusive,
        )

    @property
    def meets(self) -> dict[str, bool]:
        """Each target, met within the Monte-Carlo interval."""
        return {
            "false_pass": self.false_pass.low <= self.alpha,
            "power": self.power.high >= POWER_TARGET,
            "false_alarm": self.false_alarm is None or self.false_alarm.low <= FALSE_ALARM_TARGET,
        }

    @property
    def why(self) -> str:
        misses = [k.replace("_", " ") for k, ok in self.meets.items() if not ok]
        if self.false_alarm is None:
            misses.append("no standard error: baseline comparison not calibrated (one seed block)")
        return "; ".join(misses)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["meets"] = self.meets
        out["why"] = self.why
        return out


def nominal_alpha(spec: Assertion) -> float:
    """The false-pass rate an assertion states: its alpha, or half of 1 - confidence for an interval inside a band."""
    if hasattr(spec, "alpha"):
        return float(spec.alpha)
    return (1 - float(spec.confidence)) / 2


def false_alarm_rate(
    spec: Assertion, design: Design, params: dict[str, Any], rng: np.random.Generator, reps: int, family: str
) -> Rate | None:
    """The largest per-statistic rate of REGRESSED or IMPROVED between two independent draws of one model
    (only the seeds change); None when the design gives a statistic no standard error."""
    a = spec.decide(spec.simulate(design, params, rng, reps, family))
    b = spec.decide(spec.simulate(design, params, rng, reps, family))
    flags: dict[str, list[bool]] = {}
    for i in range(reps):
        for base, new in zip(spec.tracked_of(a, i), spec.tracked_of(b, i), strict=True):
            if base.se is None or new.se is None:
                return None
            flags.setdefault(base.name, []).append(compare_tracked(base, new).outcome in MOVED)
    return max((Rate.of(np.array(f)) for f in flags.values()), key=lambda r: r.rate, default=None)


def calibrate_claim(
    claim: ResolvedClaim, *, reps: int = UNIT_REPLICATES, baselines: Path | None = None, families=NOISE_FAMILIES
) -> list[CalibrationRow]:
    """Simulate the claim's design under its null, its stated alternative and a seeds-only change."""
    spec = claim.claim.assertion
    design = claim.design
    model = design_model(claim, baselines)
    params, source = model.params, model.source
    scenarios = spec.scenarios(params)
    nulls = [v for k, v in scenarios.items() if k.startswith("null")]
    null_fallback = scenarios["alternative"] if source == "default" else scenarios["fitted"]
    rows = []
    for family in families:
        rng = np.random.default_rng(RNG_SEED)
        null_decisions = [spec.decide(spec.simulate(design, p, rng, reps, family)) for p in nulls]
        worst = max(null_decisions, key=lambda d: float(np.mean(d.passed)))
        alt = spec.decide(spec.simulate(design, scenarios["alternative"], rng, reps, family))
        alarm = false_alarm_rate(spec, design, null_fallback, rng, min(reps, 1000), family)
        undecided = (_undecided_units(spec, alt), _undecided_units(spec, worst))
        rates = (Rate.of(worst.passed), Rate.of(alt.passed), alarm)
        rows.append(CalibrationRow.of(claim, family, source, *rates, design.runs, inconclusive=undecided))
    return rows


def _undecided_units(spec: Assertion, decision) -> Rate | None:
    """The share of replicates that are INCONCLUSIVE (not passed, an interval straddling its band)."""
    flags = undecided_flags(spec, decision)
    return None if flags is None else Rate.of(flags)


def _undecided_records(spec: Assertion, outcomes) -> Rate | None:
    if spec.test not in EQUIVALENCE:
        return None
    return Rate.of(np.array([o.status == Verdict.INCONCLUSIVE for o in outcomes]))


def record_outcomes(claim: ResolvedClaim, params: dict[str, Any], family: str, rng: np.random.Generator, reps: int):
    """`reps` simulated record sets of the claim, each judged as `lipbench run` judges its records (the status;
    an INCONCLUSIVE sentence without the seeds the design would need, which no rate here reads)."""
    return [judge(claim, simulate.simulate_records(claim, params, family, rng), reasons=False) for _ in range(reps)]


def _passed(outcomes) -> np.ndarray:
    return np.array([o.result is not None and o.status != Verdict.ERROR and o.result.passed for o in outcomes])


def record_false_alarm(claim: ResolvedClaim, outcomes) -> Rate | None:
    """Consecutive pairs of outcomes: the first stored as a baseline (JSON and back), the second judged against it;
    an alarm when any tracked statistic is REGRESSED or IMPROVED. None when no statistic was compared."""
    alarms, compared = [], False
    for base, new in zip(outcomes[::2], outcomes[1::2], strict=False):
        if base.result is None or new.result is None:
            alarms.append(False)
            continue
        doc = json.loads(json.dumps(build_baseline(base, {"device": "cpu"}), default=_json_default))
        comparison = judge_against(new, doc, device="cpu")
        outcomes_moved = [c.outcome for c in comparison.changes]
        compared = compared or any(o != StatOutcome.NOT_COMPARED for o in outcomes_moved)
        alarms.append(any(o in MOVED for o in outcomes_moved))
    return Rate.of(np.array(alarms)) if compared and alarms else None


def calibrate_claim_records(
    claim: ResolvedClaim, *, reps: int = RECORD_REPLICATES, baselines: Path | None = None, families=None
) -> list[CalibrationRow]:
    """The record path: simulated RunRecords of the claim's own runs, judged by runner.judge, per family."""
    spec = claim.claim.assertion
    if spec.test not in simulate.RECORD_TESTS:
        return []
    model = design_model(claim, baselines)
    params, source = model.params, model.source
    residuals = simulate.baseline_residuals(spec.test, model.units) if model.units else None
    scenarios = spec.scenarios(params)
    nulls = [v for k, v in scenarios.items() if k.startswith("null")]
    fallback = scenarios["fitted"] if source == "baseline" else scenarios["alternative"]
    rows = []
    for family in families or simulate.RELEVANT[spec.test]:
        extra = {"residuals": residuals} if family == "fitted" and residuals is not None else {}
        rng = np.random.default_rng(RNG_SEED)
        null_outcomes = [record_outcomes(claim, {**p, **extra}, family, rng, reps) for p in nulls]
        worst = max(null_outcomes, key=lambda o: float(np.mean(_passed(o))))
        false_pass = Rate.of(_passed(worst))
        alt = record_outcomes(claim, {**scenarios["alternative"], **extra}, family, rng, reps)
        pairs = record_outcomes(claim, {**fallback, **extra}, family, rng, reps)
        every = [o for group in (*null_outcomes, alt, pairs) for o in group]
        alarm = record_false_alarm(claim, pairs)
        errors = float(np.mean([o.status == Verdict.ERROR for o in every]))
        power = Rate.of(_passed(alt))
        runs = len(claim.runs())
        undecided = (_undecided_records(spec, alt), _undecided_records(spec, worst))
        rows.append(
            CalibrationRow.of(claim, family, source, false_pass, power, alarm, runs, "records", errors, undecided)
        )
    return rows


def calibrate(
    claims: list[ResolvedClaim],
    *,
    reps: int = UNIT_REPLICATES,
    baselines: Path | None = None,
    families=NOISE_FAMILIES,
    record_reps: int = RECORD_REPLICATES,
    paths: tuple[str, ...] = ("units", "records"),
) -> tuple[list[CalibrationRow], float]:
    """Rows of the unit path and of the record path (each where it applies), claim by claim."""
    start = time.perf_counter()
    rows = []
    for c in claims:
        if "units" in paths:
            rows += calibrate_claim(c, reps=reps, baselines=baselines, families=families)
        if "records" in paths:
            rows += calibrate_claim_records(c, reps=record_reps, baselines=baselines)
    return rows, time.perf_counter() - start


# --------------------------------------------------------------------------- output


def _pct(r: Rate | None) -> str:
    if r is None:
        return "n/a"
    return f"{100 * r.rate:.1f}% [{100 * r.low:.1f}, {100 * r.high:.1f}]"


COLUMNS = (
    "claim",
    "test",
    "path",
    "noise",
    "model",
    "runs",
    "alpha",
    "false pass",
    "power",
    "baseline false alarm",
    "inconclusive at alternative / null",
    "meets",
)


def table_rows(rows: list[CalibrationRow]) -> list[tuple[str, ...]]:
    return [
        (
            f"{r.collection}/{r.claim}",
            r.test,
            r.path,
            r.family,
            r.model,
            str(r.runs),
            f"{100 * r.alpha:g}%",
            _pct(r.false_pass),
            _pct(r.power),
            _pct(r.false_alarm),
            "n/a" if r.inconclusive is None else f"{_pct(r.inconclusive)} / {_pct(r.inconclusive_null)}",
            "yes" if not r.why else f"no: {r.why}",
        )
        for r in rows
    ]


def markdown(rows: list[CalibrationRow]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(rows)]
    return "\n".join(lines) + "\n"


def _short(r: Rate | None) -> str:
    return "n/a" if r is None else f"{100 * r.rate:.1f} [{100 * r.low:.1f}, {100 * r.high:.1f}]"


def _undecided_cell(row: CalibrationRow | None) -> str:
    if row is None or row.inconclusive is None:
        return "n/a"
    return f"{_short(row.inconclusive)} / {_short(row.inconclusive_null)}"


def summary_markdown(rows: list[CalibrationRow]) -> str:
    """The README's two tables: the unit path (normal / skewed), and the record path (per claim: the
    worst family for each rate, the fitted family's power, and the normal family beside the unit path's)."""
    claims = list(dict.fromkeys((r.collection, r.claim) for r in rows))
    out = [
        "| claim | test | runs | α | false pass % normal / skewed | power % normal / skewed | "
        "baseline false alarm % normal / skewed | INCONCLUSIVE % normal: alternative / null | misses |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key in claims:
        unit = {r.family: r for r in rows if (r.collection, r.claim) == key and r.path == "units"}
        if not unit:
            continue
        n, k = unit.get("normal"), unit.get("skewed")
        first = n or k
        misses = "; ".join(f"{f}: {r.why}" for f, r in unit.items() if r.why) or "—"
        out.append(
            f"| {key[1]} | {first.test} | {first.runs} | {100 * first.alpha:g} % | "
            + " | ".join(
                f"{_short(getattr(n, a) if n else None)} / {_short(getattr(k, a) if k else None)}"
                for a in ("false_pass", "power", "false_alarm")
            )
            + f" | {_undecided_cell(first)} | {misses} |"
        )
    out += [
        "",
        "| claim | test | runs | α | false pass %: worst family | power %: fitted | power %: worst family | "
        "baseline false alarm %: worst family | false pass % normal: units / records | "
        "INCONCLUSIVE % fitted: alternative / null | misses |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in claims:
        rec = [r for r in rows if (r.collection, r.claim) == key and r.path == "records"]
        if not rec:
            continue
        worst_fp = max(rec, key=lambda r: r.false_pass.rate)
        worst_pw = min(rec, key=lambda r: r.power.rate)
        alarms = [r for r in rec if r.false_alarm is not None]
        worst_fa = max(alarms, key=lambda r: r.false_alarm.rate) if alarms else None
        fitted = next((r for r in rec if r.family == "fitted"), None)
        normal = next((r for r in rec if r.family == "normal"), None)
        unit_normal = next((r for r in rows if (r.collection, r.claim) == key and r.path == "units"), None)
        misses = "; ".join(f"{r.family}: {r.why}" for r in rec if r.why) or "—"
        out.append(
            f"| {key[1]} | {rec[0].test} | {rec[0].runs} | {100 * rec[0].alpha:g} % | "
            f"{_short(worst_fp.false_pass)} ({worst_fp.family}) | {_short(fitted.power if fitted else None)} | "
            f"{_short(worst_pw.power)} ({worst_pw.family}) | "
            + (f"{_short(worst_fa.false_alarm)} ({worst_fa.family})" if worst_fa else "n/a")
            + f" | {_short(unit_normal.false_pass if unit_normal else None)} / "
            f"{_short(normal.false_pass if normal else None)} | {_undecided_cell(fitted)} | {misses} |"
        )
    return "\n".join(out) + "\n"


def write_outputs(
    rows: list[CalibrationRow], out: Path, profile: str, seconds: float, reps: int, record_reps: int = RECORD_REPLICATES
) -> list[Path]:
    """calibration-<profile>.json and .html under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "profile": profile,
        "replicates": reps,
        "record_replicates": record_reps,
        "seconds": seconds,
        "targets": {"power": POWER_TARGET, "false_alarm": FALSE_ALARM_TARGET},
        "rows": [r.to_dict() for r in rows],
    }
    js = out / f"calibration-{profile}.json"
    js.write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in table_rows(rows)
    )
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>lipbench calibration</title>"
        "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}"
        "table{border-collapse:collapse}</style></head><body>"
        f"<h1>lipbench calibration: profile {html.escape(profile)}</h1>"
        f"<p>{reps} simulated replicates per scenario and noise family on the unit path, {record_reps} record sets "
        "on the record path; rates with 95% Wilson intervals. "
        f"Targets: false pass at most the assertion's alpha, power at least {POWER_TARGET}, baseline false alarm "
        f"at most {100 * FALSE_ALARM_TARGET:g}% per comparison. {seconds:.0f} s.</p>"
        f"<table><tr>{head}</tr>{body}</table></body></html>"
    )
    page_path = out / f"calibration-{profile}.html"
    page_path.write_text(page)
    md = out / f"calibration-{profile}.md"  # the README's tables
    md.write_text(summary_markdown(rows))
    return [js, page_path, md]


def _json_default(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(type(x).__name__)
