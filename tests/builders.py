"""Small builders the unit tests share (imported as `builders`: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import itertools
import socket
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lipbench.suite import Scenario


def scenario_from(base: dict[str, Any], **changes: Any) -> Scenario:
    """`base` with top-level keys replaced and sections updated (model={"dropout": True} keeps the rest)."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    return Scenario.model_validate(data)


def float64_mlp(widths: tuple[int, ...], seed: int) -> nn.Sequential:
    """Linear-ReLU-...-Linear with the given widths, in float64, seeded through the global RNG."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).to(torch.float64)


def weight_names(model: nn.Module) -> list[str]:
    """The weights of the model's Linear and Conv2d layers, by parameter name."""
    return [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def live_group_members(pgid: int) -> list[str]:
    """Live (not zombie) processes of a process group, as 'pid name' strings (Linux: reads /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        if int(rest[2]) == pgid and rest[0] not in ("Z", "X"):
            found.append(f"{entry.name} {name}")
    return found
