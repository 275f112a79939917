"""A planted change to label corruption, trained with the SDE probe: attributed to the drift term, not to noise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lipbench.cli import main

SUITE = {
    "schema_version": 1,
    "name": "sde_agreement",
    "claim": "the SDE terms predict the change of log K",
    "scenario": {
        "model": {"name": "mlp", "hidden": [64, 32]},
        "dataset": {"name": "digits"},
        "optimizer": {"lr": 0.05, "batch_size": 32},
        "steps": 200,
        "record_every": 10,
        "record": ["sigma", "K", "loss", "accuracy", "sde"],
    },
    "seeds": {"init": 4, "sampling": 1},
    "assertion": {"test": "sde_agreement", "tolerance": 0.5},
    "profiles": {"quick": {}},
}


@pytest.mark.slow
def test_label_corruption_moves_the_drift_term(tmp_path: Path, wide_console) -> None:
    suite = tmp_path / "sde_agreement.yaml"
    suite.write_text(yaml.safe_dump(SUITE, sort_keys=False))
    common = ["--profile", "quick", "--device", "cpu", "--workers", "1", "--no-mlflow", "--no-cache"]
    common += ["--baselines", str(tmp_path / "baselines")]
    main(["baseline", "update", str(suite), *common, "--out", str(tmp_path / "base"), "--force"])
    main(["run", str(suite), *common, "--out", str(tmp_path / "noisy"), "--set", "scenario.label_noise=0.8"])
    (found,) = (tmp_path / "noisy").rglob("result.json")
    comparison = json.loads(found.read_text())["baseline"]
    totals = {c["term"]: c for c in comparison["forces"] if c["layer"] is None}
    observed = totals["observed"]["change"]
    assert observed < 0  # corrupted labels: log K grows less
    drift = totals["mu"]["change"] / observed
    noise = (totals["eps"]["change"] + totals["beta2"]["change"]) / observed
    assert drift > 0.8 and abs(noise) < 0.1 and abs(noise) < drift / 5
    assert totals["mu"]["p"] < 0.005  # the drift term's change is significant on its own runs
