"""One training run: plain SGD, recording the layers' spectral norms every `record_every` steps.

Read it top to bottom: seeds -> data -> model -> loop -> record. The pieces it shares with the
ensemble engine (streams, batches, gradient noise, the records) are in lipbench.torch.training; the
layers' sigmas (a conv layer's operator norm, warm-started between records) in lipbench.torch.tracking.
Tensors stay on the device; the recorded values go into one preallocated device tensor and
cross to the host once, at the end. The only per-record host sync is the divergence check.
"""

from __future__ import annotations

import functools
import time

import torch

from lipbench.records import RunRecord
from lipbench.suite import RunSpec
from lipbench.torch.data import Dataset
from lipbench.torch.models import lipschitz_layers
from lipbench.torch.optim import build as build_optimizer
from lipbench.torch.regularisers import BatchTransform
from lipbench.torch.run_context import train_with_run_function
from lipbench.torch.sde import OperatorState, measure_sde_terms
from lipbench.torch.tracking import run_tracker
from lipbench.torch.training import (
    MONITOR_SIZE,
    BatchSampler,
    GradientNoise,
    RecordBuffer,
    Stream,
    initial_model,
    member_labels,
    run_seed,
    seed_global,
    test_accuracy,
    transform_gradients,
)


def train(spec: RunSpec, data: Dataset, device: torch.device | str = "cpu") -> RunRecord:
    """Train one run of a claim and return its record; a non-finite sigma or loss stops it early."""
    sc, device = spec.scenario, torch.device(device)
    if sc.run is not None:  # the user's own loop, with lipbench's run context and recorder
        return train_with_run_function(spec, data, device)
    started = time.perf_counter()
    seed_global(spec)  # dropout masks and AutoAugment; the init seed alone fixes the weights

    x_train = data.x_train.to(device)
    y_train = member_labels([spec], data, device)[0]
    sampler = BatchSampler([spec], x_train.shape[0], sc, device)
    x_mon, y_mon = x_train[:MONITOR_SIZE], y_train[:MONITOR_SIZE]

    model = initial_model(spec, data).to(device)
    layers = [module for _, module in lipschitz_layers(model)]
    opt, schedule = build_optimizer(sc.optimizer, model.parameters(), sc.steps)  # torch.optim (lipbench.torch.optim)
    noise = GradientNoise([spec], [p.shape for p in model.parameters()], device)
    # Regularisers (mixup, label smoothing, auto-augment, FGSM): the batch and loss the step trains on.
    transform = BatchTransform(sc.regularisers, x_train, data.num_classes, device, run_seed(spec, Stream.REGULARISERS))
    recorder = RecordBuffer(sc, model, members=1, device=device)
    tracker = run_tracker(sc, model, data.input_shape, len(recorder.marks), device)  # conv: the operator's norm
    names = [f"{name}.weight" for name, _ in lipschitz_layers(model)]
    probe = None
    if "sde" in sc.record:  # the terms of the update the step applies (lipbench.torch.sde)
        probe = functools.partial(
            measure_sde_terms,
            layer_names=names,
            lr=sc.optimizer.lr,
            batch_stats="contributions" if sc.model.batch_norm else "error",
            weight_decay=sc.optimizer.weight_decay,
            gradient_scale=sc.gradient.scale,
            gradient_noise_var=sc.gradient.noise_std**2 if sc.gradient.noise != "none" else 0.0,
            population=x_train.shape[0] if sc.sampling == "without_replacement" else None,
            # conv layers as operators on images, as the tracker measures them (`bound` refuses sde)
            operators={n: g for n, g in zip(names, tracker.geometries, strict=True) if g is not None},
            operator_state=OperatorState(),
        )

    def weights() -> list[torch.Tensor]:
        return [layer.weight.detach().unsqueeze(0) for layer in layers]

    drift = None
    for step in range(sc.steps + 1):
        idx = sampler()[0]
        xb, yb = transform(model, x_train[idx], y_train[idx])  # mixup makes yb soft targets

        if recorder.due(step):
            model.eval()
            with torch.no_grad():
                logits = model(x_mon).unsqueeze(0) if recorder.monitored else None  # 1 x n x classes: M = 1
            model.train()  # the probe sees what the step sees: dropout masks, batch statistics
            given, extras = None, {}
            if probe is not None:  # the matrix sigmas then come from the probe's own decomposition; conv
                # operators' from the tracker, bracketed (the probe's agree with them within its tolerance)
                measured = probe(model, x=xb, y=yb, loss_fn=transform.loss)
                given, extras = torch.stack([t.sigma for t in measured.layers]).unsqueeze(0), measured.as_dict()
            sigmas = tracker(weights(), recorder.alive, given)
            alive = recorder.write(sigmas, logits, y_mon.unsqueeze(0), extras)
            if not bool(alive[0]):  # host sync, once per record
                break
            drift = tracker.step_drift(weights()) if recorder.drift else None  # of the step that follows
        if step == sc.steps:
            break

        loss = transform.loss(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        transform_gradients(model.parameters(), sc.gradient, noise.draw())
        opt.step()
        schedule.step()
        if drift is not None:  # the record step's weight change on each layer's top singular pair
            recorder.write_drift(drift(weights()))
            drift = None

    model.eval()
    summaries = test_accuracy(lambda _, x: model(x), data, device, recorder.finished())
    summaries[0].update(tracker.summaries()[0])
    return recorder.records([spec], time.perf_counter() - started, summaries)[0]
