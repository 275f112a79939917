"""The schema of a suite file: pydantic models from `Claim` down, strict (`extra="forbid"`, finite numbers)."""

from __future__ import annotations

import functools
import typing
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, create_model, field_validator
from pydantic_core import PydanticCustomError

from lipbench import factories
from lipbench.assertions import ASSERTIONS, Assertion, AssertionSpec, assertion_model
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


def kwargs_field(description: str) -> Any:
    """The `kwargs` mapping of a callable section: empty by default, checked against the callable even then."""
    return Field(default_factory=dict, validate_default=True, description=description)


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
    kwargs: Kwargs = kwargs_field("Keyword arguments of a factory or plugin model.")
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
    kwargs: Kwargs = kwargs_field("Keyword arguments of a factory or plugin dataset.")
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
    kwargs: Kwargs = kwargs_field("Keyword arguments of a factory or plugin schedule.")
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
    kwargs: Kwargs = kwargs_field("Keyword arguments of a factory or plugin optimiser.")
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


class LipschitzSpec(Strict):
    """How each layer's sigma_l is measured ([what K is](docs/science.md#what-k-is-for-a-convolution))."""

    conv: Literal["operator", "reshaped", "bound"] = Field(
        "operator",
        description=(
            "A Conv2d layer's sigma: `operator`, the norm of the convolution on images of its real input size "
            "(a Krylov estimate from below, bracketed at the checks); `reshaped`, sigma_max of the kernel "
            "reshaped to out x (in*kh*kw), as spectral normalisation takes it (not a bound); `bound`, a "
            "certified upper bound of the operator norm, so that K bounds the network's Lipschitz constant."
        ),
    )


RecordName = Literal["sigma", "K", "loss", "accuracy", "sde", "init"]


class RunFunctionSpec(CallableSpec):
    """Your own training loop, called with the run context and a recorder ([guide](docs/extending.md))."""

    KIND = "run"

    name: str = Field(
        description=(
            "`package.module:callable` (or an installed plugin's run name) called as `fn(context, recorder, **kwargs)`."
        )
    )
    kwargs: Kwargs = kwargs_field("Options handed to the function (`context.options`).")


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
    lipschitz: LipschitzSpec = LipschitzSpec()  # what a conv layer's sigma is: its operator norm by default

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

    @field_validator("lipschitz")
    @classmethod
    def _sde_of_sigma_max(cls, value: LipschitzSpec, info: ValidationInfo) -> LipschitzSpec:
        if value.conv == "bound" and "sde" in info.data.get("record", ()):
            raise ValueError(
                "conv: bound makes a conv layer's sigma a certified upper bound, but the SDE terms (record: sde) "
                "are derivatives of sigma_max itself; use lipschitz.conv: operator with sde"
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
