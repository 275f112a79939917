"""`lipbench report RESULTS [--out DIR]`: one self-contained HTML file of a finished run.

Per claim: its figure (the PNG the run saved, the same one logged as the MLflow artifact
``figure.png``; redrawn from ``records.json`` when missing) embedded as base64, beside it the SDE
decomposition of claims recorded with the probe (``sde_decomposition.png``), the claim,
the assertion sentence, the verdict and the baseline comparison; under the tally, what each verdict
means. Nothing is fetched from the network and no file beside the HTML is needed.
"""

from __future__ import annotations

import base64
import html
import tempfile
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lipbench.errors import LipbenchError
from lipbench.history import Point, history_figure, series
from lipbench.numbers import fmt
from lipbench.outcome import Verdict
from lipbench.results import find_results, load_outcome, load_result

UNKNOWN_COLOUR = Verdict.SKIPPED.colour  # a verdict this lipbench does not know (a newer file's)

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #1f2328; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin: 0; }
section { border: 1px solid #d0d7de; border-radius: 6px; padding: 1em 1.2em; margin: 1.4em 0; }
.verdict { color: white; border-radius: 4px; padding: 1px 8px; font-weight: 600; font-size: 0.9em; }
img { max-width: 100%; border: 1px solid #eaeef2; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.92em; }
td, th { border: 1px solid #d0d7de; padding: 3px 8px; text-align: left; vertical-align: top; }
.muted { color: #59636e; font-size: 0.9em; } code { font-size: 0.92em; }
"""


def write_report(
    results: str | Path | list[Path], out: str | Path | None = None, history: list[Point] | None = None
) -> Path:
    """Write `report.html` for the claims under `results` (a folder, or a list of claim folders); returns its path.

    With `history` (stored runs, `lipbench.history`), each claim's section also draws its history."""
    folders = results if isinstance(results, list) else find_results(results)
    if not folders:
        raise LipbenchError(f"{results}: holds no result.json; name a folder written by `lipbench run --out`")
    target = Path(out) if out is not None else (Path(results) if not isinstance(results, list) else Path("."))
    target.mkdir(parents=True, exist_ok=True)
    sections, counts = [], {}
    for folder in folders:
        data = load_result(folder)
        verdict = data.get("verdict") or data["status"]
        counts[verdict] = counts.get(verdict, 0) + 1
        sections.append(_section(folder, data, verdict) + _history_of(data, history))
    title = f"lipbench report — {html.escape(str(results if not isinstance(results, list) else 'claims'))}"
    tally = " ".join(f"{_badge(v)} {n}" for v, n in sorted(counts.items()))
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{CSS}</style></head>"
        f"<body><h1>{title}</h1><p>{len(folders)} claims: {tally}</p>{_legend(counts)}"
        f"<p class='muted'>written {now}</p>{''.join(sections)}</body></html>\n"
    )
    path = target / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def _section(folder: Path, data: dict[str, Any], verdict: str) -> str:
    esc = html.escape
    resolved = data.get("resolved") or {}
    assertion = data.get("assertion") or {}
    env = data.get("environment") or {}
    figure = _figure_png(folder)
    image = _img(figure, f"figure of {data['claim']}") if figure else "<p class='muted'>no figure (no run finished)</p>"
    sde_png = _png(folder / "sde_decomposition.png")  # claims recorded with the SDE probe (paper Fig. 3)
    if sde_png:
        image += _img(sde_png, f"SDE decomposition of {data['claim']}")
    image += _waterfall(data)
    sentence = assertion.get("sentence") or data.get("error") or ""
    paper = f" <span class='muted'>(paper {esc(resolved['paper'])})</span>" if resolved.get("paper") else ""
    env_text = ", ".join(f"{k} {env[k]}" for k in ("device", "torch", "lipbench", "git_commit", "date") if env.get(k))
    return (
        f"<section id='{esc(data['collection'])}-{esc(data['claim'])}'>"
        f"<h2>{esc(data['collection'])} / {esc(data['claim'])} [{esc(data['profile'])}] {_badge(verdict)}</h2>"
        f"<p>{esc(resolved.get('claim', ''))}{paper}</p>{image}"
        f"<p><b>Assertion</b> ({esc(assertion.get('test', '-'))}): {esc(sentence)}</p>"
        f"{_baseline(data.get('baseline') or {}, data['status'], verdict)}"
        f"<p class='muted'>{data.get('runs', 0)} runs in {data.get('seconds', 0):.0f} s; scenario hash "
        f"<code>{esc(str(data.get('scenario_hash')))}</code>; {esc(env_text)}; "
        f"file <code>{esc(data['file'])}</code></p>"
        "</section>"
    )


def _baseline(comparison: dict[str, Any], status: str, verdict: str) -> str:
    esc = html.escape
    if not comparison:
        return "<p><b>Baseline</b>: not judged against a baseline.</p>"
    where = comparison.get("baseline")
    head = f"<p><b>Baseline</b> <code>{esc(where)}</code>" if where else "<p><b>Baseline</b>"
    env = comparison.get("baseline_environment") or {}
    if env:
        head += f" <span class='muted'>(taken {esc(str(env.get('date')))} on {esc(str(env.get('device')))})</span>"
    head += f": assertion {_badge(status)} → verdict {_badge(verdict)}</p>"
    notes = "".join(f"<li>{esc(n)}</li>" for n in comparison.get("notes", []))
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{esc(str(v))}</td>"
            for v in (
                c["name"],
                f"{c['better']}",
                _g(c["baseline"]),
                _g(c["current"]),
                _g(c["change"]),
                _g(c.get("t", c.get("z")), 2),  # "z": written by an older lipbench
                "-" if c["size"] is None else f"{_g(100 * c['size'], 2)}%",
                f"|t| > {_g(c.get('t_critical', c.get('z_critical')))} and > {_g(100 * c['min_change'])}%",
                c["outcome"],
            )
        )
        + "</tr>"
        for c in comparison.get("changes", [])
    )
    table = (
        "<table><tr><th>statistic</th><th>better</th><th>baseline</th><th>this run</th><th>change (+ better)</th>"
        f"<th>z</th><th>size / scale</th><th>band</th><th>outcome</th></tr>{rows}</table>"
        if rows
        else ""
    )
    sweeps = comparison.get("sweep_changes") or []
    sweep_table = ""
    if sweeps:
        cells = "".join(
            f"<tr><td>{_g(s['sweep_value'])}</td><td>{_g(s['baseline_mean'])}</td><td>{_g(s['current_mean'])}</td>"
            f"<td>{_g(s['z'], 2)}</td></tr>"
            for s in sweeps
        )
        sweep_table = (
            "<details><summary class='muted'>mean final quantity per sweep value (Welch z, for reading; "
            "not part of the verdict)</summary><table><tr><th>sweep value</th><th>baseline</th><th>this run</th>"
            f"<th>z</th></tr>{cells}</table></details>"
        )
    return head + (f"<ul>{notes}</ul>" if notes else "") + table + sweep_table


def _waterfall(data: dict[str, Any]) -> str:
    """Each layer's contribution to the judged statistics, the baseline's beside this run's (lipbench.waterfall)."""
    from lipbench.waterfall import waterfall  # matplotlib loads only when a figure is drawn

    with tempfile.TemporaryDirectory() as tmp:
        title = f"{data['claim']}: contributions by layer (95% intervals)"
        drawn = waterfall(data.get("summary") or {}, data.get("baseline"), title, Path(tmp) / "w.png")
        return _img(drawn.read_bytes(), f"contributions by layer of {data['claim']}") if drawn else ""


def _history_of(data: dict[str, Any], history: list[Point] | None) -> str:
    if not history:
        return ""
    key = (data["collection"], data["claim"], data["profile"])
    runs = series(history, {key}).get(key)
    return _history_section(runs) if runs else ""


def _history_section(runs: list[Point]) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        drawn = history_figure(runs, Path(tmp) / "h.png")
        png = drawn.read_bytes() if drawn else None
    marks = "".join(
        f"<li>{html.escape(p.date)} <code>{html.escape(p.code)}</code>: {html.escape(n)} {html.escape(why)}</li>"
        for p in runs
        for n, why in p.steps.items()
    )
    figure = _img(png, f"history of {runs[0].key[1]}") if png else ""
    return f"<section><h2>history of {html.escape(runs[0].key[1])}</h2>{figure}<ul>{marks}</ul></section>"


def write_history_page(found: dict[tuple[str, str, str], list[Point]], path: str | Path) -> Path:
    """An HTML page of the history figures of `lipbench history` (one section per claim)."""
    body = "".join(_history_section(runs) for runs in found.values())
    page = f"<!doctype html><html><head><meta charset='utf-8'><style>{CSS}</style></head><body>{body}</body></html>\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def _img(png: bytes, alt: str) -> str:
    """An <img> carrying the PNG itself (base64), so the page needs no file beside it."""
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def _png(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() and path.stat().st_size > 0 else None


def _figure_png(folder: Path) -> bytes | None:
    saved = _png(folder / "figure.png")
    if saved:
        return saved
    if not (folder / "records.json").exists():
        return None
    from lipbench.plots import claim_figure  # matplotlib loads only when a figure must be drawn again

    with tempfile.TemporaryDirectory() as tmp:
        drawn = claim_figure(load_outcome(folder), Path(tmp) / "figure.png")
        return drawn.read_bytes() if drawn else None


def _legend(verdicts: Iterable[str]) -> str:
    """What each verdict of the page means."""
    items = "".join(
        f"<li>{_badge(v)} {html.escape(known.meaning)}</li>" for v in sorted(verdicts) if (known := Verdict.named(v))
    )
    if not items:
        return ""
    return f"<details><summary class='muted'>what the verdicts mean</summary><ul>{items}</ul></details>"


def _badge(verdict: str) -> str:
    """The verdict on its colour; its meaning shows on hover."""
    known = Verdict.named(verdict)
    colour, meaning = (known.colour, known.meaning) if known else (UNKNOWN_COLOUR, "")
    return (
        f"<span class='verdict' style='background:{colour}' title='{html.escape(meaning)}'>"
        f"{html.escape(verdict)}</span>"
    )


def _g(x: float | None, digits: int = 3) -> str:
    return fmt(x, digits, missing="-")
