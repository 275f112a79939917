"""A planted one-layer break, trained: freezing one layer of an MLP on digits is caught and explained by layer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from lipbench.cli import main

SUITE = {
    "schema_version": 1,
    "name": "unbounded_growth",
    "claim": "log K keeps growing late in training",
    "scenario": {
        "model": {"name": "planted:scaled_mlp"},
        "dataset": {"name": "digits"},
        "optimizer": {"lr": 0.05, "batch_size": 32},
        "steps": 300,
        "record_every": 20,
    },
    "seeds": {"init": 6, "sampling": 1},
    "assertion": {"test": "growth_trend", "quantity": "log_K", "window": 0.5, "alpha": 0.05},
    "profiles": {"quick": {}},
}
FROZEN = 1


def late_growth_by_layer(folder: Path) -> np.ndarray:
    """Mean over runs of each layer's late growth of log sigma, straight from records.json."""
    growth = []
    for record in json.loads((folder / "records.json").read_text()):
        steps = np.asarray(record["steps"], dtype=float)
        late = slice(len(steps) - math.ceil(0.5 * len(steps)), None)
        t = steps[late]
        layers = sorted(int(k[6:]) for k in record["metrics"] if k[6:].isdigit() and k.startswith("sigma_"))
        slopes = [np.polyfit(t, np.log(record["metrics"][f"sigma_{i}"])[late], 1)[0] for i in layers]
        growth.append(np.asarray(slopes) * (t[-1] - t[0]))
    return np.mean(growth, axis=0)


@pytest.mark.slow
def test_a_frozen_layer_is_caught_and_the_layers_are_named_by_their_change(tmp_path: Path, wide_console) -> None:
    suite = tmp_path / "unbounded_growth.yaml"
    suite.write_text(yaml.safe_dump(SUITE, sort_keys=False))
    common = ["--profile", "quick", "--device", "cpu", "--workers", "1", "--no-mlflow", "--no-cache"]
    common += ["--baselines", str(tmp_path / "baselines")]
    assert main(["baseline", "update", str(suite), *common, "--out", str(tmp_path / "base")]) == 0
    planted = ["--set", f"scenario.model.kwargs.layer={FROZEN}", "--set", "scenario.model.kwargs.scale=0.0"]
    code = main(["run", str(suite), *common, "--out", str(tmp_path / "broken"), *planted])
    (base,) = (tmp_path / "base").rglob("result.json")
    (broken,) = (tmp_path / "broken").rglob("result.json")
    result = json.loads(broken.read_text())
    assert result["verdict"] == "IMPROVED" and code == 0  # freezing a layer makes the others grow faster
    (late,) = result["baseline"]["attribution"]
    change = late_growth_by_layer(broken.parent) - late_growth_by_layer(base.parent)
    order = [row["layer"] for row in late["layers"]]
    assert order == list(np.argsort(-np.abs(change)))  # named in the order of their measured change
    assert [row["change"] for row in late["layers"]] == pytest.approx(change[order], abs=1e-6)
    frozen = next(row for row in late["layers"] if row["layer"] == FROZEN)
    assert frozen["change"] < 0 and frozen["current_se"] is not None and frozen["t"] < 0  # shown with its interval
    top = order[0]
    assert f"is {round(100 * late['layers'][0]['share_of_change'])} % layer {top}" in result["baseline"]["sentence"]
