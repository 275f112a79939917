"""The package's own training loop (AdamW, a cosine schedule), as lipbench calls it.

lipbench calls `train(context, recorder, **options)` once per run; `context` brings the seeds, a
generator per random stream, the device, the data and the corrupted labels, `recorder.record`
stores what the claims read. Everything else is this package's own choice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from own_code.model import SmallNet


def training_labels(context) -> torch.Tensor:
    """The labels to train on: lipbench's, with the scenario's label noise applied."""
    return context.labels


def sampling_generator(context) -> torch.Generator:
    """Mini-batches come from the run's own sampling stream."""
    return context.generators.sampling


def train(
    context,
    recorder,
    *,
    widths: tuple[int, ...] = (64, 64),
    lr: float = 3e-3,
    weight_decay: float = 0.01,
    batch_size: int = 32,
) -> None:
    with context.init_rng():  # the init seed alone fixes the initial weights
        model = SmallNet(context.data.x_train.shape[1:], context.data.num_classes, widths)
    model = model.to(context.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=context.steps)
    x, y = context.data.x_train, training_labels(context)
    generator = sampling_generator(context)

    for step in range(context.steps + 1):
        idx = torch.randint(len(x), (batch_size,), generator=generator, device=context.device)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        recorder.record(step, model, loss=loss)  # at the scenario's record steps: sigma per layer, K, loss
        if step == context.steps:
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
