"""Synthetic records with per-layer sigma (and, optionally, the SDE probe's or the cheap drift's terms): log K is
the sum of the layers' log sigma, as a training engine records it. No training."""

from __future__ import annotations

import numpy as np

from lipbench.records import RunRecord
from lipbench.suite import ResolvedClaim

LAYERS = 3


def layered_records(
    claim: ResolvedClaim,
    seed: int = 0,
    rates: tuple[float, ...] = (0.002, 0.001, 0.0005),
    spreads: tuple[float, ...] = (0.03, 0.02, 0.01),
    sde: bool = False,
    drift: bool = False,
    steps: int = 1000,
    every: int = 50,
) -> list[RunRecord]:
    """Each layer's log sigma grows at `rates[l]` per step (over 1 + the sweep value), with a
    run-to-run spread `spreads[l]` on its final value; `sde` adds sde_*_<l> columns whose integrals give
    the growth (mu) and a small noise part, `drift` adds drift_<l> that carries the growth."""
    rng = np.random.default_rng(seed)
    grid = np.arange(0, steps + 1, every)
    records = []
    for spec in claim.runs():
        v = 0.0 if spec.sweep_value is None else float(spec.sweep_value)
        metrics: dict[str, np.ndarray] = {}
        log_k = np.zeros(len(grid))
        for layer in range(LAYERS):
            rate = rates[layer] / (1 + v)
            start = 0.1 * layer + 0.05 * rng.normal() + 0.01 * spec.init_seed
            scale = spreads[layer] / np.sqrt(len(grid) * max(v, 1.0))  # Var of the final value ~ 1 / sweep value
            wiggle = np.cumsum(rng.normal(0, scale, len(grid)))
            log_sigma = start + rate * grid + wiggle
            sigma = np.exp(log_sigma)
            metrics[f"sigma_{layer}"] = sigma
            log_k += log_sigma
            if sde:
                beta2 = np.full(len(grid), 1e-5) * sigma**2
                eps = np.full(len(grid), 2e-6) * sigma
                metrics[f"sde_mu_{layer}"] = rate * sigma
                metrics[f"sde_eps_{layer}"] = eps
                metrics[f"sde_beta2_{layer}"] = beta2
                metrics[f"sde_disc_{layer}"] = (rate * sigma) ** 2 / (2 * sigma)  # cancels -mu^2/(2 sigma^2)
            if drift:
                metrics[f"drift_{layer}"] = np.full(len(grid), rate)
        metrics["log_K"] = log_k
        metrics["K"] = np.exp(log_k)
        if sde:
            for term in ("mu", "eps", "beta2", "disc"):
                metrics[f"sde_{term}"] = sum(
                    metrics[f"sde_{term}_{i}"] / metrics[f"sigma_{i}"] ** (2 if term == "beta2" else 1)
                    for i in range(LAYERS)
                )
            metrics["sde_drift"] = metrics["sde_mu"] + metrics["sde_eps"] - metrics["sde_beta2"] / 2
        records.append(
            RunRecord(claim.name, spec.run_id, spec.sweep_value, spec.init_seed, spec.sampling_seed, grid, metrics)
        )
    return records
