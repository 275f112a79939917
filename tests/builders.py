"""Small builders the unit tests share (imported as `builders`: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import itertools
import json
import math
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from lipbench.baselines import build_baseline
from lipbench.outcome import ClaimOutcome
from lipbench.records import RunRecord
from lipbench.runner import judge
from lipbench.session import Session
from lipbench.suite import ResolvedClaim, Scenario, load_claim


def scenario_from(base: dict[str, Any], **changes: Any) -> Scenario:
    """`base` with top-level keys replaced and sections updated (model={"dropout": True} keeps the rest)."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    return Scenario.model_validate(data)


def float64_mlp(widths: tuple[int, ...], seed: int) -> nn.Sequential:
    """Linear-ReLU-...-Linear with the given widths, in float64, seeded through the global RNG."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).to(torch.float64)


def weight_names(model: nn.Module) -> list[str]:
    """The weights of the model's Linear and Conv2d layers, by parameter name."""
    return [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def live_group_members(pgid: int) -> list[str]:
    """Live (not zombie) processes of a process group, as 'pid name' strings (Linux: reads /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        if int(rest[2]) == pgid and rest[0] not in ("Z", "X"):
            found.append(f"{entry.name} {name}")
    return found


# --------------------------------------------------------------------------- synthetic claims (no training)

SCENARIO = {
    "model": {"name": "mlp", "hidden": [32]},
    "dataset": {"name": "synthetic", "synthetic_shape": [1, 4, 4], "synthetic_size": 256},
    "optimizer": {"lr": 0.1, "batch_size": 16},
    "steps": 60,
    "record_every": 20,
}

#: Four synthetic claims, one per assertion; `final` gives each run's final K from (sweep, init, sampling).
CLAIMS: dict[str, dict[str, Any]] = {
    "label_noise": {
        "sweep": {"axis": "scenario.label_noise", "values": [0.0, 0.5, 0.9]},
        "seeds": {"init": 3, "sampling": 1},
        "assertion": {"test": "monotone_trend", "direction": "decreasing", "alpha": 0.05},
    },
    "batch": {
        "sweep": {"axis": "scenario.optimizer.batch_size", "values": [8, 16, 32, 64, 128, 256]},
        "seeds": {"init": 2, "sampling": 10},
        "assertion": {"test": "power_law", "expected_exponent": -1.0, "margin": 1.0},
    },
    "sampling": {
        "seeds": {"init": 3, "sampling": 4},
        "assertion": {"test": "invariance", "max_relative_spread": 0.05},
    },
    "growth": {
        "seeds": {"init": 3, "sampling": 1},
        "assertion": {"test": "growth_trend", "quantity": "log_K", "window": 0.5, "alpha": 0.05},
    },
}


def write_claim(folder: Path, name: str, **changes: Any) -> Path:
    """A suite file `folder/<name>.yaml` of one of CLAIMS (profile quick), with top-level changes."""
    data = {"schema_version": 1, "name": name, "claim": f"synthetic {name}", "scenario": SCENARIO}
    data.update(CLAIMS[name])
    data.update(changes)
    data["profiles"] = {"quick": {}}
    path = folder / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def synthetic_records(claim: ResolvedClaim, seed: int = 0, strength: float = 1.0) -> list[RunRecord]:
    """Records whose final values obey the claim (`strength` scales the effect), no training."""
    rng = np.random.default_rng(seed)
    records = []
    for spec in claim.runs():
        name, v = claim.name, spec.sweep_value
        if name == "growth":
            steps = np.arange(0, 1000, 50)
            log_k = 0.5 + strength * 0.002 * steps + rng.normal(0, 0.01, len(steps))
        else:
            if name == "label_noise":
                final = 3.0 - strength * 2.0 * v + rng.normal(0, 0.1)
            elif name == "batch":
                final = 5.0 + rng.normal(0, math.sqrt(1.0 / v))
            else:  # sampling: init moves K, sampling barely does
                final = 10.0 + 2.0 * spec.init_seed + rng.normal(0, 0.05)
            steps, log_k = np.array([0, 100]), np.log([1.0, final])
        records.append(
            RunRecord(
                claim.name,
                spec.run_id,
                v,
                spec.init_seed,
                spec.sampling_seed,
                steps.astype(np.int64),
                {"log_K": log_k, "K": np.exp(log_k)},
            )
        )
    return records


def synthetic_outcome(folder: Path, name: str, seed: int = 0, strength: float = 1.0, **changes: Any) -> ClaimOutcome:
    claim = load_claim(write_claim(folder, name, **changes), "quick")
    return judge(claim, synthetic_records(claim, seed, strength))


def baseline_of(outcome: ClaimOutcome, device: str = "cpu") -> dict[str, Any]:
    return json.loads(json.dumps(build_baseline(outcome, {"device": device, "lipbench": "test"})))


def save_run(out: Path, outcomes: list[ClaimOutcome], baselines: Path) -> Path:
    session = Session(out, "cpu", mlflow=False, baselines=baselines, warn=_fail)
    for o in outcomes:
        session.finish_claim(o)
    return out


def _fail(text: str) -> None:
    pytest.fail(text)


#: tests/malformed/<stem>.yaml -> (key path the message names, "" for a file-level problem; words it must contain)
MALFORMED_SUITES: dict[str, tuple[str, tuple[str, ...]]] = {
    "unknown_top_level_key": ("notes", ("unknown key", "allowed here: schema_version", "scenario")),
    "misspelt_optimiser": ("scenario.optimiser", ("did you mean 'optimizer'?", "allowed here:")),
    "steps_not_a_number": ("scenario.steps", ("valid integer", "'many'")),
    "negative_steps": ("scenario.steps", ("greater than 0", "-200")),
    "record_every_exceeds_steps": ("scenario.record_every", ("must not exceed steps (200)", "500")),
    "label_noise_above_one": ("scenario.label_noise", ("less than or equal to 1", "1.5")),
    "dataset_underscore": ("scenario.dataset.name", ("did you mean 'fashion-mnist'?", "'digits'", "'synthetic'")),
    "unknown_model": (
        "scenario.model.name",
        ("'resnet18' is not allowed", "'mlp', 'convnet'", "package.module:callable"),
    ),
    "unknown_assertion_test": ("assertion", ("did you mean 'monotone_trend'?", "available: monotone_trend")),
    "assertion_unknown_param": ("assertion.min_rho", ("did you mean 'min_abs_rho'?", "allowed here: test")),
    "alpha_out_of_range": ("assertion.alpha", ("less than or equal to 0.5", "got 5")),
    "missing_scenario": ("scenario", ("required key is missing", "needs schema_version")),
    "missing_assertion": ("assertion", ("required key is missing", "needs schema_version")),
    "tab_indentation": ("", ("not valid YAML", "line 12", "'\\t'")),
    "bad_indentation": ("", ("not valid YAML", "line 12")),
    "empty": ("", ("is empty", "a suite file is a mapping")),
    "top_level_list": ("", ("is a list", "a suite file is a mapping")),
    "sweep_axis_not_under_scenario": ("sweep.axis", ("key path under scenario", "'label_noise'")),
    "sweep_axis_misspelt": ("sweep.axis", ("did you mean 'label_noise'?", "allowed there:")),
    "sweep_value_out_of_range": ("sweep.values.3", ("2.0 is not allowed for scenario.label_noise", "less than")),
    "duplicate_sweep_values": ("sweep.values", ("must all differ", "0.4 appears twice")),
    "profile_unknown_key": ("profiles.quick.scenario.stepz", ("did you mean 'steps'?", "allowed here:")),
    "expect_fail_without_reason": ("expect_reason", ("expect: fail needs expect_reason",)),
    "schema_version_2": ("schema_version", ("2 is not allowed", "should be 1")),
    "mlp_batch_norm": ("scenario.model.batch_norm", ("convnet only",)),
    "optimizer_momentum": ("scenario.optimizer.momentum", ("momentum applies to optimizer sgd, not 'adam'",)),
    "factory_not_importable": ("scenario.model.name", ("does not import", "no module named 'my_models'", "pip")),
    "factory_not_callable": ("scenario.model.name", ("'math:pi' is a float, not callable",)),
    "factory_bad_kwarg": ("scenario.model.kwargs", ("takes no argument 'biass'", "did you mean 'bias'?", "it takes:")),
    "sde_with_adam": ("scenario.optimizer.name", ("assume plain SGD", "optimizer adam", "expect: empirical")),
    "profiles_as_list": ("profiles", ("must map profile names",)),
    "claim_name_with_spaces": ("name", ("lower-case letters", "'Label noise (tiny)'")),
    "duplicate_key": ("scenario.optimizer.lr", ("key given twice (lines 12 and 14)", "remove one of the two")),
    "learning_rate_nan": ("scenario.optimizer.lr", ("must be a finite number, got .nan", "replace it")),
    "profile_noise_std_inf": ("profiles.quick.scenario.gradient.noise_std", ("must be a finite number, got .inf",)),
}


def fatal_model(input_shape: tuple[int, ...], num_classes: int, die_at_init_seed: int = -1) -> nn.Module:
    """A model factory (`builders:fatal_model`) whose worker process dies, as on running out of memory,
    when it builds the model of `die_at_init_seed` (factories build under the init seed)."""
    import os

    if torch.initial_seed() == die_at_init_seed:
        os._exit(137)
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), 16), nn.ReLU(), nn.Linear(16, num_classes))
