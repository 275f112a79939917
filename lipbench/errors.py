"""Errors a user can act on: each prints as one line, with no traceback."""

from __future__ import annotations


class LipbenchError(Exception):
    """A problem with the user's input or environment, printed as one line."""

    exit_code = 2


def one_line(text: str) -> str:
    """`text` with its line breaks written out (a key or value a user typed may hold one)."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


class SuiteError(LipbenchError):
    """A suite file that cannot be loaded: names the file, the key path and what is allowed."""

    def __init__(self, file: str, key: str, message: str) -> None:
        self.file, self.key, self.message = str(file), key, message
        where = f"{self.file}: {key}" if key else self.file
        super().__init__(one_line(f"{where}: {message}"))


class DocumentError(LipbenchError):
    """A JSON file lipbench reads (a result, a baseline, a cache entry) that is unreadable, of the wrong
    shape or of another format version: names the file, the key path and the fix."""

    def __init__(self, file: str | object, key: str, message: str) -> None:
        self.file, self.key, self.message = str(file), key, message
        where = f"{self.file}: {key}" if key else self.file
        super().__init__(one_line(f"{where}: {message}"))


class DatasetUnavailable(LipbenchError):
    """A dataset that is not on disk and may not be downloaded; the message says how to get it."""


class RunDiverged(LipbenchError):
    """A run whose loss or K stopped being finite: names the run, the step and the fix."""

    def __init__(self, run_id: str, step: int, quantity: str) -> None:
        self.run_id, self.step, self.quantity = run_id, step, quantity
        super().__init__(f"run {run_id} diverged at step {step} ({quantity} not finite); lower scenario.optimizer.lr")


class LipbenchWarning(UserWarning):
    """A problem that costs no verdict (an MLflow write or a figure that failed); the results are saved."""


class StoreError(LipbenchError):
    """An MLflow store that cannot be created, opened or reached; said before anything is trained."""

    FIX = (
        "pass --tracking-uri sqlite:///PATH/mlflow.db with a folder you can write, or the http://HOST:PORT "
        "of a running `mlflow server`, or --no-mlflow"
    )

    def __init__(self, uri: str, problem: str) -> None:
        self.uri, self.problem = uri, problem
        super().__init__(f"MLflow store {uri}: {problem}; {self.FIX}")
