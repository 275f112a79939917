"""One training run: plain SGD, recording the layers' spectral norms every `record_every` steps.

Read it top to bottom: seeds -> data -> model -> loop -> record. Tensors stay on the device;
the recorded values go into one preallocated device tensor and cross to the host once, at
the end. The only per-record host sync is the divergence check.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from lipbench import factories
from lipbench.data import Dataset
from lipbench.lipschitz import spectral_norms
from lipbench.models import MODELS, build_model, initialise, lipschitz_layers
from lipbench.optim import build as build_optimizer
from lipbench.records import RunRecord
from lipbench.regularisers import BatchTransform
from lipbench.suite import RunSpec

MONITOR_SIZE = 1024  # training samples on which loss and accuracy are recorded


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device; use --device cpu")
    return torch.device(device)


def stream_seed(*parts: int) -> int:
    """An independent 63-bit seed for a named random stream (numpy's SeedSequence mixes the parts)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> 1)


def run_streams(spec: RunSpec, device: torch.device) -> tuple[torch.Generator, torch.Generator, torch.Generator]:
    """The run's random streams (labels on the CPU; sampling and gradient noise on the device); seeds
    the global generator for what draws from it (dropout masks). The init seed alone fixes the weights."""
    labels = torch.Generator().manual_seed(stream_seed(spec.sampling_seed, spec.init_seed, 1))
    sampling = torch.Generator(device=device).manual_seed(stream_seed(spec.sampling_seed, spec.init_seed, 2))
    noise = torch.Generator(device=device).manual_seed(stream_seed(spec.sampling_seed, spec.init_seed, 3))
    torch.manual_seed(stream_seed(spec.sampling_seed, spec.init_seed, 4))  # dropout masks use the global RNG
    return labels, sampling, noise


def record_steps(steps: int, record_every: int) -> list[int]:
    marks = list(range(0, steps + 1, record_every))
    return marks if marks[-1] == steps else [*marks, steps]


def corrupt_labels(y: torch.Tensor, p: float, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """Replace each label, with probability p, by a class drawn uniformly (it may redraw the true one)."""
    if p == 0:
        return y
    mask = torch.rand(y.shape, generator=generator) < p
    drawn = torch.randint(num_classes, y.shape, generator=generator)
    return torch.where(mask.to(y.device), drawn.to(y.device), y)


def init_sigma_theory(layers: list[torch.nn.Module], scheme: str, std: float) -> list[float]:
    """s (sqrt(m) + sqrt(n)) per layer matrix m x n (the paper, §8.2), s the entry std of the init scheme."""
    out = []
    for layer in layers:
        rows, cols = layer.weight.shape[0], layer.weight[0].numel()
        s = std if scheme == "normal" else 1.0 / math.sqrt(3 * cols)  # U(-1/sqrt(fan_in), ..) has std 1/sqrt(3 fan_in)
        out.append(s * (math.sqrt(rows) + math.sqrt(cols)))
    return out


def check_batch(sampling: str, b: int, n: int) -> None:
    """Sampling without replacement draws b distinct samples per step: refuse b > n before training."""
    if sampling == "without_replacement" and b > n:
        raise ValueError(f"batch_size {b} exceeds the {n} training samples; sampling without replacement needs b <= n")


def index_batches(
    n: int, b: int, sampling: str, generator: torch.Generator, device: torch.device
) -> Iterator[torch.Tensor]:
    """Mini-batch indices, endlessly, from the sampling stream alone: b draws with replacement per
    step, or the steps of shuffled epochs without replacement (an incomplete tail is dropped)."""
    check_batch(sampling, b, n)
    if sampling == "with_replacement":
        while True:
            yield torch.randint(n, (b,), generator=generator, device=device)
    while True:
        order = torch.randperm(n, generator=generator, device=device)
        for pos in range(0, n - b + 1, b):
            yield order[pos : pos + b]


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


def train(spec: RunSpec, data: Dataset, device: torch.device | str = "cpu") -> RunRecord:
    """Train one run of a claim and return its record; a non-finite loss stops it early."""
    sc, device = spec.scenario, torch.device(device)
    if sc.run is not None:  # the user's own loop, with lipbench's run context and recorder
        from lipbench.run_context import train_with_run_function

        return train_with_run_function(spec, data, device)
    started = time.perf_counter()
    # Separate streams: the init seed alone fixes the weights; sampling, labels and noise have their own.
    label_gen, batch_gen, noise_gen = run_streams(spec, device)

    x_train = data.x_train.to(device)
    y_train = corrupt_labels(data.y_train, sc.label_noise, data.num_classes, label_gen).to(device)
    n = x_train.shape[0]
    x_mon, y_mon = x_train[:MONITOR_SIZE], y_train[:MONITOR_SIZE]

    m = sc.model
    model = initial_model(spec, data).to(device)
    layers = [module for _, module in lipschitz_layers(model)]
    layer_names = [f"{name}.weight" for name, _ in lipschitz_layers(model)]
    opt, schedule = build_optimizer(sc.optimizer, model.parameters(), sc.steps)  # torch.optim (lipbench.optim)
    b, g = sc.optimizer.batch_size, sc.gradient
    noise_amp = g.noise_std * (math.sqrt(3.0) if g.noise == "uniform" else 1.0)
    # Regularisers (mixup, label smoothing, auto-augment, FGSM): the batch and loss the step trains on.
    reg_seed = stream_seed(spec.sampling_seed, spec.init_seed, 5)
    transform = BatchTransform(sc.regularisers, x_train, data.num_classes, device, reg_seed)
    if "sde" in sc.record:
        from lipbench.sde import measure_sde_terms

        probe = functools.partial(  # the terms of the update the step applies (lipbench.sde)
            measure_sde_terms,
            lr=sc.optimizer.lr,
            batch_stats="contributions" if m.batch_norm else "error",
            weight_decay=sc.optimizer.weight_decay,
            gradient_scale=g.scale,
            gradient_noise_var=g.noise_std**2 if g.noise != "none" else 0.0,
            population=n if sc.sampling == "without_replacement" else None,
        )

    marks = record_steps(sc.steps, sc.record_every)
    probe_sde = "sde" in sc.record
    names = [f"sigma_{i}" for i in range(len(layers))] + ["loss", "accuracy"]
    buffer = torch.full((len(marks), len(names) + (64 if probe_sde else 0)), math.nan, device=device)
    sde_keys: list[str] = []
    batches = index_batches(n, b, sc.sampling, batch_gen, device)
    diverged_at, row = None, 0

    for step in range(sc.steps + 1):
        idx = next(batches)
        xb, yb = x_train[idx], y_train[idx]
        xb, yb = transform(model, xb, yb)  # unchanged without regularisers; mixup makes yb soft targets

        if step == marks[row]:
            model.eval()
            with torch.no_grad():
                logits = model(x_mon)
                if not probe_sde:  # with the probe, sigma comes from the probe's own decomposition below
                    buffer[row, : len(layers)] = spectral_norms(layers)
                buffer[row, len(layers)] = F.cross_entropy(logits, y_mon)
                buffer[row, len(layers) + 1] = (logits.argmax(1) == y_mon).float().mean()
            model.train()  # the probe sees what the step sees: dropout masks, batch statistics
            if probe_sde:
                measured = probe(model, layer_names, xb, yb, transform.loss)
                buffer[row, : len(layers)] = torch.stack([t.sigma for t in measured.layers])
                terms = measured.as_dict()
                sde_keys = list(terms)
                buffer[row, len(names) : len(names) + len(terms)] = torch.stack(list(terms.values()))
            model.train()
            if not bool(torch.isfinite(buffer[row, : len(layers) + 1]).all()):  # host sync, once per record
                diverged_at = step
                break
            row += 1
        if step == sc.steps:
            break

        loss = transform.loss(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for p in model.parameters():
            if g.scale != 1.0:
                p.grad.mul_(g.scale)
            if g.noise == "gaussian":
                p.grad.add_(torch.randn(p.shape, generator=noise_gen, device=device), alpha=noise_amp)
            elif g.noise == "uniform":
                p.grad.add_(torch.rand(p.shape, generator=noise_gen, device=device).mul_(2).sub_(1), alpha=noise_amp)
        opt.step()
        schedule.step()

    kept = row if diverged_at is None else row + 1
    values = buffer[:kept].double().cpu().numpy()  # the one transfer to the host
    metrics = {name: values[:, i] for i, name in enumerate(names)}
    metrics.update({k: values[:, len(names) + i] for i, k in enumerate(sde_keys)})
    sigmas = values[:, : len(layers)]
    with np.errstate(divide="ignore", invalid="ignore"):
        metrics["log_K"] = np.log(sigmas).sum(axis=1)
        metrics["K"] = np.exp(metrics["log_K"])
    if "init" in sc.record:  # the random-matrix prediction for each layer at init: a constant per run
        for i, v in enumerate(init_sigma_theory(layers, m.init, m.init_std)):
            metrics[f"sigma_init_theory_{i}"] = np.full(kept, v)
    summary: dict[str, float] = {}
    if diverged_at is None:
        model.eval()
        with torch.no_grad():
            xt, yt = data.x_test[:10_000].to(device), data.y_test[:10_000].to(device)
            summary["test_accuracy"] = float((model(xt).argmax(1) == yt).float().mean())
    return RunRecord(
        claim=spec.claim,
        run_id=spec.run_id,
        sweep_value=spec.sweep_value,
        init_seed=spec.init_seed,
        sampling_seed=spec.sampling_seed,
        steps=np.asarray(marks[:kept], dtype=np.int64),
        metrics=metrics,
        diverged_at=diverged_at,
        seconds=time.perf_counter() - started,
        device=str(device),
        summary=summary,
    )
