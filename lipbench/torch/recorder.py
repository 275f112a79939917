"""The recorder a run function's loop calls: `recorder.record(step, model, loss=...)`.

At each step of `recorder.steps` (every `scenario.record_every` steps and the last one) it stores
sigma_l of every Linear and Conv2d layer of the model (lipbench.torch.tracking, as lipbench's own loop
measures it: a conv layer as the operator on the dataset's input size, per `scenario.lipschitz.conv`),
the loss the loop passes, and any other metric passed by keyword, in one device tensor; K and log K
follow from the sigmas. Calls at other steps return False and cost nothing, so a loop may call it
every step. The values cross to the host once, when the run ends; the only per-record host sync is
the divergence check, as in lipbench's own loop: a non-finite sigma or loss raises `RunDiverged`,
which ends the user's loop, and the run is reported diverged at that step.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from lipbench.errors import LipbenchError, RunDiverged
from lipbench.records import RunRecord
from lipbench.torch.models import lipschitz_layers
from lipbench.torch.tracking import SigmaTracker, run_tracker
from lipbench.torch.training import bound_columns, test_accuracy


class Recorder:
    """Records one run of a run function (see the module docstring)."""

    def __init__(
        self,
        spec,
        steps: list[int],
        device: torch.device,
        source: str = "the run function",
        input_shape: tuple[int, ...] | None = None,
    ) -> None:
        """`input_shape` (C, H, W): the images the model's conv layers see, from the dataset."""
        self.spec, self.device, self.source, self.input_shape = spec, torch.device(device), source, input_shape
        self.tracker: SigmaTracker | None = None
        self.steps: tuple[int, ...] = tuple(steps)
        self.names: list[str] = []  # metric columns after the sigmas, fixed by the first record
        self.layers: int = 0
        self.buffer: torch.Tensor | None = None
        self.row = 0
        self.diverged_at: int | None = None
        self.model: torch.nn.Module | None = None
        self.started = time.perf_counter()

    def due(self, step: int) -> bool:
        """True when `step` is the next step to record."""
        return self.row < len(self.steps) and step == self.steps[self.row]

    def record(self, step: int, model: torch.nn.Module, loss: torch.Tensor | float | None = None, **metrics) -> bool:
        """Store the record of `step` if it is due; returns whether it stored one."""
        if not self.due(step):
            if step in self.steps[: self.row]:
                raise LipbenchError(f"{self.source} recorded step {step} twice; record each step once")
            if self.row < len(self.steps) and step > self.steps[self.row]:
                raise LipbenchError(
                    f"{self.source} skipped step {self.steps[self.row]} of the recorded steps "
                    f"(it recorded step {step} next); call recorder.record(step, model, ...) at every step"
                )
            return False
        values = {"loss": loss, **metrics} if loss is not None else dict(metrics)
        layers = [module for _, module in lipschitz_layers(model)]
        if self.buffer is None:
            if not layers:
                raise LipbenchError(f"{self.source} passed a model without Linear or Conv2d layers to record")
            self.layers, self.names = len(layers), list(values)
            self.buffer = torch.full((len(self.steps), self.layers + len(self.names)), math.nan, device=self.device)
            self.tracker = self._tracker(model)
        elif len(layers) != self.layers or list(values) != self.names:
            raise LipbenchError(
                f"{self.source} changed what it records at step {step}: {len(layers)} layers and {list(values)}, "
                f"after {self.layers} layers and {self.names}; record the same model and metrics every time"
            )
        with torch.no_grad():
            row = self.buffer[self.row]
            weights = [layer.weight.detach().unsqueeze(0) for layer in layers]
            row[: self.layers] = self.tracker(weights, torch.ones(1, dtype=torch.bool, device=self.device))[0]
            for i, name in enumerate(self.names):
                value = values[name]
                row[self.layers + i] = value.detach().float() if torch.is_tensor(value) else float(value)
            checked = row[: self.layers + (1 if "loss" in self.names else 0)]
            finite = bool(torch.isfinite(checked).all())  # host sync, once per record
        self.model, self.row = model, self.row + 1
        if not finite:  # ends the user's loop; lipbench catches it and reports the record as diverged
            self.diverged_at = step
            sigma_ok = bool(torch.isfinite(row[: self.layers]).all())
            raise RunDiverged(self.spec.run_id, step, "loss" if sigma_ok else "K")
        return True

    def _tracker(self, model: torch.nn.Module) -> SigmaTracker:
        try:
            return run_tracker(self.spec.scenario, model, self.input_shape or (), len(self.steps), self.device)
        except LipbenchError as err:
            raise LipbenchError(f"{self.source}: {err}") from None
        except Exception as err:  # the user's model on a batch of zeros of the dataset's shape
            raise LipbenchError(
                f"{self.source}: the model's conv layers need their input size, found by one forward pass of two "
                f"zero images of the dataset's shape {self.input_shape}, which failed ({err}); make the model take "
                "the dataset's images, or set scenario.lipschitz.conv: reshaped"
            ) from err

    def finish(self, data) -> RunRecord:
        """The run's record (the one transfer to the host), with the test accuracy of the last model recorded."""
        if self.diverged_at is None and self.row < len(self.steps):
            raise LipbenchError(
                f"{self.source} returned after recording {self.row} of the {len(self.steps)} steps the scenario "
                f"asks for (the next was step {self.steps[self.row]}); call recorder.record(step, model, ...) at "
                "every step up to scenario.steps"
            )
        values = self.buffer[: self.row].double().cpu().numpy()
        metrics = {f"sigma_{i}": values[:, i] for i in range(self.layers)}
        metrics.update({name: values[:, self.layers + i] for i, name in enumerate(self.names)})
        metrics.update(bound_columns(values[:, : self.layers]))
        self.model.eval()
        [summary] = test_accuracy(lambda _, x: self.model(x), data, self.device, [self.diverged_at is None])
        summary.update(self.tracker.summaries()[0])
        spec = self.spec
        return RunRecord(
            claim=spec.claim,
            run_id=spec.run_id,
            sweep_value=spec.sweep_value,
            init_seed=spec.init_seed,
            sampling_seed=spec.sampling_seed,
            steps=np.asarray(self.steps[: self.row], dtype=np.int64),
            metrics=metrics,
            diverged_at=self.diverged_at,
            seconds=time.perf_counter() - self.started,
            device=str(self.device),
            summary=summary,
        )
