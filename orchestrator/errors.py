"""The orchestrator's user-facing errors: all ``CvstudyError``, caught once by the command line.

The subclasses say which part refused the input; the command line treats them alike (one line, exit 2),
except ``StoreError``: a store, server or file system that failed is not the user's input (exit 3).
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from cvstudy.trainers.errors import ConfigError, CvstudyError, DataError, WeightsError

__all__ = [
    "ConfigError",
    "CheckFailed",
    "CompareError",
    "ConfirmError",
    "CvstudyError",
    "DamagedFile",
    "DiskFull",
    "DataError",
    "PredictError",
    "ReportError",
    "ResumeError",
    "StoreError",
    "StudyError",
    "SweepError",
    "UserError",
    "WeightsError",
]


class UserError(CvstudyError):
    """A flag or combination of flags that cannot be used."""


class StudyError(CvstudyError):
    """A study file that cannot be used; the message names the file."""


class SweepError(CvstudyError):
    """Bad sweep input: storage, devices, a study that does not match its file."""


class ReportError(CvstudyError):
    """A missing or empty study to report on."""


class PredictError(CvstudyError):
    """A run, model or study that cannot be predicted from."""


class CompareError(CvstudyError):
    """Two runs that cannot be compared: one not found, without saved predictions, or tested on other images."""


class ConfirmError(CvstudyError):
    """A study that cannot be confirmed, or a confirmation already running."""


class ResumeError(CvstudyError):
    """A run that cannot be resumed."""


class StoreError(CvstudyError):
    """An Optuna storage, MLflow tracking store or server, or file system that cannot be reached or refused
    (unreachable, locked, full, read-only): the environment, not the input."""

    exit_code = 3


class TrialsFailed(CvstudyError):
    """Every trial a sweep ran failed. Each is recorded (Optuna FAIL, its MLflow run FAILED with the
    error) and the sweep ended, but a script or a scheduler must not read that as success: exit 1, as
    Optuna's ``optimize`` re-raises a trial's error and Ray Tune raises when trials erred."""

    exit_code = 1


class CheckFailed(CvstudyError):
    """A check cvstudy ran on its own results failed (predictions that do not reproduce the run's logged
    test metrics): not the input, and not a bug to hide; exit 1, as a report's mismatches."""

    exit_code = 1


class DamagedFile(StoreError):
    """A file cvstudy wrote (a resume state, a logged model) whose bytes no longer match the digest
    recorded when it was written: the storage, not the input (exit 3)."""


class DiskFull(StoreError):
    """A write the file system refused for want of space: the environment (exit 3). The trial it
    interrupted is re-queued, not counted as a failed configuration."""


_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def disk_full(err: BaseException) -> DiskFull | None:
    """A ``DiskFull`` naming the path and its free space when ``err`` (or what caused it) is a write
    refused for space: ``OSError`` ENOSPC or EDQUOT, or SQLite's "database or disk is full"; else None."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, DiskFull):
            return seen
        if isinstance(seen, OSError) and seen.errno in _FULL_ERRNOS:
            path = seen.filename2 or seen.filename
            return DiskFull(f"{path or 'a file'}: no space left on the device ({_free(path)}); free some, then rerun")
        if "database or disk is full" in str(seen):  # sqlite3.OperationalError, however a library wraps it
            return DiskFull(f"a SQLite store: database or disk is full ({_free('.')}); free some, then rerun")
        seen = seen.__cause__ or seen.__context__
    return None


def _free(path) -> str:
    """Free space on the file system that holds ``path`` (its nearest existing folder), in MiB."""
    try:
        where = Path(str(path or ".")).resolve()
        while not where.exists():
            where = where.parent
        return f"{shutil.disk_usage(where).free / 2**20:.1f} MiB free on {where if where.is_dir() else where.parent}"
    except OSError:
        return "free space unknown"
