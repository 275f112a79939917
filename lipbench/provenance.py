"""Where a run's numbers come from: the code under test (git commit, uncommitted changes) and the
environment, and what differs between two environments that could explain a move of a statistic."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

#: Environment keys that can move a statistic without any change of the code under test, in the order shown.
EXPLAINING = ("lipbench", "torch", "python", "device", "dtype", "threads", "engine")
ENV_BISECT = "LIPBENCH_BISECT"  # set (to anything but "" or "0") to exit 125 on ERROR or bad input
BISECT_SKIP = 125  # what `git bisect run` reads as "this commit cannot be tested"


def _git(folder: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def code_state(folder: str | Path | None = None) -> dict[str, Any]:
    """The git commit (full hash) of the repository holding `folder` (default: the working directory, the
    code under test) and whether tracked files differ from it; None for both outside a repository."""
    where = Path(folder) if folder is not None else Path.cwd()
    commit = _git(where, "rev-parse", "HEAD")
    if commit is None:
        return {"git_commit": None, "git_dirty": None}
    status = _git(where, "status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def runtime() -> dict[str, Any]:
    """The torch settings that change the numbers: the default dtype and the CPU threads."""
    import torch

    return {"dtype": str(torch.get_default_dtype()).removeprefix("torch."), "threads": torch.get_num_threads()}


def environment_differences(base: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """'key: then → now' for every explaining key both environments hold and that differs, then the code's commit."""
    out = [
        f"{key}: {base[key]} → {now[key]}"
        for key in EXPLAINING
        if base.get(key) is not None and now.get(key) is not None and str(base[key]) != str(now[key])
    ]
    old, new = base.get("git_commit"), now.get("git_commit")
    if old and new and not (str(old).startswith(str(new)) or str(new).startswith(str(old))):
        out.append(
            f"code: {str(old)[:12]} → {str(new)[:12]}{' (with uncommitted changes)' if now.get('git_dirty') else ''}"
        )
    elif now.get("git_dirty"):
        out.append("code: uncommitted changes in the code under test")
    return out


def bisecting() -> bool:
    """Whether $LIPBENCH_BISECT asks for exit 125 on ERROR or bad input (for `git bisect run`)."""
    return os.environ.get(ENV_BISECT, "") not in ("", "0")
