"""A journal file that survives a cut-off write.

Optuna's ``JournalFileBackend`` appends one JSON record per line. A worker killed mid-write (SIGKILL, a
preempted node, an NFS client that went away) can leave the last record without its end; Optuna's reader
then skips it without a word, and its next append lands straight after the broken bytes, making a line
that never parses again: from then on no command can read the study. Optuna has no hook for either (the
fix belongs upstream), so cvstudy wraps the backend through its public constructor:

- Under the journal's own lock, before every append (and when a storage is opened), a record cut short
  at the end of the file is moved to a side file (``JOURNAL.cut-<time>``) and reported in one line; the
  file stays readable, and the trial that record belonged to is recovered like any interrupted trial.
- A damaged record anywhere else stops the command with one line naming the file, the byte offset and
  the repair: ``cvstudy storage repair JOURNAL`` (which keeps a backup and sets damaged lines aside).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from ..errors import StoreError

log = logging.getLogger("cvstudy")
_CHUNK = 1 << 16  # bytes read backwards while looking for the last line end


@dataclass(frozen=True)
class Damage:
    offset: int
    """Byte offset of the damaged line's first byte."""
    length: int
    """Its length in bytes (its line end included, if it has one)."""
    cut_off: bool
    """True for a last line without its end (an interrupted write); False for a line that does not parse."""


def _last_line_start(fh, size: int) -> int:
    """Offset just past the last b"\\n" in the first ``size`` bytes of ``fh`` (0 when there is none)."""
    end = size
    while end > 0:
        start = max(0, end - _CHUNK)
        fh.seek(start)
        chunk = fh.read(end - start)
        i = chunk.rfind(b"\n")
        if i >= 0:
            return start + i + 1
        end = start
    return 0


def scan(path: Path) -> list[Damage]:
    """Every damaged line of the journal at ``path``: lines that are not one JSON object, and a last line
    without its end."""
    found = []
    offset = 0
    with open(path, "rb") as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                found.append(Damage(offset, len(line), cut_off=True))
            else:
                try:
                    ok = isinstance(json.loads(line), dict)
                except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
                    ok = False
                if not ok:
                    found.append(Damage(offset, len(line), cut_off=False))
            offset += len(line)
    return found


def set_aside_cut_tail(path: Path) -> Path | None:
    """Move a last record cut short (no line end) to a side file and truncate the journal before it;
    returns the side file, or None when the journal ends whole. Call it holding the journal's lock."""
    if not path.exists():
        return None
    with open(path, "r+b") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return None
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return None
        start = _last_line_start(fh, size)
        fh.seek(start)
        tail = fh.read(size - start)
        side = path.with_name(f"{path.name}.cut-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        side.write_bytes(tail)
        fh.truncate(start)
        fh.flush()
        os.fsync(fh.fileno())
    log.warning(
        "journal %s: a record cut short at byte %d (%d bytes, an interrupted write) was set aside to %s; "
        "the trial it belonged to is recovered like any interrupted trial",
        path,
        start,
        len(tail),
        side,
    )
    return side


def damaged_error(path: Path, damage: Damage) -> StoreError:
    return StoreError(
        f"{path}: journal record at byte {damage.offset} ({damage.length} bytes) is damaged, not JSON; "
        f"`cvstudy storage repair {path}` keeps a backup and sets damaged records aside"
    )


def repair(path: Path) -> tuple[Path | None, list[Damage]]:
    """Copy the journal to ``JOURNAL.bak-<time>``, then move every damaged line to ``JOURNAL.damaged-<time>``
    and keep the others, in order; returns the backup (None when nothing was damaged) and the damage."""
    damage = scan(path)
    if not damage:
        return None, []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    backup = path.with_name(f"{path.name}.bak-{stamp}")
    shutil.copy2(path, backup)
    bad = {d.offset for d in damage}
    kept: list[bytes] = []
    removed: list[bytes] = []
    offset = 0
    with open(backup, "rb") as fh:
        for line in fh:
            (removed if offset in bad else kept).append(line)
            offset += len(line)
    path.with_name(f"{path.name}.damaged-{stamp}").write_bytes(b"".join(removed))
    temporary = path.with_name(f"{path.name}.repairing")
    temporary.write_bytes(b"".join(kept))
    os.replace(temporary, path)
    return backup, damage


class JournalFile(JournalFileBackend):
    """Optuna's journal file backend with cut-off records set aside before each append, and damaged ones
    refused in one line (see the module's docstring)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.lock = JournalFileSymlinkLock(path)  # the lock Optuna's backend takes by default (NFS-safe)
        super().__init__(path, lock_obj=self.lock)
        with self._locked():
            set_aside_cut_tail(self.path)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.lock.acquire()
        try:
            yield
        finally:
            self.lock.release()

    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        try:
            yield from super().read_logs(log_number_from)
        except ValueError:  # a line that does not parse (JSONDecodeError is a ValueError)
            found = scan(self.path)
            damage = [d for d in found if not d.cut_off] or found  # a line that does not parse, first
            if damage:
                raise damaged_error(self.path, damage[0]) from None
            raise

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        # Optuna's append, with the cut-off tail set aside first, under the same lock (the lock is not
        # re-entrant, so the write is Optuna's, restated: JSON lines, flushed and synced).
        with self._locked():
            set_aside_cut_tail(self.path)
            text = "\n".join(json.dumps(entry, separators=(",", ":")) for entry in logs) + "\n"
            with open(self.path, "ab") as fh:
                fh.write(text.encode("utf-8"))
                fh.flush()
                os.fsync(fh.fileno())
