"""Many runs of a claim trained as one vectorised program: `train_ensemble(specs, data, device)`.

Runs that share everything but their seeds and a few numbers (`ensemble_key`) become the members
of one ensemble. Their parameters are stacked along a leading member axis; the forward pass is
`torch.func.vmap` over `functional_call` of one module, and one backward pass through the sum of
the members' losses gives every member its own gradient (no member's loss depends on another's).
The plain MLP (no dropout) skips autograd: `_fused_mlp_step` writes its backward pass out with
batched matmuls and accumulates each weight gradient straight into the weights.

Each member keeps what engine.train gives a run, drawn the same way, so the same seeds give the
same trajectory within float tolerance:
- its initial weights: its module is built and `initialise`d on the CPU from its init seed;
- its streams: its own generators seeded as in engine.py: indices and epoch permutations from
  the sampling stream, gradient noise from the noise stream, in engine.train's order (one small
  draw per member per step, member by member);
- its corrupted labels, learning rate, weight decay, gradient scale and noise std (these may
  differ between members; everything else in the scenario is shared).

Vectorised: the MLP and the ConvNet, both samplings, label noise, gradient scale, Gaussian and
uniform gradient noise, weight decay, label smoothing, batch norm (the paper's
track_running_stats=False uses batch statistics, which vmap keeps per member) and dropout (vmap
randomness="different": every member its own masks from the global generator, seeded from the
first member's seeds; reproducible for the same ensemble, but not engine.train's masks).
Falls back to per-run `engine.train`: runs that record the SDE terms ("sde" in scenario.record:
the probe needs one module's per-sample gradients); mixup, AutoAugment and FGSM (per-run batch
transforms with their own streams); and any scenario field this module does not know (a feature
added later is never silently ignored).

Lipschitz tracking: at every record a warm-started power iteration, Krylov-accelerated
(`lipschitz.lanczos_spectral_norms`: `lanczos_steps` Golub-Kahan-Lanczos steps, batched over
members, the top Ritz vector kept between records), estimates each layer's sigma_max. The first
and last records, and every `exact_every`-th, take an exact SVD instead; there the estimate's
relative error is measured and reported as summary["sigma_rel_err"] (its maximum over checks).
Without "loss"/"accuracy" in scenario.record the monitor forward pass is skipped.

Divergence: a member whose record holds a non-finite sigma or loss is marked (diverged_at, as
in engine.train); its learning rate and noise drop to zero and its later rows are dropped; the
other members go on. No host sync in the loop: records go into one device tensor that crosses
to the host once per chunk; divergence marks stay on the device until then. Members are
chunked by `max_members` (default: a memory estimate).
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from lipbench.data import Dataset
from lipbench.engine import (
    MONITOR_SIZE,
    check_batch,
    corrupt_labels,
    init_sigma_theory,
    initial_model,
    record_steps,
    stream_seed,
    train,
)
from lipbench.lipschitz import exact_spectral_norms, lanczos_spectral_norms, top_singular
from lipbench.models import MODELS, lipschitz_layers
from lipbench.records import RunRecord
from lipbench.suite import RunSpec, Scenario

__all__ = [
    "can_ensemble",
    "default_exact_every",
    "default_lanczos_steps",
    "default_max_members",
    "ensemble_key",
    "fuses",
    "group_specs",
    "train_ensemble",
    "unsupported",
]

EXACT_EVERY_STEPS = 1000  # by default an exact SVD about every this many training steps
MAX_MEMBERS = 256
CPU_MEMORY_BUDGET = 2 * 1024**3  # bytes an ensemble may use on the CPU; on CUDA, half the free memory

# Scenario fields this module implements (some only at their defaults: see `unsupported`); those
# under PER_MEMBER may differ within an ensemble.
_KNOWN = {
    "": {"model", "dataset", "optimizer", "steps", "record_every", "label_noise", "gradient", "sampling"}
    | {"record", "device", "regularisers", "run"},
    "model": {"name", "kwargs", "hidden", "width", "dropout", "batch_norm", "init", "init_std"},
    "dataset": {"name", "kwargs", "train_size", "test_size", "synthetic_shape", "synthetic_classes", "synthetic_size"},
    "optimizer": {"name", "kwargs", "lr", "batch_size", "weight_decay", "momentum", "nesterov", "betas", "eps"}
    | {"schedule"},
    "gradient": {"scale", "noise", "noise_std"},
    "regularisers": {"mixup", "label_smoothing", "auto_augment", "fgsm_epsilon"},
}
PER_MEMBER = ("optimizer.lr", "optimizer.weight_decay", "label_noise", "gradient.scale", "gradient.noise_std")


def unsupported(spec: RunSpec) -> list[str]:
    """What of the run's scenario this module does not implement, one reason each; such a run trains
    alone with engine.train (the `ensemble` engine falls back to it, so every scenario still runs)."""
    sc = spec.scenario
    if sc.run is not None:
        return [f"a run function ({sc.run.name}): its own loop trains one run at a time"]
    reasons = []
    if sc.model.name not in MODELS:
        reasons.append(f"model {sc.model.name}: only the built-in networks are stacked into one vmapped module")
    opt = sc.optimizer
    if opt.name != "sgd":
        reasons.append(f"optimizer {opt.name}: the ensemble's update is plain SGD")
    if opt.momentum:
        reasons.append("optimizer.momentum: the ensemble keeps no momentum buffers")
    if not opt.schedule.constant:
        reasons.append(f"optimizer.schedule {opt.schedule.name}: the ensemble's learning rate is constant")
    if "sde" in sc.record:
        reasons.append("scenario.record: sde (the probe needs one module's per-sample gradients)")
    reg = sc.regularisers
    for key, on in (
        ("mixup", reg.mixup),
        ("fgsm_epsilon", reg.fgsm_epsilon),
        ("auto_augment", reg.auto_augment != "none"),
    ):
        if on:
            reasons.append(f"regularisers.{key}: a per-run batch transform with its own stream")
    dumped = sc.model_dump(mode="json")
    for section, known in _KNOWN.items():
        extra = set(dumped if section == "" else dumped[section]) - known
        reasons += [f"scenario.{section + '.' if section else ''}{key}: not implemented here" for key in sorted(extra)]
    return reasons


def ensemble_key(spec: RunSpec) -> str | None:
    """What members of one ensemble must share (a JSON string), or None if the run must train alone."""
    if unsupported(spec):
        return None
    sc = spec.scenario.model_dump(mode="json")
    for path in PER_MEMBER:
        section, _, name = path.rpartition(".")
        (sc[section] if section else sc).pop(name)
    return json.dumps(sc, sort_keys=True)


def can_ensemble(spec: RunSpec) -> bool:
    return ensemble_key(spec) is not None


def group_specs(specs: Sequence[RunSpec]) -> list[list[RunSpec]]:
    """Specs that can train as one ensemble, in first-seen order; a run that cannot is a group of one."""
    groups: dict[str, list[RunSpec]] = {}
    alone: list[list[RunSpec]] = []
    order: list[list[RunSpec]] = []
    for spec in specs:
        key = ensemble_key(spec)
        if key is None:
            alone.append([spec])
            order.append(alone[-1])
        elif key in groups:
            groups[key].append(spec)
        else:
            groups[key] = [spec]
            order.append(groups[key])
    return order


def default_exact_every(record_every: int) -> int:
    """Records between exact SVD checks: about one check every EXACT_EVERY_STEPS training steps."""
    return max(1, round(EXACT_EVERY_STEPS / record_every))


def default_lanczos_steps(record_every: int) -> int:
    """Krylov steps per record: 8 when recording every step, 12 when records are 3+ steps apart.

    Measured on MLP/ConvNet trajectories early in training, where the top directions move most
    (lr up to 0.2): recording every step, 8 steps keep the error below 5e-4 where 1 step (one
    power iteration) is off by 5e-2 and 6 steps by up to 1.5e-3; records 10 or 100 SGD steps
    apart need about 12 (1e-4; 16 steps: 1e-5).
    """
    return min(12, 8 + 2 * (record_every - 1))


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
    (Krylov steps per record) and `exact_every` (records between exact SVDs) default to
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


def _member_vector(specs: Sequence[RunSpec], get, device: torch.device) -> torch.Tensor:
    return torch.tensor([float(get(s.scenario)) for s in specs], dtype=torch.float32, device=device)


def _train_chunk(
    specs: Sequence[RunSpec], data: Dataset, device: torch.device, lanczos_steps: int, exact_every: int
) -> list[RunRecord]:
    started = time.perf_counter()
    sc, M = specs[0].scenario, len(specs)
    b, noise = sc.optimizer.batch_size, sc.gradient.noise

    # Members' modules are built and initialised one by one on the CPU exactly as engine.train does.
    modules = []
    for spec in specs:
        modules.append(initial_model(spec, data))
    names = [name for name, _ in modules[0].named_parameters()]  # model.parameters() order: the noise order
    # The trained leaves, each M x *shape, except linear weights: those are kept as M x in x out, so
    # that their gradient (x^T delta, from the batched matmul) comes out contiguous and the update is
    # a streaming subtraction; a transposed gradient made the update several times slower on a CPU.
    leaves: dict[str, torch.Tensor] = {}
    for name in names:
        stacked = torch.stack([dict(m.named_parameters())[name].detach() for m in modules]).to(device)
        leaves[name] = (stacked.mT.contiguous() if stacked.dim() == 3 else stacked).requires_grad_()
    transposed = {name for name in names if leaves[name].dim() == 3}

    def member_params() -> dict[str, torch.Tensor]:  # the parameters as the module sees them (views)
        return {name: leaf.mT if name in transposed else leaf for name, leaf in leaves.items()}

    params = member_params()
    base = modules[0].to(device)  # the skeleton functional_call fills with a member's parameters
    if list(base.buffers()):
        raise ValueError("lipbench.ensemble cannot stack module buffers (batch norm must not track running stats)")
    lip_names = [f"{name}.weight" for name, _ in lipschitz_layers(base)]
    plist = [leaves[name] for name in names]
    # The plain MLP takes a hand-written step (see `_fused_mlp_step`); other models go through autograd.
    fused = [(leaves[f"{n}.weight"], leaves[f"{n}.bias"]) for n, _ in lipschitz_layers(base)] if fuses(sc) else None

    def forward(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(base, p, (x,))

    forward_batches = vmap(forward, in_dims=(0, 0), randomness="different")  # x: M x b x C x H x W
    forward_shared = vmap(forward, in_dims=(0, None), randomness="different")  # x: N x C x H x W

    # Streams: as engine.train, per member.
    label_gens = [torch.Generator().manual_seed(stream_seed(s.sampling_seed, s.init_seed, 1)) for s in specs]
    batch_gens = [
        torch.Generator(device=device).manual_seed(stream_seed(s.sampling_seed, s.init_seed, 2)) for s in specs
    ]
    noise_gens = [
        torch.Generator(device=device).manual_seed(stream_seed(s.sampling_seed, s.init_seed, 3)) for s in specs
    ]
    # Dropout masks come from the global generator under vmap: seeded from the first member, as
    # engine.train seeds it per run (so an ensemble repeats itself, but its masks are not engine.train's).
    torch.manual_seed(stream_seed(specs[0].sampling_seed, specs[0].init_seed, 4))
    smoothing = sc.regularisers.label_smoothing
    train_loss = functools.partial(F.cross_entropy, reduction="none", label_smoothing=smoothing)
    x_train = data.x_train.to(device)
    n = x_train.shape[0]
    check_batch(sc.sampling, b, n)
    y_members = torch.stack(
        [
            corrupt_labels(data.y_train, s.scenario.label_noise, data.num_classes, g).to(device)
            for s, g in zip(specs, label_gens, strict=True)
        ]
    )  # M x N
    x_mon, y_mon = x_train[:MONITOR_SIZE], y_members[:, :MONITOR_SIZE]

    def per_member(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return t.view(M, *([1] * (like.dim() - 1)))  # (M,) -> M x 1 x ... to broadcast over one parameter

    # The update engine.train applies, p -= lr (scale g + amp noise + wd p), with the learning rate
    # folded in: the members' losses are weighted by lr * scale, so backward hands out lr * scale * g
    # and the step is one subtraction. A diverged member's three weights drop to zero: it stops moving.
    lr = _member_vector(specs, lambda s: s.optimizer.lr, device)
    loss_weight = lr * _member_vector(specs, lambda s: s.gradient.scale, device)
    noise_weight = lr * _member_vector(specs, lambda s: s.gradient.noise_std, device)
    noise_weight *= math.sqrt(3.0) if noise == "uniform" else 1.0
    decay_weight = lr * _member_vector(specs, lambda s: s.optimizer.weight_decay, device)
    use_wd = any(s.scenario.optimizer.weight_decay != 0 for s in specs)
    # Noise is drawn in the module's layout (engine.train's draw order), then added to the update.
    noise_bufs = [torch.empty(params[name].shape, device=device) for name in names] if noise != "none" else []

    marks = record_steps(sc.steps, sc.record_every)
    R, L = len(marks), len(lip_names)
    monitor = "loss" in sc.record or "accuracy" in sc.record
    cols = L + (2 if monitor else 0)
    buffer = torch.full((R, M, cols), math.nan, device=device)  # the records, on the device until the end
    alive = torch.ones(M, dtype=torch.bool, device=device)
    died_row = torch.full((M,), R, dtype=torch.long, device=device)  # R: never
    rel_err = torch.zeros(M, device=device)
    vectors: list[torch.Tensor] = []

    idx = torch.empty((M, b), dtype=torch.long, device=device)
    orders = None
    if sc.sampling == "without_replacement":
        orders = torch.stack([torch.randperm(n, generator=g, device=device) for g in batch_gens])  # M x N
    pos, row = 0, 0

    for step in range(sc.steps + 1):
        if step == marks[row]:
            with torch.no_grad():
                mats = [params[name].detach().reshape(M, params[name].shape[1], -1) for name in lip_names]
                if row == 0:
                    sigmas, vectors = top_singular(mats)  # exact, and the tracker's warm start
                else:
                    sigmas, vectors = lanczos_spectral_norms(mats, vectors, lanczos_steps)
                    if row % exact_every == 0 or row == R - 1:
                        exact = exact_spectral_norms(mats)
                        err = ((sigmas - exact).abs() / exact).amax(dim=1)
                        rel_err = torch.maximum(rel_err, torch.where(alive & torch.isfinite(err), err, 0.0))
                        sigmas = exact
                buffer[row, :, :L] = sigmas
                if monitor:
                    base.eval()
                    logits = forward_shared(params, x_mon)  # M x MONITOR_SIZE x classes
                    base.train()
                    buffer[row, :, L] = (
                        F.cross_entropy(logits.flatten(0, 1), y_mon.flatten(), reduction="none").view(M, -1).mean(1)
                    )
                    buffer[row, :, L + 1] = (logits.argmax(-1) == y_mon).float().mean(1)
                finite = torch.isfinite(buffer[row, :, : L + (1 if monitor else 0)]).all(dim=1)
                died_row = torch.where(alive & ~finite, row, died_row)
                alive &= finite
                loss_weight, noise_weight, decay_weight = (w * alive for w in (loss_weight, noise_weight, decay_weight))
            row += 1
            if step == sc.steps:
                break

        # This step's draws, member by member from its own generator, in engine.train's order.
        if orders is None:
            for i, g in enumerate(batch_gens):
                idx[i].random_(0, n, generator=g)
        else:
            if pos + b > n:  # a new epoch: reshuffle; the incomplete tail is dropped
                for i, g in enumerate(batch_gens):
                    orders[i] = torch.randperm(n, generator=g, device=device)
                pos = 0
            idx, pos = orders[:, pos : pos + b], pos + b
        for i, g in enumerate(noise_gens):
            for buf in noise_bufs:
                if noise == "gaussian":
                    buf[i].normal_(generator=g)
                else:
                    buf[i].uniform_(0.0, 1.0, generator=g)

        xb = x_train.index_select(0, idx.flatten()).view(M, b, *x_train.shape[1:])  # M x b x C x H x W
        yb = y_members.gather(1, idx)  # M x b
        if fused is not None:
            with torch.no_grad():
                _fused_mlp_step(fused, xb.flatten(2), yb, loss_weight, decay_weight if use_wd else None, smoothing)
        else:
            params = member_params()  # fresh views of the leaves for this step's graph
            logits = forward_batches(params, xb)  # M x b x classes
            losses = train_loss(logits.flatten(0, 1), yb.flatten()).view(M, b).mean(1)  # M
            updates = torch.autograd.grad((losses * loss_weight).sum(), plist)  # lr * scale * g, per member
            with torch.no_grad():
                if use_wd:
                    for p, d in zip(plist, updates, strict=True):
                        d.add_(p * per_member(decay_weight, p))
                torch._foreach_sub_(plist, updates)
        with torch.no_grad():
            for k, buf in enumerate(noise_bufs):
                buf = buf.mul_(2).sub_(1) if noise == "uniform" else buf
                buf.mul_(per_member(noise_weight, buf))
                plist[k].sub_(buf.mT if names[k] in transposed else buf)

    # The one transfer to the host (plus the divergence marks and the test accuracy below).
    values = buffer.double().cpu().numpy()  # R x M x cols
    died = died_row.cpu().numpy()
    errors = rel_err.double().cpu().numpy()
    accuracy = _test_accuracy(base, params, data, device, [int(d) == R for d in died])
    seconds = (time.perf_counter() - started) / M  # the chunk's wall time, shared out
    init_theory = init_sigma_theory([m for _, m in lipschitz_layers(base)], sc.model.init, sc.model.init_std)

    records = []
    for i, spec in enumerate(specs):
        kept = R if died[i] == R else int(died[i]) + 1
        cols_i = values[:kept, i]
        metrics = {f"sigma_{j}": cols_i[:, j] for j in range(L)}
        if monitor:
            metrics["loss"], metrics["accuracy"] = cols_i[:, L], cols_i[:, L + 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            metrics["log_K"] = np.log(cols_i[:, :L]).sum(axis=1)
            metrics["K"] = np.exp(metrics["log_K"])
        if "init" in sc.record:  # the random-matrix prediction for each layer at init, as engine.train
            for j, v in enumerate(init_theory):
                metrics[f"sigma_init_theory_{j}"] = np.full(kept, v)
        summary = {"sigma_rel_err": float(errors[i])}
        if accuracy[i] is not None:
            summary["test_accuracy"] = accuracy[i]
        records.append(
            RunRecord(
                claim=spec.claim,
                run_id=spec.run_id,
                sweep_value=spec.sweep_value,
                init_seed=spec.init_seed,
                sampling_seed=spec.sampling_seed,
                steps=np.asarray(marks[:kept], dtype=np.int64),
                metrics=metrics,
                diverged_at=None if died[i] == R else marks[int(died[i])],
                seconds=seconds,
                device=str(device),
                summary=summary,
            )
        )
    return records


def fuses(scenario: Scenario) -> bool:
    """Whether the ensemble trains this scenario's members with `_fused_mlp_step` (the plain MLP)."""
    return scenario.model.name == "mlp" and not scenario.model.dropout


def _fused_mlp_step(
    layers: list[tuple[torch.Tensor, torch.Tensor]],
    x: torch.Tensor,
    y: torch.Tensor,
    loss_weight: torch.Tensor,
    decay_weight: torch.Tensor | None,
    label_smoothing: float,
) -> None:
    """One SGD step of M stacked ReLU MLPs, in place, with the backward pass written out.

    layers: (weight M x in x out, bias M x out) in forward order; x: M x b x in; y: M x b labels.
    The logits' gradient of member m's mean cross-entropy, weighted by loss_weight[m] (lr * scale),
    is (softmax - target) * loss_weight[m] / b. Each weight gradient h^T delta goes straight into
    the weight (baddbmm, beta = 1, alpha = -1) instead of being written out and read back by a
    separate subtraction (on a CPU that subtraction alone took about 7 % of an MLP ensemble's step). The same
    update as autograd's within float rounding (tested); weight decay, W <- W - lr wd W, is applied
    before, from the same old weights.
    """
    M, b = y.shape
    acts = [x]
    for k, (W, bias) in enumerate(layers):
        z = torch.baddbmm(bias.unsqueeze(1), acts[-1], W)
        acts.append(z.relu_() if k < len(layers) - 1 else z)
    logits = acts.pop()
    delta = torch.softmax(logits, dim=-1)
    if label_smoothing:
        delta.sub_(label_smoothing / logits.shape[-1])
    delta.scatter_add_(-1, y.unsqueeze(-1), delta.new_full((M, b, 1), label_smoothing - 1))
    delta.mul_((loss_weight / b).view(M, 1, 1))
    for k in reversed(range(len(layers))):
        W, bias = layers[k]
        h = acts[k]
        # From the old W, through the ReLU (its own backward kernel: one pass where a mask takes two).
        below = torch.ops.aten.threshold_backward(torch.bmm(delta, W.mT), h, 0) if k > 0 else None
        if decay_weight is not None:
            W.mul_(1 - decay_weight.view(M, 1, 1))
            bias.mul_(1 - decay_weight.view(M, 1))
        W.baddbmm_(h.mT, delta, alpha=-1)
        bias.sub_(delta.sum(dim=1))
        delta = below


@torch.no_grad()
def _test_accuracy(
    base: torch.nn.Module, params: dict[str, torch.Tensor], data: Dataset, device: torch.device, ok: list[bool]
) -> list[float | None]:
    """engine.train's test accuracy, member by member (batch norm sees the same 10,000 samples)."""
    xt, yt = data.x_test[:10_000].to(device), data.y_test[:10_000].to(device)
    base.eval()
    found = [
        (functional_call(base, {k: v[i] for k, v in params.items()}, (xt,)).argmax(1) == yt).float().mean()
        for i in range(len(ok))
        if ok[i]
    ]
    base.train()
    values = iter(torch.stack(found).cpu().tolist() if found else [])
    return [next(values) if good else None for good in ok]
