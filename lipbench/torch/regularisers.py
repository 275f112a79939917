"""Training-time regularisers of the paper's validation (its §7), applied to each mini-batch.

`BatchTransform(spec, ...)` turns the sampled batch (x, y) into the batch SGD really trains on
and gives the loss it trains with, so the training step and the SDE probe see the same thing:

1. auto_augment: torchvision's AutoAugment policy, one random sub-policy per sample. The data
   are standardised, so each channel is mapped back to 0..255 with the training set's own
   per-channel min and max (exact for MNIST, Fashion-MNIST and CIFAR, whose training sets span
   0..255; digits' 0..16 maps onto 0..255), rounded to uint8, augmented, and mapped back. On
   1-channel data the CIFAR-10 policy runs as is: its Color (saturation) op is the identity on
   a grayscale image, as in PIL; every other op is defined for one channel.
2. mixup: lambda ~ Beta(alpha, alpha) once per batch, x <- lambda x + (1 - lambda) x[perm]; the
   targets become the matching soft labels, so the loss stays a mean of per-sample losses.
3. FGSM adversarial training: x <- clamp(x + epsilon sign(grad_x loss), data range), with the
   training loss (mixed targets, label smoothing) at the current weights; the step then trains
   on the perturbed batch only. epsilon is in model-input units: data are standardised per
   channel, so epsilon = 8/255 of the pixel range is 8/255 / std_pixel (about 0.125 on CIFAR-10).
Label smoothing is the loss's own `label_smoothing`.

Random draws: mixup's lambda and permutation come from their own streams, so switching a
regulariser on leaves the mini-batch sequence unchanged; AutoAugment and dropout draw from the
global generator, which the engine seeds per run.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lipbench.suite import RegularisersSpec

__all__ = ["BatchTransform", "fgsm"]


def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    loss_fn,
    epsilon: float,
    low: torch.Tensor | None = None,
    high: torch.Tensor | None = None,
) -> torch.Tensor:
    """x + epsilon sign(grad_x loss), clamped to [low, high] (broadcast per channel); no grad kept."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (gx,) = torch.autograd.grad(loss_fn(model(x), target), x)
    adv = x.detach() + epsilon * gx.sign()
    if low is not None:
        adv = torch.maximum(torch.minimum(adv, high), low)
    return adv


class BatchTransform:
    """The regularisers of a scenario, as a callable (model, x, y) -> (x', target) and a `loss`."""

    def __init__(
        self, spec: RegularisersSpec, x_train: torch.Tensor, num_classes: int, device: torch.device, seed: int
    ):
        self.spec, self.num_classes = spec, num_classes
        self.loss = (
            functools.partial(F.cross_entropy, label_smoothing=spec.label_smoothing)
            if spec.label_smoothing > 0
            else F.cross_entropy
        )
        self.active = spec.mixup > 0 or spec.auto_augment != "none" or spec.fgsm_epsilon > 0
        if not self.active:
            return
        dims = (0, *range(2, x_train.dim()))
        self.low = x_train.amin(dim=dims, keepdim=True)  # 1 x C x 1 x 1: the data range per channel
        self.high = x_train.amax(dim=dims, keepdim=True)
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.augment = None
        if spec.auto_augment != "none":
            from torchvision.transforms import v2

            policy = {"cifar10": "CIFAR10", "imagenet": "IMAGENET", "svhn": "SVHN"}[spec.auto_augment]
            self.augment = v2.AutoAugment(v2.AutoAugmentPolicy[policy])

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.active:
            return x, y
        s = self.spec
        if self.augment is not None:
            x = self.auto_augment(x)
        target = y
        if s.mixup > 0:
            lam = float(self.rng.beta(s.mixup, s.mixup))  # a host draw: no device sync
            perm = torch.randperm(x.shape[0], generator=self.gen, device=x.device)
            onehot = F.one_hot(y, self.num_classes).to(x.dtype)
            x = lam * x + (1 - lam) * x[perm]
            target = lam * onehot + (1 - lam) * onehot[perm]  # b x classes soft labels
        if s.fgsm_epsilon > 0:
            x = fgsm(model, x, target, self.loss, s.fgsm_epsilon, self.low, self.high)
        return x, target

    def auto_augment(self, x: torch.Tensor) -> torch.Tensor:
        """AutoAugment on the batch in uint8 pixel units, one sub-policy draw per sample."""
        span = (self.high - self.low).clamp_min(1e-12)
        pixels = ((x - self.low) / span * 255).round_().clamp_(0, 255).to(torch.uint8)
        out = torch.stack([self.augment(img) for img in pixels])  # per sample: one policy each
        return out.to(x.dtype) / 255 * span + self.low
