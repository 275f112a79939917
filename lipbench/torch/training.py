"""What both training loops need: engine.train (one run) and lipbench.torch.ensemble (many runs at once).

Everything here takes M runs at once (M = 1 for engine.train), each with its own seeds, so that
the same seeds give the same trajectory under either loop:

- streams: each run draws from named random streams seeded from (sampling seed, init seed,
  stream id), so that switching one feature on (label noise, gradient noise, a regulariser)
  leaves the other draws unchanged;
- `BatchSampler`: mini-batch indices, with or without replacement (shuffled epochs);
- `member_labels`: the training labels after label corruption;
- `GradientNoise`, `transform_gradients`, `step_factors`: what is done to the mini-batch
  gradient before the SGD step, scale * g + noise, and the step itself;
- `RecordBuffer`: the recorded values (sigma per layer, loss, accuracy, extras such as the SDE terms)
  on the device, the divergence check with its step, and the run records built from them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from enum import IntEnum

import numpy as np
import torch
import torch.nn.functional as F

from lipbench import factories
from lipbench.records import RunRecord
from lipbench.suite import GradientSpec, RunSpec, Scenario
from lipbench.torch.data import Dataset
from lipbench.torch.models import MODELS, build_model, initialise, lipschitz_layers
from lipbench.torch.tracking import records_drift

MONITOR_SIZE = 1024  # training samples on which loss and accuracy are recorded
TEST_SIZE = 10_000  # test samples of the final test accuracy


class Stream(IntEnum):
    """A run's random streams. The ids are part of every recorded trajectory: never renumber them."""

    LABELS = 1  # label corruption (on the CPU, once before training)
    BATCHES = 2  # mini-batch indices and epoch permutations
    NOISE = 3  # gradient noise
    GLOBAL = 4  # torch's global generator: dropout masks and AutoAugment
    REGULARISERS = 5  # mixup's lambda and permutation (lipbench.torch.regularisers)


def stream_seed(*parts: int) -> int:
    """An independent 63-bit seed for a named random stream (numpy's SeedSequence mixes the parts)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> 1)


def run_seed(spec: RunSpec, stream: Stream) -> int:
    """The seed of one stream of one run."""
    return stream_seed(spec.sampling_seed, spec.init_seed, int(stream))


def generators(specs: Sequence[RunSpec], stream: Stream, device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per run, each seeded for `stream`."""
    return [torch.Generator(device=device).manual_seed(run_seed(s, stream)) for s in specs]


def seed_global(spec: RunSpec) -> None:
    """Dropout masks and AutoAugment draw from torch's global generator: seed it for this run."""
    torch.manual_seed(run_seed(spec, Stream.GLOBAL))


def record_steps(steps: int, record_every: int) -> list[int]:
    """The steps at which a run is recorded: every `record_every`, and always the first and the last."""
    marks = list(range(0, steps + 1, record_every))
    return marks if marks[-1] == steps else [*marks, steps]


def initial_model(spec: RunSpec, data: Dataset) -> torch.nn.Module:
    """The run's model, built and initialised from its init seed alone, on the CPU (so every device
    starts from the same bits)."""
    m = spec.scenario.model
    reference = factories.reference_for("model", m.name, MODELS)
    if reference is not None:  # the user's own model (a factory or a plugin), built under the init seed
        return factories.build_model(reference, m.kwargs, data, spec.init_seed)
    model = build_model(
        m.name,
        data.input_shape,
        data.num_classes,
        hidden=m.hidden,
        width=m.width,
        dropout=m.dropout,
        batch_norm=m.batch_norm,
    )
    initialise(model, torch.Generator().manual_seed(spec.init_seed), m.init, m.init_std)
    return model


def init_sigma_theory(layers: list[torch.nn.Module], scheme: str, std: float) -> list[float]:
    """s (sqrt(m) + sqrt(n)) per layer matrix m x n (the paper, §8.2), s the entry std of the init scheme."""
    out = []
    for layer in layers:
        rows, cols = layer.weight.shape[0], layer.weight[0].numel()
        s = std if scheme == "normal" else 1.0 / math.sqrt(3 * cols)  # U(-1/sqrt(fan_in), ..) has std 1/sqrt(3 fan_in)
        out.append(s * (math.sqrt(rows) + math.sqrt(cols)))
    return out


# ---------------------------------------------------------------- data


def corrupt_labels(y: torch.Tensor, p: float, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """Replace each label, with probability p, by a class drawn uniformly (it may redraw the true one)."""
    if p == 0:
        return y
    mask = torch.rand(y.shape, generator=generator) < p
    drawn = torch.randint(num_classes, y.shape, generator=generator)
    return torch.where(mask.to(y.device), drawn.to(y.device), y)


def member_labels(specs: Sequence[RunSpec], data: Dataset, device: torch.device) -> torch.Tensor:
    """Each run's training labels after its label corruption, M x N on the device."""
    gens = generators(specs, Stream.LABELS)
    y = data.y_train
    return torch.stack(
        [
            corrupt_labels(y, s.scenario.label_noise, data.num_classes, g).to(device)
            for s, g in zip(specs, gens, strict=True)
        ]
    )


class BatchSampler:
    """Mini-batch indices of M runs, each drawn from its run's batch stream, M x b per call.

    with_replacement: b independent uniform draws per step. without_replacement: a shuffled epoch
    is cut into batches of b distinct samples; the incomplete tail is dropped and the next epoch
    reshuffled. The returned tensor is reused by the next call.
    """

    def __init__(
        self,
        specs: Sequence[RunSpec],
        n: int,
        scenario: Scenario,
        device: torch.device,
        *,
        batch_size: int | None = None,
        gens: list[torch.Generator] | None = None,
    ) -> None:
        """`batch_size` defaults to the scenario's optimizer's; `gens` to each run's batch stream."""
        b = batch_size if batch_size is not None else scenario.optimizer.batch_size
        if scenario.sampling == "without_replacement" and b > n:
            raise ValueError(
                f"batch_size {b} exceeds the {n} training samples; sampling without replacement needs b <= n"
            )
        self.gens = gens if gens is not None else generators(specs, Stream.BATCHES, device)
        self.n, self.b, self.device = n, b, device
        self.idx = torch.empty((len(specs), b), dtype=torch.long, device=device)
        self.orders = self._shuffled() if scenario.sampling == "without_replacement" else None
        self.pos = 0

    def _shuffled(self) -> torch.Tensor:
        return torch.stack([torch.randperm(self.n, generator=g, device=self.device) for g in self.gens])

    def __call__(self) -> torch.Tensor:
        if self.orders is None:
            for i, g in enumerate(self.gens):
                self.idx[i].random_(0, self.n, generator=g)
            return self.idx
        if self.pos + self.b > self.n:  # a new epoch: reshuffle; the incomplete tail is dropped
            self.orders, self.pos = self._shuffled(), 0
        self.pos += self.b
        return self.orders[:, self.pos - self.b : self.pos]


# ---------------------------------------------------------------- the update


#: The factor that gives a standard draw unit variance: U(-1, 1) has variance 1/3.
UNIT_VARIANCE = {"gaussian": 1.0, "uniform": math.sqrt(3.0)}


def noise_amplitude(gradient: GradientSpec) -> float:
    """The factor on a standard draw (N(0, 1) or U(-1, 1)) that gives noise of std `noise_std`."""
    if gradient.noise == "none":
        return 0.0
    return gradient.noise_std * UNIT_VARIANCE[gradient.noise]


class GradientNoise:
    """Gradient noise of M runs: per run, one standard draw per parameter (in the module's parameter
    order) from the run's noise stream. `draw()` gives one M x shape tensor per parameter, or [] when
    the scenario has no gradient noise."""

    def __init__(self, specs: Sequence[RunSpec], shapes: Iterable[torch.Size], device: torch.device) -> None:
        self.kind = specs[0].scenario.gradient.noise
        if self.kind != "none" and self.kind not in UNIT_VARIANCE:
            raise ValueError(f"unknown gradient noise {self.kind!r}; lipbench draws {', '.join(UNIT_VARIANCE)}")
        self.gens = generators(specs, Stream.NOISE, device)
        self.draws = [] if self.kind == "none" else [torch.empty((len(specs), *s), device=device) for s in shapes]

    def draw(self) -> list[torch.Tensor]:
        for i, g in enumerate(self.gens):
            for buf in self.draws:
                if self.kind == "gaussian":
                    buf[i].normal_(generator=g)
                else:
                    buf[i].uniform_(0.0, 1.0, generator=g).mul_(2).sub_(1)
        return self.draws


def transform_gradients(params: Iterable[torch.Tensor], gradient: GradientSpec, draws: list[torch.Tensor]) -> None:
    """One run's gradients, in place, as the step applies them: scale * g + amplitude * draw.

    `draws` are `GradientNoise.draw()` of a single run (M = 1), or [] for no noise.
    """
    amplitude = noise_amplitude(gradient)
    for k, p in enumerate(params):
        if gradient.scale != 1.0:
            p.grad.mul_(gradient.scale)
        if draws:
            p.grad.add_(draws[k][0], alpha=amplitude)


#: Per-run factors of the SGD step, M values each (see `step_factors`).
Factors = dict[str, torch.Tensor]


def step_factors(specs: Sequence[RunSpec], device: torch.device) -> Factors:
    """The SGD step p <- p - lr (scale g + amplitude draw + wd p) of M runs as per-run factors:
    "gradient" = lr scale, "noise" = lr amplitude and, where any run has weight decay, "decay" = lr wd."""

    def vector(get: Callable[[Scenario], float]) -> torch.Tensor:
        return torch.tensor([float(get(s.scenario)) for s in specs], dtype=torch.float32, device=device)

    lr = vector(lambda sc: sc.optimizer.lr)
    factors = {
        "gradient": lr * vector(lambda sc: sc.gradient.scale),
        "noise": lr * vector(lambda sc: noise_amplitude(sc.gradient)),
    }
    if any(s.scenario.optimizer.weight_decay != 0 for s in specs):
        factors["decay"] = lr * vector(lambda sc: sc.optimizer.weight_decay)
    return factors


# ---------------------------------------------------------------- records


class RecordBuffer:
    """The records of M runs: one row per record step, kept on the device until `records`.

    A row holds sigma_<l> of each layer, `loss` and `accuracy` on the monitor set where
    scenario.record names them, and named extras (the SDE terms). Divergence: a run whose row holds
    a non-finite sigma or (recorded) loss is marked diverged at that row's step; the caller stops
    updating it, and its later rows are dropped. Both loops record the same columns for the same
    scenario: the columns depend on the scenario alone.
    """

    def __init__(self, scenario: Scenario, model: torch.nn.Module, members: int, device: torch.device) -> None:
        self.scenario, self.device = scenario, device
        self.marks = record_steps(scenario.steps, scenario.record_every)
        layers = [module for _, module in lipschitz_layers(model)]
        self.layers = len(layers)
        self.init_theory = init_sigma_theory(layers, scenario.model.init, scenario.model.init_std)
        self.monitored = [name for name in ("loss", "accuracy") if name in scenario.record]
        self.columns = [f"sigma_{i}" for i in range(self.layers)] + self.monitored
        self.checked = self.layers + ("loss" in self.monitored)  # the columns the divergence check reads
        self.drift = records_drift(scenario, model)  # drift_<l> of the step after each record (`write_drift`)
        self.drifts = len(self.columns)
        if self.drift:
            self.columns += [f"drift_{i}" for i in range(self.layers)]
        extra = 64 if "sde" in scenario.record else 0  # room for the probe's terms (their names come later)
        self.buffer = torch.full((len(self.marks), members, len(self.columns) + extra), math.nan, device=device)
        self.alive = torch.ones(members, dtype=torch.bool, device=device)
        self.died = torch.full((members,), len(self.marks), dtype=torch.long, device=device)  # past the end: never
        self.row = 0

    def due(self, step: int) -> bool:
        return self.row < len(self.marks) and step == self.marks[self.row]

    def write(
        self,
        sigmas: torch.Tensor,
        logits: torch.Tensor | None,
        labels: torch.Tensor,
        extras: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Write the row of this record step and return which runs are still finite (M bools, on the device).

        sigmas: M x layers; logits: M x n x classes on the monitor set (None when neither loss nor
        accuracy is recorded), labels: M x n; extras: name -> M values. With M = 1, sigmas and
        extras may leave out the run axis.
        """
        row = self.buffer[self.row]
        row[:, : self.layers] = sigmas
        if self.monitored:
            values = {
                "loss": F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
                .view(labels.shape)
                .mean(1),
                "accuracy": (logits.argmax(-1) == labels).float().mean(1),
            }
            for j, name in enumerate(self.monitored):
                row[:, self.layers + j] = values[name]
        for name, value in (extras or {}).items():
            if name not in self.columns:
                self.columns.append(name)
            row[:, self.columns.index(name)] = value
        finite = torch.isfinite(row[:, : self.checked]).all(dim=1)
        self.died = torch.where(self.alive & ~finite, self.row, self.died)
        self.alive &= finite
        self.row += 1
        return self.alive

    def write_drift(self, drift: torch.Tensor) -> None:
        """drift_<l> (M x layers, `tracking.StepDrift`) of the step that followed the last row written."""
        self.buffer[self.row - 1, :, self.drifts : self.drifts + self.layers] = drift

    def finished(self) -> list[bool]:
        """Which runs ended without diverging (a host transfer)."""
        return (self.died == len(self.marks)).tolist()

    def records(
        self,
        specs: Sequence[RunSpec],
        seconds: float,
        summaries: Sequence[dict[str, float]],
    ) -> list[RunRecord]:
        """The runs' records: the one transfer of the recorded values to the host."""
        values = self.buffer[:, :, : len(self.columns)].double().cpu().numpy()  # rows x M x columns
        died = self.died.cpu().tolist()
        out = []
        for i, spec in enumerate(specs):
            kept = min(died[i] + 1, len(self.marks))
            rows = values[:kept, i]
            metrics = {name: rows[:, j] for j, name in enumerate(self.columns)}
            if self.drift and kept > 1:  # the last row has no step after it: it carries the one before
                for layer in range(self.layers):
                    column = metrics[f"drift_{layer}"]
                    column[-1] = column[-1] if np.isfinite(column[-1]) else column[-2]
            metrics.update(bound_columns(rows[:, : self.layers]))
            if "init" in self.scenario.record:  # the random-matrix prediction for each layer at init
                for j, v in enumerate(self.init_theory):
                    metrics[f"sigma_init_theory_{j}"] = np.full(kept, v)
            out.append(
                RunRecord(
                    claim=spec.claim,
                    run_id=spec.run_id,
                    sweep_value=spec.sweep_value,
                    init_seed=spec.init_seed,
                    sampling_seed=spec.sampling_seed,
                    steps=np.asarray(self.marks[:kept], dtype=np.int64),
                    metrics=metrics,
                    diverged_at=None if died[i] == len(self.marks) else self.marks[died[i]],
                    seconds=seconds,
                    device=str(self.device),
                    summary=dict(summaries[i]),
                )
            )
        return out


def bound_columns(sigmas: np.ndarray) -> dict[str, np.ndarray]:
    """`log_K` and `K` per record from each layer's sigma_max (records x layers): K is their product."""
    with np.errstate(divide="ignore", invalid="ignore"):
        log_k = np.log(sigmas).sum(axis=1)
    return {"log_K": log_k, "K": np.exp(log_k)}


@torch.no_grad()
def test_accuracy(
    logits_of: Callable[[int, torch.Tensor], torch.Tensor], data: Dataset, device: torch.device, ok: list[bool]
) -> list[dict[str, float]]:
    """{"test_accuracy": ...} on the first TEST_SIZE test samples for each run that did not diverge
    ({} for one that did); `logits_of(i, x)` is run i's forward pass, in eval mode."""
    xt, yt = data.x_test[:TEST_SIZE].to(device), data.y_test[:TEST_SIZE].to(device)
    found = [(logits_of(i, xt).argmax(-1) == yt).float().mean() for i in range(len(ok)) if ok[i]]
    values = iter(torch.stack(found).cpu().tolist() if found else [])
    return [{"test_accuracy": next(values)} if good else {} for good in ok]
