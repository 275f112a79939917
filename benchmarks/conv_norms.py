"""A conv layer's sigma under each `scenario.lipschitz.conv`: the bracket [estimate, certified bound] and the cost.

    python benchmarks/conv_norms.py [--steps 300] [--threads 1]

For the shipped ConvNet at 1x8x8 (digits, the `quick` profile), 1x28x28 and 3x32x32 (synthetic data of
MNIST and CIFAR shape), at initialisation and after `--steps` SGD steps, per conv layer: the converged
operator norm (`top_singular_pair`), the dense operator's exact norm where its matrix fits, the certified
bound (`certified_bound`; for layers it certifies exactly, also the circular-FFT bound alone), the
reshaped kernel's sigma, and the bracket's relative width bound / estimate - 1.

Then the cost of one record, per-run engine (lipbench.torch.tracking.SigmaTracker, M = 1) under each
setting, against one training step of the same model (batch 32 at 8x8, 128 otherwise), and the share it
adds at a record interval (40 steps: the quick ConvNet claims' densest; 100 otherwise), both between
checks and averaged with the checks (one per 1,000 steps; a check is timed from a cold start, the
first record's, so this average is pessimistic); and the same for an ensemble of `--members` quick
ConvNets against one vectorised step. Timings are of this process, back to back.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from lipbench.suite import RunSpec, Scenario
from lipbench.torch import conv_operator, ensemble
from lipbench.torch.conv_operator import certified_bound, conv_geometries, dense, top_singular_pair
from lipbench.torch.data import load_dataset
from lipbench.torch.models import ConvNet, initialise, lipschitz_layers
from lipbench.torch.tracking import SigmaTracker, default_exact_every, default_lanczos_steps, layer_geometries
from lipbench.torch.training import initial_model, step_factors

SHAPES = {(1, 8, 8): (32, 0.05, 40), (1, 28, 28): (128, 0.01, 100), (3, 32, 32): (128, 0.01, 100)}
DENSE_LIMIT = 20_000_000  # entries of the dense matrix built as the exact reference


def data_for(shape: tuple[int, int, int]):
    if shape == (1, 8, 8):
        return load_dataset("digits")
    return load_dataset("synthetic", synthetic_shape=shape, synthetic_size=4096)


def brackets(model: torch.nn.Module, shape: tuple[int, int, int], when: str) -> None:
    geoms = conv_geometries(model, shape)
    modules = dict(model.named_modules())
    for i, (name, geom) in enumerate(geoms.items()):
        W = modules[name].weight.detach()
        sigma = top_singular_pair(W.double(), geom)[0].item()
        exact = "-"
        if geom.in_numel * geom.out_numel <= DENSE_LIMIT:
            exact = f"{torch.linalg.matrix_norm(dense(W.double(), geom), 2).item():.6f}"
        bound = certified_bound(W, geom).item()
        fft = ""
        if min(geom.in_numel, geom.out_numel) <= conv_operator.DENSE_SIDE:  # the FFT bound alone, for the record
            saved, conv_operator.DENSE_SIDE = conv_operator.DENSE_SIDE, 0
            fft = f" (FFT alone {certified_bound(W, geom).item() / sigma - 1:+.2%})"
            conv_operator.DENSE_SIDE = saved
        reshaped = torch.linalg.matrix_norm(W.flatten(1), 2).item()
        print(
            f"{'x'.join(map(str, shape)):>8} {when:>8} conv {i + 1} {geom.in_shape[1]}x{geom.in_shape[2]} "
            f"s{geom.stride[0]}: estimate {sigma:.6f} exact {exact} bound {bound:.6f} "
            f"bracket {bound / sigma - 1:.2e}{fft} reshaped {reshaped:.4f} operator/reshaped {sigma / reshaped:.2f}"
        )


def train(model: torch.nn.Module, data, batch: int, lr: float, steps: int) -> float:
    """`steps` SGD steps; returns the seconds of one step (the mean over the last half)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    started = None
    for t in range(steps):
        if t == steps // 2:
            started = time.perf_counter()
        idx = torch.randint(0, data.x_train.shape[0], (batch,), generator=g)
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - started) / (steps - steps // 2)


def record_cost(
    model: torch.nn.Module, shape, conv: str, every: int, records: int = 12, weights=None, members: int = 1
) -> tuple[float, float]:
    """Seconds of one record between checks, and of one check, for one run (or `members` stacked) under `conv`."""
    tracker = SigmaTracker(
        layer_geometries(model, shape, conv),
        conv,
        members,
        10**6,
        torch.device("cpu"),
        lanczos_steps=default_lanczos_steps(every),
        exact_every=10**6,
        exact_matrices=members == 1,
    )
    weights = weights or [m.weight.detach().unsqueeze(0) for _, m in lipschitz_layers(model)]
    alive = torch.ones(members, dtype=torch.bool)
    started = time.perf_counter()
    tracker(weights, alive)  # the first record: a check
    check = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(records):
        tracker(weights, alive)
    return (time.perf_counter() - started) / records, check


def ensemble_cost(members: int, every: int = 40) -> None:
    """The quick ConvNet as an ensemble of `members`: one record under each setting against one vectorised step."""
    data = load_dataset("digits")
    sc = Scenario.model_validate(
        {
            "model": {"name": "convnet"},
            "dataset": {"name": "digits"},
            "optimizer": {"lr": 0.05, "batch_size": 32},
            "steps": 2000,
            "record_every": every,
        }
    )
    specs = [RunSpec("c", f"r{i}", sc, None, i, i) for i in range(members)]
    stack = ensemble._Members([initial_model(s, data) for s in specs], torch.device("cpu"))
    factors, g = step_factors(specs, torch.device("cpu")), torch.Generator().manual_seed(0)

    def step() -> None:
        idx = torch.randint(0, data.x_train.shape[0], (members, 32), generator=g)
        x = data.x_train[idx.flatten()].view(members, 32, *data.x_train.shape[1:])
        ensemble._autograd_step(stack, x, data.y_train[idx], factors, 0.0)

    for _ in range(5):
        step()
    started = time.perf_counter()
    for _ in range(30):
        step()
    seconds = (time.perf_counter() - started) / 30
    for conv in ("reshaped", "operator", "bound"):
        per_record, check = record_cost(
            stack.base, (1, 8, 8), conv, every, 8, weights=stack.layer_weights(), members=members
        )
        mean = per_record + every / 1000 * (check - per_record)
        print(
            f"ensemble of {members} {conv:>8}: record {per_record * 1e3:.0f} ms, check {check * 1e3:.0f} ms, "
            f"step {seconds * 1e3:.1f} ms -> +{per_record / (every * seconds):.1%} at record_every {every}, "
            f"+{mean / (every * seconds):.1%} with the checks"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--members", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ensemble_cost(args.members)
    for shape, (batch, lr, every) in SHAPES.items():
        data = data_for(shape)
        model = ConvNet(shape, data.num_classes)
        initialise(model, torch.Generator().manual_seed(0))
        brackets(model, shape, "init")
        step = train(model, data, batch, lr, args.steps)
        brackets(model, shape, f"{args.steps} steps")
        checks_per_record = every / 1000 if default_exact_every(every) > 1 else 1.0
        for conv in ("reshaped", "operator", "bound"):
            per_record, check = record_cost(model, shape, conv, every)
            mean = per_record + checks_per_record * (check - per_record)
            where = "x".join(map(str, shape))
            print(
                f"{where:>8} {conv:>8}: record {per_record * 1e3:.1f} ms, check {check * 1e3:.0f} ms, "
                f"step {step * 1e3:.1f} ms (b {batch}) -> +{per_record / (every * step):.1%} at record_every {every}, "
                f"+{mean / (every * step):.1%} with the checks"
            )


if __name__ == "__main__":
    main()
