"""drift_<l>: the first-order change of log sigma_l along each record step's update, in both engines
(lipbench.torch.tracking.StepDrift; docs/science.md, "By force, cheaply")."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from builders import scenario_from

from lipbench.cache import RunCache
from lipbench.forces import force_split
from lipbench.records import RunRecord
from lipbench.suite import RunSpec, Scenario
from lipbench.torch import engine
from lipbench.torch.conv_operator import apply, dense
from lipbench.torch.data import Dataset, load_dataset
from lipbench.torch.ensemble import train_ensemble
from lipbench.torch.models import lipschitz_layers
from lipbench.torch.tracking import layer_geometries
from lipbench.torch.training import initial_model

MLP: dict[str, Any] = {
    "model": {"name": "mlp", "hidden": [32, 16]},
    "dataset": {"name": "synthetic", "synthetic_size": 256},
    "optimizer": {"lr": 0.05, "batch_size": 16, "weight_decay": 0.01},
    "gradient": {"scale": 0.5, "noise": "gaussian", "noise_std": 0.01},
    "steps": 20,
    "record_every": 5,
}
CONVNET: dict[str, Any] = {
    **MLP,
    "model": {"name": "convnet", "width": 4},
    "dataset": {"name": "synthetic", "synthetic_shape": [3, 8, 8], "synthetic_size": 256},
}


def spec(sc: Scenario, seed: int = 0) -> RunSpec:
    return RunSpec("claim", f"run-i{seed}-s{seed}", sc, None, seed, seed)


def data_for(sc: Scenario) -> Dataset:
    d = sc.dataset
    return load_dataset("synthetic", synthetic_shape=d.synthetic_shape, synthetic_size=d.synthetic_size)


def brute_force(s: RunSpec, data: Dataset, monkeypatch: pytest.MonkeyPatch) -> tuple[RunRecord, np.ndarray]:
    """engine.train's record, and drift_<l> at each record step but the last (records x layers) from the
    weights and the gradient the optimiser stepped with (autograd's, scaled and noised as the step applies it),
    the dense matrix or unrolled operator's SVD, and the kernel gradient of sigma by autograd."""
    sc = s.scenario
    model = initial_model(s, data)
    names = [name for name, _ in model.named_parameters()]
    weights = [names.index(f"{name}.weight") for name, _ in lipschitz_layers(model)]
    geoms = layer_geometries(model, data.input_shape, sc.lipschitz.conv)
    seen: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
    build = engine.build_optimizer

    def capturing(*args: Any, **kwargs: Any) -> Any:
        opt, schedule = build(*args, **kwargs)

        def hook(optimizer: torch.optim.Optimizer, *_: Any) -> None:
            params = optimizer.param_groups[0]["params"]
            seen.append(([params[i].detach().clone() for i in weights], [params[i].grad.clone() for i in weights]))

        opt.register_step_pre_hook(hook)
        return opt, schedule

    monkeypatch.setattr(engine, "build_optimizer", capturing)
    record = engine.train(s, data)
    lr, wd = sc.optimizer.lr, sc.optimizer.weight_decay
    rows = []
    for step in record.steps[:-1]:
        Ws, Gs = seen[step]
        row = []
        for W, G, geom in zip(Ws, Gs, geoms, strict=True):
            W, update = W.double(), -lr * (G.double() + wd * W.double())  # torch's SGD: p -= lr (g + wd p)
            matrix = W.flatten(1) if geom is None else dense(W, geom)
            U, S, Vh = torch.linalg.svd(matrix)
            W = W.requires_grad_()
            v = Vh[0] if geom is None else Vh[0].reshape(1, *geom.in_shape)
            image = W.flatten(1) @ v if geom is None else apply(W, v, geom).flatten()
            (D,) = torch.autograd.grad(U[:, 0] @ image, W)  # the weight gradient of sigma_max
            row.append(float((update * D).sum() / S[0]))
        rows.append(row)
    return record, np.array(rows)


def drift_of(record: RunRecord, layers: int) -> np.ndarray:
    return np.stack([record.metrics[f"drift_{i}"] for i in range(layers)], axis=1)


@pytest.mark.parametrize("base", [MLP, CONVNET], ids=["mlp", "convnet"])
def test_drift_is_the_brute_force_projection_in_both_engines(base: dict[str, Any], monkeypatch) -> None:
    s = spec(scenario_from(base))
    data = data_for(s.scenario)
    record, expected = brute_force(s, data, monkeypatch)
    layers = expected.shape[1]
    assert np.abs(expected).min() > 1e-5  # every layer moves: the comparison is not of zeros
    ours = drift_of(record, layers)
    np.testing.assert_allclose(ours[:-1], expected, rtol=2e-3, atol=1e-7)  # measured: 4e-5 (MLP), 8e-4
    np.testing.assert_array_equal(ours[-1], ours[-2])  # the last record has no step after it
    [member] = train_ensemble([s], data)
    # the ensemble's pair is its tracker's Krylov estimate, and its trajectory engine.train's within rounding
    np.testing.assert_allclose(drift_of(member, layers)[:-1], expected, rtol=5e-3, atol=1e-7)  # measured: 9e-4


@pytest.mark.parametrize("base", [MLP, CONVNET], ids=["mlp", "convnet"])
def test_drift_leaves_every_other_column_as_it_was(base: dict[str, Any], monkeypatch) -> None:
    s = spec(scenario_from(base))
    data = data_for(s.scenario)
    with_drift = [engine.train(s, data), *train_ensemble([s], data)]
    monkeypatch.setattr("lipbench.torch.training.records_drift", lambda *_: False)
    without = [engine.train(s, data), *train_ensemble([s], data)]
    monkeypatch.undo()
    for ours, reference in zip(with_drift, without, strict=True):
        layers = sum(k.startswith("sigma_") for k in reference.metrics)
        assert set(ours.metrics) == set(reference.metrics) | {f"drift_{i}" for i in range(layers)}
        for key, values in reference.metrics.items():
            np.testing.assert_array_equal(ours.metrics[key], values)
        assert ours.summary == reference.summary
    assert "drift_0" not in engine.train(spec(scenario_from(base, record=["sigma", "K", "sde"])), data).metrics
    bound = scenario_from(base, lipschitz={"conv": "bound"})
    assert ("drift_0" in engine.train(spec(bound), data).metrics) == (base is MLP)


@pytest.mark.parametrize("base", [MLP, CONVNET], ids=["mlp", "convnet"])
def test_the_integral_of_drift_tracks_the_change_of_log_sigma(base: dict[str, Any]) -> None:
    """Recorded at every step, drift is each step's first-order change of log sigma: summed over a short run it
    misses only the second-order terms. Tolerance: per layer, 10 % of the run's first-order motion sum |drift|
    (measured at lr 0.05 over 60 steps: at most 4 %, in both engines); the force split's remainder likewise."""
    sc = scenario_from(
        base,
        steps=60,
        record_every=1,
        optimizer={"lr": 0.05, "batch_size": 16, "weight_decay": 0.0},
        gradient={"noise": "none"},
    )
    data = data_for(sc)
    records = [engine.train(spec(sc, seed), data) for seed in range(2)]
    records += train_ensemble([spec(sc, seed) for seed in range(2)], data)
    frames, motions = [], []
    for i, r in enumerate(records):
        layers = sum(k.startswith("sigma_") for k in r.metrics)
        sigma = np.stack([r.metrics[f"sigma_{j}"] for j in range(layers)], axis=1)
        drift = drift_of(r, layers)[:-1]
        observed, motion = np.log(sigma[-1]) - np.log(sigma[0]), np.abs(drift).sum(axis=0)
        assert motion.min() > 5e-4  # every layer moved
        assert (np.abs(drift.sum(axis=0) - observed) <= 0.1 * motion).all()
        frames.append(pd.DataFrame({"run": i, "step": r.steps, "sweep_value": 0.0, "init_seed": 0} | r.metrics))
        motions.append(motion)
    split = force_split(pd.concat(frames).assign(sampling_seed=0))
    assert split is not None
    allowed = np.concatenate(motions) * 0.1
    assert (split.sort_values(["run", "layer"])["remainder"].abs().to_numpy() <= allowed).all()


def test_records_with_and_without_drift_load_from_the_cache(tmp_path) -> None:
    s = spec(scenario_from(MLP))
    record = engine.train(s, data_for(s.scenario))
    older = RunRecord(**{**record.__dict__, "metrics": {k: v for k, v in record.metrics.items() if "drift" not in k}})
    cache = RunCache(tmp_path)
    for key, stored in (("a" * 64, record), ("b" * 64, older)):
        cache.store(key, stored)
        loaded = cache.load(key)
        assert loaded is not None and loaded.metrics.keys() == stored.metrics.keys()
        for name, values in stored.metrics.items():
            np.testing.assert_array_equal(loaded.metrics[name], values)
    assert cache.rejected == 0
