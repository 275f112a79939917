"""Units of work: train one run, or one ensemble group, where an executor runs it (a pool worker, a
Ray task, or this process). Every failure becomes the record's `error`, never an exception, so
one broken run never stops a collection. The torch modules load inside these functions: only a
process that trains imports them.
"""

from __future__ import annotations

import os
import traceback

import numpy as np

from lipbench import factories
from lipbench.errors import LipbenchError
from lipbench.records import RunRecord
from lipbench.suite import RunSpec


def execute_group(specs: list[RunSpec], device: str, data_root: str | None, engine: str) -> list[RunRecord]:
    """Train one unit of work (see `_units`); every failure becomes the records' `error`."""
    if engine == "per-run" or (engine == "auto" and len(specs) == 1):
        return [execute_run(spec, device, data_root) for spec in specs]
    from lipbench.torch.ensemble import train_ensemble

    try:
        return train_ensemble(specs, _dataset(specs[0], data_root), device)
    except LipbenchError as e:
        return [failed_record(spec, str(e)) for spec in specs]
    except Exception as e:  # as in execute_run
        return [failed_record(spec, _crash_message(e)) for spec in specs]


def _dataset(spec: RunSpec, data_root: str | None):
    from lipbench.torch.data import DATASETS, default_data_root, load_dataset

    d = spec.scenario.dataset
    reference = factories.reference_for("dataset", d.name, DATASETS)
    if reference is not None:  # the user's own data (a factory or a plugin)
        root = data_root or default_data_root()
        return factories.build_dataset(reference, d.kwargs, root, d.train_size, d.test_size)
    return load_dataset(
        d.name,
        root=data_root,
        train_size=d.train_size,
        test_size=d.test_size,
        synthetic_shape=d.synthetic_shape,
        synthetic_classes=d.synthetic_classes,
        synthetic_size=d.synthetic_size,
    )


def execute_run(spec: RunSpec, device: str, data_root: str | None) -> RunRecord:
    """Train one run; every failure becomes the record's `error` instead of an exception."""
    from lipbench.torch.engine import train

    try:
        return train(spec, _dataset(spec, data_root), device)
    except LipbenchError as e:
        return failed_record(spec, str(e))
    except Exception as e:  # a bug or a resource problem: keep the claim going, say where
        return failed_record(spec, _crash_message(e))


def _crash_message(e: Exception) -> str:
    """The exception in one line, with the file and line it was raised at."""
    where = traceback.extract_tb(e.__traceback__)[-1]
    return f"{type(e).__name__}: {e} (at {os.path.basename(where.filename)}:{where.lineno})"


def failed_record(spec: RunSpec, message: str) -> RunRecord:
    return RunRecord(
        spec.claim,
        spec.run_id,
        spec.sweep_value,
        spec.init_seed,
        spec.sampling_seed,
        np.zeros(0, dtype=np.int64),
        {},
        error=message,
    )
