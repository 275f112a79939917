"""The run cache: every finished run's record, kept under a key that is the hash of what decides it.

A record is written (tmp file + `os.replace`, so a reader never sees half of one) the moment it
reaches the driver, so an interrupted collection loses at most the runs in progress, and the next
invocation trains only what is missing. The key hashes the resolved run (its scenario with the
sweep value applied, the sweep value and both seeds), the engine, the lipbench version (its
version number and a hash of its source files, so an edited checkout never reuses what older code
computed), the torch version and the device kind (`cpu`, `cuda`). The claim's name is not in the
key: two claims that need the same run share it.

Location: `--cache-dir`, else `LIPBENCH_CACHE_DIR`, else `runs/` in the user cache folder
(`~/.cache/lipbench/runs` on Linux, beside the downloaded datasets). Not under the results
folder: that is new for each invocation (`lipbench-results/<time>`), so a resumed command would
never find it; one cache per user lets every folder, suite and checkout share runs, which the
source hash in the key makes safe.

An entry that cannot be read, parsed or checked against its key counts as missing: the run is
trained again and the entry replaced; a cached record is never trusted blindly. A run that failed
(an exception, a dead worker) is not cached; a diverged run is (divergence is deterministic).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from lipbench import __version__, factories
from lipbench.documents import CacheEntryDoc, load_document
from lipbench.errors import DocumentError
from lipbench.records import RunRecord
from lipbench.registry import DATASETS, MODELS, OPTIMIZERS, SCHEDULES
from lipbench.suite import RunSpec

CACHE_ENV = "LIPBENCH_CACHE_DIR"
FORMAT = 1  # of an entry file; part of the key


def default_cache_dir() -> Path:
    """`LIPBENCH_CACHE_DIR`, else `runs/` in the user cache folder (platformdirs)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("lipbench")) / "runs"


@functools.lru_cache(maxsize=1)
def lipbench_fingerprint() -> str:
    """The lipbench version and a hash of its source files: any edit makes a new fingerprint."""
    return f"{__version__}+{source_digest(Path(__file__).resolve().parent)}"


def source_digest(package: Path) -> str:
    """A hash of the names and contents of every .py file under `package`."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


@functools.lru_cache(maxsize=64)
def package_digest(top: str) -> str:
    """A hash of the source of an importable top-level package (or single-file module), like lipbench's own."""
    spec = importlib.util.find_spec(top)
    if spec is None or spec.origin is None:
        return "missing"
    where = Path(spec.origin).resolve()
    if {"site-packages", "dist-packages"} & set(where.parts):  # an installed release: its version says it
        versions = sorted({metadata.version(d) for d in metadata.packages_distributions().get(top, [])})
        if versions:
            return "version " + ",".join(versions)
    if spec.submodule_search_locations:
        return source_digest(Path(next(iter(spec.submodule_search_locations))))
    return hashlib.sha256(where.read_bytes()).hexdigest()[:12]


def user_code(spec: RunSpec) -> dict[str, str]:
    """The user's code a run calls (factories, plugins, a run function), by reference, each with a hash of
    its package's source: an edit of the user's loop or model must not reuse runs of the old code."""
    sc = spec.scenario
    named = [("run", sc.run.name if sc.run else None, ())]
    if sc.model is not None:
        named.append(("model", sc.model.name, MODELS))
    named.append(("dataset", sc.dataset.name, DATASETS))
    if sc.optimizer is not None:
        named += [("optimizer", sc.optimizer.name, OPTIMIZERS), ("schedule", sc.optimizer.schedule.name, SCHEDULES)]
    found = {}
    for kind, name, builtins in named:
        reference = factories.reference_for(kind, name, builtins) if name else None
        if reference is not None:
            found[reference] = package_digest(reference.partition(factories.SEPARATOR)[0].split(".")[0])
    return found


def device_kind(device: str) -> str:
    """`cpu` or `cuda`: the index of a GPU does not change the numbers."""
    return device.split(":", 1)[0]


def key_payload(spec: RunSpec, engine: str, device: str) -> dict[str, Any]:
    """Everything that decides a run's record (not the claim's name: claims share equal runs)."""
    return {
        "format": FORMAT,
        "scenario": spec.scenario.model_dump(mode="json"),
        "sweep_value": spec.sweep_value,
        "init_seed": spec.init_seed,
        "sampling_seed": spec.sampling_seed,
        "engine": engine,
        "lipbench": lipbench_fingerprint(),
        "user_code": user_code(spec),
        "torch": metadata.version("torch"),
        "device": device_kind(device),
    }


def run_key(spec: RunSpec, engine: str, device: str) -> str:
    text = json.dumps(key_payload(spec, engine, device), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def adopt(record: RunRecord, spec: RunSpec) -> RunRecord:
    """A record of an equal run, renamed for `spec`'s claim and run id."""
    if (record.claim, record.run_id) == (spec.claim, spec.run_id):
        return record
    return dataclasses.replace(record, claim=spec.claim, run_id=spec.run_id)


@dataclass
class CacheInfo:
    path: Path
    entries: int
    bytes: int
    oldest: float | None
    newest: float | None


class RunCache:
    """Records on disk, one JSON file per key; counts what one invocation reused and trained."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        self.reused = 0  # runs whose record came from the cache
        self.trained = 0  # runs trained by this invocation (failed ones included)
        self.written = 0  # records this invocation wrote to the cache
        self.rejected = 0  # entries that were there but could not be trusted

    def check_writable(self) -> None:
        """Refuse a cache folder that cannot be written before anything trains (a `LipbenchError`)."""
        from lipbench.folders import writable_folder

        writable_folder(self.root, f"pass --cache-dir (or set {CACHE_ENV}) with a folder you can write, or --no-cache")

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def load(self, key: str) -> RunRecord | None:
        """The cached record of `key`, or None when there is none or it cannot be trusted."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            data = load_document(path, CacheEntryDoc)
            if data["key"] != key:
                raise ValueError("its key differs from its name")
            record = RunRecord.from_dict(data["record"])
            if any(len(v) != len(record.steps) for v in record.metrics.values()) or record.error is not None:
                raise ValueError("its record is inconsistent")
        except (DocumentError, ValueError):  # unreadable, truncated, edited, another format: train it again
            self.rejected += 1
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # age = time since last use, for `lipbench cache prune --older-than`
        return record

    def store(self, key: str, record: RunRecord) -> Path | None:
        """Write a finished run's record atomically; failed runs are not cached (returns None)."""
        if record.error is not None:
            return None
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"key": key, "written": time.time(), "record": record.to_dict()}
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:12]}-", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(entry, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.written += 1
        return path

    def entries(self) -> list[Path]:
        return sorted(self.root.glob("??/*.json")) if self.root.is_dir() else []

    def info(self) -> CacheInfo:
        stats = [p.stat() for p in self.entries()]
        times = [s.st_mtime for s in stats]
        return CacheInfo(
            self.root, len(stats), sum(s.st_size for s in stats), min(times, default=None), max(times, default=None)
        )

    def prune(self, older_than_days: float | None = None) -> tuple[int, int]:
        """Delete entries unused for more than `older_than_days` (None: all); returns (entries, bytes) freed."""
        cutoff = None if older_than_days is None else time.time() - older_than_days * 86400
        count = freed = 0
        for path in self.entries():
            stat = path.stat()
            if cutoff is None or stat.st_mtime < cutoff:
                path.unlink(missing_ok=True)
                count, freed = count + 1, freed + stat.st_size
        for tmp in self.root.glob("??/.*.tmp") if self.root.is_dir() else []:  # left by a killed writer
            if cutoff is None or tmp.stat().st_mtime < time.time() - 3600:
                tmp.unlink(missing_ok=True)
        for folder in self.root.glob("??") if self.root.is_dir() else []:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        return count, freed
