"""``cvstudy report``: the studies read from Optuna and MLflow, printed, checked and written as HTML,
Markdown, CSV and the paper table (``report.writer``)."""

from __future__ import annotations

from pathlib import Path

import optuna
from rich.console import Console

from ..boundaries import inside, redact
from ..errors import ReportError
from ..report.data import StudyData, load_study_data
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
    tracker, studies = read_studies(names, storage_url, tracking_uri)
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


def read_studies(
    names: list[str], storage_url: str | None, tracking_uri: str | None
) -> tuple[Tracker, list[StudyData]]:
    """The named studies (none named: every study in the storage), read from Optuna and MLflow, with
    the MLflow store they were read from. Refuses a storage file that does not exist or holds none."""
    tracker = Tracker(tracking_uri)
    storage_url = storage_url or default_storage(tracker.uri)
    database = sqlite_path(storage_url)
    if database is not None and not database.exists():
        raise ReportError(
            f"{database}: no Optuna storage here; run `cvstudy sweep` first or name the storage "
            "(--storage, or storage= in Python)"
        )
    storage = open_storage(storage_url)
    names = names or study_names(storage)
    if not names:
        raise ReportError(f"no studies in {redact(storage_url)}; run `cvstudy sweep` first")
    return tracker, [load_study_data(name, storage, tracker) for name in names]
