"""Many runs of a claim trained as one vectorised program: `train_ensemble(specs, data, device)`.

Runs that share everything but their seeds and a few numbers (`ensemble_key`) become the members
of one ensemble. Their parameters are stacked along a leading member axis; the forward pass is
`torch.func.vmap` over `functional_call` of one module (the ConvNet: members as the groups of grouped
convolutions, lipbench.torch.grouped), and one backward pass through the sum of the members' losses
gives every member its own gradient (no member's loss depends on another's). The plain MLP (no
dropout) skips autograd: `_fused_mlp_step` writes its backward pass out with batched matmuls and
accumulates each weight gradient straight into the weights.

Each member keeps what engine.train gives a run, from the same pieces (lipbench.torch.training), so
the same seeds give the same trajectory within float tolerance: its initial weights (built and
`initialise`d on the CPU from its init seed), its streams (batches, epoch permutations, gradient
noise and label corruption, each from the member's own generator in engine.train's order), the
same recorded columns, and its own learning rate, weight decay, label noise, gradient scale and
noise std. The ConvNet's dropout masks too (each member its own generator, where engine.train's
global generator stands on the CPU). The MLP's dropout masks are the exception: under vmap
(randomness="different") every member draws its own masks from the global generator, seeded from
the first member's seeds, so an ensemble repeats itself but its masks are not engine.train's.

What runs as an ensemble is decided per field and per allowed value of the scenario schema, in
`ENSEMBLE_SUPPORT` (lipbench.ensemble_support, torch-free, re-exported here with the grouping; a
test fails when the schema gains a field or a value without a decision there); a run the table
keeps out (the SDE probe, mixup, AutoAugment, FGSM, or anything without a decision) trains alone
with engine.train (`ensemble_obstacle` says why).

Lipschitz tracking (lipbench.torch.tracking.SigmaTracker, shared with engine.train): at every
record a warm-started power iteration, Krylov-accelerated (`lipschitz.lanczos_spectral_norms`:
`lanczos_steps` Golub-Kahan-Lanczos steps, batched over members, the top Ritz vector kept between
records), estimates each layer's sigma_max, of its matrix or, for a conv layer, of the convolution
as an operator on images (the members' kernels as the groups of one grouped convolution). The
first and last records, and every `exact_every`-th, take an exact (or converged) value instead;
there the estimate's relative error is measured and reported as summary["sigma_rel_err"] (its
maximum over checks), with the conv layers' certified brackets (summary["sigma_bracket_<l>"]).

Divergence (lipbench.torch.training.RecordBuffer): a member whose record holds a non-finite sigma or
(recorded) loss is marked, its step factors drop to zero and its later rows are dropped; the
other members go on. No host sync in the loop: records go into one device tensor that crosses
to the host once per chunk. Members are chunked by `max_members` (default: a memory estimate).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from lipbench.ensemble_support import (
    ENSEMBLE_SUPPORT,
    Support,
    can_ensemble,
    decision_keys,
    ensemble_key,
    ensemble_obstacle,
    fuses,
    group_specs,
    members_independent,
    unsupported,
)
from lipbench.records import RunRecord
from lipbench.suite import RunSpec
from lipbench.torch.data import Dataset
from lipbench.torch.engine import train
from lipbench.torch.grouped import grouped_forward, groups
from lipbench.torch.models import lipschitz_layers
from lipbench.torch.tracking import SigmaTracker, default_exact_every, default_lanczos_steps, layer_geometries
from lipbench.torch.training import (
    MONITOR_SIZE,
    BatchSampler,
    Factors,
    GradientNoise,
    RecordBuffer,
    Stream,
    initial_model,
    member_labels,
    run_seed,
    seed_global,
    step_factors,
    test_accuracy,
)

__all__ = [
    "ENSEMBLE_SUPPORT",
    "Support",
    "can_ensemble",
    "decision_keys",
    "default_exact_every",
    "default_lanczos_steps",
    "default_max_members",
    "ensemble_key",
    "ensemble_obstacle",
    "fuses",
    "group_specs",
    "members_independent",
    "train_ensemble",
    "unsupported",
]

MAX_MEMBERS = 256
CPU_MEMORY_BUDGET = 2 * 1024**3  # bytes an ensemble may use on the CPU; on CUDA, half the free memory


def default_max_members(spec: RunSpec, data: Dataset, device: torch.device | str) -> int:
    """How many members fit: a rough estimate of one member's bytes against a memory budget."""
    sc, device = spec.scenario, torch.device(device)
    model = initial_model(spec, data)
    n_params = sum(p.numel() for p in model.parameters())
    acts = [0]
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: acts.__setitem__(0, acts[0] + out.numel()))
        for m in model.modules()
        if not list(m.children())
    ]
    with torch.no_grad():
        model(torch.zeros(2, *data.input_shape))  # two samples: batch norm needs more than one value
    for h in hooks:
        h.remove()
    acts[0] //= 2
    # parameters, gradients, noise and temporaries; saved activations and their gradients; the monitor pass
    monitor = MONITOR_SIZE if ("loss" in sc.record or "accuracy" in sc.record) else 0
    per_member = 4 * (5 * n_params + acts[0] * (3 * sc.optimizer.batch_size + monitor))
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)  # once per ensemble, not in the loop
        budget = free // 2
    else:
        budget = CPU_MEMORY_BUDGET
    return int(max(1, min(MAX_MEMBERS, budget // per_member)))


def train_ensemble(
    specs: Sequence[RunSpec],
    data: Dataset,
    device: torch.device | str = "cpu",
    *,
    max_members: int | None = None,
    lanczos_steps: int | None = None,
    exact_every: int | None = None,
) -> list[RunRecord]:
    """Train `specs` as few vectorised ensembles as they allow; one record per spec, in order.

    Specs are grouped by `ensemble_key` (those that cannot be vectorised train alone with
    engine.train); each group is split into chunks of at most `max_members`. `lanczos_steps`
    (Krylov steps per record) and `exact_every` (records between exact checks) default to
    `default_lanczos_steps(record_every)` and `default_exact_every(record_every)`.
    """
    if max_members is not None and max_members < 1:
        raise ValueError(f"`max_members` must be a positive integer or None, got {max_members}.")
    for arg, value in (("lanczos_steps", lanczos_steps), ("exact_every", exact_every)):
        if value is not None and value < 1:
            raise ValueError(f"`{arg}` must be a positive integer or None, got {value}.")
    device = torch.device(device)
    out: dict[int, RunRecord] = {}
    position = {id(s): i for i, s in enumerate(specs)}
    for group in group_specs(specs):
        if ensemble_key(group[0]) is None:
            out[position[id(group[0])]] = train(group[0], data, device)
            continue
        cap = max_members or default_max_members(group[0], data, device)
        for start in range(0, len(group), cap):
            chunk = group[start : start + cap]
            record_every = chunk[0].scenario.record_every
            steps = lanczos_steps or default_lanczos_steps(record_every)
            every = exact_every or default_exact_every(record_every)
            for spec, record in zip(chunk, _train_chunk(chunk, data, device, steps, every), strict=True):
                out[position[id(spec)]] = record
    return [out[i] for i in range(len(specs))]


def _train_chunk(
    specs: Sequence[RunSpec], data: Dataset, device: torch.device, lanczos_steps: int, exact_every: int
) -> list[RunRecord]:
    started = time.perf_counter()
    sc, M, b = specs[0].scenario, len(specs), specs[0].scenario.optimizer.batch_size
    models, masks = [], []
    for spec in specs:  # each initialised as engine.train's, and its dropout generator where engine.train's is
        seed_global(spec)
        models.append(initial_model(spec, data))  # building the modules draws from the global generator
        masks.append(_dropout_generator(spec, device))
    members = _Members(models, device, masks)
    seed_global(specs[0])  # the MLP's dropout masks under vmap: every member its own, from the first member's seeds
    x_train, y_train = data.x_train.to(device), member_labels(specs, data, device)  # y_train: M x N
    x_mon, y_mon = x_train[:MONITOR_SIZE], y_train[:, :MONITOR_SIZE]
    sampler = BatchSampler(specs, x_train.shape[0], sc, device)
    noise = GradientNoise(specs, [p.shape[1:] for p in members.params().values()], device)
    # The update p <- p - lr (scale g + amplitude draw + wd p), its factors per member; they drop to
    # zero for a diverged member, which then stops moving.
    factors = step_factors(specs, device)
    step = functools.partial(
        _fused_mlp_step if fuses(sc) else _autograd_step, members, smoothing=sc.regularisers.label_smoothing
    )
    recorder = RecordBuffer(sc, members.base, M, device)
    tracker = SigmaTracker(
        layer_geometries(members.base, data.input_shape, sc.lipschitz.conv),
        sc.lipschitz.conv,
        M,
        len(recorder.marks),
        device,
        lanczos_steps=lanczos_steps,
        exact_every=exact_every,
        exact_matrices=False,
    )

    drift = None
    for t in range(sc.steps + 1):
        if recorder.due(t):
            with torch.no_grad():
                sigmas = tracker(members.layer_weights(), recorder.alive)
                logits = members.monitor(x_mon) if recorder.monitored else None  # M x MONITOR_SIZE x classes
                alive = recorder.write(sigmas, logits, y_mon)
                factors = {name: f * alive for name, f in factors.items()}
                drift = tracker.step_drift(members.layer_weights()) if recorder.drift else None
            if t == sc.steps:
                break
        idx = sampler()  # M x b
        xb = x_train.index_select(0, idx.flatten()).view(M, b, *x_train.shape[1:])
        step(xb, y_train.gather(1, idx), factors)
        members.subtract_noise(noise.draw(), factors["noise"])
        if drift is not None:  # the record step's weight change (the fused step leaves no gradient) on the pair
            recorder.write_drift(drift(members.layer_weights()))
            drift = None

    members.base.eval()
    summaries = test_accuracy(members.forward_one, data, device, recorder.finished())
    for summary, tracked in zip(summaries, tracker.summaries(), strict=True):
        summary.update(tracked)
    return recorder.records(specs, (time.perf_counter() - started) / M, summaries)  # the chunk's time, shared out


def _dropout_generator(spec: RunSpec, device: torch.device) -> torch.Generator:
    """A member's ConvNet dropout generator: on the CPU, torch's global generator as engine.train leaves it
    after building the run's model (so the masks are engine.train's); on CUDA, seeded from the same stream."""
    generator = torch.Generator(device=device)
    if device.type == "cpu":
        return generator.set_state(torch.get_rng_state())
    return generator.manual_seed(run_seed(spec, Stream.GLOBAL))


class _Members:
    """The members' parameters, stacked along a leading member axis, and their forward passes (vmapped; the
    ConvNet's training pass as grouped convolutions, `train_logits`).

    Trained in place. Linear weights are kept as M x in x out, so that their gradient (x^T delta,
    from the batched matmul) comes out contiguous and the update is a streaming subtraction; a
    transposed gradient made the update several times slower on a CPU. `params()` gives the
    parameters as the module sees them (views).
    """

    def __init__(
        self, modules: list[torch.nn.Module], device: torch.device, masks: Sequence[torch.Generator] = ()
    ) -> None:
        self.base = modules[0].to(device)  # the skeleton functional_call fills with a member's parameters
        if list(self.base.buffers()):
            raise ValueError("the ensemble cannot stack module buffers (batch norm must not track running stats)")
        self.names = [name for name, _ in self.base.named_parameters()]  # the module's order: the noise order
        self.leaves: dict[str, torch.Tensor] = {}
        for name in self.names:
            stacked = torch.stack([dict(m.named_parameters())[name].detach() for m in modules]).to(device)
            self.leaves[name] = (stacked.mT.contiguous() if stacked.dim() == 3 else stacked).requires_grad_()
        self.transposed = {name for name in self.names if self.leaves[name].dim() == 3}
        self.weights = [f"{name}.weight" for name, _ in lipschitz_layers(self.base)]
        self.masks = masks  # the ConvNet's dropout generators, one per member (lipbench.torch.grouped)
        self.batches = vmap(self._forward, in_dims=(0, 0), randomness="different")  # x: M x b x ...
        self.shared = vmap(self._forward, in_dims=(0, None), randomness="different")  # x: n x ...

    def _forward(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.base, params, (x,))

    def params(self) -> dict[str, torch.Tensor]:
        return {name: leaf.mT if name in self.transposed else leaf for name, leaf in self.leaves.items()}

    def train_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's logits on its own batch x (M x b x ...), in training mode: the ConvNet as grouped
        convolutions (lipbench.torch.grouped: faster than vmap on a CPU), other models through vmap."""
        if groups(self.base):
            return grouped_forward(self.base, self.params(), x, self.masks)
        return self.batches(self.params(), x)

    def layer_weights(self) -> list[torch.Tensor]:
        """Each Lipschitz layer's weight, M x out x in (Linear) or M x out x in x kh x kw (Conv2d)."""
        params = self.params()
        return [params[name].detach() for name in self.weights]

    def monitor(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's logits on the same samples, in eval mode (M x n x classes)."""
        self.base.eval()
        logits = self.shared(self.params(), x)
        self.base.train()
        return logits

    def forward_one(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.base, {k: v[i] for k, v in self.params().items()}, (x,))

    @torch.no_grad()
    def subtract_noise(self, draws: list[torch.Tensor], weight: torch.Tensor) -> None:
        """p <- p - weight[m] draw for every parameter (draws in the module's layout, as drawn; [] for none)."""
        if not draws:
            return
        for name, draw in zip(self.names, draws, strict=True):
            draw.mul_(_per_member(weight, draw))
            self.leaves[name].sub_(draw.mT if name in self.transposed else draw)


def _per_member(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (like.dim() - 1)))  # (M,) -> M x 1 x ... to broadcast over one parameter


def _autograd_step(members: _Members, x: torch.Tensor, y: torch.Tensor, factors: Factors, smoothing: float) -> None:
    """One SGD step of the stacked members through vmap and autograd, in place.

    The members' losses are weighted by lr * scale, so that backward hands out lr * scale * g and
    the step is one subtraction (plus lr * wd * p where there is weight decay).
    """
    leaves = list(members.leaves.values())
    logits = members.train_logits(x)  # M x b x classes
    losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none", label_smoothing=smoothing)
    updates = torch.autograd.grad((losses.view(y.shape).mean(1) * factors["gradient"]).sum(), leaves)
    with torch.no_grad():
        if "decay" in factors:
            for p, d in zip(leaves, updates, strict=True):
                d.add_(p * _per_member(factors["decay"], p))
        torch._foreach_sub_(leaves, updates)


@torch.no_grad()
def _fused_mlp_step(members: _Members, x: torch.Tensor, y: torch.Tensor, factors: Factors, smoothing: float) -> None:
    """One SGD step of M stacked ReLU MLPs, in place, with the backward pass written out.

    x: M x b x ... samples (flattened to M x b x in); y: M x b labels.
    The logits' gradient of member m's mean cross-entropy, weighted by factors["gradient"][m]
    (lr * scale), is (softmax - target) * that / b. Each weight gradient h^T delta goes straight into
    the weight (baddbmm, beta = 1, alpha = -1) instead of being written out and read back by a
    separate subtraction (on a CPU that subtraction alone took about 7 % of an MLP ensemble's step). The same
    update as autograd's within float rounding (tested); weight decay, W <- W - lr wd W, is applied
    before, from the same old weights.
    """
    M, b = y.shape
    layers = [(members.leaves[name], members.leaves[name.removesuffix("weight") + "bias"]) for name in members.weights]
    acts = [x.flatten(2)]
    for k, (W, bias) in enumerate(layers):
        z = torch.baddbmm(bias.unsqueeze(1), acts[-1], W)
        acts.append(z.relu_() if k < len(layers) - 1 else z)
    logits = acts.pop()
    delta = torch.softmax(logits, dim=-1)
    if smoothing:
        delta.sub_(smoothing / logits.shape[-1])
    delta.scatter_add_(-1, y.unsqueeze(-1), delta.new_full((M, b, 1), smoothing - 1))
    delta.mul_((factors["gradient"] / b).view(M, 1, 1))
    decay = factors.get("decay")
    for k in reversed(range(len(layers))):
        W, bias = layers[k]
        h = acts[k]
        # From the old W, through the ReLU (its own backward kernel: one pass where a mask takes two).
        below = torch.ops.aten.threshold_backward(torch.bmm(delta, W.mT), h, 0) if k > 0 else None
        if decay is not None:
            W.mul_(1 - decay.view(M, 1, 1))
            bias.mul_(1 - decay.view(M, 1))
        W.baddbmm_(h.mT, delta, alpha=-1)
        bias.sub_(delta.sum(dim=1))
        delta = below
