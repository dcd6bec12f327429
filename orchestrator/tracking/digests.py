"""SHA-256 digests of the files a run resumes or predicts from: recorded in the run when a file is
written, checked before it is used. And the one way tables name the datasets runs were trained and
tested on when their data digests differ (``labels``).

A resume state or a logged model whose bytes changed after it was written (a bad sector, a copy cut
short, a half-finished sync between machines) would otherwise load, train on or predict with different
weights and report numbers that did not come from what ran. The digest covers the whole file; a file
written before digests were recorded (no tag) is used as it is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from ..errors import DamagedFile


def sha256(path: Path | str) -> str:
    """Hex SHA-256 of the file's bytes (read in chunks: a ResNet-50 state is ~380 MB)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def verify(path: Path | str, recorded: str | None, what: str) -> None:
    """Raise ``DamagedFile`` when ``path``'s digest is not the ``recorded`` one; ``what`` names the file
    for the message (its run and artifact path, which a user can find; ``path`` is a download)."""
    if not recorded:
        return
    actual = sha256(path)
    if actual != recorded:
        raise DamagedFile(
            f"{what} is damaged: its sha256 is {actual[:12]}..., not the {recorded[:12]}... recorded when it "
            "was written"
        )


def labels(data: Iterable[tuple | None]) -> dict[tuple, str]:
    """``{(train, val, test digests): "A", ...}`` for each distinct dataset among ``data`` (``None``s
    skipped), in a fixed order; empty when they all agree, as then no table needs a data column."""
    distinct = sorted({d for d in data if d}, key=str)
    return {d: chr(ord("A") + i) for i, d in enumerate(distinct)} if len(distinct) > 1 else {}
