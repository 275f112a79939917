"""Which device an invocation trains on, decided without importing torch where no NVIDIA driver is present.

The CLI, the Python API, the pytest plugin and the runner resolve `--device` here; torch (a second
or more to import) is asked only on a machine that has an NVIDIA driver, since only there can the
answer be a GPU.
"""

from __future__ import annotations

import re
from pathlib import Path

from lipbench.errors import LipbenchError

DEVICE_FORM = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def has_nvidia_driver() -> bool:
    """An NVIDIA driver is loaded (Linux: /proc/driver/nvidia or a /dev/nvidiaN node)."""
    return Path("/proc/driver/nvidia").exists() or any(Path("/dev").glob("nvidia[0-9]*"))


def cuda_available() -> bool:
    if not has_nvidia_driver():
        return False
    import torch  # only where a GPU can be there

    return torch.cuda.is_available()


def resolve_device(device: str = "auto") -> str:
    """`auto` -> cuda when torch sees a GPU, else cpu; `cuda`/`cuda:N` refused (one line) without one."""
    if not DEVICE_FORM.match(device):
        raise LipbenchError(f"--device {device!r}: not a device; use auto, cpu, cuda or cuda:N")
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device.startswith("cuda") and not cuda_available():
        raise LipbenchError("--device cuda was asked for, but torch sees no CUDA device; use --device cpu")
    return device
