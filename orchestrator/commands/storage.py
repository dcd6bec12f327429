"""``cvstudy storage check|repair JOURNAL``: find and set aside damaged records of a journal storage."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ..errors import UserError
from ..sweep.journal import repair, scan


def _journal(path: str) -> Path:
    journal = Path(path).expanduser()
    if not journal.is_file():
        raise UserError(f"{journal}: no journal file there (the PATH of a journal:///PATH storage)")
    return journal


def check_journal(path: str, console: Console) -> int:
    """Print every damaged record; returns how many there are."""
    journal = _journal(path)
    damage = scan(journal)
    for d in damage:
        what = "cut short (an interrupted write)" if d.cut_off else "not a JSON record"
        console.print(f"{journal}: byte {d.offset}, {d.length} bytes: {what}", highlight=False)
    if not damage:
        console.print(f"{journal}: every record reads", highlight=False)
    return len(damage)


def repair_journal(path: str, console: Console) -> None:
    journal = _journal(path)
    backup, damage = repair(journal)
    if backup is None:
        console.print(f"{journal}: every record reads; nothing to repair", highlight=False)
        return
    console.print(
        f"{journal}: set aside {len(damage)} damaged record(s) beside it (.damaged-*); the original is kept as "
        f"{backup}. Rerun the sweep: trials whose records were lost are recovered like interrupted ones.",
        highlight=False,
    )
