"""lipbench.torch.training, the pieces both engines share: the same columns and the same divergence report
under every engine, the ensemble's decisions derived from the schema, and the recorder itself."""

from __future__ import annotations

import math
import re
from typing import Literal

import numpy as np
import pytest
import torch
from builders import scenario_from
from torch import nn

from lipbench.cli import main
from lipbench.outcome import Verdict
from lipbench.records import RunRecord
from lipbench.registry import ENGINES
from lipbench.runner import run_claims
from lipbench.suite import GradientSpec, RunSpec, Scenario, load_claim
from lipbench.torch.ensemble import ENSEMBLE_SUPPORT, decision_keys, ensemble_key, ensemble_obstacle
from lipbench.torch.lipschitz import spectral_norms
from lipbench.torch.training import BatchSampler, GradientNoise, RecordBuffer

MLP = {
    "model": {"name": "mlp", "hidden": [16]},
    "dataset": {"name": "synthetic", "synthetic_size": 64},
    "optimizer": {"lr": 0.05, "batch_size": 8},
    "steps": 4,
    "record_every": 2,
}
DIVERGED = re.compile(r"diverged at step (\d+) \((loss|K|loss and K) not finite\); lower scenario\.optimizer\.lr")


def spec(sc: Scenario, seed: int = 0) -> RunSpec:
    return RunSpec("claim", f"run-{seed}", sc, None, seed, seed)


# ---------------------------------------------------------------- the same record under every engine


@pytest.mark.parametrize(
    "record", [["sigma", "K", "loss", "accuracy"], ["sigma", "K"], ["sigma", "K", "accuracy", "init"]]
)
def test_every_engine_records_the_same_columns(write_suite, record: list[str]) -> None:
    claim = load_claim(write_suite("columns"), "quick", [f"scenario.record=[{', '.join(record)}]"])
    columns = {}
    for engine in ENGINES:
        [outcome] = run_claims([claim], device="cpu", workers=1, engine=engine)
        assert outcome.records and all(r.ok for r in outcome.records), engine
        columns[engine] = {frozenset(r.metrics) for r in outcome.records}
    assert len(columns["per-run"]) == 1, "every run of a claim records the same columns"
    assert columns["ensemble"] == columns["auto"] == columns["per-run"]
    [names] = columns["per-run"]
    assert ("loss" in names) == ("loss" in record) and ("accuracy" in names) == ("accuracy" in record)
    assert {"sigma_0", "sigma_1", "log_K", "K"} <= names
    assert ("sigma_init_theory_0" in names) == ("init" in record)


# ---------------------------------------------------------------- divergence


def test_a_diverging_run_is_reported_as_divergence_with_its_step_under_every_engine(write_suite) -> None:
    # Records 20 steps apart: the weights themselves are non-finite by the second record.
    sets = ["scenario.optimizer.lr=500", "scenario.steps=40", "scenario.record_every=20"]
    claim = load_claim(write_suite("diverges"), "quick", sets)
    reports = {}
    for engine in ENGINES:
        [outcome] = run_claims([claim], device="cpu", workers=1, engine=engine)
        assert outcome.status == Verdict.ERROR and outcome.result is None, engine
        assert "Error" not in outcome.error and "at lipschitz.py" not in outcome.error, outcome.error
        match = DIVERGED.search(outcome.error)
        assert match, outcome.error
        assert int(match[1]) in (20, 40)
        reports[engine] = [r.problem for r in outcome.records]
    assert reports["per-run"] == reports["ensemble"] == reports["auto"]  # the same runs, the same steps


@pytest.mark.parametrize("engine", ["per-run", "ensemble"])
def test_lipbench_run_prints_the_divergence_sentence(write_suite, tmp_path, wide_console, capsys, engine) -> None:
    path = write_suite("diverges")
    sets = ["--set", "scenario.optimizer.lr=500", "--set", "scenario.steps=40", "--set", "scenario.record_every=20"]
    args = ["run", str(path), "--workers", "1", "--profile", "quick", "--engine", engine, *sets]
    assert main([*args, "--no-mlflow", "--out", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "LinAlgError" not in captured.out + captured.err
    assert "ERROR" in captured.out and DIVERGED.search(captured.out), captured.out


def test_spectral_norms_of_a_non_finite_layer_are_nan_not_an_error() -> None:
    layers = [nn.Linear(5, 4), nn.Linear(4, 3)]
    with torch.no_grad():
        layers[0].weight[1, 2] = math.inf
    sigmas = spectral_norms(layers)
    expected = float(torch.linalg.matrix_norm(layers[1].weight.detach(), 2))
    assert math.isnan(sigmas[0]) and sigmas[1] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("loss", "sigma", "named"), [(math.nan, 1.0, "loss"), (1.0, math.inf, "K"), (math.inf, math.nan, "loss and K")]
)
def test_a_diverged_record_names_what_was_not_finite(loss: float, sigma: float, named: str) -> None:
    metrics = {"loss": np.array([2.0, loss]), "K": np.array([1.0, sigma]), "sigma_0": np.array([1.0, sigma])}
    record = RunRecord("claim", "run-a", None, 0, 0, np.array([0, 30]), metrics, diverged_at=30)
    assert record.problem == f"run run-a diverged at step 30 ({named} not finite); lower scenario.optimizer.lr"


def test_the_recorder_marks_each_run_at_its_first_non_finite_row_and_drops_the_rest() -> None:
    sc = scenario_from(MLP, steps=6, record_every=2, record=["sigma", "K", "loss"])
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    recorder = RecordBuffer(sc, model, members=3, device=torch.device("cpu"))
    labels = torch.zeros(3, 4, dtype=torch.long)
    logits = torch.zeros(3, 4, 10)
    for row, step in enumerate(recorder.marks):
        assert recorder.due(step)
        sigmas = torch.ones(3, 2)
        rows_logits = logits.clone()
        if row >= 1:
            sigmas[1, 0] = math.nan  # run 1: a non-finite sigma from the second record on
        if row == 2:
            rows_logits[2, 0, 0] = math.nan  # run 2: a non-finite loss at the third record only
        alive = recorder.write(sigmas, rows_logits, labels)
    assert alive.tolist() == [True, False, False] and recorder.finished() == [True, False, False]
    records = recorder.records([spec(sc, i) for i in range(3)], 1.0, [{}, {}, {}])
    assert [r.diverged_at for r in records] == [None, 2, 4]
    assert [len(r.steps) for r in records] == [4, 2, 3]
    assert set(records[0].metrics) == {"sigma_0", "sigma_1", "loss", "log_K", "K", "drift_0", "drift_1"}
    assert records[2].problem.endswith("(loss not finite); lower scenario.optimizer.lr")


def test_sampling_without_replacement_refuses_a_batch_larger_than_the_data() -> None:
    sc = scenario_from(MLP, sampling="without_replacement", optimizer={"batch_size": 65})
    with pytest.raises(ValueError, match="batch_size 65 exceeds the 64 training samples"):
        BatchSampler([spec(sc)], 64, sc, torch.device("cpu"))


# ---------------------------------------------------------------- what the ensemble runs


def test_every_field_and_value_of_the_schema_has_an_ensemble_decision() -> None:
    keys = decision_keys(Scenario)
    assert "gradient.noise=uniform" in keys and "record=sde" in keys and "optimizer.lr" in keys
    missing = [k for k in keys if k not in ENSEMBLE_SUPPORT]
    stale = [k for k in ENSEMBLE_SUPPORT if k not in keys]
    assert not missing, f"add a decision to lipbench.ensemble_support.ENSEMBLE_SUPPORT for {missing}"
    assert not stale, f"ENSEMBLE_SUPPORT decides keys the schema no longer has: {stale}"
    assert all(decision.why for decision in ENSEMBLE_SUPPORT.values())


class _WiderGradient(GradientSpec):
    noise: Literal["none", "gaussian", "uniform", "laplace"] = "none"


class _WiderScenario(Scenario):
    gradient: _WiderGradient = _WiderGradient()
    momentum: float = 0.0


def test_a_field_or_value_added_to_the_schema_is_found_without_a_decision() -> None:
    keys = decision_keys(_WiderScenario)
    assert [k for k in keys if k not in ENSEMBLE_SUPPORT] == ["gradient.noise=laplace", "momentum"]
    wider = _WiderScenario.model_validate(scenario_from(MLP).model_dump())
    assert ensemble_obstacle(wider) == "scenario.momentum has no decision in lipbench.ensemble_support.ENSEMBLE_SUPPORT"
    assert ensemble_key(spec(wider)) is None  # trains alone: never silently ignored


def test_a_noise_value_without_a_decision_trains_alone_and_is_never_drawn_as_another() -> None:
    sc = scenario_from(MLP, gradient={"noise": "uniform", "noise_std": 0.1})
    assert ensemble_obstacle(sc) is None and ensemble_key(spec(sc)) is not None
    laplace = sc.model_copy(update={"gradient": GradientSpec.model_construct(noise="laplace", noise_std=0.1)})
    assert ensemble_key(spec(laplace)) is None
    assert ensemble_obstacle(laplace) == (
        "scenario.gradient.noise = laplace: no decision in lipbench.ensemble_support.ENSEMBLE_SUPPORT"
    )
    with pytest.raises(ValueError, match="unknown gradient noise 'laplace'"):
        GradientNoise([spec(laplace)], [torch.Size([3])], torch.device("cpu"))


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"record": ["sigma", "K", "sde"]}, "scenario.record = sde: the SDE probe"),
        ({"regularisers": {"mixup": 0.2}}, "scenario.regularisers.mixup: mixup"),
        ({"regularisers": {"auto_augment": "svhn"}}, "scenario.regularisers.auto_augment = svhn: AutoAugment"),
        ({"regularisers": {"fgsm_epsilon": 0.1}}, "scenario.regularisers.fgsm_epsilon: FGSM"),
    ],
)
def test_what_the_ensemble_leaves_to_engine_train_says_why(changes: dict, reason: str) -> None:
    obstacle = ensemble_obstacle(scenario_from(MLP, **changes))
    assert obstacle is not None and obstacle.startswith(reason)


def test_members_share_all_but_the_per_member_fields() -> None:
    base = scenario_from(MLP)
    varied = scenario_from(MLP, label_noise=0.2, optimizer={"lr": 0.1, "weight_decay": 0.01}, gradient={"scale": 0.5})
    assert ensemble_key(spec(base)) == ensemble_key(spec(varied, 3))
    for changes in ({"record_every": 1}, {"regularisers": {"label_smoothing": 0.1}}, {"model": {"dropout": True}}):
        assert ensemble_key(spec(scenario_from(MLP, **changes))) not in (None, ensemble_key(spec(base)))
