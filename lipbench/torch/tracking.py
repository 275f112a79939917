"""sigma_l of every Lipschitz layer at each record, for engine.train, the run-function recorder and the ensemble.

One `SigmaTracker` serves M stacked members (M = 1 for one run). What sigma_l is depends on the layer and
on the scenario's `lipschitz.conv` (docs/science.md, "What K is"):

- a Linear layer, and a Conv2d under `reshaped`: sigma_max of its matrix (a conv kernel reshaped to
  out x (in*kh*kw)). One run takes it exactly at every record (`exact_matrices`); the ensemble tracks it
  with a warm-started Krylov iteration (`lanczos_spectral_norms`) and takes it exactly at the checks.
- a Conv2d under `operator`: the norm of the convolution as a map on images of its real input size
  (lipbench.torch.conv_operator), by the same warm-started Krylov iteration on the operator, in both
  engines; the checks take a converged iteration (`top_singular_pair`) instead.
- a Conv2d under `bound`: a certified upper bound of that norm (`certified_bound`) at every record.

The checks are the first record, the last, and every `exact_every`-th. There the estimate's relative
error is measured (`summary.sigma_rel_err`, its maximum over checks, for the layers that are estimated)
and, for conv layers under `operator` and `bound`, the relative width of [converged estimate, certified
bound] (`summary.sigma_bracket_<l>`, its maximum over checks). Everything stays on the device; the
converged iteration syncs once per restart cycle, at the checks only.

`step_drift` gives, from the pair just measured, the first-order change of each layer's log sigma along the
step after the record (`StepDrift`, the records' `drift_<l>`; docs/science.md, "By force, cheaply").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lipbench.errors import LipbenchError
from lipbench.suite import Scenario
from lipbench.torch.conv_operator import (
    ConvGeometry,
    certified_bound,
    conv_geometries,
    operator,
    top_singular_pair,
)
from lipbench.torch.lipschitz import (
    exact_spectral_norms,
    lanczos_spectral_norms,
    matrix_norms,
    matrix_operator,
    top_right_vector,
    top_singular,
)
from lipbench.torch.models import lipschitz_layers

EXACT_EVERY_STEPS = 1000  # by default a check about every this many training steps


def default_exact_every(record_every: int) -> int:
    """Records between exact checks: about one check every EXACT_EVERY_STEPS training steps."""
    return max(1, round(EXACT_EVERY_STEPS / record_every))


def default_lanczos_steps(record_every: int) -> int:
    """Krylov steps per record: 8 when recording every step, 12 when records are 3+ steps apart.

    Measured on MLP/ConvNet trajectories early in training, where the top directions move most
    (lr up to 0.2): recording every step, 8 steps keep the error below 5e-4 where 1 step (one
    power iteration) is off by 5e-2 and 6 steps by up to 1.5e-3; records 10 or 100 SGD steps
    apart need about 12 (1e-4; 16 steps: 1e-5).
    """
    return min(12, 8 + 2 * (record_every - 1))


class SigmaTracker:
    """sigma_l of every layer of M stacked members at each record (see the module docstring).

    geometries: per layer, its ConvGeometry (a Conv2d) or None (a Linear). conv: the scenario's
    `lipschitz.conv`. exact_matrices: take matrix norms exactly at every record (one run) instead of
    tracking them (the ensemble).
    """

    def __init__(
        self,
        geometries: Sequence[ConvGeometry | None],
        conv: str,
        members: int,
        records: int,
        device: torch.device,
        *,
        lanczos_steps: int,
        exact_every: int,
        exact_matrices: bool,
    ) -> None:
        self.geometries = [g if conv != "reshaped" else None for g in geometries]
        self.conv, self.records, self.steps, self.exact_every = conv, records, lanczos_steps, exact_every
        self.exact_matrices = exact_matrices
        self.convs = [i for i, g in enumerate(self.geometries) if g is not None]
        matrices = any(g is None for g in self.geometries)
        self.estimated = (matrices and not exact_matrices) or (conv == "operator" and bool(self.convs))
        self.rel_err = torch.zeros(members, device=device)
        self.bracket = torch.zeros(members, len(self.convs), device=device)
        self.vectors: list[torch.Tensor | None] = [None] * len(self.geometries)
        self.row = 0

    @torch.no_grad()
    def __call__(
        self, weights: list[torch.Tensor], alive: torch.Tensor, given: torch.Tensor | None = None
    ) -> torch.Tensor:
        """sigma (M, L) from each layer's stacked weight, M x out x in (Linear) or M x out x in x kh x kw.

        `given` (M, L): matrix sigmas the caller already has (the SDE probe's), used for the layers
        measured as matrices under `exact_matrices`.
        """
        row, self.row = self.row, self.row + 1
        check = row == 0 or row % self.exact_every == 0 or row == self.records - 1
        out, errors, brackets = [], [], []
        for layer, (W, geom) in enumerate(zip(weights, self.geometries, strict=True)):
            if geom is None:
                sigma, err = self._matrix(layer, W.flatten(2), row, check, given)
            else:
                sigma, err, bracket = self._operator(layer, W, geom, row, check)
                brackets.append(bracket)
            out.append(sigma)
            if err is not None:
                errors.append(err)
        if check and errors:
            err = torch.stack(errors, dim=1).amax(dim=1)
            self.rel_err = torch.maximum(self.rel_err, torch.where(alive & torch.isfinite(err), err, 0.0))
        if check and brackets:
            width = torch.stack(brackets, dim=1)
            self.bracket = torch.maximum(self.bracket, torch.where(alive[:, None] & torch.isfinite(width), width, 0.0))
        return torch.stack(out, dim=1)

    def _matrix(
        self, layer: int, W: torch.Tensor, row: int, check: bool, given: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.exact_matrices:
            return (given[:, layer] if given is not None else matrix_norms([W])[:, 0]), None
        if row == 0:
            sigma, (self.vectors[layer],) = top_singular([W])
            return sigma[:, 0], None
        estimate, (self.vectors[layer],) = lanczos_spectral_norms(
            [matrix_operator(W)], [self.vectors[layer]], self.steps
        )
        if not check:
            return estimate[:, 0], None
        exact = exact_spectral_norms([W])[:, 0]
        return exact, (estimate[:, 0] - exact).abs() / exact

    def _operator(
        self, layer: int, kernel: torch.Tensor, geom: ConvGeometry, row: int, check: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        if self.conv == "bound" and not check:
            return certified_bound(kernel, geom), None, None
        if self.conv == "bound" or row == 0:  # the converged estimate, from the last one's vectors
            exact, self.vectors[layer] = _converged(kernel, geom, self.vectors[layer])
            estimate = None
        else:
            estimate, (self.vectors[layer],) = lanczos_spectral_norms(
                [operator(kernel, geom)], [self.vectors[layer]], self.steps
            )
            estimate = estimate[:, 0]
            if not check:
                return estimate, None, None
            exact, self.vectors[layer] = _converged(kernel, geom, self.vectors[layer])
        bound = certified_bound(kernel, geom)
        err = None if estimate is None else (estimate - exact).abs() / exact
        return (bound if self.conv == "bound" else exact), err, (bound - exact) / exact

    @torch.no_grad()
    def step_drift(self, weights: list[torch.Tensor]) -> StepDrift:
        """The drift probe of the step that follows this record, from the weights the tracker has just measured
        (the same stacks as `__call__` took) and each layer's current top right vector: the tracker's own
        (its Ritz or converged vector), or, where matrices are taken exactly without vectors, the exact one
        (`top_right_vector`: no host sync).
        Not for `bound` (no pair is kept between its checks)."""
        vs = []
        for layer, (W, geom) in enumerate(zip(weights, self.geometries, strict=True)):
            if geom is None and self.exact_matrices:
                vs.append(top_right_vector(W.flatten(2)))
            else:
                vs.append(self.vectors[layer])
        return StepDrift(weights, vs, self.geometries)

    def summaries(self) -> list[dict[str, float]]:
        """Per member: sigma_rel_err (where a layer is estimated) and sigma_bracket_<l> per conv layer (a host
        transfer, at the end of a run)."""
        rel_err, bracket = self.rel_err.tolist(), self.bracket.tolist()
        out = []
        for err, widths in zip(rel_err, bracket, strict=True):
            summary = {"sigma_rel_err": err} if self.estimated else {}
            summary.update({f"sigma_bracket_{layer}": w for layer, w in zip(self.convs, widths, strict=True)})
            out.append(summary)
        return out


def _image(weight: torch.Tensor, geom: ConvGeometry | None, v: torch.Tensor) -> torch.Tensor:
    """A v for stacked weights (M, ...) and vectors (M, n): the matrix (a conv kernel reshaped) or the operator."""
    return (matrix_operator(weight.flatten(2)) if geom is None else operator(weight, geom))[0](v)


class StepDrift:
    """drift_l = <W'_l - W_l, u_l v_l^T> / sigma_l per member: the first-order change of log sigma_l along one
    step's weight change, with (sigma_l, u_l, v_l) the top singular triple at W_l (the record's weights).

    For a conv operator the kernel gradient of sigma is D = d<u, conv(v; W)>/dW, and <dW, D> = <u, conv(v; dW)>
    (the operator is linear in its kernel), so every layer's projection is <A v, A(dW) v> / |A v|^2 with A its
    matrix or operator: no D is formed. Built at the record (a copy of its weights and the pair), called with
    the weights after the step; stays on the device.
    """

    def __init__(
        self, weights: list[torch.Tensor], vs: list[torch.Tensor], geometries: Sequence[ConvGeometry | None]
    ) -> None:
        self.before = [W.clone() for W in weights]
        self.vs, self.geometries = vs, list(geometries)
        images = [_image(W, g, v) for W, g, v in zip(self.before, self.geometries, vs, strict=True)]
        self.ys = [a / a.square().sum(dim=-1, keepdim=True) for a in images]  # u_l / sigma_l

    @torch.no_grad()
    def __call__(self, after: list[torch.Tensor]) -> torch.Tensor:
        """drift (M, L) of the step from the recorded weights to `after`."""
        out = [
            (y * _image(W - W0, g, v)).sum(dim=-1)
            for W, W0, g, v, y in zip(after, self.before, self.geometries, self.vs, self.ys, strict=True)
        ]
        return torch.stack(out, dim=1)


def records_drift(scenario: Scenario, model: torch.nn.Module) -> bool:
    """Whether the engines record drift_<l>: not beside the SDE probe (whose terms split the change of log sigma
    themselves), nor for conv layers under `bound` (sigma is then a bound, not the norm of a singular pair)."""
    convs = any(isinstance(m, torch.nn.Conv2d) for _, m in lipschitz_layers(model))
    return "sde" not in scenario.record and not (convs and scenario.lipschitz.conv == "bound")


def _converged(
    kernel: torch.Tensor, geom: ConvGeometry, start: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The converged sigma_max (M,) of stacked kernels and its right singular images (M, C*H*W), the next warm
    start. In float64: float32 rounding of A^T A v (about 1e-7 sigma^2) would keep the residual test from passing."""
    v0 = None if start is None else start.double().view(-1, *geom.in_shape)
    sigma, _, v = top_singular_pair(kernel.double(), geom, v0)
    return sigma.to(kernel.dtype), v.flatten(1).to(kernel.dtype)


def run_tracker(
    scenario: Scenario, model: torch.nn.Module, input_shape: tuple[int, ...], records: int, device: torch.device
) -> SigmaTracker:
    """The tracker of one run (engine.train, the run-function recorder): matrix norms exact at every record,
    conv layers as `scenario.lipschitz.conv` says, on inputs of `input_shape` (C, H, W)."""
    conv = scenario.lipschitz.conv
    return SigmaTracker(
        layer_geometries(model, input_shape, conv),
        conv,
        1,
        records,
        device,
        lanczos_steps=default_lanczos_steps(scenario.record_every),
        exact_every=default_exact_every(scenario.record_every),
        exact_matrices=True,
    )


def layer_geometries(
    model: torch.nn.Module, input_shape: tuple[int, ...], conv: str = "operator"
) -> list[ConvGeometry | None]:
    """Per Lipschitz layer of `model` (forward order), its ConvGeometry (a Conv2d, unless conv is `reshaped`)
    or None."""
    layers = lipschitz_layers(model)
    convs = any(isinstance(m, torch.nn.Conv2d) for _, m in layers)
    try:
        geoms = conv_geometries(model, tuple(input_shape)) if convs and conv != "reshaped" else {}
    except ValueError as err:  # a grouped or circularly padded Conv2d of the user's own model
        raise LipbenchError(f"scenario.lipschitz.conv: {conv}: {err}; set lipschitz.conv: reshaped") from None
    return [geoms.get(name) for name, _ in layers]
