"""Extension points: factories, torch.optim optimisers and schedules, run functions, the ensemble's
limits, `expect: empirical` and the Python API (docs/extending.md)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from builders import scenario_from
from conftest import TINY_SUITE, merge

import lipbench
from lipbench import factories
from lipbench.errors import LipbenchError, SuiteError
from lipbench.suite import OptimizerSpec, RunSpec, claim_from_mapping
from lipbench.torch import optim
from lipbench.torch.data import load_dataset
from lipbench.torch.engine import train
from lipbench.torch.ensemble import train_ensemble, unsupported

SCENARIO: dict[str, Any] = {
    "model": {"name": "mlp", "hidden": [16]},
    "dataset": {"name": "synthetic", "synthetic_size": 64},
    "optimizer": {"lr": 0.05, "batch_size": 8},
    "steps": 6,
    "record_every": 2,
}
DATA = load_dataset("synthetic", synthetic_size=64)


def spec_of(init_seed: int = 0, sampling_seed: int = 0, **changes: Any) -> RunSpec:
    sc = scenario_from(SCENARIO, **changes)
    return RunSpec("claim", f"run-i{init_seed}-s{sampling_seed}", sc, None, init_seed, sampling_seed)


def claim(changes: dict[str, Any], profile: str | None = None):
    return claim_from_mapping(merge(TINY_SUITE, changes), profile)


def refused(changes: dict[str, Any]) -> SuiteError:
    with pytest.raises(SuiteError) as info:
        claim(changes)
    return info.value


# ---------------------------------------------------------------- optimisers and schedules (torch.optim)


def params() -> list[torch.nn.Parameter]:
    return list(torch.nn.Linear(3, 2).parameters())


def test_sgd_with_momentum_and_nesterov_is_torchs() -> None:
    opt, _ = optim.build(OptimizerSpec(lr=0.1, batch_size=4, momentum=0.9, nesterov=True), params(), 10)
    assert type(opt) is torch.optim.SGD
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["nesterov"] is True


@pytest.mark.parametrize(("name", "cls"), [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_adam_and_adamw_take_betas_eps_and_weight_decay(name: str, cls: type) -> None:
    spec = OptimizerSpec(name=name, lr=1e-3, batch_size=4, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01)
    opt, _ = optim.build(spec, params(), 10)
    assert type(opt) is cls
    assert opt.defaults["betas"] == (0.8, 0.99) and opt.defaults["eps"] == 1e-6
    assert opt.defaults["weight_decay"] == 0.01


def lrs(schedule: dict[str, Any], steps: int = 10, lr: float = 1.0) -> list[float]:
    opt, sched = optim.build(OptimizerSpec(lr=lr, batch_size=4, schedule=schedule), params(), steps)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return [*out, opt.param_groups[0]["lr"]]


def test_schedules_follow_torch_lr_scheduler() -> None:
    assert lrs({}) == [1.0] * 11
    assert lrs({"name": "step", "step_size": 4, "gamma": 0.5})[::4] == [1.0, 0.5, 0.25]
    cosine = lrs({"name": "cosine", "min_lr": 0.1})
    assert cosine[0] == 1.0 and math.isclose(cosine[-1], 0.1) and cosine == sorted(cosine, reverse=True)
    assert math.isclose(lrs({"name": "linear", "min_lr": 0.0})[5], 0.5)
    warm = lrs({"name": "cosine", "warmup_steps": 3})
    assert warm[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0]) and math.isclose(warm[-1], 0.0, abs_tol=1e-12)


def test_a_factory_optimizer_and_schedule_get_lr_and_total_steps() -> None:
    spec = OptimizerSpec(
        name="torch.optim:RMSprop",
        kwargs={"alpha": 0.9},
        lr=0.01,
        batch_size=4,
        schedule={"name": "torch.optim.lr_scheduler:OneCycleLR", "kwargs": {"max_lr": 0.1}},
    )
    opt, sched = optim.build(spec, params(), 10)
    assert type(opt) is torch.optim.RMSprop and opt.defaults["alpha"] == 0.9
    assert type(sched) is torch.optim.lr_scheduler.OneCycleLR and sched.total_steps == 10


@pytest.mark.parametrize(
    ("optimizer", "key", "words"),
    [
        ({"name": "adam", "lr": 1e-3, "batch_size": 8, "momentum": 0.9}, "momentum", "applies to optimizer sgd"),
        ({"lr": 0.1, "batch_size": 8, "betas": [0.9, 0.99]}, "betas", "applies to optimizer adam and adamw"),
        ({"lr": 0.1, "batch_size": 8, "nesterov": True}, "nesterov", "needs momentum above 0"),
        ({"lr": 0.1, "batch_size": 8, "schedule": {"name": "step"}}, "schedule.step_size", "step needs step_size"),
        ({"lr": 0.1, "batch_size": 8, "schedule": {"name": "cosin"}}, "schedule.name", "did you mean 'cosine'?"),
        ({"lr": 0.1, "batch_size": 8, "schedule": {"min_lr": 0.1}}, "schedule.min_lr", "applies to schedule cosine"),
        ({"name": "sgd", "kwargs": {"foo": 1}, "lr": 0.1, "batch_size": 8}, "kwargs", "built-in 'sgd' takes none"),
        ({"name": "torch.optim:SGD", "kwargs": {"momentun": 0.9}, "lr": 0.1, "batch_size": 8}, "kwargs", "'momentum'"),
    ],
)
def test_optimizer_keys_are_checked_at_load_time(optimizer: dict, key: str, words: str) -> None:
    error = refused({"scenario": {"optimizer": {**optimizer, "name": optimizer.get("name", "sgd")}}})
    assert error.key == f"scenario.optimizer.{key}", error
    assert words in error.message


def test_adam_momentum_and_schedules_train_in_the_per_run_engine() -> None:
    sgd = train(spec_of(), DATA)
    for optimizer in (
        {"name": "adam", "lr": 0.01},
        {"name": "adamw", "lr": 0.01, "weight_decay": 0.1, "schedule": {"name": "cosine"}},
        {"momentum": 0.9, "nesterov": True},
        {"schedule": {"name": "exponential", "gamma": 0.5}},
    ):
        record = train(spec_of(optimizer=optimizer), DATA)
        assert record.ok and np.isfinite(record.metrics["K"]).all()
        assert record.metrics["K"][0] == sgd.metrics["K"][0]  # same init seed, same weights
        assert not np.array_equal(record.metrics["K"], sgd.metrics["K"]), optimizer


def test_the_ensemble_lists_what_it_does_not_support_and_such_runs_train_alone() -> None:
    assert unsupported(spec_of()) == []
    specs = [spec_of(0, 0, optimizer={"name": "adamw", "lr": 0.01}), spec_of(1, 0, optimizer={"momentum": 0.5})]
    reasons = [unsupported(s) for s in specs]
    assert reasons == [
        ["scenario.optimizer.name = adamw: the ensemble's update is plain SGD"],
        ["scenario.optimizer.momentum: the ensemble keeps no momentum buffers"],
    ]
    assert "schedule.name = cosine" in unsupported(spec_of(optimizer={"schedule": {"name": "cosine"}}))[0]
    factory = {"name": "torch.nn:Linear", "hidden": [512, 256], "kwargs": {"in_features": 64, "out_features": 10}}
    assert unsupported(spec_of(model=factory))[0].startswith("model torch.nn:Linear: only the built-in networks")
    run = {"run": {"name": f"{__name__}:loop"}}
    assert unsupported(spec_of(**run))[0].startswith(f"a run function ({__name__}:loop)")
    ensemble = train_ensemble(specs, DATA)
    alone = [train(s, DATA) for s in specs]
    for a, b in zip(ensemble, alone, strict=True):
        np.testing.assert_array_equal(a.metrics["K"], b.metrics["K"])


# ---------------------------------------------------------------- factories


def test_factory_model_weights_depend_on_the_init_seed_alone() -> None:
    sc = {"model": {"name": "torch.nn:Linear", "kwargs": {"in_features": 64, "out_features": 10}}}
    state = torch.random.get_rng_state()
    a = factories.build_model("torch.nn:Linear", sc["model"]["kwargs"], DATA, 3)
    b = factories.build_model("torch.nn:Linear", sc["model"]["kwargs"], DATA, 3)
    c = factories.build_model("torch.nn:Linear", sc["model"]["kwargs"], DATA, 4)
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, c.weight)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global stream is left as it was


def test_factory_model_gets_input_shape_and_num_classes_when_it_takes_them() -> None:
    def make(input_shape, num_classes, width=4):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(math.prod(input_shape), num_classes))

    made = factories.call(make, "model", (), {"width": 8}, input_shape=(1, 8, 8), num_classes=10, other=1)
    assert made[1].weight.shape == (10, 64)


def test_factory_dataset_returns_four_tensors(tmp_path, monkeypatch) -> None:
    module = tmp_path / "my_data.py"
    module.write_text(
        "import torch\n"
        "def blobs(n=40, root=None):\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    x, y = torch.randn(n, 1, 2, 2, generator=g), torch.arange(n) % 3\n"
        "    return x, y, x[:8], y[:8]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    data = factories.build_dataset("my_data:blobs", {"n": 30}, tmp_path, 20, None)
    assert data.x_train.shape == (20, 1, 2, 2) and data.num_classes == 3 and len(data.x_test) == 8


def test_builtin_model_keys_are_refused_for_a_factory() -> None:
    error = refused(
        {"scenario": {"model": {"name": "torch.nn:Linear", "kwargs": {"in_features": 64, "out_features": 3}}}}
    )
    assert error.key == "scenario.model.hidden" and "applies to the built-in names" in error.message


# ---------------------------------------------------------------- run functions, the recorder, the honest limits


def test_run_function_limits_are_refused_with_the_key() -> None:
    run = {"run": "torch:manual_seed", "model": None, "optimizer": None}
    # torch.manual_seed takes one positional argument, not the context and the recorder
    assert "must take 2 positional argument(s)" in refused({"sweep": None, "scenario": run}).message
    ok = {"run": f"{__name__}:loop", "model": None, "optimizer": None}
    error = refused({"sweep": None, "scenario": {**ok, "gradient": {"noise": "gaussian", "noise_std": 0.1}}})
    assert error.key == "scenario.gradient" and "your function owns it" in error.message
    error = refused({"sweep": None, "scenario": {**ok, "record": ["sigma", "K", "sde"]}})
    assert error.key == "scenario.record" and "recorder of a run function" in error.message
    error = refused({"scenario": {"model": None}})
    assert error.key == "scenario.model" and "or name your own training function in scenario.run" in error.message


def test_sde_with_adam_is_refused_unless_empirical_and_the_verdict_says_so(tmp_path) -> None:
    changes = {"scenario": {"optimizer": {"name": "adam", "lr": 0.01}, "record": ["sigma", "K", "loss", "sde"]}}
    error = refused(changes)
    assert error.key == "scenario.optimizer.name" and "assume plain SGD" in error.message
    result = lipbench.run(
        merge(TINY_SUITE, {**changes, "expect": "empirical"}), profile=None, device="cpu", out=tmp_path
    )
    outcome = result["init_scale"]
    assert outcome.status in ("PASS", "FAIL")
    assert outcome.sentence.startswith("Empirical question (the SDE terms")
    assert "optimizer adam" in outcome.sentence


def loop(context, recorder, *, skip: int | None = None, explode: int | None = None, lr: float = 0.05) -> None:
    model = context.build_model()
    optimizer, schedule = context.build_optimizer(model)
    batches = context.batches()
    for step in range(context.steps + 1):
        idx = next(batches)
        loss = torch.nn.functional.cross_entropy(model(context.data.x_train[idx]), context.labels[idx])
        if step == explode:
            loss = loss * math.inf
        if step != skip:
            recorder.record(step, model, loss=loss, batch_loss=loss)
        if step == context.steps:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()


def with_loop(**kwargs: Any) -> RunSpec:
    sc = scenario_from(SCENARIO, run={"name": f"{__name__}:loop", "kwargs": kwargs})
    return RunSpec("claim", "run-i0-s0", sc, None, 0, 0)


def test_a_run_function_gets_the_built_in_loops_streams_and_records() -> None:
    own = train(with_loop(), DATA)
    built_in = train(spec_of(), DATA)
    assert own.ok and list(own.steps) == [0, 2, 4, 6]
    assert {"sigma_0", "sigma_1", "K", "log_K", "loss", "batch_loss"} <= set(own.metrics)
    # the same model, optimiser, seeds and sampling stream as lipbench's own loop: the same K
    np.testing.assert_allclose(own.metrics["K"], built_in.metrics["K"], rtol=1e-6)
    assert "test_accuracy" in own.summary


def test_a_loop_that_skips_a_record_is_an_error_naming_the_step() -> None:
    with pytest.raises(LipbenchError, match="skipped step 2 of the recorded steps"):
        train(with_loop(skip=2), DATA)


def test_a_diverging_loop_stops_at_the_record_and_is_reported_diverged() -> None:
    record = train(with_loop(explode=4), DATA)
    assert record.diverged_at == 4 and list(record.steps) == [0, 2, 4]
    assert "diverged" in record.problem


def test_run_function_kwargs_are_checked_against_its_signature() -> None:
    error = refused({"scenario": {"run": {"name": f"{__name__}:loop", "kwargs": {"skipp": 1}}}})
    assert error.key == "scenario.run.kwargs"
    assert "takes no argument 'skipp' (did you mean 'skip'?)" in error.message


# ---------------------------------------------------------------- the Python API


def test_python_api_runs_a_claim_written_in_python(tmp_path) -> None:
    result = lipbench.run(TINY_SUITE, device="cpu", out=tmp_path / "out")
    assert result.verdicts == {"init_scale": "NEW"}  # passed; no baseline for a claim written in Python
    assert result.passed
    frame = result.records
    assert len(frame) == 6 * 3 and {"claim", "run", "sweep_value", "init_seed", "step", "K"} <= set(frame.columns)
    assert (tmp_path / "out" / "python" / "init_scale" / "result.json").is_file()


def test_python_api_refuses_a_bad_claim_with_the_suite_error() -> None:
    with pytest.raises(SuiteError, match=r"python/init_scale.yaml: scenario.stepz: unknown key"):
        lipbench.load(merge(TINY_SUITE, {"scenario": {"stepz": 3}}))


def test_python_api_uses_the_run_cache_and_a_new_folder_per_call(tmp_path, monkeypatch) -> None:
    """As `lipbench run`: a second call trains nothing, and two calls in one second write two folders."""
    monkeypatch.chdir(tmp_path)
    import datetime as dt

    from lipbench import folders

    class SameSecond(dt.datetime):  # both calls start in the same second
        @classmethod
        def now(cls, tz=None):
            return dt.datetime(2026, 1, 1, 12, 0, 0)

    monkeypatch.setattr(folders, "datetime", SameSecond)
    first = lipbench.run(TINY_SUITE, device="cpu")
    second = lipbench.run(TINY_SUITE, device="cpu")
    assert (first.trained, first.reused) == (6, 0)
    assert (second.trained, second.reused) == (0, 6)
    assert second.verdicts == first.verdicts
    assert first.out != second.out and first.out.name[:15] == second.out.name[:15] == "20260101-120000"
    assert first.out.parent == second.out.parent == Path("lipbench-results")
    assert (second.out / "python" / "init_scale" / "result.json").is_file()
    with pytest.raises(KeyError, match="no claim 'missing' in this result; it has init_scale"):
        second["missing"]


def test_python_api_refuses_bad_options_before_training(tmp_path) -> None:
    with pytest.raises(LipbenchError, match="--workers must be at least 1, not 0"):
        lipbench.run(TINY_SUITE, device="cpu", workers=0, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
