"""What a training run hands back: its recorded steps, as plain numpy arrays."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

from lipbench.errors import RunDiverged


@dataclass
class RunRecord:
    """The record of one training run; `metrics` maps a name (K, log_K, loss, sigma_0 ...) to one value per step."""

    claim: str
    run_id: str
    sweep_value: float | None
    init_seed: int
    sampling_seed: int
    steps: np.ndarray
    metrics: dict[str, np.ndarray]
    diverged_at: int | None = None
    error: str | None = None
    seconds: float = 0.0
    device: str = "cpu"
    summary: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and self.diverged_at is None

    @property
    def problem(self) -> str | None:
        if self.error:
            return f"run {self.run_id} failed: {self.error}"
        if self.diverged_at is not None:
            return str(RunDiverged(self.run_id, self.diverged_at, self.not_finite()))
        return None

    def not_finite(self) -> str:
        """What the last record holds as non-finite: "loss", "K" or "loss and K" (why the run stopped)."""
        found = [
            name
            for name in ("loss", "K")
            if len(self.metrics.get(name, ())) and not math.isfinite(float(self.metrics[name][-1]))
        ]
        return " and ".join(found) or "loss or K"

    def frame(self) -> pd.DataFrame:
        """Long format, one row per recorded step: the table the assertions read."""
        import pandas as pd  # imported here, not above, so that the suite schema loads without pandas

        df = pd.DataFrame({"step": self.steps, **self.metrics})
        df.insert(0, "sampling_seed", self.sampling_seed)
        df.insert(0, "init_seed", self.init_seed)
        df.insert(0, "sweep_value", math.nan if self.sweep_value is None else self.sweep_value)
        df.insert(0, "run", self.run_id)
        return df

    def to_dict(self) -> dict[str, Any]:
        return {
            "claim": self.claim,
            "run_id": self.run_id,
            "sweep_value": self.sweep_value,
            "init_seed": self.init_seed,
            "sampling_seed": self.sampling_seed,
            "steps": self.steps.tolist(),
            "metrics": {k: v.tolist() for k, v in self.metrics.items()},
            "diverged_at": self.diverged_at,
            "error": self.error,
            "seconds": self.seconds,
            "device": self.device,
            "summary": self.summary,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunRecord:
        d = dict(d)
        d["steps"] = np.asarray(d["steps"], dtype=np.int64)
        d["metrics"] = {k: np.asarray(v, dtype=np.float64) for k, v in d["metrics"].items()}
        return cls(**d)


def records_frame(records: list[RunRecord]) -> pd.DataFrame:
    """All runs' rows in one long table (only runs that finished cleanly)."""
    import pandas as pd  # imported here, not above, so that the suite schema loads without pandas

    ok = [r for r in records if r.ok]
    if not ok:
        return pd.DataFrame()
    names = list(ok[0].metrics)
    if any(list(r.metrics) != names for r in ok):  # runs that record different columns: pandas aligns them
        return pd.concat([r.frame() for r in ok], ignore_index=True)
    # The same table as concatenating each run's frame(), built in one go (a calibration judges thousands).
    lengths = [len(r.steps) for r in ok]

    def per_run(values: list[Any]) -> np.ndarray:
        return np.repeat(np.asarray(values), lengths)

    columns = {
        "run": per_run([r.run_id for r in ok]).astype(object),
        "sweep_value": per_run([math.nan if r.sweep_value is None else r.sweep_value for r in ok]).astype(float),
        "init_seed": per_run([r.init_seed for r in ok]).astype(np.int64),
        "sampling_seed": per_run([r.sampling_seed for r in ok]).astype(np.int64),
        "step": np.concatenate([r.steps for r in ok]),
        **{n: np.concatenate([r.metrics[n] for r in ok]) for n in names},
    }
    return pd.DataFrame(columns)


def jsonable(value: Any) -> Any:
    """Plain JSON types from numpy scalars and containers; NaN and infinities become None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value
