"""Exit codes say whose failure it was: 2 the user's input, 3 a store or the file system, 1 a bug in cvstudy
or a library (with how to see its traceback), 130 an interrupt; each in one line, without a traceback
unless asked for."""

from __future__ import annotations

import errno
import signal
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException, RestException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE
from typer.testing import CliRunner

import cvstudy.orchestrator.commands.datacheck as datacheck
from cvstudy.orchestrator.cli import app
from cvstudy.orchestrator.errors import CheckFailed, StoreError
from cvstudy.trainers.errors import CvstudyError, DataError


@pytest.fixture
def failing(monkeypatch):
    """``cvstudy data check`` made to raise the given error; returns how the command line ended."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    # set, then deleted: the undo then removes what `--debug` sets in this process's environment, which
    # would otherwise reach the next test's subprocesses (a traceback where one line is asserted)
    monkeypatch.setenv("CVSTUDY_DEBUG", "0")
    monkeypatch.delenv("CVSTUDY_DEBUG")

    def run(err: BaseException, *flags: str):
        def raise_it(*args, **kwargs):
            raise err

        monkeypatch.setattr(datacheck, "data_check", raise_it)
        return CliRunner().invoke(app, [*flags, "data", "check", "somewhere"])

    yield run
    for s, h in handlers.items():  # the command line installs its own; the next test gets pytest's back
        signal.signal(s, h)


def _lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("err", "code", "words"),
    [
        (DataError("data/train_data.npy: not a uint8 array"), 2, "data/train_data.npy: not a uint8 array"),
        (MlflowException("Run '0000' not found", error_code=RESOURCE_DOES_NOT_EXIST), 2, "Run '0000' not found"),
        (RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "No run 'ab'"}), 2, "No run 'ab'"),
        (StoreError("--storage sqlite:///x.db: cannot open (locked)"), 3, "cannot open"),
        (OSError(errno.ENOSPC, "No space left on device", "/runs/state.pt"), 3, "/runs/state.pt: no space left on"),
        (MlflowException("database is locked", error_code=TEMPORARILY_UNAVAILABLE), 3, "database is locked"),
        (RuntimeError("boom"), 1, "internal error: RuntimeError: boom"),
        (ValueError("a library's own bug"), 1, "internal error: ValueError"),
        (KeyError("x"), 1, "internal error: KeyError"),
    ],
)
def test_each_failure_ends_in_one_line_and_the_exit_code_of_whose_it_was(failing, err, code, words):
    result = failing(err)
    assert result.exit_code == code, result.stderr
    lines = _lines(result)
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in result.stderr, result.stderr
    if code == 1:
        assert "--debug" in lines[0] and "CVSTUDY_DEBUG=1" in lines[0] and "not your input" in lines[0]
    if code == 3:
        assert "internal error" not in lines[0]
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:  # with the free space where the path would be
        assert f"MiB free on {Path('/').resolve()}" in lines[0]


def test_debug_shows_an_internal_errors_traceback_and_nothing_else_changes(failing):
    result = failing(RuntimeError("boom"), "--debug")
    assert result.exit_code == 1 and isinstance(result.exception, RuntimeError)  # raised, with its traceback
    assert failing(DataError("data: bad"), "--debug").exit_code == 2  # input errors stay one line
    failed = failing(CheckFailed("run x: its predictions do not reproduce its logged test metrics"), "--debug")
    assert failed.exit_code == 1 and len(_lines(failed)) == 1 and "internal error" not in failed.stderr


def test_an_interrupt_exits_130(failing):
    result = failing(KeyboardInterrupt())
    assert result.exit_code == 130 and "interrupted" in result.stderr


def test_user_errors_are_not_value_errors():
    """``except ValueError`` must not catch user errors and library bugs alike."""
    assert not issubclass(CvstudyError, ValueError) and issubclass(StoreError, CvstudyError)
    assert (CvstudyError.exit_code, StoreError.exit_code) == (2, 3)
