"""benchmarks/throughput.py runs end to end at tiny sizes and ends with its summary line (no timings checked)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"
LAST_LINE = re.compile(r"ratio_mlp=(\S+) ratio_convnet=(\S+) tracking_overhead=(\S+)")


@pytest.mark.slow  # trains both engines and the naive loop
def test_throughput_smoke_run_ends_with_the_summary_line() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--device", "cpu", "--threads", "1", "--claims"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    match = LAST_LINE.fullmatch(lines[-1])
    assert match, lines[-1]
    ratio_mlp, ratio_convnet, _overhead = map(float, match.groups())  # the overhead may be negative (noise)
    assert ratio_mlp > 0 and ratio_convnet > 0
    assert any(line.startswith("mlp        naive") for line in lines)
    convnet = next(line for line in lines if line.startswith("convnet ensemble"))
    for shape in ("1x8x8", "1x28x28", "3x32x32"):  # the ConvNet's ensemble ratio and each sigma method's cost
        assert re.search(rf"{shape} [0-9.]+x \(vmap [0-9.]+x\)", convnet)
        for engine in ("per-run", "ensemble"):
            for method in ("reshaped", "operator", "bound"):
                pattern = rf"\s*{shape} {engine}\s+{method}\s+record\s+[0-9.]+ ms =\s+[0-9.]+ steps"
                assert any(re.match(pattern, line) for line in lines), (shape, engine, method)
    assert any("--claims skipped" in line for line in lines)  # a CPU without --force times no claims
