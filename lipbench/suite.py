"""Suite files: one YAML file is one claim of the paper, validated by a strict schema.

A file holds the claim (scenario + sweep + seeds + assertion) and named `profiles` that
override parts of it. Resolution order: file -> profile -> `--set key.path=value`; the
result goes through the same validation whatever its origin, and any problem becomes one
`SuiteError` line naming the file, the key path (as written by the user: `profiles.quick...`
or `--set ...` when it came from there) and what is allowed.

Input is strict: a key given twice in one mapping (YAML would keep the last silently) and a
number that is not finite (`.nan`, `.inf`, `-.inf`, also through a profile or `--set`) are
refused when the file is loaded, before any training.

`include: base.yaml` (or a list of paths), each relative to the including file, merges the
included mappings under the file's own keys: the file's keys win, mappings are merged deeply,
lists are replaced, and of several includes a later one wins over an earlier one. Included files
may include others; a cycle is refused. Base files meant only to be included are named `_*.yaml`
or kept in a folder whose name starts with `_` (e.g. `suites/_base/`); a folder search
(lipbench.discovery) skips them, so they are never collected as claims.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, create_model, field_validator
from pydantic_core import PydanticCustomError

from lipbench import factories
from lipbench.assertions import ASSERTIONS, Assertion, AssertionSpec, assertion_model, available_tests
from lipbench.discovery import collection_of
from lipbench.errors import SuiteError
from lipbench.factories import did_you_mean as _did_you_mean
from lipbench.registry import DATASETS, MODELS, OPTIMIZERS, SCHEDULES

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Kwargs = dict[str, Any]


class Strict(BaseModel):
    # allow_inf_nan=False: `.nan` / `.inf` in a numeric field fail validation (type finite_number).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _callable_name(kind: str, builtins: tuple[str, ...], value: str) -> str:
    """A built-in name, a plugin's name, or an importable "package.module:callable" (imported here)."""
    try:
        reference = factories.reference_for(kind, value, builtins)
        if reference is not None:
            factories.resolve(reference)
    except factories.FactoryError as e:
        raise PydanticCustomError("factory", "{problem}", {"problem": str(e)}) from None
    return value


def _callable_kwargs(kind: str, builtins: tuple[str, ...], value: Kwargs, info: ValidationInfo) -> Kwargs:
    name = info.data.get("name")
    if name is not None:  # else the name itself was refused, and that is the error reported
        try:
            factories.validate(kind, name, value, builtins)
        except factories.FactoryError as e:
            raise PydanticCustomError("factory", "{problem}", {"problem": str(e)}) from None
    return value


def _builtin_only(model: type[BaseModel], builtins: tuple[str, ...], value: Any, info: ValidationInfo) -> Any:
    """A key of the built-in implementation, set away from its default for a factory: refused."""
    name = info.data.get("name")
    if name is not None and name not in builtins and value != model.model_fields[info.field_name].default:
        raise ValueError(f"{info.field_name} applies to the built-in names; give a factory its arguments in kwargs")
    return value


class CallableSpec(Strict):
    """A `name` (built in, an installed plugin's, or an importable "package.module:callable") with the
    `kwargs` of a callable: the name is resolved and the keywords checked against its signature when
    the file is loaded. Subclasses say which `KIND` of callable and which `BUILTINS` they have."""

    KIND: ClassVar[str]
    BUILTINS: ClassVar[tuple[str, ...]] = ()

    @field_validator("name", check_fields=False)
    @classmethod
    def _known_name(cls, value: str) -> str:
        return _callable_name(cls.KIND, cls.BUILTINS, value)

    @field_validator("kwargs", check_fields=False)
    @classmethod
    def _known_kwargs(cls, value: Kwargs, info: ValidationInfo) -> Kwargs:
        return _callable_kwargs(cls.KIND, cls.BUILTINS, value, info)


class ModelSpec(CallableSpec):
    KIND, BUILTINS = "model", MODELS
    name: str = Field(
        description=(
            f"A built-in network ({', '.join(f'`{m}`' for m in MODELS)}; [the networks](docs/science.md#networks) "
            "describes them), an installed plugin's model, or `package.module:callable` returning an `nn.Module` "
            "(it gets `input_shape` and `num_classes` when it takes them, and is built under the init seed)."
        )
    )
    kwargs: Kwargs = Field(
        default_factory=dict, validate_default=True, description="Keyword arguments of a factory or plugin model."
    )
    hidden: list[Annotated[int, Field(gt=0)]] = [512, 256]
    width: Annotated[int, Field(gt=0)] = 32
    dropout: bool = False
    batch_norm: bool = False
    init: Literal["default", "normal"] = "default"
    init_std: Annotated[float, Field(gt=0)] = 0.01

    @field_validator("hidden", "width", "dropout", "batch_norm", "init", "init_std")
    @classmethod
    def _builtin_model_keys(cls, value: Any, info: ValidationInfo) -> Any:
        return _builtin_only(cls, MODELS, value, info)

    @field_validator("batch_norm")
    @classmethod
    def _batch_norm_convnet_only(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("name") == "mlp":
            raise ValueError("batch_norm applies to the convnet only; the paper's MLP has none")
        return value


class DatasetSpec(CallableSpec):
    KIND, BUILTINS = "dataset", DATASETS
    name: str = Field(
        description=(
            f"A built-in dataset ({', '.join(f'`{d}`' for d in DATASETS)}), an installed plugin's dataset, or "
            "`package.module:callable` returning a `lipbench.torch.data.Dataset` or the tuple "
            "`(x_train, y_train, x_test, y_test)` (it gets `root`, the data folder, when it takes it)."
        )
    )
    kwargs: Kwargs = Field(
        default_factory=dict, validate_default=True, description="Keyword arguments of a factory or plugin dataset."
    )
    train_size: Annotated[int, Field(gt=0)] | None = None
    test_size: Annotated[int, Field(gt=0)] | None = None
    synthetic_shape: tuple[int, int, int] = (1, 8, 8)
    synthetic_classes: Annotated[int, Field(ge=2)] = 10
    synthetic_size: Annotated[int, Field(gt=0)] = 2048

    @field_validator("synthetic_shape", "synthetic_classes", "synthetic_size")
    @classmethod
    def _builtin_dataset_keys(cls, value: Any, info: ValidationInfo) -> Any:
        return _builtin_only(cls, DATASETS, value, info)


class ScheduleSpec(CallableSpec):
    """The learning rate over training, stepped once per training step (torch.optim.lr_scheduler)."""

    KIND, BUILTINS = "schedule", SCHEDULES

    name: str = Field(
        "constant",
        description=(
            "`constant`, `step` (times `gamma` every `step_size` steps), `exponential` (times `gamma` every step), "
            "`cosine` (to `min_lr` at the last step) or `linear` (to `min_lr`); an installed plugin's schedule, or "
            "`package.module:callable` taking the optimiser (and `total_steps` when it takes it) and returning an "
            "`LRScheduler`."
        ),
    )
    kwargs: Kwargs = Field(
        default_factory=dict, validate_default=True, description="Keyword arguments of a factory or plugin schedule."
    )
    warmup_steps: Annotated[int, Field(ge=0)] = 0  # linear warmup from lr / (warmup_steps + 1) to lr, then the schedule
    step_size: Annotated[int, Field(gt=0)] | None = Field(None, validate_default=True)  # `step` only (required there)
    gamma: Annotated[float, Field(gt=0, le=1)] | None = Field(None, validate_default=True)  # `step`, `exponential`
    min_lr: Annotated[float, Field(ge=0)] = 0.0  # `cosine` and `linear`: the learning rate at the last step

    @field_validator("step_size", "gamma", "min_lr")
    @classmethod
    def _applies(cls, value: Any, info: ValidationInfo) -> Any:
        users = {"step_size": ("step",), "gamma": ("step", "exponential"), "min_lr": ("cosine", "linear")}
        name, allowed = info.data.get("name"), users[info.field_name]
        if name is not None and value not in (None, 0.0) and name not in allowed:
            raise ValueError(f"{info.field_name} applies to schedule {' and '.join(allowed)}, not {name!r}")
        needed = {"step_size": "step", "gamma": "exponential"}.get(info.field_name)
        if value is None and name == needed:
            raise ValueError(f"schedule {name} needs {info.field_name}")
        return value

    @property
    def constant(self) -> bool:
        return self.name == "constant" and self.warmup_steps == 0


class OptimizerSpec(CallableSpec):
    KIND, BUILTINS = "optimizer", OPTIMIZERS
    name: str = Field(
        "sgd",
        description=(
            "`sgd` (with `momentum` and `nesterov`), `adam` or `adamw` (with `betas` and `eps`), built by torch.optim; "
            "an installed plugin's optimizer, or `package.module:callable` taking the parameters (and `lr`, "
            "`weight_decay` when it takes them), e.g. `torch.optim:RMSprop`."
        ),
    )
    kwargs: Kwargs = Field(
        default_factory=dict, validate_default=True, description="Keyword arguments of a factory or plugin optimiser."
    )
    lr: Annotated[float, Field(gt=0)]  # the base learning rate (see schedule)
    batch_size: Annotated[int, Field(gt=0)]  # mini-batch size b
    weight_decay: Annotated[float, Field(ge=0)] = 0.0  # sgd, adam: + weight_decay * W to the gradient; adamw: decoupled
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0  # `sgd` only
    nesterov: bool = False  # `sgd` with momentum only
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] | None = None  # adam(w)
    eps: Annotated[float, Field(gt=0)] | None = None  # `adam` and `adamw` (torch's default 1e-8)
    schedule: ScheduleSpec = ScheduleSpec()  # the learning rate over training

    @field_validator("momentum", "nesterov", "betas", "eps")
    @classmethod
    def _applies(cls, value: Any, info: ValidationInfo) -> Any:
        users = {"momentum": ("sgd",), "nesterov": ("sgd",), "betas": ("adam", "adamw"), "eps": ("adam", "adamw")}
        name, allowed = info.data.get("name"), users[info.field_name]
        if name is not None and value not in (None, 0.0, False) and name not in allowed:  # a tuple: no substring test
            raise ValueError(f"{info.field_name} applies to optimizer {' and '.join(allowed)}, not {name!r}")
        if info.field_name == "nesterov" and value and not info.data.get("momentum"):
            raise ValueError("nesterov needs momentum above 0 (torch.optim.SGD refuses it without)")
        return value

    @property
    def plain_sgd(self) -> bool:
        """Plain SGD at a constant learning rate: the update the SDE theory (the paper, §7) describes."""
        return self.name == "sgd" and self.momentum == 0 and self.schedule.constant


class GradientSpec(Strict):
    """Noisy gradients (the paper, §8.4): the applied gradient is scale * g_hat + noise."""

    scale: Annotated[float, Field(gt=0)] = 1.0
    noise: Literal["none", "gaussian", "uniform"] = "none"
    noise_std: Annotated[float, Field(ge=0)] = 0.0


class RegularisersSpec(Strict):
    """Training-time regularisers (the paper, §7), each off by default.

    Applied to each mini-batch in this order: auto_augment, mixup, FGSM (see lipbench.torch.regularisers).
    """

    mixup: Annotated[float, Field(ge=0)] = 0.0  # alpha of lambda ~ Beta(alpha, alpha); 0: off
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0
    auto_augment: Literal["none", "cifar10", "imagenet", "svhn"] = "none"  # a torchvision policy
    fgsm_epsilon: Annotated[float, Field(ge=0)] = 0.0  # L-inf radius in model-input (standardised) units; 0: off


RecordName = Literal["sigma", "K", "loss", "accuracy", "sde", "init"]


class RunFunctionSpec(CallableSpec):
    """Your own training loop, called with the run context and a recorder ([guide](docs/extending.md))."""

    KIND = "run"

    name: str = Field(
        description=(
            "`package.module:callable` (or an installed plugin's run name) called as `fn(context, recorder, **kwargs)`."
        )
    )
    kwargs: Kwargs = Field(
        default_factory=dict, validate_default=True, description="Options handed to the function (`context.options`)."
    )


class Scenario(Strict):
    run: RunFunctionSpec | None = None  # your own training loop instead of lipbench's ([guide](docs/extending.md))
    model: ModelSpec | None = Field(None, validate_default=True)  # required unless `run` names your own loop
    dataset: DatasetSpec
    optimizer: OptimizerSpec | None = Field(None, validate_default=True)  # required unless `run` names your own loop
    steps: Annotated[int, Field(gt=0)]
    record_every: Annotated[int, Field(gt=0)]
    label_noise: Probability = 0.0
    gradient: GradientSpec = GradientSpec()
    sampling: Literal["with_replacement", "without_replacement"] = "with_replacement"
    record: list[RecordName] = ["sigma", "K", "loss", "accuracy"]
    device: Literal["any", "cuda"] = "any"
    regularisers: RegularisersSpec = RegularisersSpec()

    @field_validator("run", mode="before")
    @classmethod
    def _run_as_text(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value  # `run: pkg.mod:train` is short for {name: ...}

    @field_validator("model", "optimizer")
    @classmethod
    def _loop_needs(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None and info.data.get("run") is None and "run" in info.data:
            raise ValueError(
                f"required key is missing: lipbench's own loop needs scenario.{info.field_name} "
                "(or name your own training function in scenario.run)"
            )
        return value

    @field_validator("gradient", "regularisers")
    @classmethod
    def _own_loop_only(cls, value: BaseModel, info: ValidationInfo) -> BaseModel:
        """What lipbench's own loop applies cannot be applied inside someone else's loop: refused, not ignored."""
        if info.data.get("run") is not None and value != type(value)():
            raise ValueError(f"{info.field_name} is applied by lipbench's own loop; with run, your function owns it")
        return value

    @field_validator("record")
    @classmethod
    def _recorder_records(cls, value: list[str], info: ValidationInfo) -> list[str]:
        probes = [r for r in value if r in ("sde", "init")]
        if info.data.get("run") is not None and probes:
            raise ValueError(
                f"{probes[0]} is measured inside lipbench's own loop; the recorder of a run function stores sigma, "
                "K, loss and your own metrics"
            )
        model = info.data.get("model")
        if "init" in value and model is not None and model.name not in MODELS:
            raise ValueError(
                "init predicts sigma at lipbench's own initialisation of a built-in model; a factory model "
                "initialises itself"
            )
        return value

    @field_validator("record_every")
    @classmethod
    def _record_within_steps(cls, value: int, info: ValidationInfo) -> int:
        # A field validator (not a model one), so the error names scenario.record_every.
        steps = info.data.get("steps")
        if steps is not None and value > steps:
            raise ValueError(f"record_every must not exceed steps ({steps})")
        return value


class Sweep(Strict):
    axis: str = Field(pattern=r"^scenario(\.[a-z_]+)+$")
    values: list[float] = Field(min_length=2)

    @field_validator("values")
    @classmethod
    def _distinct(cls, values: list[float]) -> list[float]:
        tags = [f"{v:g}" for v in values]  # the form run ids use
        twice = next((t for i, t in enumerate(tags) if t in tags[:i]), None)
        if twice is not None:
            raise ValueError(f"sweep values must all differ, but {twice} appears twice")
        return values


class Seeds(Strict):
    """Init and mini-batch sampling seeds vary separately (the paper varies them separately)."""

    init: Annotated[int, Field(gt=0)] = 1
    sampling: Annotated[int, Field(gt=0)] = 1
    base: Annotated[int, Field(ge=0)] = 0


class Claim(Strict):
    schema_version: Literal[1]
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_\-]*$")
    claim: str = Field(min_length=1)
    paper: str = ""
    scenario: Scenario
    sweep: Sweep | None = None
    seeds: Seeds = Seeds()
    assertion: AssertionSpec
    expect: Literal["pass", "fail", "empirical"] = "pass"
    expect_reason: str = Field("", validate_default=True)
    strict: bool = False

    @field_validator("expect_reason")
    @classmethod
    def _expectation_has_reason(cls, value: str, info: ValidationInfo) -> str:
        # A field validator (not a model one), so the error names expect_reason.
        if info.data.get("expect") == "fail" and not value.strip():
            raise ValueError("expect: fail needs expect_reason, one sentence on why the claim does not reproduce")
        return value

    @field_validator("assertion")
    @classmethod
    def _assertion_has_its_records(cls, value: Any, info: ValidationInfo) -> Any:
        # Tests that read probe outputs (sde terms, init theory) name them in `needs_record`.
        scenario = info.data.get("scenario")
        missing = [r for r in getattr(value, "needs_record", ()) if scenario is not None and r not in scenario.record]
        if missing:
            raise ValueError(f"test {value.test} needs {missing} in scenario.record")
        return value


def nested_models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models a field's annotation refers to (through unions, Annotated, lists, Optional):
    the one walk of the schema, for error messages and for the generated reference."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    if typing.get_origin(annotation) is Literal:
        return out
    for arg in typing.get_args(annotation):
        out += [m for m in nested_models(arg) if m not in out]
    return out


def claim_model(data: Any) -> type[Claim]:
    """The model a claim's mapping validates against: `Claim`, or `Claim` holding an installed plugin's test.

    The built-in tests form `Claim`'s union; a `test:` none of them has is looked up among the plugins
    then (importing that one plugin), so loading the schema reads no entry points. A name no test has
    is left to `Claim`, whose error lists every test; `factories.FactoryError` when the plugin's cannot
    be used.
    """
    assertion = data.get("assertion") if isinstance(data, dict) else None
    test = assertion.get("test") if isinstance(assertion, dict) else None  # another type: the schema says so
    if not isinstance(test, str) or test in ASSERTIONS:
        return Claim
    plugin = assertion_model(test)
    return Claim if plugin is None else _claim_with(plugin)


@functools.cache
def _claim_with(assertion: type[Assertion]) -> type[Claim]:
    return create_model("Claim", __base__=Claim, __module__=__name__, assertion=(assertion, ...))


#: A claim's identity in a run: two collections may hold claims of the same name, and a claim runs per profile.
ClaimKey = tuple[str, str, str]  # (collection, name, profile)


def sgd_theory_problem(scenario: Scenario) -> tuple[tuple[str, ...], str] | None:
    """(key path, why) when the scenario records the SDE terms but does not train with plain SGD.

    The SDE terms (and the variance prediction built on them) describe the update -lr * gradient at a
    constant learning rate (the paper, §7); the probe measures that update. With momentum, Adam(W), a
    schedule or a factory optimiser the step is another one, so the terms are not the dynamics'.
    """
    opt = scenario.optimizer
    if "sde" not in scenario.record or opt is None or opt.plain_sgd:
        return None
    if opt.name != "sgd":
        key, what = "name", f"optimizer {opt.name}"
    elif opt.momentum:
        key, what = "momentum", f"momentum {opt.momentum:g}"
    else:
        key, what = "schedule", f"schedule {opt.schedule.name}" + (" with warmup" if opt.schedule.warmup_steps else "")
    return ("scenario", "optimizer", key), (
        f"the SDE terms (scenario.record: sde) and the variance prediction assume plain SGD at a constant "
        f"learning rate (the step -lr * gradient), but this scenario uses {what}"
    )


def empirical_note(claim: Claim) -> str:
    """The words an `expect: empirical` verdict starts with: which assumption the run leaves."""
    theory = sgd_theory_problem(claim.scenario)
    why = f"{theory[1]}; " if theory else ""
    return f"Empirical question ({why}measured here, not predicted by the theory):"


EMPIRICAL_HOW = "use plain sgd (no momentum, constant schedule), or mark the claim `expect: empirical` to measure it"


@dataclass(frozen=True)
class RunSpec:
    """One training run of a claim: the scenario with its sweep value applied, and its seeds."""

    claim: str
    run_id: str
    scenario: Scenario
    sweep_value: float | None
    init_seed: int
    sampling_seed: int
    key: ClaimKey | None = None  # the claim's (collection, name, profile): the runner judges its records together


#: The prose of a claim: it does not decide the numbers, so the scenario hash leaves it out.
PROSE_KEYS = frozenset({"claim", "paper", "expect_reason"})


@dataclass(frozen=True)
class ResolvedClaim:
    """A claim resolved for one profile, ready to plan runs from.

    `file_claim` is the claim as its suite file defines it for this profile, before any `--set`
    (None when unknown, e.g. rebuilt from a results folder). Both scenario hashes are computed once,
    here: `scenario_hash()` of the claim as it runs, `file_hash` of `file_claim`.
    """

    claim: Claim
    file: Path
    profile: str
    collection: str
    profiles: tuple[str, ...]
    file_claim: Claim | None = field(default=None, compare=False, repr=False)
    file_hash: str | None = field(init=False, compare=False, repr=False)
    _hash: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        run_hash = _scenario_hash(self.claim)
        unset = self.file_claim
        file_hash = None if unset is None else run_hash if unset == self.claim else _scenario_hash(unset)
        object.__setattr__(self, "_hash", run_hash)  # a frozen dataclass: set once, here
        object.__setattr__(self, "file_hash", file_hash)

    @property
    def name(self) -> str:
        return self.claim.name

    @property
    def key(self) -> ClaimKey:
        return (self.collection, self.name, self.profile)

    @property
    def sweep_name(self) -> str | None:
        return self.claim.sweep.axis.rsplit(".", 1)[-1] if self.claim.sweep else None

    def runs(self) -> list[RunSpec]:
        c = self.claim
        values: list[float | None] = list(c.sweep.values) if c.sweep else [None]
        runs = []
        for value in values:
            scenario = c.scenario if value is None else _sweep_scenario(c, value)
            for i in range(c.seeds.init):
                for j in range(c.seeds.sampling):
                    init_seed, sampling_seed = c.seeds.base + i, c.seeds.base + j
                    tag = "" if value is None else f"{self.sweep_name}={value:g}-"
                    run_id = f"{c.name}-{tag}init{init_seed}-samp{sampling_seed}"
                    runs.append(RunSpec(c.name, run_id, scenario, value, init_seed, sampling_seed, self.key))
        return runs

    def scenario_hash(self) -> str:
        """A hash of everything that decides the numbers (not the prose): baselines compare only equal hashes."""
        return self._hash

    def model_steps(self) -> int:
        return sum(r.scenario.steps for r in self.runs())

    def design_problem(self) -> str | None:
        """A configuration that can never reach its alpha is found before any training."""
        c = self.claim
        records = c.scenario.steps // c.scenario.record_every + 1
        return c.assertion.check_design(
            sweep_values=tuple(c.sweep.values) if c.sweep else 1,
            init_seeds=c.seeds.init,
            sampling_seeds=c.seeds.sampling,
            records_per_run=records,
            steps=c.scenario.steps,
        )


def without_duplicates(claims: list[ResolvedClaim]) -> tuple[list[ResolvedClaim], list[SuiteError]]:
    """The first claim of each (collection, name, profile), and a `name_taken` error for each later one."""
    seen: dict[ClaimKey, Path] = {}
    unique, problems = [], []
    for claim in claims:
        if claim.key in seen:
            problems.append(name_taken(claim, seen[claim.key]))
            continue
        seen[claim.key] = claim.file
        unique.append(claim)
    return unique, problems


def name_taken(claim: ResolvedClaim, other: str | Path) -> SuiteError:
    """A second claim of the same name in one collection: results and baselines are kept per collection and name."""
    message = f"{claim.name!r} is also the name of {other} in collection {claim.collection!r}; names must differ"
    return SuiteError(claim.file, "name", message + " within a collection")


def _scenario_hash(claim: Claim) -> str:
    """Fields left at their defaults do not enter the hash, so a field added to the schema later, with a
    default that keeps the old behaviour, leaves stored baselines comparable. (Changing what a default
    means is a schema change that needs new baselines.) The assertion's test name is kept even though
    it is its own default.
    """
    payload = claim.model_dump(mode="json", exclude=set(PROSE_KEYS), exclude_defaults=True)
    payload.setdefault("assertion", {})["test"] = claim.assertion.test
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _sweep_scenario(claim: Claim, value: float) -> Scenario:
    data = claim.scenario.model_dump()
    _set_path(data, claim.sweep.axis.split(".")[1:], value)
    return Scenario.model_validate(data)


# ---------------------------------------------------------------- loading


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=v` -> ("a.b", v) with v parsed as YAML (numbers, booleans, lists)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise SuiteError("--set", text, "expected key.path=value, e.g. --set scenario.steps=200")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


#: The label of a claim resolved without a profile (the file's own settings); `--profile default` names it.
BASE_PROFILE = "default"


def load_claim(
    path: str | Path,
    profile: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    fallback: str | None = None,
) -> ResolvedClaim:
    """Load and validate one suite file; every profile is validated, `profile` is resolved.

    Without `profile` the claim is resolved for `fallback` when the file has that profile, else for
    the file's own settings (labelled "default"); `lipbench.invocation.PROFILE_RULE` is the rule.
    """
    path = Path(path)
    raw, layers = _read_suite(path)
    return resolve_claim(path, raw, layers, profile, overrides, fallback)


def claim_from_mapping(
    data: dict[str, Any],
    profile: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    collection: str = "python",
    fallback: str | None = None,
) -> ResolvedClaim:
    """A claim written in Python, as the mapping a suite file would hold, validated exactly like one.

    Errors name `<collection>/<name>.yaml` (no such file is written) and the key path.
    """
    data = copy.deepcopy(dict(data))
    path = Path(collection) / f"{data.get('name', 'claim')}.yaml"
    return resolve_claim(path, data, [(path, data)], profile, overrides, fallback)


def resolve_claim(
    path: Path,
    raw: dict[str, Any],
    layers: list[Layer],
    profile: str | None,
    overrides: list[str] | tuple[str, ...],
    fallback: str | None = None,
) -> ResolvedClaim:
    """Validate a suite's mapping (every profile) and resolve `profile` and `overrides`; `path` names it."""
    raw = dict(raw)
    profiles = raw.pop("profiles", None) or {}
    if not isinstance(profiles, dict) or not all(isinstance(v, dict) for v in profiles.values()):
        raise SuiteError(path, "profiles", "must map profile names to mappings of overrides")
    if BASE_PROFILE in profiles:
        raise SuiteError(path, f"profiles.{BASE_PROFILE}", "is the name of the file's own settings; rename it")
    if profile is None and fallback in profiles:
        profile = fallback
    elif profile == BASE_PROFILE:
        profile = None
    raw.setdefault("name", path.stem.replace(" ", "_").lower())
    try:
        sets = [parse_override(o) for o in overrides]
    except SuiteError as e:
        raise SuiteError(path, f"--set {e.key}", e.message) from None
    # The file itself first, so a broken file reports its own key, not one a profile happens to touch
    # (or "no profile"). No overrides are applied yet, so no error is blamed on a --set.
    file_claim = _validate(path, raw, "", {}, [], layers)
    unset = {"": file_claim}
    for name, body in profiles.items():
        unset[name] = _validate(path, _merge(raw, body), f"profiles.{name}", body, [], layers)
    if profile is None:
        data, origin, body = raw, "", {}
    elif profile in profiles:
        data, origin, body = _merge(raw, profiles[profile]), f"profiles.{profile}", profiles[profile]
    else:
        hint = _did_you_mean(profile, profiles)
        available = ", ".join(profiles) or "none"
        raise SuiteError(path, "profiles", f"no profile {profile!r}{hint}; this file has: {available}")
    if not sets:
        claim = unset[profile or ""]
    else:
        for key, value in sets:
            data = _apply_set(path, data, key, value)
        claim = _validate(path, data, origin, body, sets, layers)
    label = profile or BASE_PROFILE
    return ResolvedClaim(claim, path, label, collection_of(path), tuple(profiles), unset[profile or ""])


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: str, first: int, second: int) -> None:
        super().__init__(key)
        self.key, self.first, self.second = key, first, second


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one silently).

    Mappings are built after the whole document is composed, in no nested order, so the key path of
    every mapping node is indexed first (`construct_document`) for the error to name.
    """

    def construct_document(self, node: yaml.Node) -> Any:
        self._paths: dict[int, tuple[str, ...]] = {}
        self._index(node, ())
        return super().construct_document(node)

    def _index(self, node: yaml.Node, path: tuple[str, ...]) -> None:
        if id(node) in self._paths:  # an alias of a node seen before
            return
        if isinstance(node, yaml.MappingNode):
            self._paths[id(node)] = path
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    self._index(value_node, (*path, str(key_node.value)))
        elif isinstance(node, yaml.SequenceNode):
            self._paths[id(node)] = path
            for i, item in enumerate(node.value):
                self._index(item, (*path, str(i)))

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue  # `<<: *anchor` may override keys; that is what it is for
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                path = ".".join((*self._paths.get(id(node), ()), str(key)))
                raise _DuplicateKey(path, seen[key], line)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SuiteError(path, "", f"cannot be read ({e.__class__.__name__}: {e})") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except _DuplicateKey as e:
        raise SuiteError(
            path, e.key, f"key given twice (lines {e.first} and {e.second}); remove one of the two"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SuiteError(path, "", f"not valid YAML ({where}{problem}); fix the syntax there") from None
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise SuiteError(path, "", f"is {kind}; a suite file is a mapping with schema_version, claim, scenario, ...")
    return data


#: A file and the mapping written in it (without `include`), highest precedence first.
Layer = tuple[Path, dict[str, Any]]


def _read_suite(path: Path, chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], list[Layer]]:
    """The file with its includes merged under it, and its layers (to tell which file set a key)."""
    chain = (*chain, path)
    try:
        raw = _read_yaml(path)
    except SuiteError as e:
        if len(chain) == 1:
            raise
        raise SuiteError(e.file, e.key, f"{e.message} (included by {chain[-2]})") from None
    if "include" not in raw:
        return raw, [(path, raw)]
    names = raw.pop("include")
    names = [names] if isinstance(names, str) else names
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise SuiteError(path, "include", "must be a path relative to this file, or a list of such paths")
    base: dict[str, Any] = {}
    below: list[Layer] = []
    for name in names:
        target = path.parent / name
        if target.resolve() in {c.resolve() for c in chain}:
            cycle = _chain_text((*chain, target))
            raise SuiteError(path, "include", f"includes form a cycle: {cycle}; remove one of these includes")
        if not target.is_file():
            raise SuiteError(path, "include", f"{name!r} is not a file ({target}); paths are relative to this file")
        data, layers = _read_suite(target, chain)
        base = _merge(base, data)  # a later include wins over an earlier one
        below = layers + below
    return _merge(base, raw), [(path, raw), *below]


def _chain_text(chain: tuple[Path, ...]) -> str:
    """`a.yaml -> _base/b.yaml`: paths relative to the folder of the first file."""
    root = chain[0].parent
    return " -> ".join(os.path.relpath(p, root) for p in chain)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _set_path(data: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        if data.get(key) is None:  # a missing or unset (null) section: the schema then says what it needs
            data[key] = {}
        data = data[key]
    data[keys[-1]] = value


def _apply_set(path: Path, data: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    keys = key.split(".")
    node: Any = data
    for i, k in enumerate(keys[:-1]):
        node = node.get(k) if isinstance(node, dict) else None
        if node is None:
            node = {}  # a missing section is created; the schema then says whether it is allowed
        elif not isinstance(node, dict):
            raise SuiteError(path, f"--set {key}", f"{'.'.join(keys[: i + 1])} is not a section")
    out = copy.deepcopy(data)
    _set_path(out, keys, value)
    return out


def _validate(
    path: Path, data: dict[str, Any], origin: str, body: dict, sets: list, layers: list[Layer] | None = None
) -> Claim:
    def where(loc: tuple[str, ...]) -> str:
        key = ".".join(loc)
        if any(k == key or key.startswith(k + ".") for k, _ in sets):
            return f"--set {key}"
        if origin and loc and _has_path(body, loc):
            return f"{origin}.{key}"
        return key

    def fail(loc: tuple[str, ...], message: str) -> SuiteError:
        key = where(loc)
        if not key.startswith("--set ") and layers and len(layers) > 1:
            # A value that came from an included file: say which file to fix.
            source = next((f for f, own in layers if _has_path(own, tuple(key.split(".")))), path)
            if source != path:
                message = f"{message} (set in {os.path.relpath(source, path.parent)}, included by this file)"
        return SuiteError(path, key, message)

    try:
        model = claim_model(data)
    except factories.FactoryError as e:  # the plugin that registers this test does not import, or is no test
        raise fail(("assertion", "test"), str(e)) from None
    try:
        claim = model.model_validate(data)
    except ValidationError as e:
        errs = e.errors()
        # A misspelt key also makes its correct spelling "missing": report the misspelling.
        err = next((x for x in errs if x["type"] == "extra_forbidden"), errs[0])
        loc = [str(p) for p in err["loc"] if not str(p).startswith("function-")]
        if len(loc) > 1 and loc[0] == "assertion" and loc[1] in ASSERTIONS:
            del loc[1]  # pydantic's discriminator tag is not a key the user wrote
        raise fail(tuple(loc), _explain(err, data, tuple(loc))) from None
    scenarios = [claim.scenario]
    if claim.sweep is not None:
        problem = _axis_problem(claim.sweep.axis)
        if problem:
            raise fail(("sweep", "axis"), problem)
        for i, value in enumerate(claim.sweep.values):
            try:
                scenarios.append(_sweep_scenario(claim, value))
            except ValidationError as e:
                err = e.errors()[0]
                loc = ".".join(str(p) for p in err["loc"])
                raise fail(
                    ("sweep", "values", str(i)),
                    f"{value!r} is not allowed for {claim.sweep.axis} ({loc}: {err['msg']})",
                ) from None
    theory = next(filter(None, map(sgd_theory_problem, scenarios)), None)
    if theory is not None and claim.expect != "empirical":
        loc, why = theory
        raise fail(loc, f"{why}; {EMPIRICAL_HOW}")
    return claim


#: pydantic error types of numeric fields: with a .nan / .inf input, the message says "finite".
_NUMBER_KINDS = frozenset(
    {
        "finite_number",
        "int_parsing",
        "float_parsing",
        "greater_than",
        "greater_than_equal",
        "less_than",
        "less_than_equal",
    }
)


def _not_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, str):
        return value.strip().lower().lstrip("+-").lstrip(".") in {"nan", "inf", "infinity"}
    return False


def _finite_message(value: Any) -> str:
    if isinstance(value, float):
        shown = ".nan" if math.isnan(value) else ".inf" if value > 0 else "-.inf"
    else:
        shown = repr(value)
    return f"must be a finite number, got {shown}; replace it with a finite value"


def _axis_problem(axis: str) -> str | None:
    """Why a sweep axis names no numeric key of the scenario, or None."""
    model: Any = Scenario
    keys = axis.split(".")[1:]
    for i, key in enumerate(keys):
        here = ".".join(["scenario", *keys[:i]])
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return f"{axis!r} goes inside {here}, which is a value, not a section"
        if key not in model.model_fields:
            allowed = list(model.model_fields)
            return f"{axis!r} names no key of {here}{_did_you_mean(key, allowed)}; allowed there: {', '.join(allowed)}"
        model = _field_model(model, key, {})
    if isinstance(model, type) and issubclass(model, BaseModel):
        return f"{axis!r} is a section; sweep one number inside it: {', '.join(model.model_fields)}"
    return None


def _has_path(body: dict, loc: tuple[str, ...]) -> bool:
    node: Any = body
    for k in loc:
        if isinstance(node, list) and k.isdigit() and int(k) < len(node):
            node = node[int(k)]
        elif isinstance(node, dict) and k in node:
            node = node[k]
        else:
            return False
    return True


PATTERN_HELP = {
    "name": "must be lower-case letters, digits, '_' or '-', starting with a letter or digit",
    "sweep.axis": "must be a key path under scenario, e.g. scenario.label_noise or scenario.optimizer.batch_size",
}


def _explain(err: dict[str, Any], data: dict[str, Any], loc: tuple[str, ...]) -> str:
    """pydantic's message, plus the allowed keys / values and a did-you-mean where we can tell."""
    kind, msg = err["type"], err["msg"]
    if kind in _NUMBER_KINDS and _not_finite(err["input"]):
        return _finite_message(err["input"])  # nan also fails every bound, with a less helpful message
    if kind == "factory":  # already names the callable and the problem (lipbench.factories)
        return msg
    if kind == "extra_forbidden":
        allowed = _allowed_keys(data, loc[:-1])
        hint = _did_you_mean(loc[-1], allowed)
        return f"unknown key{hint}; allowed here: {', '.join(allowed)}"
    if kind == "missing":
        model = _section_model(data, loc[:-1])
        if model is None:
            return "required key is missing"
        required = ", ".join(k for k, f in model.model_fields.items() if f.is_required())
        return f"required key is missing; {'this section' if loc[:-1] else 'a suite file'} needs {required}"
    if kind == "literal_error":
        expected = [s.strip(" '") for s in err["ctx"]["expected"].replace(" or ", ", ").split(",")]
        hint = _did_you_mean(str(err["input"]), expected)
        return f"{err['input']!r} is not allowed{hint}; {msg[0].lower()}{msg[1:]}"
    if kind == "union_tag_invalid":
        tag, tests = err["ctx"]["tag"], available_tests()
        return f"unknown test {tag!r}{_did_you_mean(tag, tests)}; available: {', '.join(tests)}"
    if kind == "union_tag_not_found":
        return f"names no test; add `test:` with one of {', '.join(available_tests())}"
    if kind == "string_pattern_mismatch" and ".".join(loc) in PATTERN_HELP:
        return f"{PATTERN_HELP['.'.join(loc)]} (got {err['input']!r})"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        allowed = _allowed_keys(data, loc)
        keys = f" (keys: {', '.join(allowed)})" if allowed else ""
        return f"must be a mapping{keys}, got {type(err['input']).__name__}"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    got = err["input"]
    return msg if got == "" or got is None or isinstance(got, dict) else f"{msg} (got {got!r})"


def _section_model(data: dict[str, Any], loc: tuple[str, ...]) -> type[BaseModel] | None:
    model: Any = Claim
    node: Any = data
    for key in loc:
        if key.isdigit() or not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        node = node.get(key, {}) if isinstance(node, dict) else {}
        model = _field_model(model, key, node)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _allowed_keys(data: dict[str, Any], loc: tuple[str, ...]) -> list[str]:
    model = _section_model(data, loc)
    return list(model.model_fields) if model is not None else []


def _field_model(model: type[BaseModel], key: str, node: Any) -> Any:
    if issubclass(model, Claim) and key == "assertion":
        return _test_model(node.get("test")) if isinstance(node, dict) else None
    field = model.model_fields.get(key)
    found = nested_models(field.annotation) if field is not None else []
    return found[0] if found else None


def _test_model(test: Any) -> type[Assertion] | None:
    try:
        return assertion_model(test) if isinstance(test, str) else None
    except factories.FactoryError:
        return None
