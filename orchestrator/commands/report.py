"""``cvstudy report``: the studies read from Optuna and MLflow, printed, checked and written as HTML,
Markdown, CSV and the paper table (``report.writer``)."""

from __future__ import annotations

from pathlib import Path

import optuna
from rich.console import Console

from ..boundaries import inside
from ..errors import ReportError
from ..report.data import load_study_data
from ..report.writer import ReportResult, log_checks, print_study, write_report
from ..sweep.storage import default_storage, open_storage, study_names
from ..tracking.client import Tracker
from ..tracking.uris import sqlite_path


def report(
    names: list[str],
    storage_url: str | None = None,
    tracking_uri: str | None = None,
    out: str | None = None,
    top: int = 10,
    console: Console | None = None,
    table: bool = False,
) -> ReportResult:
    """``table``: also print the paper table (``paper``) in the terminal."""
    console = console or Console()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    tracker = Tracker(tracking_uri)
    storage_url = storage_url or default_storage(tracker.uri)
    database = sqlite_path(storage_url)
    if database is not None and not database.exists():
        raise ReportError(f"{database}: no Optuna storage here; run `cvstudy sweep` first or pass --storage")
    storage = open_storage(storage_url)
    names = names or study_names(storage)
    if not names:
        raise ReportError(f"no studies in {storage_url}; run `cvstudy sweep` first")
    studies = [load_study_data(name, storage, tracker) for name in names]
    for s in studies:
        if not s.ranked:
            raise ReportError(f"study {s.name!r} has no complete trials yet ({s.counts})")
    for s in studies:
        print_study(s, top, console)
        log_checks(tracker, s)
    out_dir = Path(out) if out else inside(Path("reports"), Path("reports") / "+".join(s.name for s in studies))
    paths = write_report(studies, out_dir, tracker, top)
    if table:
        console.print(paths["table_md"].read_text(), highlight=False, markup=False)
    console.print(
        f"wrote {paths['html']}, {paths['md']}, {paths['csv']}; the paper table: {paths['table_md']}, "
        f"{paths['table_csv'].name}, {paths['table_tex'].name}",
        highlight=False,
    )
    return ReportResult(paths, [p for s in studies for p in s.problems])
