"""The run context lipbench hands to a run function: `scenario.run: "package.module:train"`.

lipbench calls `train(context, recorder, **scenario.run.kwargs)` once per run of a claim. The
context carries what makes the run's verdict mean something, so the user's loop does not have to
re-derive it: the seeds, one generator per random stream (seeded as lipbench's own loop seeds
them), the device, the dataset on the device, the training labels with `scenario.label_noise`
already applied from the label stream, and the options from the suite. The loop calls
`recorder.record(step, model, loss=...)` (lipbench.torch.recorder); everything after that (assertions,
baselines, MLflow, the pytest items) is the same as for lipbench's own loop.

Guarantees the context keeps when the loop uses it: the init seed alone fixes the weights of a
model built inside `context.init_rng()` (or by `context.build_model()`); mini-batches drawn from
`context.generators.sampling` (or `context.batches()`) depend on the sampling seed; the labels
are corrupted with the label stream alone.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from lipbench import factories
from lipbench.errors import RunDiverged
from lipbench.records import RunRecord
from lipbench.suite import RunSpec, Scenario
from lipbench.torch.data import Dataset
from lipbench.torch.optim import build
from lipbench.torch.recorder import Recorder
from lipbench.torch.training import (
    BatchSampler,
    Stream,
    corrupt_labels,
    initial_model,
    record_steps,
    run_seed,
    seed_global,
)


@dataclass(frozen=True)
class Generators:
    """One generator per random stream; none is shared with another stream or another run."""

    init: torch.Generator  # CPU: the init seed alone (what `init_rng` seeds the global generator with)
    sampling: torch.Generator  # on the device: mini-batch indices
    labels: torch.Generator  # CPU: label corruption (already used for `RunContext.labels`)
    noise: torch.Generator  # on the device: whatever noise the loop adds


@dataclass
class RunContext:
    """What a run function gets besides the recorder (see the module docstring)."""

    spec: RunSpec
    device: torch.device
    data: Dataset  # on the device; data.y_train holds the clean labels
    labels: torch.Tensor  # training labels with scenario.label_noise applied, on the device
    generators: Generators
    options: dict[str, Any] = field(default_factory=dict)  # scenario.run.kwargs

    @property
    def scenario(self) -> Scenario:
        return self.spec.scenario

    @property
    def init_seed(self) -> int:
        return self.spec.init_seed

    @property
    def sampling_seed(self) -> int:
        return self.spec.sampling_seed

    @property
    def steps(self) -> int:
        return self.spec.scenario.steps

    @property
    def label_noise(self) -> float:
        return self.spec.scenario.label_noise

    @contextlib.contextmanager
    def init_rng(self) -> Iterator[None]:
        """Build the model inside this block: torch's global CPU generator is seeded from the init seed alone
        (and restored after), so the constructors' default initialisation depends on nothing else."""
        with factories.init_rng(self.init_seed):
            yield

    def build_model(self) -> torch.nn.Module:
        """The scenario's model (built-in, plugin or factory), initialised from the init seed, on the device."""
        if self.scenario.model is None:
            raise factories.UserCodeError("context.build_model() needs scenario.model in the suite file")
        return initial_model(self.spec, self.data.to("cpu")).to(self.device)

    def build_optimizer(self, model: torch.nn.Module):
        """The scenario's optimiser and schedule (lipbench.torch.optim.build): step the schedule once per step."""
        if self.scenario.optimizer is None:
            raise factories.UserCodeError("context.build_optimizer() needs scenario.optimizer in the suite file")
        return build(self.scenario.optimizer, model.parameters(), self.steps)

    def batches(self, batch_size: int | None = None) -> Iterator[torch.Tensor]:
        """Mini-batch indices from the sampling stream, endlessly, as scenario.sampling says."""
        if batch_size is None:
            if self.scenario.optimizer is None:
                raise factories.UserCodeError("context.batches() needs a batch_size (or scenario.optimizer.batch_size)")
            batch_size = self.scenario.optimizer.batch_size
        n = self.data.x_train.shape[0]
        sampler = BatchSampler(
            [self.spec], n, self.scenario, self.device, batch_size=batch_size, gens=[self.generators.sampling]
        )
        return (sampler()[0].clone() for _ in itertools.count())  # clone: the sampler reuses its buffer


def train_with_run_function(spec: RunSpec, data: Dataset, device: torch.device) -> RunRecord:
    """One run of a claim whose scenario names a run function; the recorder makes its record."""
    sc = spec.scenario
    reference = factories.reference_for("run", sc.run.name, ())
    labels_gen = torch.Generator().manual_seed(run_seed(spec, Stream.LABELS))
    sampling_gen = torch.Generator(device=device).manual_seed(run_seed(spec, Stream.BATCHES))
    noise_gen = torch.Generator(device=device).manual_seed(run_seed(spec, Stream.NOISE))
    seed_global(spec)  # dropout masks draw from the global generator
    init_gen = torch.Generator().manual_seed(spec.init_seed)
    context = RunContext(
        spec=spec,
        device=device,
        data=data.to(device),
        labels=corrupt_labels(data.y_train, sc.label_noise, data.num_classes, labels_gen).to(device),
        generators=Generators(init_gen, sampling_gen, labels_gen, noise_gen),
        options=dict(sc.run.kwargs),
    )
    recorder = Recorder(
        spec, record_steps(sc.steps, sc.record_every), device, source=reference, input_shape=data.input_shape
    )
    with contextlib.suppress(RunDiverged):  # the recorder marked the step; the loop just ends there
        factories.call(factories.resolve(reference), "run", (context, recorder), sc.run.kwargs)
    return recorder.finish(context.data)
