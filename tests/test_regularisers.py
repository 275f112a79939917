"""Regularisers (mixup, label smoothing, auto-augment, FGSM) and the probe under BN / dropout / weight decay."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from builders import scenario_from
from torch import nn

from lipbench.suite import RegularisersSpec, RunSpec
from lipbench.torch.data import load_dataset
from lipbench.torch.engine import train
from lipbench.torch.models import build_model, lipschitz_layers
from lipbench.torch.regularisers import BatchTransform, fgsm
from lipbench.torch.sde import measure_sde_terms

DATA = load_dataset("synthetic", synthetic_size=96)
SCENARIO: dict[str, Any] = {
    "model": {"name": "mlp", "hidden": [16]},
    "dataset": {"name": "synthetic", "synthetic_size": 96},
    "optimizer": {"lr": 0.05, "batch_size": 8},
    "steps": 6,
    "record_every": 2,
    "record": ["sigma", "K", "loss", "accuracy", "sde"],
}


def run(**changes: Any):
    spec = RunSpec("claim", "run", scenario_from(SCENARIO, **changes), None, 0, 0)
    return train(spec, DATA)


def transform(**spec: Any) -> BatchTransform:
    return BatchTransform(RegularisersSpec(**spec), DATA.x_train, DATA.num_classes, torch.device("cpu"), seed=7)


def batch(b: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    return DATA.x_train[:b], DATA.y_train[:b]


def test_no_regulariser_is_the_identity_and_plain_cross_entropy() -> None:
    t = transform()
    x, y = batch()
    x2, y2 = t(nn.Identity(), x, y)
    assert x2 is x and y2 is y and t.loss is F.cross_entropy


def test_mixup_mixes_pairs_with_matching_soft_targets() -> None:
    t = transform(mixup=1.0)
    x, y = batch()
    xm, target = t(nn.Identity(), x, y)
    assert target.shape == (8, DATA.num_classes)
    torch.testing.assert_close(target.sum(1), torch.ones(8))
    lam = target[torch.arange(8), y]  # the weight on each sample's own label (>= lambda)
    assert ((lam >= 0) & (lam <= 1 + 1e-6)).all()
    assert not torch.equal(xm, x)
    # Same seed, same draws: reproducible.
    xm2, target2 = transform(mixup=1.0)(nn.Identity(), x, y)
    torch.testing.assert_close(xm, xm2)
    torch.testing.assert_close(target, target2)


def test_label_smoothing_changes_the_loss() -> None:
    t = transform(label_smoothing=0.1)
    logits, y = torch.randn(8, DATA.num_classes), batch()[1]
    assert not torch.isclose(t.loss(logits, y), F.cross_entropy(logits, y))
    torch.testing.assert_close(t.loss(logits, y), F.cross_entropy(logits, y, label_smoothing=0.1))


def test_fgsm_perturbs_within_epsilon_and_the_data_range() -> None:
    torch.manual_seed(0)
    model = build_model("mlp", DATA.input_shape, DATA.num_classes, hidden=[16])
    x, y = batch(32)
    eps = 0.1
    t = transform(fgsm_epsilon=eps)
    adv, target = t(model, x, y)
    assert torch.equal(target, y)
    delta = (adv - x).abs()
    assert delta.max() <= eps + 1e-6
    assert (delta > eps / 2).float().mean() > 0.9  # almost every coordinate moves by epsilon
    assert (adv >= t.low - 1e-6).all() and (adv <= t.high + 1e-6).all()
    assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(x), y)  # the attack raises the loss
    # Clamping: a point at the top of the range cannot leave it.
    top = fgsm(model, x, y, F.cross_entropy, 10.0, t.low, t.high)
    assert (top <= t.high + 1e-6).all() and (top >= t.low - 1e-6).all()


@pytest.mark.parametrize("channels", [1, 3])
def test_auto_augment_keeps_shape_and_range_and_changes_images(channels: int) -> None:
    g = torch.Generator().manual_seed(0)
    x_train = torch.randint(0, 256, (64, channels, 8, 8), generator=g).float()
    x_train = (x_train - x_train.mean()) / x_train.std()
    t = BatchTransform(RegularisersSpec(auto_augment="cifar10"), x_train, 10, torch.device("cpu"), seed=1)
    torch.manual_seed(0)
    y = torch.zeros(64, dtype=torch.long)
    for _ in range(5):  # many sub-policies, every op of the policy on 1 and 3 channels
        out, target = t(nn.Identity(), x_train, y)
        assert out.shape == x_train.shape and out.dtype == x_train.dtype and torch.equal(target, y)
        assert (out >= t.low - 1e-5).all() and (out <= t.high + 1e-5).all()
    changed = (out - x_train).abs().amax(dim=(1, 2, 3)) > 1e-3
    assert changed.float().mean() > 0.3


def test_auto_augment_round_trip_is_exact_for_integer_pixels() -> None:
    # Pixels span 0..255, so standardised -> uint8 -> standardised loses nothing.
    x = torch.arange(256.0).reshape(4, 1, 8, 8)
    xs = (x - x.mean()) / x.std()
    t = BatchTransform(RegularisersSpec(auto_augment="cifar10"), xs, 10, torch.device("cpu"), seed=1)
    span = t.high - t.low
    pixels = ((xs - t.low) / span * 255).round()
    torch.testing.assert_close(pixels, x)


@pytest.mark.parametrize(
    "changes",
    [
        {"regularisers": {"mixup": 1.0}},
        {"regularisers": {"label_smoothing": 0.1}},
        {"regularisers": {"fgsm_epsilon": 0.1}},
        {"regularisers": {"auto_augment": "cifar10"}},
        {"optimizer": {"lr": 0.05, "batch_size": 8, "weight_decay": 0.01}},
        {"model": {"name": "convnet", "width": 4, "dropout": True}},
        {"model": {"name": "convnet", "width": 4, "batch_norm": True}},
    ],
    ids=["mixup", "label_smoothing", "fgsm", "auto_augment", "weight_decay", "dropout", "batch_norm"],
)
def test_each_regulariser_trains_with_finite_sde_records_and_changes_training(changes: dict) -> None:
    reg = run(**changes)
    assert reg.ok, reg.problem
    for key in ("K", "loss", "sde_mu", "sde_eps", "sde_beta2", "sde_drift", "sde_disc"):
        assert np.isfinite(reg.metrics[key]).all(), key
    assert (reg.metrics["sde_eps"] >= 0).all() and (reg.metrics["sde_beta2"] >= 0).all()
    if "model" not in changes:  # dropout and batch norm are other models: their own tests are in test_engine
        assert not np.allclose(reg.metrics["K"][1:], run().metrics["K"][1:])  # it changed training


def test_regularisers_leave_the_batch_sequence_and_init_alone() -> None:
    a, b = run(), run(regularisers={"mixup": 0.4})
    np.testing.assert_array_equal(a.metrics["K"][0], b.metrics["K"][0])  # same init
    assert not np.array_equal(a.metrics["K"], b.metrics["K"])


def test_weight_decay_enters_mu_as_minus_lr_wd_sigma() -> None:
    torch.manual_seed(0)
    model = build_model("mlp", DATA.input_shape, DATA.num_classes, hidden=[16]).double()
    names = [f"{n}.weight" for n, _ in lipschitz_layers(model)]
    x, y = DATA.x_train[:16].double(), DATA.y_train[:16]
    lr, wd = 0.05, 0.01
    plain = measure_sde_terms(model, names, x, y, F.cross_entropy, lr)
    decayed = measure_sde_terms(model, names, x, y, F.cross_entropy, lr, weight_decay=wd)
    for p, d in zip(plain.layers, decayed.layers, strict=True):
        torch.testing.assert_close(d.mu, p.mu - lr * wd * p.sigma)
        torch.testing.assert_close(d.beta2, p.beta2)
        torch.testing.assert_close(d.eps, p.eps)
        torch.testing.assert_close(d.disc, p.disc, rtol=1e-6, atol=1e-14)  # H W = 0: sigma is 1-homogeneous


def test_probe_accepts_soft_targets_and_label_smoothing() -> None:
    torch.manual_seed(0)
    model = build_model("mlp", DATA.input_shape, DATA.num_classes, hidden=[16]).double()
    names = [f"{n}.weight" for n, _ in lipschitz_layers(model)]
    x, y = DATA.x_train[:16].double(), DATA.y_train[:16]
    hard = measure_sde_terms(model, names, x, y, F.cross_entropy, 0.05)
    soft = measure_sde_terms(model, names, x, F.one_hot(y, DATA.num_classes).double(), F.cross_entropy, 0.05)
    torch.testing.assert_close(soft.mu, hard.mu)
    torch.testing.assert_close(soft.eps, hard.eps)
    smooth = measure_sde_terms(model, names, x, y, lambda z, t: F.cross_entropy(z, t, label_smoothing=0.1), 0.05)
    assert not torch.isclose(smooth.mu, hard.mu)
