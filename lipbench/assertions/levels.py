"""The per-level statistics of a sweep that several assertions share: the t interval of a mean per
level, and the level that decides a claim that must hold at every level."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def mean_interval(x: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean, standard error and the two-sided t interval of the mean over the last axis: (mean, se, low, high)."""
    n = x.shape[-1]
    mean = x.mean(axis=-1)
    se = x.std(axis=-1, ddof=1) / math.sqrt(n)
    q = stats.t.ppf((1 + confidence) / 2, n - 1)
    return mean, se, mean - q * se, mean + q * se


def worst_level(ok: np.ndarray, distance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per replicate (first axis), the level (last axis) that decides: a failing one first, then the one
    furthest from the claim by `distance`; with the replicate indices, to pick it as `a[pick, worst]`."""
    worst = np.argmax(np.where(ok, 0.0, 1e6) + distance, axis=-1)
    return worst, np.arange(ok.shape[0])
