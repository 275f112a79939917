"""The one loader of the JSON files lipbench reads but did not just write: a claim's `result.json` and
`records.json`, a stored baseline, a run-cache entry.

Each file is checked against a schema of the keys its readers use (their types, and the format
version), so a file that is truncated, edited by hand, written by another version or not JSON at
all becomes one `DocumentError` line naming the file, the key path and the fix, never a traceback
deep inside a command. Keys the readers do not use are kept as they are (`extra="allow"`), so a
newer lipbench's additions do not make an older one refuse a file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from lipbench.errors import DocumentError

RESULT_VERSION = 1
# 3: a conv layer's sigma is by default its operator norm (scenario.lipschitz.conv), not the reshaped kernel's;
#    per-layer contributions (lipbench.attribution) and force terms. 2: tracked statistics with standard errors.
BASELINE_VERSION = 3
READABLE_BASELINES = (2, 3)  # a version 2 baseline compares without attribution, where K kept its meaning


class _Doc(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


Number = float | None  # NaN and infinities are written as null


class TrackedDoc(_Doc):
    name: str
    value: Number
    se: Number
    df: Number = None
    better: str
    scale: float
    target: Number = None
    unit: str = ""


class AssertionDoc(_Doc):
    model_config = ConfigDict(extra="forbid", strict=True)  # AssertionResult.from_dict takes no other key

    test: str
    passed: bool
    statistic: Number
    statistic_name: str
    threshold: Number
    pvalue: Number
    ci_low: Number
    ci_high: Number
    confidence: Number
    effect_size: Number
    effect_size_name: str | None
    n: int
    sentence: str
    details: dict[str, Any]
    tracked: list[TrackedDoc] = []


class SweepDoc(_Doc):
    sweep_value: Number
    mean: float
    sd: Number
    n: int


class SummaryDoc(_Doc):
    quantity: str = "K"
    final_mean: Number = None
    runs: int = 0
    per_sweep: list[SweepDoc] = []
    tracked: list[TrackedDoc] = []


class ChangeDoc(_Doc):
    name: str
    better: str
    baseline: Number
    current: Number
    change: Number
    t: Number = None  # Welch's t ("z" and "z_critical" in files of an older lipbench)
    size: Number
    t_critical: Number = None
    min_change: float
    outcome: str


class ComparisonDoc(_Doc):
    verdict: str | None = None
    baseline: str | None = None
    notes: list[str] = []
    changes: list[ChangeDoc] = []
    baseline_environment: dict[str, Any] | None = None
    sentence: str = ""


class ResultDoc(_Doc):
    result_version: Literal[1] = RESULT_VERSION
    claim: str
    collection: str
    file: str
    profile: str
    scenario_hash: str | None = None
    status: str
    verdict: str | None = None
    error: str | None = None
    seconds: float = 0.0
    runs: int = 0
    assertion: AssertionDoc | None = None
    environment: dict[str, Any] = {}
    resolved: dict[str, Any] | None = None
    baseline: ComparisonDoc | None = None
    summary: SummaryDoc | None = None


class BaselineDoc(_Doc):
    schema_version: Literal[2, 3]
    collection: str
    claim: str
    profile: str
    file: str = ""
    scenario_hash: str
    status: str
    assertion: AssertionDoc
    summary: SummaryDoc
    environment: dict[str, Any] = {}
    scenario: dict[str, Any] = {}


class RecordDoc(_Doc):
    model_config = ConfigDict(extra="forbid", strict=True)  # RunRecord takes no other key

    claim: str
    run_id: str
    sweep_value: Number
    init_seed: int
    sampling_seed: int
    steps: list[int]
    metrics: dict[str, list[Number]]
    diverged_at: int | None = None
    error: str | None = None
    seconds: float = 0.0
    device: str = "cpu"
    summary: dict[str, Any] = {}


class RecordsDoc(BaseModel):
    model_config = ConfigDict(strict=True)
    records: list[RecordDoc]


class CacheEntryDoc(_Doc):
    key: str
    written: float
    record: RecordDoc


#: What each kind of file is, and how to replace a broken one.
FIXES = {
    ResultDoc: "write it again with `lipbench run`",
    RecordsDoc: "write it again with `lipbench run`",
    BaselineDoc: "store it again with `lipbench baseline update`",
    CacheEntryDoc: "delete it (the run is trained again)",
}
VERSION_KEYS = {"result_version": RESULT_VERSION, "schema_version": " and ".join(map(str, READABLE_BASELINES))}

Doc = TypeVar("Doc", bound=BaseModel)


def read_json(path: str | Path) -> Any:
    """The parsed JSON of `path`, or a one-line `DocumentError` when it cannot be read or parsed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DocumentError(path, "", f"cannot be read ({getattr(e, 'strerror', None) or e})") from None
    try:
        return json.loads(text)
    except ValueError as e:
        raise DocumentError(path, "", f"cannot be read as JSON ({e})") from None


def load_document(path: str | Path, model: type[Doc]) -> dict[str, Any]:
    """Read `path` and check it against `model`; returns its keys (defaults filled in) as a dict."""
    path = Path(path)
    data = read_json(path)
    fix = FIXES.get(model, "")
    if model is RecordsDoc:
        data = {"records": data}
    if not isinstance(data, dict):
        raise DocumentError(path, "", f"holds a JSON {type(data).__name__}, not an object; {fix}")
    try:
        checked = model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = [str(p) for p in err["loc"]]
        if model is RecordsDoc:
            loc = loc[1:]
        key = ".".join(loc)
        if key in VERSION_KEYS:
            problem = f"{err['input']!r} is not a format this lipbench reads (it reads {VERSION_KEYS[key]})"
        elif err["type"] == "missing":
            problem = "required key is missing"
        else:
            shown = repr(err["input"])
            problem = f"{err['msg'][0].lower()}{err['msg'][1:]} (got {shown[:60]}{'...' if len(shown) > 60 else ''})"
        raise DocumentError(path, key, f"{problem}; {fix}") from None
    if model is RecordsDoc:
        return data["records"]
    # The file's own values (checked, in its key order), with the defaults of keys it leaves out.
    return {**data, **{k: v for k, v in checked.model_dump().items() if k not in data}}
