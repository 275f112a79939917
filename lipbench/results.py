"""The local copy of every finished claim: the source of truth, written before anything is logged.

Layout: `<out>/<collection>/<claim>/` with `result.json` (status, assertion result, scenario
hash, environment), `records.json` (every run's recorded steps) and `figure.png`.
"""

from __future__ import annotations

import json
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lipbench.records import RunRecord
from lipbench.runner import ClaimOutcome

RESULT_VERSION = 1


def environment(device: str) -> dict[str, Any]:
    import torch

    from lipbench import __version__

    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, check=False
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    kind = "cpu"
    if device.startswith("cuda") and torch.cuda.is_available():
        kind = torch.cuda.get_device_name()
    return {
        "lipbench": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": kind,
        "git_commit": commit,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def claim_dir(out: Path, outcome: ClaimOutcome) -> Path:
    return Path(out) / outcome.claim.collection / outcome.claim.name


def save_outcome(outcome: ClaimOutcome, out: Path, env: dict[str, Any]) -> Path:
    """Write result.json and records.json of one claim; returns its folder."""
    folder = claim_dir(out, outcome)
    folder.mkdir(parents=True, exist_ok=True)
    claim = outcome.claim
    payload = {
        "result_version": RESULT_VERSION,
        "claim": claim.name,
        "collection": claim.collection,
        "file": str(claim.file),
        "profile": claim.profile,
        "scenario_hash": claim.scenario_hash(),
        "status": outcome.status,
        "error": outcome.error,
        "seconds": round(outcome.seconds, 3),
        "runs": len(outcome.records),
        "assertion": outcome.result.to_dict() if outcome.result else None,
        "environment": env,
    }
    (folder / "result.json").write_text(json.dumps(payload, indent=2) + "\n")
    (folder / "records.json").write_text(json.dumps([r.to_dict() for r in outcome.records]) + "\n")
    return folder


def load_records(folder: Path) -> list[RunRecord]:
    return [RunRecord.from_dict(d) for d in json.loads((Path(folder) / "records.json").read_text())]


def load_result(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / "result.json").read_text())
