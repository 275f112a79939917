"""The optimiser and learning-rate schedule of a scenario, built by torch.optim and torch.optim.lr_scheduler.

`build(spec, params, steps)` returns the optimiser and a scheduler that the loop steps once per
training step (after `optimizer.step()`): built-in names map to torch's classes, a factory or
plugin name is called with the parameters (and `lr`, `weight_decay` when it takes them). A warmup
(`schedule.warmup_steps`) is torch's LinearLR chained before the schedule by SequentialLR.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim import lr_scheduler

from lipbench import factories
from lipbench.errors import LipbenchError
from lipbench.suite import OPTIMIZERS, SCHEDULES, OptimizerSpec, ScheduleSpec

ADAM_BETAS = (0.9, 0.999)  # torch's defaults, written out so a suite's betas: null means them
ADAM_EPS = 1e-8


def build(
    spec: OptimizerSpec, params: Iterable[torch.nn.Parameter], steps: int
) -> tuple[torch.optim.Optimizer, lr_scheduler.LRScheduler]:
    """The optimiser over `params` and its schedule over `steps` training steps."""
    optimizer = build_optimizer(spec, params)
    return optimizer, build_schedule(spec.schedule, optimizer, steps)


def build_optimizer(spec: OptimizerSpec, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    params = list(params)
    if spec.name == "sgd":
        return torch.optim.SGD(
            params, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov, weight_decay=spec.weight_decay
        )
    if spec.name in ("adam", "adamw"):
        cls = torch.optim.Adam if spec.name == "adam" else torch.optim.AdamW
        betas = tuple(spec.betas) if spec.betas is not None else ADAM_BETAS
        eps = spec.eps if spec.eps is not None else ADAM_EPS
        return cls(params, lr=spec.lr, betas=betas, eps=eps, weight_decay=spec.weight_decay)
    reference = factories.reference_for("optimizer", spec.name, OPTIMIZERS)
    made = factories.call(
        factories.resolve(reference), "optimizer", (params,), spec.kwargs, lr=spec.lr, weight_decay=spec.weight_decay
    )
    if not isinstance(made, torch.optim.Optimizer):
        raise LipbenchError(f"optimizer {reference} returned a {type(made).__name__}, not a torch.optim.Optimizer")
    return made


def build_schedule(spec: ScheduleSpec, optimizer: torch.optim.Optimizer, steps: int) -> lr_scheduler.LRScheduler:
    """The schedule; with warmup, LinearLR from lr / (warmup + 1) to lr first, then the schedule."""
    warmup = min(spec.warmup_steps, steps)
    main = _main_schedule(spec, optimizer, max(1, steps - warmup))
    if warmup == 0:
        return main
    warm = lr_scheduler.LinearLR(optimizer, start_factor=1 / (warmup + 1), end_factor=1.0, total_iters=warmup)
    return lr_scheduler.SequentialLR(optimizer, [warm, main], milestones=[warmup])


def _main_schedule(spec: ScheduleSpec, optimizer: torch.optim.Optimizer, steps: int) -> lr_scheduler.LRScheduler:
    base = optimizer.param_groups[0]["lr"]
    if spec.name == "constant":
        return lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if spec.name == "step":
        return lr_scheduler.StepLR(optimizer, step_size=spec.step_size, gamma=spec.gamma or 0.1)
    if spec.name == "exponential":
        return lr_scheduler.ExponentialLR(optimizer, gamma=spec.gamma)
    if spec.name == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=spec.min_lr)
    if spec.name == "linear":
        if spec.min_lr > base:
            raise LipbenchError(f"schedule linear: min_lr {spec.min_lr:g} is above the learning rate {base:g}")
        return lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=spec.min_lr / base, total_iters=steps)
    reference = factories.reference_for("schedule", spec.name, SCHEDULES)
    made = factories.call(factories.resolve(reference), "schedule", (optimizer,), spec.kwargs, total_steps=steps)
    if not isinstance(made, lr_scheduler.LRScheduler):
        raise LipbenchError(f"schedule {reference} returned a {type(made).__name__}, not an LRScheduler")
    return made
