"""Model-steps per second: a naive per-run training loop against lipbench's engines.

    python benchmarks/throughput.py [--device cpu|cuda] [--quick] [--claims [--force]]

In one process on one machine, on synthetic data of MNIST shape (1x28x28, the paper's MLP) and
CIFAR shape (3x32x32, the paper's ConvNet), with the same runs (seeds x learning rates) and steps:

- naive: one run at a time, as a researcher would write it: a DataLoader over a TensorDataset
  (shuffled, on the CPU, batches moved to the device), `loss.item()` every step,
  `torch.linalg.matrix_norm(W, ord=2)` of every layer at every record, test accuracy at the end;
- ensemble: lipbench.torch.ensemble.train_ensemble, all runs as one vectorised program, recording
  sigma and K (as the naive loop; no monitor loss) at the same steps, test accuracy at the end;
- per-run: lipbench.torch.engine.train, one run at a time (reported, not in the ratios; it also
  records loss and accuracy on 1024 training samples at every record);
- vmap (the ConvNet): the ensemble with vmap over one module instead of grouped convolutions.

The ConvNet runs at 1x8x8, 1x28x28 and 3x32x32. Per shape, engine and `lipschitz.conv` method it also
reports the cost of one sigma record against one training step (see `sigma_costs`).

Each method's time is the best of `--repeats` interleaved rounds (the machine may be shared).
Tracking overhead: the ensemble on the MLP workload recording sigma and K every step (no loss
or accuracy) against recording only at the first and last step: (t_every - t_none) / t_none.
SDE probe: its cost per record with engine.train on the MLP workload, as a multiple of a
plain training step (see `probe_cost`).
`--claims` also times `lipbench run suites/implications --profile paper`, claim by claim (real
datasets; meaningful on a GPU, so on a CPU only with --force). The last line is always
`ratio_mlp=<x> ratio_convnet=<y> tracking_overhead=<z>` (ratios: ensemble over naive
model-steps per second; overhead as a fraction).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from lipbench.devices import resolve_device  # noqa: E402
from lipbench.suite import RunSpec, Scenario  # noqa: E402
from lipbench.torch import ensemble  # noqa: E402
from lipbench.torch.data import Dataset, load_dataset  # noqa: E402
from lipbench.torch.engine import train  # noqa: E402
from lipbench.torch.ensemble import train_ensemble  # noqa: E402
from lipbench.torch.models import build_model, initialise, lipschitz_layers  # noqa: E402
from lipbench.torch.tracking import (  # noqa: E402
    SigmaTracker,
    default_exact_every,
    default_lanczos_steps,
    layer_geometries,
)
from lipbench.torch.training import initial_model, step_factors  # noqa: E402


@dataclass(frozen=True)
class Workload:
    name: str
    model: dict
    shape: tuple[int, int, int]
    runs: int
    steps: int
    record_every: int
    batch_size: int = 32
    train_size: int = 8192


# (runs, steps, record_every) per mode, batch 32. The CPU MLP sizes are those of the label_corruption
# quick profile (15 runs of 1000 steps, a record every 100 steps) on MNIST-shaped inputs; a ConvNet
# step on CIFAR-shaped inputs costs about 30 MLP steps on a CPU, so its CPU sizes are smaller.
# The ConvNet at the input shapes its claims use: 1x8x8 (digits, the quick profile's ConvNet claims: 5 runs,
# batch 32, a record every 40 steps), 1x28x28 (MNIST) and 3x32x32 (CIFAR, the paper's).
SIZES = {
    "cuda": {
        "mlp": (128, 1000, 100),
        "convnet-8": (16, 2000, 40),
        "convnet-28": (16, 400, 100),
        "convnet-32": (16, 400, 100),
        "tracking": (128, 200),
        "probe": (4, 100),
    },
    "full": {
        "mlp": (30, 2000, 100),
        "convnet-8": (5, 1000, 40),
        "convnet-28": (4, 100, 20),
        "convnet-32": (4, 100, 20),
        "tracking": (16, 200),
        "probe": (2, 50),
    },
    "quick": {
        "mlp": (15, 1000, 100),
        "convnet-8": (5, 200, 40),
        "convnet-28": (4, 20, 10),
        "convnet-32": (4, 20, 10),
        "tracking": (8, 100),
        "probe": (2, 20),
    },
    "smoke": {
        "mlp": (2, 4, 2),
        "convnet-8": (2, 2, 1),
        "convnet-28": (2, 2, 1),
        "convnet-32": (2, 2, 1),
        "tracking": (2, 3),
        "probe": (1, 2),
    },
}
CONVNET_SHAPES = {"convnet-8": (1, 8, 8), "convnet-28": (1, 28, 28), "convnet-32": (3, 32, 32)}
SIGMA_METHODS = ("reshaped", "operator", "bound")  # scenario.lipschitz.conv
LEARNING_RATES = (0.01, 0.02, 0.05)  # members differ in init seed, sampling seed and learning rate


def workloads(mode: str) -> list[Workload]:
    small = mode == "smoke"
    size = SIZES[mode]
    mlp = {"name": "mlp", "hidden": [32] if small else [512, 256]}
    convnet = {"name": "convnet", "width": 4 if small else 32}
    train_size = 256 if small else 8192
    return [
        Workload("mlp", mlp, (1, 28, 28), *size["mlp"], train_size=train_size),
        *(Workload(name, convnet, shape, *size[name], train_size=train_size) for name, shape in CONVNET_SHAPES.items()),
    ]


def make_data(w: Workload) -> Dataset:
    return load_dataset("synthetic", synthetic_shape=w.shape, synthetic_classes=10, synthetic_size=w.train_size)


def make_specs(
    w: Workload, *, record_every: int | None = None, record: list[str] | None = None, extra: dict | None = None
) -> list[RunSpec]:
    specs = []
    for i in range(w.runs):
        lr = LEARNING_RATES[i % len(LEARNING_RATES)]
        scenario = Scenario.model_validate(
            {
                "model": w.model,
                "dataset": {"name": "synthetic", "synthetic_shape": list(w.shape), "synthetic_size": w.train_size},
                "optimizer": {"lr": lr, "batch_size": w.batch_size},
                "steps": w.steps,
                "record_every": record_every or w.record_every,
                **({"record": record} if record else {}),
                **(extra or {}),
            }
        )
        specs.append(RunSpec("throughput", f"{w.name}-{i}", scenario, lr, init_seed=i, sampling_seed=i))
    return specs


def naive_run(spec: RunSpec, data: Dataset, device: torch.device) -> tuple[list[float], list[list[float]], float]:
    """One run the way a researcher would write it (see the module docstring)."""
    sc = spec.scenario
    model = build_model(sc.model.name, data.input_shape, data.num_classes, hidden=sc.model.hidden, width=sc.model.width)
    initialise(model, torch.Generator().manual_seed(spec.init_seed))
    model.to(device)
    weights = [m.weight for _, m in lipschitz_layers(model)]
    opt = torch.optim.SGD(model.parameters(), lr=sc.optimizer.lr)
    loader = DataLoader(
        TensorDataset(data.x_train, data.y_train), batch_size=sc.optimizer.batch_size, shuffle=True, drop_last=True
    )

    def sigmas() -> list[float]:
        with torch.no_grad():
            return [torch.linalg.matrix_norm(W.reshape(W.shape[0], -1), ord=2).item() for W in weights]

    losses, norms, step = [], [], 0
    while step < sc.steps:
        for xb, yb in loader:
            if step % sc.record_every == 0:
                norms.append(sigmas())
            xb, yb = xb.to(device), yb.to(device)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
            if step == sc.steps:
                break
    norms.append(sigmas())
    model.eval()
    with torch.no_grad():  # the test accuracy at the end, as lipbench's engines report it
        xt, yt = data.x_test[:10_000].to(device), data.y_test[:10_000].to(device)
        accuracy = (model(xt).argmax(1) == yt).float().mean().item()
    return losses, norms, accuracy


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


@contextlib.contextmanager
def vmapped_convnet() -> Iterator[None]:
    """The ensemble's ConvNet through vmap over one module instead of grouped convolutions (for comparison)."""
    saved = ensemble.groups
    ensemble.groups = lambda _model: False
    try:
        yield
    finally:
        ensemble.groups = saved


def train_vmapped(specs: list[RunSpec], data: Dataset, device: torch.device) -> None:
    with vmapped_convnet():
        train_ensemble(specs, data, device)


def measure(w: Workload, device: torch.device, repeats: int) -> dict[str, float]:
    """Best-of-`repeats` seconds per method, rounds interleaved so a load change hits all alike.

    The ConvNet's ensemble twice: grouped convolutions (`ensemble`, what train_ensemble does) and vmap
    over one module (`vmap`). The conv layers' sigma is the reshaped kernel's, as the naive loop's.
    """
    sigma = {"lipschitz": {"conv": "reshaped"}}  # what the naive loop records
    data, specs = make_data(w), make_specs(w, record=["sigma", "K"], extra=sigma)
    methods = {
        "naive": lambda: [naive_run(s, data, device) for s in specs],
        "ensemble": lambda: train_ensemble(specs, data, device),
        **({"vmap": lambda: train_vmapped(specs, data, device)} if w.model["name"] == "convnet" else {}),
        "per-run": lambda: [train(s, data, device) for s in specs],
    }
    warm = make_specs(Workload(w.name, w.model, w.shape, 2, 2, 1, w.batch_size, w.train_size))
    naive_run(warm[0], data, device), train_ensemble(warm, data, device), train(warm[0], data, device)
    best = {name: math.inf for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            best[name] = min(best[name], timed(fn, device))
    return best


def tracking_overhead(w: Workload, runs: int, steps: int, device: torch.device, repeats: int) -> tuple[float, ...]:
    """(t_every, t_none, worst sigma_rel_err) of the ensemble recording sigma/K every step vs not at all."""
    w = Workload(w.name, w.model, w.shape, runs, steps, steps, w.batch_size, w.train_size)
    data = make_data(w)
    every = make_specs(w, record_every=1, record=["sigma", "K"])
    none = make_specs(w, record_every=steps, record=["sigma", "K"])
    t_every = t_none = math.inf
    records: list = []
    for _ in range(repeats):
        t_every = min(t_every, timed(lambda: records.extend(train_ensemble(every, data, device)), device))
        t_none = min(t_none, timed(lambda: train_ensemble(none, data, device), device))
    err = max(r.summary["sigma_rel_err"] for r in records)
    return t_every, t_none, err


def probe_cost(w: Workload, runs: int, steps: int, device: torch.device, repeats: int) -> tuple[float, float]:
    """(seconds per record of the SDE probe, seconds per plain training step) of engine.train on
    the MLP workload.

    The probe's cost: runs with the probe at every step (sigma and K then come from the probe's own
    decomposition) against the same runs recording only at their ends. The plain step: runs of
    5 x `steps` against runs of `steps`, both recording only at their ends, so the fixed costs
    (setup, the end records, test accuracy) cancel. Their ratio is what the probe's budget bounds
    (at most 3 on a GPU).
    """
    w = Workload(w.name, w.model, w.shape, runs, steps, steps, w.batch_size, w.train_size)
    data = make_data(w)
    long = Workload(w.name, w.model, w.shape, runs, 5 * steps, 5 * steps, w.batch_size, w.train_size)
    variants = (
        make_specs(w, record_every=1, record=["sigma", "K", "sde"]),
        make_specs(long, record_every=5 * steps, record=["sigma", "K"]),
        make_specs(w, record_every=steps, record=["sigma", "K"]),
    )
    train(variants[0][0], data, device)  # warm-up: the first probe and decomposition calls pay one-off costs
    best = [math.inf] * len(variants)
    for _ in range(repeats):
        for i, specs in enumerate(variants):
            best[i] = min(best[i], timed(lambda specs=specs: [train(s, data, device) for s in specs], device))
    t_probe, t_long, t_short = best
    return (t_probe - t_short) / (runs * steps), (t_long - t_short) / (4 * runs * steps)


SIGMA_BATCH_EVERY = {"convnet-8": (32, 40), "convnet-28": (128, 100), "convnet-32": (128, 100)}  # the claims'


@dataclass(frozen=True)
class SigmaCost:
    engine: str
    method: str
    record: float  # seconds of one record between checks
    check: float  # seconds of one check (converged or exact)
    step: float  # seconds of one training step of the same engine (all members)
    every: int  # the record interval the overhead is given at
    exact_every: int  # records between checks

    @property
    def overhead(self) -> float:
        """The share of training time tracking adds at `every`, with one check per `exact_every` records."""
        mean = self.record + (self.check - self.record) / self.exact_every
        return mean / (self.every * self.step)


def step_seconds(step, device: torch.device, steps: int) -> float:
    step()  # warm-up
    return min(timed(step, device) for _ in range(steps))


def sigma_costs(w: Workload, device: torch.device, rounds: int) -> list[SigmaCost]:
    """Per engine and `lipschitz.conv` method, the cost of one record of the conv net's sigmas against one step.

    per-run: one model (engine.train's tracker: matrix norms exact at every record); ensemble: `w.runs` stacked
    members (matrix norms tracked). A record between checks and a check are timed on the tracker alone, a step
    on the engine's own step (torch.optim.SGD on one module; the ensemble's grouped step on all members), all
    in this process, best of `rounds`. Batch and record interval: the claims' (`SIGMA_BATCH_EVERY`).
    """
    batch, every = SIGMA_BATCH_EVERY[w.name]
    w = Workload(w.name, w.model, w.shape, w.runs, every, every, batch, w.train_size)
    data, specs = make_data(w), make_specs(w)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, data.x_train.shape[0], (w.runs, batch), generator=g)
    xb, yb = data.x_train[idx].to(device), data.y_train[idx].to(device)

    model = initial_model(specs[0], data).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def run_step() -> None:
        loss = F.cross_entropy(model(xb[0]), yb[0])
        opt.zero_grad()
        loss.backward()
        opt.step()

    members = ensemble._Members([initial_model(s, data) for s in specs], device)  # no dropout: no mask generators
    factors = step_factors(specs, device)

    def ensemble_step() -> None:
        ensemble._autograd_step(members, xb, yb, factors, 0.0)

    steps = {"per-run": step_seconds(run_step, device, rounds), "ensemble": step_seconds(ensemble_step, device, rounds)}
    weights = {
        "per-run": [m.weight.detach().unsqueeze(0) for _, m in lipschitz_layers(model)],
        "ensemble": members.layer_weights(),
    }
    out = []
    for engine, stacked in weights.items():
        alive = torch.ones(stacked[0].shape[0], dtype=torch.bool, device=device)
        for method in SIGMA_METHODS:
            tracker = SigmaTracker(
                layer_geometries(model, data.input_shape, method),
                method,
                stacked[0].shape[0],
                10**6,
                device,
                lanczos_steps=default_lanczos_steps(every),
                exact_every=10**6,
                exact_matrices=engine == "per-run",
            )
            call = functools.partial(tracker, stacked, alive)
            check = timed(call, device)  # the first record is a check
            record = min(timed(call, device) for _ in range(rounds))
            out.append(SigmaCost(engine, method, record, check, steps[engine], every, default_exact_every(every)))
    return out


def time_claims(device: torch.device, overrides: list[str], data_root: str | None) -> None:
    from lipbench.discovery import suite_files
    from lipbench.runner import run_claims
    from lipbench.suite import load_claim

    shown = "".join(f" --set {o}" for o in overrides)
    print(f"\nsuites/implications --profile paper{shown} on {device} (engine auto):")
    total = 0.0
    for path in suite_files([ROOT / "suites" / "implications"]):
        claim = load_claim(path, "paper", overrides)
        start = time.perf_counter()
        (outcome,) = run_claims([claim], device=str(device), engine="auto", data_root=data_root)
        seconds = time.perf_counter() - start
        total += seconds
        runs = len(claim.runs())
        print(f"  {claim.name:24s} {outcome.status:7s} {runs:4d} runs {seconds:8.1f} s  {outcome.sentence}")
    print(f"  {'total':24s} {'':7s} {'':4s}      {total:8.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    parser.add_argument("--quick", action="store_true", help="small sizes: about 10 minutes on 2 shared CPU cores")
    parser.add_argument("--claims", action="store_true", help="also time each claim of suites/implications (paper)")
    parser.add_argument("--force", action="store_true", help="time the claims even on a CPU")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="for --claims"
    )
    parser.add_argument("--data-root", default=None, help="as lipbench run's, for --claims")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds per method (best is kept)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tiny sizes, for the tests
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(resolve_device(args.device))
    mode = "smoke" if args.smoke else "quick" if args.quick else "cuda" if device.type == "cuda" else "full"
    repeats = args.repeats or (1 if mode in ("smoke", "quick") else 2)
    threads = torch.get_num_threads()
    print(f"lipbench throughput: device {device}, mode {mode}, torch {torch.__version__}, threads {threads}")
    rounds = 1 if mode == "smoke" else 3
    print(f"{'workload':10s} {'method':9s} {'runs':>5s} {'steps':>6s} {'seconds':>9s} {'steps/s':>9s} {'x naive':>8s}")
    ratios, vmap_ratios = {}, {}
    loads = workloads(mode)
    for w in loads:
        best = measure(w, device, repeats)
        rate = {name: w.runs * w.steps / seconds for name, seconds in best.items()}
        for name, seconds in best.items():
            ratio = rate[name] / rate["naive"]
            print(f"{w.name:10s} {name:9s} {w.runs:5d} {w.steps:6d} {seconds:9.2f} {rate[name]:9.1f} {ratio:8.2f}")
        ratios[w.name] = rate["ensemble"] / rate["naive"]
        if "vmap" in rate:
            vmap_ratios[w.name] = rate["vmap"] / rate["naive"]
    shown = ", ".join(
        f"{'x'.join(map(str, CONVNET_SHAPES[name]))} {ratios[name]:.2f}x (vmap {vmap_ratios[name]:.2f}x)"
        for name in CONVNET_SHAPES
    )
    print(f"convnet ensemble (grouped convolutions) against the naive loop: {shown}")

    print(
        f"\nsigma per record against one training step (conv layers: lipschitz.conv; {rounds} rounds, best; "
        "overhead at the claims' record interval, checks averaged in):"
    )
    for w in loads[1:]:
        for c in sigma_costs(w, device, rounds):
            shape = "x".join(map(str, w.shape))
            print(
                f"  {shape:>8} {c.engine:8s} {c.method:8s} record {1e3 * c.record:8.2f} ms "
                f"= {c.record / c.step:6.2f} steps ({1e3 * c.step:.1f} ms), check {1e3 * c.check:8.1f} ms; "
                f"+{100 * c.overhead:.1f}% at record_every {c.every}"
            )

    runs, steps = SIZES[mode]["tracking"]
    t_every, t_none, err = tracking_overhead(loads[0], runs, steps, device, repeats)
    overhead = (t_every - t_none) / t_none
    print(
        f"tracking (mlp ensemble, {runs} runs x {steps} steps): sigma/K every step {t_every:.2f} s, "
        f"none {t_none:.2f} s: overhead {100 * overhead:.1f}% of training; worst sigma rel. error {err:.1e}"
    )

    runs, steps = SIZES[mode]["probe"]
    per_record, per_step = probe_cost(loads[0], runs, steps, device, repeats)
    print(
        f"sde probe (mlp, engine.train, {runs} runs x {steps} steps): {1000 * per_record:.2f} ms per record, "
        f"plain step {1000 * per_step:.2f} ms: the probe costs {per_record / per_step:.1f}x a plain step"
    )

    if args.claims:
        if device.type == "cuda" or args.force:
            time_claims(device, args.overrides, args.data_root)
        else:
            print("\n--claims skipped: the paper profiles are only meaningful on a GPU (add --force to time them here)")
    print(f"ratio_mlp={ratios['mlp']:.2f} ratio_convnet={ratios['convnet-32']:.2f} tracking_overhead={overhead:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
