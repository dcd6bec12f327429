"""cvstudy's one exception base, and the trainer core's own user-facing errors.

Every error a user can cause (a bad flag, file, study, storage or run) derives from ``CvstudyError``;
its message is one line meant for the user, and the command line turns it into that line and exit
code 2. The base lives here, in the bottom package, because the trainer core raises some of them.
"""

from __future__ import annotations


class CvstudyError(ValueError):
    """Bad input or an unusable resource; the message is one line naming the file, flag or run."""


class ConfigError(CvstudyError):
    """A configuration value that cannot be used."""


class DataError(CvstudyError):
    """The dataset cannot be used: the file, then the problem."""


class WeightsError(CvstudyError):
    """Pretrained weights cannot be found or do not fit the model."""
