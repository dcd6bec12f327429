"""cvstudy's one exception base, and the trainer core's own user-facing errors.

Every error cvstudy raises on purpose derives from ``CvstudyError``; its message is one line meant for
the user, and the command line turns it into that line and the class's ``exit_code``: 2 for what the
user gave (a flag, file, study, name or dataset), 3 for a store, server or file system that failed
(``orchestrator.errors.StoreError``). Anything else is a cvstudy bug (exit 1, "internal error"). The
base is an ``Exception``, not a ``ValueError``, so ``except ValueError`` never catches user errors and
library bugs alike. It lives here, in the bottom package, because the trainer core raises some of them.
"""

from __future__ import annotations


class CvstudyError(Exception):
    """Bad input or an unusable resource; the message is one line naming the file, flag or run."""

    exit_code = 2
    """The command line's exit code for it: 2, the user's input."""


class ConfigError(CvstudyError):
    """A configuration value that cannot be used."""


class DataError(CvstudyError):
    """The dataset cannot be used: the file, then the problem."""


class WeightsError(CvstudyError):
    """Pretrained weights cannot be found or do not fit the model."""
