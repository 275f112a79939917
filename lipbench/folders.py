"""Where one invocation's results go: a folder of its own under lipbench-results/, named so that
invocations started together (on one machine or several) never share one. Light on imports: the
pytest plugin names its folder before any claim is loaded.
"""

from __future__ import annotations

import secrets
import tempfile
from datetime import datetime
from pathlib import Path

from lipbench.errors import LipbenchError

RESULTS_ROOT = Path("lipbench-results")


def unique_name(prefix: str = "") -> str:
    """`<prefix><date>-<time>-<6 random hex digits>`: sorts by time, and two invocations started in
    the same second (a script launching jobs, on one machine or several) get different names."""
    return f"{prefix}{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def new_results_folder(out: str | Path | None = None, root: str | Path = RESULTS_ROOT, prefix: str = "") -> Path:
    """Make the results folder of one invocation and return it.

    `out` is used as given (an existing folder gains the claims). Without it the folder is
    `<root>/<unique_name(prefix)>`, created with exist_ok=False, so that no two invocations ever
    share one.
    """
    while True:
        path = Path(out) if out is not None else Path(root) / unique_name(prefix)
        try:
            path.mkdir(parents=True, exist_ok=out is not None)
            return path
        except FileExistsError:
            if out is not None:  # a file of that name
                raise LipbenchError(f"--out {path} is a file, not a folder; pass --out with a folder name") from None
        except OSError as e:
            raise LipbenchError(
                f"cannot create the results folder {path} ({e.strerror or e}); pass --out with a folder you can write"
            ) from None


def writable_folder(path: str | Path, fix: str) -> Path:
    """Create `path` (and its parents) and check that a file can be written in it, before any work is done;
    a `LipbenchError` naming the folder and the `fix` otherwise."""
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".lipbench-write-check-"):
            pass
    except OSError as e:
        raise LipbenchError(f"{path}: cannot write there ({e.strerror or e}); {fix}") from None
    return path
