"""The local copy of every finished claim: the source of truth, written before anything is logged.

Layout: `<out>/<collection>/<claim>/` with `result.json` (status, final verdict, assertion
result, baseline comparison, scenario hash, resolved claim, environment), `records.json` (every
run's recorded steps) and `figure.png`. `load_outcome` rebuilds a ClaimOutcome from a folder.
"""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lipbench import __version__
from lipbench.assertions import AssertionResult
from lipbench.documents import RESULT_VERSION, RecordsDoc, ResultDoc, load_document
from lipbench.errors import DocumentError, LipbenchError
from lipbench.factories import FactoryError
from lipbench.outcome import ClaimOutcome, Verdict
from lipbench.provenance import code_state, runtime
from lipbench.records import RunRecord
from lipbench.suite import ResolvedClaim, claim_model, load_claim


def environment(device: str) -> dict[str, Any]:
    import torch  # for its version and the GPU's name; reading results needs no torch

    kind = "cpu"
    if device.startswith("cuda") and torch.cuda.is_available():
        kind = torch.cuda.get_device_name()
    return {
        "lipbench": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": kind,
        **runtime(),
        **code_state(),  # the code under test: the repository of the working directory
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
        "verdict": outcome.verdict,
        "error": outcome.error,
        "seconds": round(outcome.seconds, 3),
        "runs": len(outcome.records),
        "assertion": outcome.result.to_dict() if outcome.result else None,
        "environment": env,
        "resolved": claim.claim.model_dump(mode="json"),
    }
    (folder / "result.json").write_text(json.dumps(payload, indent=2) + "\n")
    (folder / "records.json").write_text(json.dumps([r.to_dict() for r in outcome.records]) + "\n")
    return folder


def load_records(folder: Path) -> list[RunRecord]:
    return [RunRecord.from_dict(d) for d in load_document(Path(folder) / "records.json", RecordsDoc)]


def load_result(folder: Path) -> dict[str, Any]:
    """A claim's result.json, checked (lipbench.documents): a broken one is a one-line `DocumentError`."""
    return load_document(Path(folder) / "result.json", ResultDoc)


def update_result(folder: Path, **fields: Any) -> None:
    """Add or replace top-level fields of a saved result.json (the verdict, once it is known)."""
    path = Path(folder) / "result.json"
    payload = json.loads(path.read_text())
    payload.update(fields)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def find_results(root: str | Path) -> list[Path]:
    """Every claim folder (one holding result.json) at or under `root`, sorted."""
    root = Path(root)
    if (root / "result.json").is_file():
        return [root]
    return sorted(p.parent for p in root.rglob("result.json"))


def load_outcome(folder: str | Path) -> ClaimOutcome:
    """Rebuild a finished claim from its folder: the claim as it was resolved, its records and result."""
    folder = Path(folder)
    data = load_result(folder)
    status = _verdict(folder, data, "status")
    verdict = _verdict(folder, data, "verdict") if data.get("verdict") else None
    if data.get("resolved"):
        try:
            resolved = claim_model(data["resolved"]).model_validate(data["resolved"])  # a plugin's test, too
        except (ValidationError, FactoryError) as e:
            problem = e.errors()[0] if isinstance(e, ValidationError) else {"loc": ("assertion", "test"), "msg": str(e)}
            key = ".".join(["resolved", *map(str, problem["loc"])])
            raise DocumentError(
                folder / "result.json", key, f"{problem['msg']}; write it again with `lipbench run`"
            ) from None
        claim = ResolvedClaim(resolved, Path(data["file"]), data["profile"], data["collection"], ())
    else:  # written before result.json held the resolved claim: read the suite file again
        claim = load_claim(data["file"], None if data["profile"] == "default" else data["profile"])
    result = AssertionResult.from_dict(data["assertion"]) if data.get("assertion") else None
    records = load_records(folder) if (folder / "records.json").exists() else []
    return ClaimOutcome(claim, status, records, result, data.get("error"), data.get("seconds", 0.0), verdict)


def _verdict(folder: Path, data: dict[str, Any], key: str) -> Verdict:
    verdict = Verdict.named(str(data.get(key)))
    if verdict is None:
        raise LipbenchError(
            f"{folder / 'result.json'}: {key} {data.get(key)!r} is not a verdict of this lipbench "
            f"({', '.join(Verdict)}); write it again with `lipbench run`"
        )
    return verdict
