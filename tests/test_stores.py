"""MLflow stores that cannot be used: refused before any training in one line (exit 2), or, when one
breaks mid-run, a warning per claim with every result kept. Experiments are model-training
experiments. Every invocation gets its own results folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from builders import free_port

from lipbench.cli import main
from lipbench.errors import StoreError
from lipbench.folders import new_results_folder

RUN = ["--workers", "1", "--profile", "quick", "--device", "cpu"]


def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder no one can create a file in: a read-only one, or, for root (whom permissions do not
    stop), /proc."""
    if os.geteuid() == 0:
        return Path("/proc")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    return folder


def _bad_uris(tmp_path: Path) -> dict[str, str]:
    regular = tmp_path / "a-file"
    regular.write_text("not a folder\n")
    (tmp_path / "a-folder.db").mkdir()
    return {
        "under a regular file": f"sqlite:///{regular / 'sub' / 'mlflow.db'}",
        "unwritable folder": f"sqlite:///{_unwritable_folder(tmp_path) / 'mlflow.db'}",
        "a folder, not a database": f"sqlite:///{tmp_path / 'a-folder.db'}",
        "no server answers": f"http://127.0.0.1:{free_port()}",
    }


@pytest.mark.parametrize(
    "case", ["under a regular file", "unwritable folder", "a folder, not a database", "no server answers"]
)
def test_a_store_that_cannot_be_used_is_refused_before_training_in_one_line(
    case: str, write_suite, tmp_path: Path, capsys
) -> None:
    uri = _bad_uris(tmp_path)[case]
    path, out = write_suite("tiny"), tmp_path / "out"
    assert main(["run", str(path), *RUN, "--out", str(out), "--tracking-uri", uri]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"lipbench: error: MLflow store {uri}: ")
    assert "--tracking-uri sqlite:///" in lines[0] and "--no-mlflow" in lines[0]  # the fix
    assert captured.out == ""  # not even the plan was printed: nothing started
    assert not out.exists()  # nothing trained, nothing written


def test_the_default_store_in_an_unwritable_working_folder_is_refused(
    write_suite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    path = write_suite("tiny")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    folder = _unwritable_folder(tmp_path)
    monkeypatch.chdir(folder)
    assert main(["run", str(path), *RUN, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lipbench: error: MLflow store sqlite:///{folder / 'mlflow.db'}: cannot write in {folder} (")
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_store_errors_name_the_uri_and_the_fix(tmp_path: Path) -> None:
    from lipbench.tracking import Tracker

    uri = _bad_uris(tmp_path)["under a regular file"]
    with pytest.raises(StoreError) as raised:
        Tracker("lipbench/x", uri)
    assert raised.value.uri == uri
    assert raised.value.exit_code == 2
    assert f"cannot write in {tmp_path / 'a-file'} (Not a directory)" in str(raised.value)


def test_new_experiments_are_model_training_experiments(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from lipbench.tracking import KIND, KIND_TAG, Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker("lipbench/fresh", uri)
    experiment = MlflowClient(uri).get_experiment(tracker.experiment_id)
    assert (KIND_TAG, KIND) == ("mlflow.experimentKind", "custom_model_development")
    assert experiment.tags[KIND_TAG] == KIND


def test_an_existing_experiment_without_a_kind_gets_it_and_a_set_kind_is_kept(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from lipbench.tracking import KIND, KIND_TAG, Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    old = client.create_experiment("lipbench/old")  # as an older lipbench made it
    chosen = client.create_experiment("lipbench/chosen", tags={KIND_TAG: "genai_development"})
    assert KIND_TAG not in client.get_experiment(old).tags

    assert Tracker("lipbench/old", uri).experiment_id == old
    assert Tracker("lipbench/chosen", uri).experiment_id == chosen
    assert client.get_experiment(old).tags[KIND_TAG] == KIND
    assert client.get_experiment(chosen).tags[KIND_TAG] == "genai_development"  # the user's choice stands


def test_a_store_that_breaks_mid_run_costs_no_result(
    write_suite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """The store works when the run starts and is destroyed after the first claim is logged: the
    second claim's logging fails with a warning, its results are all saved, the verdicts stand."""
    from lipbench.session import Session

    db = tmp_path / "mlflow.db"
    first, second = write_suite("first"), write_suite("second")
    logged: list[str] = []
    finish = Session.finish_claim

    def finish_then_break(self, outcome):
        folder = finish(self, outcome)
        logged.append(outcome.claim.name)
        if len(logged) == 1:
            db.write_bytes(b"this is no longer a database" * 4096)
        return folder

    monkeypatch.setattr(Session, "finish_claim", finish_then_break)
    out = tmp_path / "out"
    argv = ["run", str(first), str(second), *RUN, "--out", str(out), "--tracking-uri", f"sqlite:///{db}"]
    assert main(argv) == 0  # both claims PASS: the store's failure is not theirs
    err = capsys.readouterr().err
    assert "Traceback" not in err
    broken = logged[1]
    assert (
        f"lipbench: warning: MLflow logging of {broken} failed "
        "(MlflowException: (sqlite3.DatabaseError) file is not a database); " in err
    )
    assert "[SQL:" not in err
    assert f"its results are in {out / 'suites' / broken}" in err
    assert f"1 of 2 claims are not in the MLflow store sqlite:///{db} ({broken}); every result is in {out}" in err
    for name in logged:
        folder = out / "suites" / name
        assert json.loads((folder / "result.json").read_text())["status"] == "PASS"
        assert len(json.loads((folder / "records.json").read_text())) == 6
    assert (out / "suites" / logged[0] / "mlflow_run_id").exists()
    assert not (out / "suites" / broken / "mlflow_run_id").exists()


def test_each_results_folder_is_new_even_within_one_second(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lipbench.folders

    names = iter(["aaaaaa", "aaaaaa", "bbbbbb"])  # the second draw collides with the first
    monkeypatch.setattr(lipbench.folders.secrets, "token_hex", lambda n: next(names))
    monkeypatch.setattr(lipbench.folders, "datetime", _FrozenClock)
    first = new_results_folder(root=tmp_path)
    second = new_results_folder(root=tmp_path)
    assert (first.name, second.name) == ("20250101-120000-aaaaaa", "20250101-120000-bbbbbb")
    assert first.is_dir() and second.is_dir()
    assert new_results_folder(first) == first  # a given --out may exist already


def test_an_out_that_is_a_file_is_one_clear_error(write_suite, tmp_path: Path, capsys) -> None:
    out = tmp_path / "taken"
    out.write_text("")
    assert main(["run", str(write_suite("tiny")), *RUN, "--no-mlflow", "--out", str(out)]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"lipbench: error: --out {out} is a file, not a folder; pass --out with a folder name"
    )


class _FrozenClock:
    @staticmethod
    def now(tz=None):
        from datetime import datetime

        return datetime(2025, 1, 1, 12, 0, 0)


def test_under_pytest_a_bad_store_is_a_usage_error_with_the_plugins_options(write_suite, tmp_path: Path) -> None:
    folder = write_suite("tiny").parent
    uri = f"http://127.0.0.1:{free_port()}"
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", str(folder), "--lipbench-suites", str(folder), "-p", "no:cacheprovider"),
            *("--lipbench-tracking-uri", uri, "--lipbench-device", "cpu", "--lipbench-profile", "quick", "-q"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 4, done.stdout[-2000:] + done.stderr[-2000:]
    error = [line for line in done.stderr.splitlines() if line.startswith("ERROR: ")]
    assert error == [
        f"ERROR: MLflow store {uri}: no server answers (ConnectionError); pass --lipbench-tracking-uri "
        "sqlite:///PATH/mlflow.db with a folder you can write, or the http://HOST:PORT of a running "
        "`mlflow server`, or --lipbench-no-mlflow"
    ]
    assert "Traceback" not in done.stderr and not (tmp_path / "lipbench-results").exists()


def test_an_experiment_the_store_refuses_to_make_is_a_store_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that opens but refuses writes (a server's permissions, a read-only database)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from lipbench.tracking import Tracker

    def refuse(self, name, **kwargs):
        raise MlflowException(f"Permission denied for experiment {name}\non this server")

    monkeypatch.setattr(MlflowClient, "create_experiment", refuse)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(StoreError) as raised:
        Tracker("lipbench/refused", uri)
    assert str(raised.value).startswith(
        f"MLflow store {uri}: experiment 'lipbench/refused' cannot be made "
        "(MlflowException: Permission denied for experiment lipbench/refused on this server); pass --tracking-uri"
    )
