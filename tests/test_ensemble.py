"""lipbench.torch.ensemble against engine.train, and the batched Lipschitz tracking, on tiny CPU data."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from builders import scenario_from

from lipbench.records import RunRecord
from lipbench.runner import _units, run_claims
from lipbench.suite import RunSpec, Scenario, load_claim
from lipbench.torch import ensemble
from lipbench.torch.data import Dataset, load_dataset
from lipbench.torch.engine import train
from lipbench.torch.ensemble import (
    default_lanczos_steps,
    ensemble_key,
    fuses,
    group_specs,
    train_ensemble,
)
from lipbench.torch.lipschitz import exact_spectral_norms, lanczos_spectral_norms, matrix_operator, top_singular
from lipbench.torch.training import initial_model

MLP: dict[str, Any] = {
    "model": {"name": "mlp", "hidden": [32, 16]},
    "dataset": {"name": "synthetic", "synthetic_size": 512},
    "optimizer": {"lr": 0.05, "batch_size": 16},
    "steps": 40,
    "record_every": 10,
}
CONVNET: dict[str, Any] = {
    **MLP,
    "model": {"name": "convnet", "width": 4},
    "dataset": {"name": "synthetic", "synthetic_shape": [3, 8, 8], "synthetic_size": 256},
    "steps": 20,
    "record_every": 5,
}


scenario = scenario_from


def spec(sc: Scenario, init_seed: int, sampling_seed: int, tag: str = "") -> RunSpec:
    return RunSpec("claim", f"run{tag}-i{init_seed}-s{sampling_seed}", sc, None, init_seed, sampling_seed)


def data_for(sc: Scenario) -> Dataset:
    d = sc.dataset
    return load_dataset("synthetic", synthetic_shape=d.synthetic_shape, synthetic_size=d.synthetic_size)


def assert_same_run(ours: RunRecord, ref: RunRecord, rtol: float = 1e-4) -> None:
    assert ours.run_id == ref.run_id and ours.ok and ref.ok
    np.testing.assert_array_equal(ours.steps, ref.steps)
    for key in ("K", "log_K", "loss", "accuracy", *(k for k in ref.metrics if k.startswith("sigma_"))):
        np.testing.assert_allclose(ours.metrics[key], ref.metrics[key], rtol=rtol, atol=1e-6, err_msg=key)
    assert ours.summary["test_accuracy"] == pytest.approx(ref.summary["test_accuracy"], abs=0.02)


# ---------------------------------------------------------------- same seeds => same trajectories


def mlp_members() -> list[RunSpec]:
    """One ensemble: seeds, learning rate, label noise, gradient scale/noise and weight decay all differ."""
    noisy = {"noise": "gaussian"}
    return [
        spec(scenario(MLP, gradient=noisy), 0, 0),
        spec(scenario(MLP, gradient={**noisy, "scale": 0.5, "noise_std": 0.01}, label_noise=0.3), 1, 0),
        spec(scenario(MLP, gradient={**noisy, "noise_std": 0.02}, optimizer={"lr": 0.1, "weight_decay": 0.01}), 2, 3),
    ]


def test_mlp_members_follow_engine_train() -> None:
    specs = mlp_members()
    assert len(group_specs(specs)) == 1  # one vectorised ensemble, not three runs
    data = data_for(specs[0].scenario)
    ours = train_ensemble(specs, data, exact_every=1)  # exact sigma at every record: the trajectories alone
    for record, s in zip(ours, specs, strict=True):
        assert_same_run(record, train(s, data))


def smoothed_mlp_members() -> list[RunSpec]:
    """Label smoothing, uniform noise and sampling without replacement; members differ as above."""
    sc = {"sampling": "without_replacement", "regularisers": {"label_smoothing": 0.1}}
    noisy = {"noise": "uniform", "noise_std": 0.01}
    return [
        spec(scenario(MLP, **sc, gradient=noisy), 0, 0),
        spec(scenario(MLP, **sc, gradient={**noisy, "scale": 0.5}, label_noise=0.3), 1, 2),
        spec(scenario(MLP, **sc, gradient=noisy, optimizer={"lr": 0.1, "weight_decay": 0.01}), 2, 1),
    ]


def test_mlp_members_with_label_smoothing_and_uniform_noise_follow_engine_train() -> None:
    specs = smoothed_mlp_members()
    assert len(group_specs(specs)) == 1 and fuses(specs[0].scenario)
    data = data_for(specs[0].scenario)
    ours = train_ensemble(specs, data, exact_every=1)
    for record, s in zip(ours, specs, strict=True):
        assert_same_run(record, train(s, data))


@pytest.mark.parametrize("members", [mlp_members, smoothed_mlp_members])
def test_the_fused_mlp_step_gives_autograds_trajectories(members, monkeypatch) -> None:
    specs = members()
    data = data_for(specs[0].scenario)
    fused = train_ensemble(specs, data, exact_every=1)
    monkeypatch.setattr(ensemble, "fuses", lambda _scenario: False)  # the vmap + autograd step instead
    reference = train_ensemble(specs, data, exact_every=1)
    for ours, ref in zip(fused, reference, strict=True):
        assert_same_run(ours, ref, rtol=1e-5)


def test_only_the_plain_mlp_is_fused() -> None:
    assert fuses(scenario(MLP))
    assert not fuses(scenario(MLP, model={"dropout": True}))
    assert not fuses(scenario(CONVNET))


def convnet_members() -> list[RunSpec]:
    """One grouped ConvNet ensemble with batch norm: seeds, learning rate, label noise and noise std differ."""
    sc = {"model": {"batch_norm": True}, "sampling": "without_replacement", "gradient": {"noise": "uniform"}}
    return [
        spec(scenario(CONVNET, **sc), 0, 0),
        spec(scenario(CONVNET, **sc, label_noise=0.2, optimizer={"lr": 0.02}), 1, 2),
        spec(scenario(CONVNET, **{**sc, "gradient": {"noise": "uniform", "noise_std": 0.01}}), 2, 1),
    ]


def test_convnet_members_with_batch_norm_and_uniform_noise_follow_engine_train() -> None:
    specs = convnet_members()
    assert len(group_specs(specs)) == 1
    data = data_for(specs[0].scenario)
    ours = train_ensemble(specs, data, exact_every=1)
    for record, s in zip(ours, specs, strict=True):
        assert_same_run(record, train(s, data))


def test_convnet_members_with_dropout_follow_engine_train_masks_and_all() -> None:
    """The grouped ConvNet draws each member's dropout masks where engine.train draws that run's (CPU)."""
    sc = {"model": {"dropout": True, "batch_norm": True}}
    specs = [spec(scenario(CONVNET, **sc), 0, 0), spec(scenario(CONVNET, **sc, optimizer={"lr": 0.02}), 1, 2)]
    data = data_for(specs[0].scenario)
    ours = train_ensemble(specs, data, exact_every=1)
    for record, s in zip(ours, specs, strict=True):
        assert_same_run(record, train(s, data))


def test_grouped_convnet_gives_the_vmapped_modules_logits_and_gradients() -> None:
    sc = scenario(CONVNET, model={"batch_norm": True, "width": 3})
    data = data_for(sc)
    specs = [spec(sc, i, i) for i in range(3)]
    models = [initial_model(s, data).double() for s in specs]  # float64: the two differ by rounding alone
    members = ensemble._Members(models, torch.device("cpu"))
    x = torch.randn(3, 8, *data.input_shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    leaves = list(members.leaves.values())
    grouped = members.train_logits(x)
    vmapped = members.batches(members.params(), x)
    torch.testing.assert_close(grouped, vmapped, rtol=1e-10, atol=1e-12)
    ref_grads = torch.autograd.grad(vmapped.sum(), leaves)
    for ours, ref in zip(torch.autograd.grad(grouped.sum(), leaves), ref_grads, strict=True):
        torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("members", [mlp_members, "convnet_dropout"])
def test_a_part_of_a_group_trains_its_runs_as_the_whole_group_does(members) -> None:
    """What `runner._units` relies on when it splits a group between workers."""
    if members == "convnet_dropout":
        sc = scenario(CONVNET, model={"dropout": True}, steps=10)
        specs = [spec(sc, i, 3 - i) for i in range(3)]
    else:
        specs = members()
    assert ensemble.members_independent(specs[0].scenario)
    data = data_for(specs[0].scenario)
    whole = train_ensemble(specs, data)
    parts = train_ensemble(specs[0::2], data) + train_ensemble(specs[1::2], data)
    for a in whole:
        [b] = [p for p in parts if p.run_id == a.run_id]
        for key in a.metrics:
            np.testing.assert_allclose(a.metrics[key], b.metrics[key], rtol=1e-6, atol=1e-7, err_msg=key)
        assert a.summary["test_accuracy"] == b.summary["test_accuracy"]


def test_the_mlps_dropout_masks_tie_its_members_together() -> None:
    assert not ensemble.members_independent(scenario(MLP, model={"dropout": True}))
    assert ensemble.members_independent(scenario(CONVNET, model={"dropout": True}))
    # a run function's scenario has no model section: its runs train alone, and grouping them must not fail
    assert ensemble.members_independent(scenario(MLP).model_copy(update={"model": None}))


def test_chunks_give_the_same_runs_as_one_ensemble() -> None:
    specs = mlp_members()
    data = data_for(specs[0].scenario)
    whole = train_ensemble(specs, data)
    chunked = train_ensemble(specs, data, max_members=2)
    for a, b in zip(whole, chunked, strict=True):
        assert a.run_id == b.run_id
        for key in a.metrics:
            np.testing.assert_allclose(a.metrics[key], b.metrics[key], rtol=1e-6, err_msg=key)


def test_mixed_specs_come_back_in_order_and_unsupported_ones_train_alone() -> None:
    specs = [
        spec(scenario(MLP, steps=10), 0, 0, "a"),
        spec(scenario(MLP, steps=10, optimizer={"batch_size": 8}), 0, 0, "b"),  # another ensemble
        spec(scenario(MLP, steps=10, regularisers={"mixup": 0.2}), 0, 0, "c"),  # engine.train
        spec(scenario(MLP, steps=10), 1, 1, "d"),
    ]
    assert [len(g) for g in group_specs(specs)] == [2, 1, 1]
    records = train_ensemble(specs, data_for(specs[0].scenario))
    assert [r.run_id for r in records] == [s.run_id for s in specs]
    assert "sigma_rel_err" not in records[2].summary and "sigma_rel_err" in records[0].summary


def test_ensemble_key_separates_what_members_must_share() -> None:
    base = spec(scenario(MLP), 0, 0)
    per_member = spec(scenario(MLP, label_noise=0.5, optimizer={"lr": 0.2, "weight_decay": 0.1}), 5, 7)
    assert ensemble_key(base) == ensemble_key(per_member)
    assert ensemble_key(base) != ensemble_key(spec(scenario(MLP, optimizer={"batch_size": 4}), 0, 0))
    assert ensemble_key(base) != ensemble_key(spec(scenario(MLP, gradient={"noise": "gaussian"}), 0, 0))
    assert ensemble_key(spec(scenario(MLP, record=["sigma", "K", "sde"]), 0, 0)) is None
    assert ensemble_key(spec(scenario(CONVNET, regularisers={"fgsm_epsilon": 0.1}), 0, 0)) is None


# ---------------------------------------------------------------- divergence


def test_a_diverging_member_is_marked_and_the_others_finish() -> None:
    specs = [spec(scenario(MLP, optimizer={"lr": lr}), i, i) for i, lr in enumerate((0.05, 1e4, 0.1))]
    data = data_for(specs[0].scenario)
    ours = train_ensemble(specs, data, exact_every=1)
    assert ours[1].diverged_at is not None and not ours[1].ok and "diverged" in ours[1].problem
    assert len(ours[1].steps) < len(ours[0].steps) and ours[1].steps[-1] == ours[1].diverged_at
    assert "test_accuracy" not in ours[1].summary
    for i in (0, 2):
        assert_same_run(ours[i], train(specs[i], data))


# ---------------------------------------------------------------- Lipschitz tracking


def test_exact_helpers_match_matrix_norm_and_give_nan_for_non_finite() -> None:
    g = torch.Generator().manual_seed(0)
    mats = [torch.randn(3, 20, 30, generator=g), torch.randn(3, 30, 20, generator=g)]
    mats[0][1, 0, 0] = math.inf
    expected = torch.stack([torch.linalg.matrix_norm(m, ord=2) for m in mats], dim=-1)
    expected[1, 0] = math.nan
    sigmas, vectors = top_singular(mats)
    torch.testing.assert_close(sigmas, expected, rtol=1e-5, atol=0, equal_nan=True)
    torch.testing.assert_close(exact_spectral_norms(mats), expected, rtol=1e-5, atol=0, equal_nan=True)
    for W, v, s in zip(mats, vectors, sigmas.unbind(-1), strict=True):  # v is the top right singular vector
        ok = torch.isfinite(s)
        torch.testing.assert_close((W[ok] @ v[ok].unsqueeze(-1)).squeeze(-1).norm(dim=-1), s[ok])


def test_lanczos_tracks_a_drifting_stack_below_1e3_and_never_overestimates() -> None:
    g = torch.Generator().manual_seed(1)
    W = torch.randn(4, 96, 128, generator=g) / 20  # a bulk spectrum: tiny gaps at the top
    _, vs = top_singular([W])
    for _ in range(20):  # each record: a drift, low-rank and full-rank, as SGD steps give
        W = W + 0.02 * torch.randn(4, 96, 1, generator=g) @ torch.randn(4, 1, 128, generator=g) / 10
        W = W + 0.002 * torch.randn(4, 96, 128, generator=g) / 20
        est, vs = lanczos_spectral_norms([matrix_operator(W)], vs, default_lanczos_steps(10))
        exact = torch.linalg.matrix_norm(W.double(), ord=2).float()
        assert ((est[:, 0] - exact).abs() / exact).max() < 1e-3
        assert (est[:, 0] <= exact * (1 + 1e-5)).all()


@pytest.mark.parametrize("record_every", [1, 10])
def test_tracked_sigmas_stay_within_1e3_of_exact_during_training(record_every: int) -> None:
    sc = scenario(MLP, model={"hidden": [128, 64]}, optimizer={"lr": 0.1}, steps=60, record_every=record_every)
    specs = [spec(sc, 0, 0), spec(sc, 1, 1)]
    data = data_for(sc)
    tracked = train_ensemble(specs, data, exact_every=10**6)  # exact only at the first and last record
    checked = train_ensemble(specs, data, exact_every=1)  # every record checked: the estimate's own error
    for ours, check, s in zip(tracked, checked, specs, strict=True):
        assert check.summary["sigma_rel_err"] < 1e-3
        ref = train(s, data)  # exact sigma at every record
        for key in (k for k in ref.metrics if k.startswith("sigma_")):
            np.testing.assert_allclose(ours.metrics[key], ref.metrics[key], rtol=1e-3, err_msg=key)


def test_records_without_loss_skip_the_monitor() -> None:
    sc = scenario(MLP, record=["sigma", "K"], steps=10)
    [record] = train_ensemble([spec(sc, 0, 0)], data_for(sc))
    assert "loss" not in record.metrics and {"K", "log_K", "sigma_0"} <= record.metrics.keys()


# ---------------------------------------------------------------- CUDA (run with -m gpu on a GPU machine)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _synchronizing_calls(fn) -> int:
    """How many synchronizing CUDA operations fn() calls (torch's sync debug mode warns on each)."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in caught)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("members", [mlp_members, smoothed_mlp_members, convnet_members])
def test_cuda_ensemble_follows_engine_train_on_cuda(members) -> None:
    specs = members()
    data = data_for(specs[0].scenario)
    ours = train_ensemble(specs, data, "cuda", exact_every=1)
    for record, s in zip(ours, specs, strict=True):
        assert record.device.startswith("cuda")
        assert_same_run(record, train(s, data, "cuda"), rtol=1e-3)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("trainer", ["ensemble", "per-run"])
def test_no_host_sync_per_training_step_on_cuda(trainer: str) -> None:
    # Three times the steps, the same three records: the count of synchronizing calls must not grow.
    def runs(steps: int) -> list[RunSpec]:
        sc = scenario(MLP, steps=steps, record_every=steps // 2)
        return [spec(sc, i, i) for i in range(3)]

    data = data_for(runs(20)[0].scenario)
    fit = (
        (lambda s: train_ensemble(s, data, "cuda"))
        if trainer == "ensemble"
        else (lambda s: [train(one, data, "cuda") for one in s])
    )
    fit(runs(20))  # warm-up: first calls may synchronise once (allocator, cuBLAS handles)
    assert _synchronizing_calls(lambda: fit(runs(60))) == _synchronizing_calls(lambda: fit(runs(20)))


# ---------------------------------------------------------------- runner


@pytest.mark.parametrize(("engine", "workers"), [("ensemble", 1), ("auto", 2)])
def test_run_claims_with_the_ensemble_engine_matches_per_run(write_suite, engine: str, workers: int) -> None:
    claim = load_claim(write_suite("tiny"), "quick")
    [per_run] = run_claims([claim], device="cpu", workers=1)
    [ours] = run_claims([claim], device="cpu", workers=workers, engine=engine)
    assert ours.status == per_run.status and len(ours.records) == len(per_run.records)
    for a, b in zip(ours.records, per_run.records, strict=True):
        assert a.run_id == b.run_id
        np.testing.assert_allclose(a.metrics["K"], b.metrics["K"], rtol=1e-4)


def test_units_split_every_group_between_the_workers_unless_its_members_share_masks() -> None:
    growth = [RunSpec("growth", f"g{i}", scenario(CONVNET, steps=40), None, i, 0) for i in range(5)]
    noisy = [RunSpec("noisy", f"n{i}", scenario(MLP), None, i, 0) for i in range(4)]
    dropout = [RunSpec("drop", f"d{i}", scenario(MLP, model={"dropout": True}), None, i, 0) for i in range(3)]
    units = _units(growth + noisy + dropout, "auto", n_workers=2)
    assert sorted(len(u) for u in units) == [2, 2, 2, 3, 3]  # growth 3 + 2, noisy 2 + 2, dropout whole
    assert sorted(s.run_id for u in units for s in u) == sorted(s.run_id for s in growth + noisy + dropout)
    assert all(len({s.claim for s in u}) == 1 for u in units)
    assert [len(u) for u in _units(growth, "ensemble", n_workers=8)] == [1] * 5  # at most one run a part
    assert len(_units(growth, "per-run", n_workers=1)) == 5


def test_run_claims_refuses_an_unknown_engine(write_suite) -> None:
    with pytest.raises(ValueError, match="`engine` must be"):
        run_claims([load_claim(write_suite("tiny"), "quick")], device="cpu", engine="vectorised")
