"""engine.train, the models and the spectral norms, on tiny CPU data (docs/science.md)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from builders import scenario_from
from pydantic import ValidationError
from torch import nn

from lipbench.outcome import Verdict
from lipbench.records import RunRecord
from lipbench.runner import judge
from lipbench.suite import RunSpec, Scenario, load_claim
from lipbench.torch import training
from lipbench.torch.data import Dataset, load_dataset
from lipbench.torch.engine import train
from lipbench.torch.lipschitz import layer_matrix, spectral_norms
from lipbench.torch.models import build_model, initialise, lipschitz_layers
from lipbench.torch.training import corrupt_labels, record_steps

SCENARIO: dict[str, Any] = {
    "model": {"name": "mlp", "hidden": [16]},
    "dataset": {"name": "synthetic", "synthetic_size": 64},
    "optimizer": {"lr": 0.05, "batch_size": 8},
    "steps": 6,
    "record_every": 2,
}


def scenario(**changes: Any) -> Scenario:
    return scenario_from(SCENARIO, **changes)


def run(sc: Scenario, init_seed: int = 0, sampling_seed: int = 0, data: Dataset | None = None) -> RunRecord:
    spec = RunSpec("claim", f"run-i{init_seed}-s{sampling_seed}", sc, None, init_seed, sampling_seed)
    return train(spec, data or load_dataset("synthetic", synthetic_size=64))


def same_metrics(a: RunRecord, b: RunRecord) -> bool:
    return a.metrics.keys() == b.metrics.keys() and all(np.array_equal(a.metrics[k], b.metrics[k]) for k in a.metrics)


# ---------------------------------------------------------------- spectral norms


def test_spectral_norm_of_linear_layers_matches_svdvals() -> None:
    torch.manual_seed(0)
    layers = [nn.Linear(7, 3), nn.Linear(3, 11), nn.Linear(5, 5)]
    expected = torch.stack([torch.linalg.svdvals(m.weight.detach())[0] for m in layers])
    torch.testing.assert_close(spectral_norms(layers), expected)


def test_spectral_norm_of_conv_layers_uses_the_out_by_in_kh_kw_matrix() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, kernel_size=(3, 2))
    kernel = conv.weight.detach().numpy()  # 5 x 3 x 3 x 2
    assert layer_matrix(conv.weight).shape == (5, 3 * 3 * 2)
    by_numpy = np.linalg.norm(kernel.reshape(5, 18), ord=2)  # independent of torch's reshape
    assert float(spectral_norms([conv])[0]) == pytest.approx(by_numpy, rel=1e-5)
    torch.testing.assert_close(spectral_norms([conv])[0], torch.linalg.svdvals(conv.weight.detach().flatten(1))[0])
    # Not the norm of another arrangement of the same numbers (e.g. in x (out*kh*kw)):
    other = np.linalg.norm(kernel.transpose(1, 0, 2, 3).reshape(3, 30), ord=2)
    assert not math.isclose(float(spectral_norms([conv])[0]), other, rel_tol=1e-3)


def test_record_holds_the_layer_norms_and_their_product() -> None:
    sc = scenario(model={"hidden": [16, 8]})
    rec = run(sc, init_seed=3)
    sigmas = np.stack([rec.metrics[f"sigma_{i}"] for i in range(3)], axis=1)
    np.testing.assert_allclose(rec.metrics["K"], sigmas.prod(axis=1), rtol=1e-12)
    np.testing.assert_allclose(rec.metrics["log_K"], np.log(sigmas).sum(axis=1), rtol=1e-12)
    assert rec.steps.tolist() == [0, 2, 4, 6]

    model = build_model("mlp", (1, 8, 8), 10, hidden=[16, 8])
    initialise(model, torch.Generator().manual_seed(3))
    at_start = spectral_norms([m for _, m in lipschitz_layers(model)]).double().numpy()
    np.testing.assert_allclose(sigmas[0], at_start, rtol=1e-6)  # step 0 is the initial network


def test_record_steps_end_on_the_last_step() -> None:
    assert record_steps(10, 3) == [0, 3, 6, 9, 10]
    assert record_steps(6, 2) == [0, 2, 4, 6]
    assert record_steps(5, 5) == [0, 5]


# ---------------------------------------------------------------- label corruption


@pytest.mark.parametrize(("p", "classes"), [(0.3, 10), (0.8, 10), (0.5, 2)])
def test_label_corruption_changes_p_times_one_minus_one_over_c(p: float, classes: int) -> None:
    n = 200_000
    y = torch.randint(classes, (n,), generator=torch.Generator().manual_seed(1))
    noisy = corrupt_labels(y, p, classes, torch.Generator().manual_seed(2))
    expected = p * (1 - 1 / classes)
    sigma = math.sqrt(expected * (1 - expected) / n)
    changed = float((noisy != y).double().mean())
    assert abs(changed - expected) < 4 * sigma, (changed, expected, sigma)
    assert int(noisy.min()) >= 0 and int(noisy.max()) < classes
    assert noisy.dtype == y.dtype and noisy.shape == y.shape


def test_no_label_noise_leaves_labels_untouched() -> None:
    y = torch.randint(10, (1000,), generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(2)
    state = gen.get_state()
    assert torch.equal(corrupt_labels(y, 0.0, 10, gen), y)
    assert torch.equal(gen.get_state(), state)  # and draws nothing


def test_label_noise_reaches_training() -> None:
    clean, noisy = run(scenario()), run(scenario(label_noise=0.9))
    assert np.array_equal(clean.metrics["sigma_0"][:1], noisy.metrics["sigma_0"][:1])  # same initial net
    assert not np.array_equal(clean.metrics["loss"], noisy.metrics["loss"])


# ---------------------------------------------------------------- seeds and determinism


def test_init_seed_alone_fixes_the_initial_weights() -> None:
    def weights(seed: int) -> dict[str, torch.Tensor]:
        model = build_model("convnet", (1, 8, 8), 10, width=4)
        initialise(model, torch.Generator().manual_seed(seed))
        return model.state_dict()

    torch.manual_seed(1)
    a = weights(5)
    torch.manual_seed(2)  # the global RNG is not what decides them
    b, c = weights(5), weights(6)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not any(torch.equal(a[k], c[k]) for k in a if k.endswith("weight"))


def test_sampling_seed_changes_the_trajectory_not_the_start() -> None:
    sc = scenario()
    a, b, c = run(sc, 1, 1), run(sc, 1, 2), run(sc, 2, 1)
    for key in [k for k in a.metrics if k.startswith("sigma_")] + ["K", "loss"]:
        assert a.metrics[key][0] == b.metrics[key][0], key  # bit-identical start
    assert not np.array_equal(a.metrics["K"][1:], b.metrics["K"][1:])  # different mini-batches
    assert a.metrics["K"][0] != c.metrics["K"][0]  # different init seed: different start


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"model": {"name": "convnet", "width": 4, "dropout": True}},
        {"sampling": "without_replacement"},
        {"gradient": {"noise": "uniform", "noise_std": 0.1}},
        {"label_noise": 0.3},
    ],
    ids=["plain", "dropout", "without_replacement", "noise", "label_noise"],
)
def test_same_run_twice_gives_identical_metrics(changes: dict[str, Any]) -> None:
    sc = scenario(**changes)
    torch.manual_seed(123)
    first = run(sc, 4, 7)
    torch.rand(1000)  # whatever else the process draws in between must not matter
    torch.manual_seed(999)
    second = run(sc, 4, 7)
    assert same_metrics(first, second)


# ---------------------------------------------------------------- divergence


def test_a_huge_learning_rate_diverges_and_the_claim_is_an_error(write_suite) -> None:
    claim = load_claim(write_suite("diverges"), "quick", ["scenario.optimizer.lr=1e6", "scenario.steps=30"])
    records = [train(spec, load_dataset("synthetic", synthetic_size=64)) for spec in claim.runs()[:2]]
    for rec in records:
        assert rec.diverged_at is not None and 0 < rec.diverged_at <= 30
        assert not rec.ok
        assert "lower scenario.optimizer.lr" in rec.problem
        assert rec.steps[-1] == rec.diverged_at
        assert not np.isfinite(rec.metrics["loss"][-1]) or not np.isfinite(rec.metrics["sigma_0"][-1])
        assert "test_accuracy" not in rec.summary
    outcome = judge(claim, records)
    assert outcome.status == Verdict.ERROR
    assert "diverged" in outcome.error and "lower scenario.optimizer.lr" in outcome.error
    assert outcome.result is None


def test_a_run_diverging_under_the_sde_probe_is_marked_diverged_not_crashed() -> None:
    # The probe's eigendecomposition raises on non-finite weights; the run must end as diverged.
    rec = run(scenario(record=["sigma", "K", "loss", "accuracy", "sde"], optimizer={"lr": 1e6}, steps=30))
    assert rec.diverged_at is not None and not rec.ok
    assert "lower scenario.optimizer.lr" in rec.problem
    assert not np.isfinite(rec.metrics["sigma_0"][-1]) or not np.isfinite(rec.metrics["loss"][-1])


def test_a_sane_learning_rate_does_not_diverge() -> None:
    rec = run(scenario())
    assert rec.ok and rec.diverged_at is None and rec.problem is None
    assert np.isfinite(rec.metrics["K"]).all()
    assert 0.0 <= rec.summary["test_accuracy"] <= 1.0


# ---------------------------------------------------------------- gradient scale and noise


def test_gradient_scale_must_be_positive() -> None:
    with pytest.raises(ValidationError, match="greater than 0"):
        scenario(gradient={"scale": 0.0})


def test_a_small_gradient_scale_barely_moves_k() -> None:
    sc = scenario(steps=20, record_every=20, optimizer={"lr": 0.5})
    full = run(sc)
    small = run(scenario(steps=20, record_every=20, optimizer={"lr": 0.5}, gradient={"scale": 1e-3}))
    assert full.metrics["K"][0] == small.metrics["K"][0]
    moved_full = abs(full.metrics["K"][-1] / full.metrics["K"][0] - 1)
    moved_small = abs(small.metrics["K"][-1] / small.metrics["K"][0] - 1)
    assert moved_full > 0.05
    assert 0 < moved_small < 0.01 * moved_full


@pytest.mark.parametrize("noise", ["gaussian", "uniform"])
def test_gradient_noise_changes_the_trajectory_only_when_it_has_a_size(noise: str) -> None:
    plain = run(scenario())
    noisy = run(scenario(gradient={"noise": noise, "noise_std": 0.5}))
    silent = run(scenario(gradient={"noise": noise, "noise_std": 0.0}))
    assert plain.metrics["K"][0] == noisy.metrics["K"][0]
    assert not np.array_equal(plain.metrics["K"], noisy.metrics["K"])
    # Noise draws from its own stream: zero noise leaves the mini-batches, hence the run, unchanged.
    assert same_metrics(plain, silent)


def test_gaussian_and_uniform_noise_differ() -> None:
    a = run(scenario(gradient={"noise": "gaussian", "noise_std": 0.5}))
    b = run(scenario(gradient={"noise": "uniform", "noise_std": 0.5}))
    assert not np.array_equal(a.metrics["K"], b.metrics["K"])


# ---------------------------------------------------------------- mini-batch sampling


def _index_dataset(n: int) -> Dataset:
    """x_i is the number i (a 1x1x1 image), so a batch names the samples it holds."""
    x = torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1)
    y = torch.arange(n) % 2
    return Dataset("index", x, y, x[:4].clone(), y[:4].clone(), 2)


def _training_batches(monkeypatch: pytest.MonkeyPatch, sc: Scenario, n: int) -> list[list[int]]:
    """The sample indices of every training batch of one run, seen through a forward hook."""
    batches: list[list[int]] = []
    real_build = training.build_model

    def build_with_hook(*args: Any, **kwargs: Any) -> nn.Module:
        model = real_build(*args, **kwargs)

        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            if module.training:  # records run in eval mode on the monitor set
                batches.append([round(v) for v in inputs[0].flatten().tolist()])

        model.register_forward_pre_hook(hook)
        return model

    monkeypatch.setattr(training, "build_model", build_with_hook)
    run(sc, data=_index_dataset(n))
    return batches


def _epoch(batches: list[list[int]], index: int, per_epoch: int) -> list[int]:
    return [i for batch in batches[index * per_epoch : (index + 1) * per_epoch] for i in batch]


def test_sampling_without_replacement_visits_each_sample_once_per_epoch(monkeypatch) -> None:
    sc = scenario(steps=9, record_every=3, sampling="without_replacement", optimizer={"batch_size": 4})
    batches = _training_batches(monkeypatch, sc, n=12)
    assert len(batches) == 9 and all(len(b) == 4 for b in batches)
    epochs = [_epoch(batches, e, 3) for e in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == list(range(12))
    assert epochs[0] != epochs[1]  # reshuffled each epoch


def test_sampling_without_replacement_drops_the_incomplete_tail(monkeypatch) -> None:
    sc = scenario(steps=6, record_every=3, sampling="without_replacement", optimizer={"batch_size": 4})
    batches = _training_batches(monkeypatch, sc, n=10)  # two batches of 4 per epoch, 2 samples left over
    for e in range(3):
        assert len(set(_epoch(batches, e, 2))) == 8


def test_sampling_with_replacement_repeats_samples(monkeypatch) -> None:
    sc = scenario(steps=9, record_every=3, optimizer={"batch_size": 4})
    batches = _training_batches(monkeypatch, sc, n=12)
    assert len(batches) == 9
    assert any(len(set(_epoch(batches, e, 3))) < 12 for e in range(3))


# ---------------------------------------------------------------- models


@pytest.mark.parametrize(
    ("shape", "flat"), [((1, 28, 28), 128 * 4 * 4), ((3, 32, 32), 128 * 4 * 4), ((1, 8, 8), 128 * 1 * 1)]
)
def test_convnet_takes_mnist_cifar_and_digits_shapes(shape: tuple[int, int, int], flat: int) -> None:
    model = build_model("convnet", shape, 10)
    first_linear = next(m for m in model.modules() if isinstance(m, nn.Linear))
    assert first_linear.in_features == flat
    assert model(torch.zeros(2, *shape)).shape == (2, 10)


def test_paper_networks_have_the_papers_layers() -> None:
    mlp = build_model("mlp", (1, 28, 28), 10)
    assert [(m.in_features, m.out_features) for _, m in lipschitz_layers(mlp)] == [(784, 512), (512, 256), (256, 10)]
    conv = build_model("convnet", (3, 32, 32), 10)
    shapes = [tuple(m.weight.shape) for _, m in lipschitz_layers(conv)]
    assert shapes == [(32, 3, 3, 3), (64, 32, 3, 3), (128, 64, 3, 3), (256, 2048), (10, 256)]


def _count(model: nn.Module, kind: type[nn.Module]) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def test_dropout_and_batch_norm_switches_add_the_layers() -> None:
    plain = build_model("convnet", (3, 32, 32), 10)
    assert _count(plain, nn.Dropout) == 0 and _count(plain, nn.BatchNorm2d) == 0
    dropout = build_model("convnet", (3, 32, 32), 10, dropout=True)
    in_order = [*dropout.features, *dropout.classifier]  # one Dropout(0.2) module sits in two places
    assert [m.p for m in in_order if isinstance(m, nn.Dropout)] == [0.2, 0.2, 0.3]
    norm = build_model("convnet", (3, 32, 32), 10, batch_norm=True)
    (bn,) = [m for m in norm.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bn.num_features == 128 and not bn.track_running_stats
    assert len(lipschitz_layers(norm)) == len(lipschitz_layers(plain))  # batch norm is not in the bound
    mlp = build_model("mlp", (1, 8, 8), 10, hidden=[32, 32], dropout=True)
    assert _count(mlp, nn.Dropout) == 2
    with pytest.raises(ValueError, match="convnet only"):
        build_model("mlp", (1, 8, 8), 10, batch_norm=True)


def test_mlp_dropout_keeps_most_activations() -> None:
    """A switch, not a rate: `dropout: true` must not become nn.Dropout(p=True), which drops everything."""
    mlp = build_model("mlp", (1, 8, 8), 10, hidden=[64], dropout=True)
    (drop,) = [m for m in mlp.modules() if isinstance(m, nn.Dropout)]
    assert 0 < drop.p < 1
    mlp.train()
    out = mlp(torch.randn(4, 1, 8, 8))
    assert not torch.allclose(out[0], out[1])  # the input still reaches the output


def test_convnet_trains_with_dropout_and_batch_norm() -> None:
    sc = scenario(model={"name": "convnet", "width": 4, "dropout": True, "batch_norm": True})
    rec = run(sc)
    assert rec.ok
    assert [k for k in rec.metrics if k.startswith("sigma_")] == [f"sigma_{i}" for i in range(5)]


def test_the_probe_records_the_same_sigmas_from_its_own_decomposition() -> None:
    """With `sde` recorded, sigma comes from the probe's decomposition instead of a second one: same values."""
    plain = run(scenario(record=["sigma", "K", "loss", "accuracy"]))
    probed = run(scenario(record=["sigma", "K", "loss", "accuracy", "sde"]))
    assert "sde_mu" in probed.metrics
    for key in ("sigma_0", "sigma_1", "K", "loss"):
        np.testing.assert_allclose(probed.metrics[key], plain.metrics[key], rtol=1e-5, err_msg=key)
