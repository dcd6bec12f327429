"""The SQLite files this process uses as stores (Optuna's ``optuna.db``, MLflow's ``mlflow.db``), so that a
store error that says only "database disk image is malformed" ends by naming the file that is damaged.

SQLite finds a damaged page when a query reaches it, deep inside Optuna or MLflow, whose errors do not
carry the file (Optuna's even blames "invalid data in the commit"). When a store error ends a command,
the command line asks ``damaged()``: SQLite's own ``PRAGMA quick_check`` on each file registered here,
read-only, and only then (a check reads the whole file: about a second per 100 MB).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

_USED: dict[Path, None] = {}  # insertion-ordered set


def forget() -> None:
    """Start a command with none registered (a process may run several, as the tests do)."""
    _USED.clear()


def used(path: Path | str) -> None:
    """Register a SQLite file this process opened as a store."""
    _USED[Path(path).resolve()] = None


def damaged() -> list[tuple[Path, str]]:
    """``(file, SQLite's finding)`` for each registered file that SQLite finds damaged (not one that is
    merely locked, missing or unreadable: those are not known to be damaged)."""
    found = []
    for path in _USED:
        if not path.is_file():
            continue
        try:
            connection = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5)
            try:
                rows = connection.execute("PRAGMA quick_check").fetchall()
            finally:
                connection.close()
        except sqlite3.OperationalError:  # locked by a writer, or unreadable: not a finding
            continue
        except sqlite3.DatabaseError as err:  # "file is not a database", "database disk image is malformed"
            found.append((path, str(err)))
            continue
        if rows != [("ok",)]:
            found.append((path, "; ".join(str(row[0]) for row in rows[:2])))
    return found


def damaged_message() -> str | None:
    """One line naming the first damaged file and what to do, or None when none is."""
    found = damaged()
    if not found:
        return None
    path, finding = found[0]
    return (
        f"{path}: a damaged SQLite database ({finding[:200]}); cvstudy cannot read or write it: restore it "
        f"from a backup, or save what is readable with `sqlite3 {path} .recover | sqlite3 {path.name}.recovered`"
    )
