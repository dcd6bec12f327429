"""A damaged SQLite store (``optuna.db`` or ``mlflow.db``: a garbled header, a file cut in half, a table's
root page zeroed) stops `cvstudy sweep` and `cvstudy report` in one line that names the damaged file and
how to save what is readable (exit 3), leaves no run RUNNING, and adds no trial. SQLite's own reading of
the files (the sqlite3 module) is the oracle for what is damaged and what the stores hold."""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from tests.conftest import run_cli
from tests.orchestrator.test_sweep import study_file

pytestmark = pytest.mark.slow  # a real sweep, then the commands on damaged copies of its stores


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A finished 2-trial sweep's directory: its study file, data, optuna.db, mlflow.db and mlruns."""
    from tests.conftest import make_arrays, write_dataset

    root = tmp_path_factory.mktemp("swept")
    data = write_dataset(root / "data", make_arrays())
    path = study_file(root, data, pruner="none", epochs=1)
    done = run_cli(["sweep", "--study-file", path, "--trials", "2"], root)
    assert done.returncode == 0, done.stdout + done.stderr
    return root


def _damage(path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    if how == "garbled header":
        raw[:100] = bytes(range(100))
    elif how == "cut in half":
        raw = raw[: len(raw) // 2]
    else:  # "a table's root page zeroed": the table that holds the trials or the runs
        table = "trials" if path.name == "optuna.db" else "runs"
        with sqlite3.connect(path) as db:
            (root,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()
            (size,) = db.execute("PRAGMA page_size").fetchone()
        raw[(root - 1) * size : root * size] = bytes(size)
    path.write_bytes(bytes(raw))


def _rows(path, query: str):
    """What SQLite reads from ``path``, or None when it cannot read it."""
    try:
        with sqlite3.connect(path) as db:
            return sorted(db.execute(query).fetchall())
    except sqlite3.DatabaseError:
        return None


TRIALS = "SELECT state, COUNT(*) FROM trials GROUP BY state"
RUNS = "SELECT status, COUNT(*) FROM runs GROUP BY status"


@pytest.mark.parametrize("how", ["garbled header", "cut in half", "a table's root page zeroed"])
@pytest.mark.parametrize("store", ["optuna.db", "mlflow.db"])
def test_a_damaged_sqlite_store_is_named_in_one_line_and_nothing_is_left_running(stores, tmp_path, store, how):
    for name in ("optuna.db", "mlflow.db", "mlruns", "data", "tiny.yaml"):
        (shutil.copytree if (stores / name).is_dir() else shutil.copy)(stores / name, tmp_path / name)
    trials_before, runs_before = _rows(tmp_path / "optuna.db", TRIALS), _rows(tmp_path / "mlflow.db", RUNS)
    assert trials_before == [("COMPLETE", 2)] and runs_before == [("FINISHED", 3)]  # the study's run and 2 trials
    damaged = tmp_path / store
    _damage(damaged, how)
    assert _rows(damaged, "PRAGMA quick_check") != [("ok",)]  # SQLite agrees it is damaged

    for args in (["sweep", "--study-file", "tiny.yaml", "--trials", "4"], ["report", "tiny"]):
        result = run_cli(args, tmp_path)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 3 and len(lines) == 1, result.stdout + result.stderr
        assert f"{damaged}: a damaged SQLite database" in lines[0] and f"sqlite3 {damaged} .recover" in lines[0]
        assert "Traceback" not in result.stderr
    # nothing RUNNING, no trial added, in whichever store still reads
    if store == "mlflow.db":
        assert _rows(tmp_path / "optuna.db", TRIALS) == trials_before
    else:
        assert _rows(tmp_path / "mlflow.db", RUNS) in (runs_before, [("FAILED", 1), ("FINISHED", 2)])
    assert not (tmp_path / "reports").exists()
