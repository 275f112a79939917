"""What an ensemble can run, and which runs train together: the torch-free half of lipbench.torch.ensemble.

`ENSEMBLE_SUPPORT` decides per field and per allowed value of the scenario schema whether runs
with it can be members of one ensemble and whether members may differ in it (a test fails when the
schema gains a field or a value without a decision here). `group_specs` groups a claim's runs by
`ensemble_key`; the runner plans its units with it without importing torch. A run the table keeps
out trains alone with engine.train (`ensemble_obstacle` says why).
"""

from __future__ import annotations

import functools
import json
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from lipbench.registry import DATASETS, MODELS, OPTIMIZERS, SCHEDULES
from lipbench.suite import RunSpec, Scenario


@dataclass(frozen=True)
class Support:
    """How the ensemble treats one scenario field (key "optimizer.lr") or one allowed value of a
    field (key "gradient.noise=uniform").

    runs: for a value, whether runs with it can be ensembled; for a field, whether any value can
    (False: only its default can; a run with another value trains alone with engine.train).
    per_member: members of one ensemble may differ in this field (otherwise they share it).
    """

    runs: bool
    why: str
    per_member: bool = False


_SHARED = Support(True, "the members share it")
_PER_MEMBER = Support(True, "each member has its own", per_member=True)
_RUNS = Support(True, "vectorised")

#: One decision per field and per allowed value of the scenario schema (see `decision_keys`).
ENSEMBLE_SUPPORT: dict[str, Support] = {
    "model.name": _SHARED,
    "model.name=mlp": Support(True, "vectorised; without dropout trained by the hand-written `_fused_mlp_step`"),
    "model.name=convnet": Support(True, "members as the groups of grouped convolutions, through autograd"),
    "model.hidden": _SHARED,
    "model.width": _SHARED,
    "model.dropout": Support(True, "every member its own masks: the ConvNet's are engine.train's, the MLP's not"),
    "model.batch_norm": Support(True, "batch statistics without running ones, per member and channel"),
    "model.init": _SHARED,
    "model.init=default": _RUNS,
    "model.init=normal": _RUNS,
    "model.init_std": _SHARED,
    "dataset.name": _SHARED,
    **{f"dataset.name={name}": _RUNS for name in ("mnist", "fashion-mnist", "cifar10", "cifar100", "digits")},
    "dataset.name=synthetic": _RUNS,
    "dataset.train_size": _SHARED,
    "dataset.test_size": _SHARED,
    "dataset.synthetic_shape": _SHARED,
    "dataset.synthetic_classes": _SHARED,
    "dataset.synthetic_size": _SHARED,
    "optimizer.name": _SHARED,
    "optimizer.name=sgd": _RUNS,
    "optimizer.name=adam": Support(False, "the ensemble's update is plain SGD"),
    "optimizer.name=adamw": Support(False, "the ensemble's update is plain SGD"),
    "optimizer.momentum": Support(False, "the ensemble keeps no momentum buffers"),
    "optimizer.nesterov": Support(False, "the ensemble keeps no momentum buffers"),
    "optimizer.betas": _SHARED,  # Adam's; Adam is not vectorised
    "optimizer.eps": _SHARED,
    "optimizer.schedule.name": _SHARED,
    "optimizer.schedule.name=constant": _RUNS,
    **{
        f"optimizer.schedule.name={name}": Support(False, "the ensemble's learning rate is constant")
        for name in ("step", "exponential", "cosine", "linear")
    },
    "optimizer.schedule.warmup_steps": Support(False, "the ensemble's learning rate is constant"),
    "optimizer.schedule.step_size": _SHARED,  # used by non-constant schedules only
    "optimizer.schedule.gamma": _SHARED,
    "optimizer.schedule.min_lr": _SHARED,
    "optimizer.schedule.kwargs": _SHARED,
    "optimizer.kwargs": _SHARED,  # a factory's: factory names have no decision, so they train alone
    "model.kwargs": _SHARED,
    "dataset.kwargs": _SHARED,
    "run.name": Support(False, "a run function's own loop trains one run at a time"),
    "run.kwargs": _SHARED,
    "optimizer.lr": _PER_MEMBER,
    "optimizer.batch_size": _SHARED,
    "optimizer.weight_decay": _PER_MEMBER,
    "steps": _SHARED,
    "record_every": _SHARED,
    "label_noise": _PER_MEMBER,
    "gradient.scale": _PER_MEMBER,
    "gradient.noise": _SHARED,
    "gradient.noise=none": _RUNS,
    "gradient.noise=gaussian": _RUNS,
    "gradient.noise=uniform": _RUNS,
    "gradient.noise_std": _PER_MEMBER,
    "sampling": _SHARED,
    "sampling=with_replacement": _RUNS,
    "sampling=without_replacement": _RUNS,
    "record": _SHARED,
    **{f"record={name}": _RUNS for name in ("sigma", "K", "loss", "accuracy", "init")},
    "record=sde": Support(False, "the SDE probe needs one module's per-sample gradients"),
    "device": _SHARED,
    "device=any": _RUNS,
    "device=cuda": _RUNS,
    "regularisers.mixup": Support(False, "mixup mixes each run's batch with draws of its own"),
    "regularisers.label_smoothing": _SHARED,
    "regularisers.auto_augment": _SHARED,
    "regularisers.auto_augment=none": _RUNS,
    **{
        f"regularisers.auto_augment={policy}": Support(False, "AutoAugment transforms each sample on its own")
        for policy in ("cifar10", "imagenet", "svhn")
    },
    "regularisers.fgsm_epsilon": Support(False, "FGSM takes each run's own input gradient first"),
    "lipschitz.conv": _SHARED,
    "lipschitz.conv=operator": Support(True, "the members' kernels are the groups of one grouped convolution"),
    "lipschitz.conv=reshaped": Support(True, "tracked as a stack of reshaped-kernel matrices"),
    "lipschitz.conv=bound": Support(True, "certified bounds of the members' kernels, batched"),
}


def _section(field: FieldInfo) -> type[BaseModel] | None:
    for candidate in (field.annotation, *typing.get_args(field.annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _literal_values(annotation: Any) -> tuple[Any, ...]:
    """The values a Literal annotation allows, also inside list[...], X | None and Annotated[...]."""
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    return tuple(v for arg in typing.get_args(annotation) for v in _literal_values(arg))


#: Name fields that take a built-in name or a factory: their built-in names are their allowed values here
#: (a factory or plugin name has no decision, so its runs train alone).
NAMED: dict[str, tuple[str, ...]] = {
    "model.name": MODELS,
    "dataset.name": DATASETS,
    "optimizer.name": OPTIMIZERS,
    "optimizer.schedule.name": SCHEDULES,
}


def schema_fields(model: type[BaseModel] = Scenario, prefix: str = "") -> dict[str, tuple[FieldInfo, tuple[Any, ...]]]:
    """Every field of the scenario schema below its sections, by key path, with the values its
    Literal allows, or the built-in names of a name field (() where it takes any value of its type)."""
    out: dict[str, tuple[FieldInfo, tuple[Any, ...]]] = {}
    for name, field in model.model_fields.items():
        section = _section(field)
        path = f"{prefix}{name}"
        if section is not None:
            out |= schema_fields(section, f"{path}.")
        else:
            out[path] = (field, NAMED.get(path) or _literal_values(field.annotation))
    return out


def decision_keys(model: type[BaseModel] = Scenario) -> list[str]:
    """The keys ENSEMBLE_SUPPORT must hold for `model`: each field, and each allowed value of a Literal field."""
    return [
        key for path, (_, values) in schema_fields(model).items() for key in (path, *(f"{path}={v}" for v in values))
    ]


_fields = functools.cache(schema_fields)  # per scenario class: derived once


_ABSENT = object()  # below a section that is not given (scenario.run: None)


def _value(scenario: Scenario, path: str) -> Any:
    return functools.reduce(
        lambda node, key: _ABSENT if node in (None, _ABSENT) else getattr(node, key), path.split("."), scenario
    )


def ensemble_obstacle(scenario: Scenario) -> str | None:
    """Why runs of this scenario train alone with engine.train instead of in an ensemble, or None."""
    for path, (field, allowed) in _fields(type(scenario)).items():
        value = _value(scenario, path)
        if value is _ABSENT:
            continue
        decision = ENSEMBLE_SUPPORT.get(path)
        if decision is None:
            return f"scenario.{path} has no decision in lipbench.ensemble_support.ENSEMBLE_SUPPORT"
        if not decision.runs and value != field.default:
            return f"scenario.{path}: {decision.why}"
        values = value if isinstance(value, list) else [value]
        for v in values if allowed else ():
            decision = ENSEMBLE_SUPPORT.get(f"{path}={v}")
            if decision is None or not decision.runs:
                why = decision.why if decision else "no decision in lipbench.ensemble_support.ENSEMBLE_SUPPORT"
                return f"scenario.{path} = {v}: {why}"
    return None


def unsupported(spec: RunSpec) -> list[str]:
    """What of the run's scenario this module does not implement, one reason each; such a run trains
    alone with engine.train (the `ensemble` engine falls back to it, so every scenario still runs)."""
    sc = spec.scenario
    if sc.run is not None:
        return [f"a run function ({sc.run.name}): its own loop trains one run at a time"]
    reasons = []
    if sc.model.name not in MODELS:
        reasons.append(f"model {sc.model.name}: only the built-in networks are stacked into one vmapped module")
    obstacle = ensemble_obstacle(sc)
    if obstacle is not None:
        reasons.append(obstacle)
    return reasons


def ensemble_key(spec: RunSpec) -> str | None:
    """What members of one ensemble must share (a JSON string), or None if the run must train alone."""
    if unsupported(spec):
        return None
    fields = _fields(type(spec.scenario))
    values = {path: _value(spec.scenario, path) for path in fields if not ENSEMBLE_SUPPORT[path].per_member}
    shared = {path: v for path, v in values.items() if v is not _ABSENT}
    return json.dumps(shared, sort_keys=True)


def can_ensemble(spec: RunSpec) -> bool:
    return ensemble_key(spec) is not None


def group_specs(specs: Sequence[RunSpec]) -> list[list[RunSpec]]:
    """Specs that can train as one ensemble, in first-seen order; a run that cannot is a group of one."""
    groups: dict[str, list[RunSpec]] = {}
    alone: list[list[RunSpec]] = []
    order: list[list[RunSpec]] = []
    for spec in specs:
        key = ensemble_key(spec)
        if key is None:
            alone.append([spec])
            order.append(alone[-1])
        elif key in groups:
            groups[key].append(spec)
        else:
            groups[key] = [spec]
            order.append(groups[key])
    return order


def members_independent(scenario: Scenario) -> bool:
    """Whether a member trains the same in any ensemble (alone, or with any other members): all but the MLP
    with dropout, whose masks under vmap come from one generator shared by the ensemble. A run function's
    scenario (no model section) trains alone anyway."""
    return scenario.model is None or scenario.model.name != "mlp" or not scenario.model.dropout


def fuses(scenario: Scenario) -> bool:
    """Whether the ensemble trains this scenario's members with `_fused_mlp_step` (the plain MLP)."""
    return scenario.model.name == "mlp" and not scenario.model.dropout
