"""The one way lipbench writes a number in a sentence, a table or a report."""

from __future__ import annotations

import math
from typing import Any


def fmt(x: Any, digits: int = 3, missing: str = "undefined") -> str:
    """A number to `digits` significant digits (plain notation between 1e-4 and 1e6); `missing` for None,
    'undefined' for NaN, 'inf' / '-inf'; anything that is not a number as its text."""
    if x is None:
        return missing
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if not math.isfinite(x):
        return "undefined" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    rounded = float(f"{x:.{digits}g}")
    return f"{rounded:.7g}" if 1e-4 <= abs(rounded) < 1e6 else f"{rounded:.{digits}g}"
