"""The orchestrator's user-facing errors: all ``CvstudyError``, caught once by the command line.

The subclasses say which part refused the input; the command line treats them alike (one line, exit 2),
except ``StoreError``: a store, server or file system that failed is not the user's input (exit 3).
"""

from __future__ import annotations

from trainers.errors import ConfigError, CvstudyError, DataError, WeightsError

__all__ = [
    "ConfigError",
    "CheckFailed",
    "ConfirmError",
    "CvstudyError",
    "DamagedFile",
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


class ConfirmError(CvstudyError):
    """A study that cannot be confirmed, or a confirmation already running."""


class ResumeError(CvstudyError):
    """A run that cannot be resumed."""


class StoreError(CvstudyError):
    """An Optuna storage, MLflow tracking store or server, or file system that cannot be reached or refused
    (unreachable, locked, full, read-only): the environment, not the input."""

    exit_code = 3


class CheckFailed(CvstudyError):
    """A check cvstudy ran on its own results failed (predictions that do not reproduce the run's logged
    test metrics): not the input, and not a bug to hide; exit 1, as a report's mismatches."""

    exit_code = 1


class DamagedFile(StoreError):
    """A file cvstudy wrote (a resume state, a logged model) whose bytes no longer match the digest
    recorded when it was written: the storage, not the input (exit 3)."""
