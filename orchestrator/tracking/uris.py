"""Tracking and storage URIs: where runs go by default, SQLite paths, and UI links (redaction is
``boundaries.redact``).

Default store: MLflow's own default, ``sqlite:///mlflow.db`` in the working directory with artifacts
under ``./mlruns``, so a plain ``mlflow ui`` started there shows every run. ``MLFLOW_TRACKING_URI``
or ``--tracking-uri`` override it (e.g. ``http://host:5000`` for a shared tracking server).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from urllib.parse import urlencode

from .schema import SECTIONS, Tag, logged_name, run_filter

SQLITE = "sqlite:///"
UI_DEFAULT = "http://127.0.0.1:5000"  # where a plain `mlflow ui` listens


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///PATH[?query]`` URL (relative paths as given), else None."""
    if not url.startswith(SQLITE):
        return None
    return Path(url[len(SQLITE) :].split("?")[0])


def sqlite_url(path: Path | str) -> str:
    return f"{SQLITE}{path}"


def resolve_tracking_uri(uri: str | None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return sqlite_url(Path("mlflow.db").resolve())


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def without_userinfo(url: str) -> str:
    """``url`` without ``user:password@``: for links a person opens (the browser asks for credentials)."""
    scheme, sep, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme}{sep}{host.rsplit('@', 1)[-1]}{slash}{path}" if sep else url


def ui_link(tracking_uri: str, experiment_id: str, run_id: str | None = None, view: str | None = None) -> str:
    """A link into the MLflow UI's "Model training" view: one run's page, or the experiment's runs as
    charts in the saved ``view`` (the key of an experiment tag ``trials_view`` made)."""
    base = without_userinfo(tracking_uri.rstrip("/")) if is_http(tracking_uri) else UI_DEFAULT
    if run_id:
        return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"
    query = {"workflowType": "machine_learning", "compareRunsMode": "CHART"}
    if view:
        query["viewStateShareKey"] = view
    return f"{base}/#/experiments/{experiment_id}/runs?{urlencode(query)}"


# A view of the MLflow UI's runs page saved in the experiment: what the "Views" menu lists and a
# ``viewStateShareKey`` link opens. Its format is the UI's own (MLflow 3.17: an experiment tag
# ``Tag.saved_view(key)`` holding {name, createdAt, updatedAt, state}, the state as the UI's
# "Save as new view" writes it); tests/orchestrator/test_e2e_browser.py checks in Chromium that the
# objective's chart is the first a person sees, so a UI that reads it otherwise fails there.
TRIALS_VIEW = "cvstudy-trials"
RUNS_PER_CHART = 100  # the UI draws 10 runs per chart unless told; a sweep's trials, up to its limit


def trials_view(role: str, objectives: list[tuple[str, str]], epoch_metrics: tuple[str, ...]) -> tuple[str, str]:
    """``(Tag.saved_view(TRIALS_VIEW), tag value)``: the view a sweep's link opens. The study's ``role``
    runs, best first by the first of ``objectives`` (``(cvstudy metric name, direction)``); the objectives'
    charts first, in their sections (curves over epochs for those in ``epoch_metrics``), before the rest."""
    first, direction = objectives[0]
    keys = [logged_name(metric) for metric, _ in objectives]  # each objective's name in MLflow: section/name
    sections = list(dict.fromkeys(key.partition("/")[0] for key in keys if key.partition("/")[0] in SECTIONS))
    sections += [s for s in SECTIONS if s not in sections]
    charts = [
        {
            "uuid": f"cvstudy-objective-{i}",
            "type": "LINE" if metric in epoch_metrics else "BAR",
            "metricKey": key,
            "displayName": f"{key} (objective)",
            "metricSectionId": f"cvstudy-{key.partition('/')[0]}",
            "runsCountToCompare": RUNS_PER_CHART,
            "isGenerated": False,
            "deleted": False,
            **({"xAxisKey": "step", "scaleType": "linear", "lineSmoothness": 0} if metric in epoch_metrics else {}),
        }
        for i, ((metric, _), key) in enumerate(zip(objectives, keys))
    ]
    state = {
        "searchFilter": run_filter(role=role),
        "orderByKey": f"metrics.`{logged_name('best_' + first)}`",
        "orderByAsc": direction == "minimize",
        "compareRunCharts": charts,
        "compareRunSections": [
            # reordered: charts MLflow adds for the other metrics go after the objectives', not sorted in
            {"uuid": f"cvstudy-{s}", "name": s, "display": True, "isReordered": i == 0, "deleted": False}
            for i, s in enumerate(sections)
        ],
        "isAccordionReordered": True,  # keep the sections in this order (MLflow sorts them by name)
    }
    now = int(time.time() * 1000)
    envelope = {"name": f"cvstudy: trials, best first by {first}", "createdAt": now, "updatedAt": now}
    return Tag.saved_view(TRIALS_VIEW), json.dumps({**envelope, "state": json.dumps(state)})


def browse_hint(tracking_uri: str, link: str) -> str:
    start = "open" if is_http(tracking_uri) else "`mlflow ui` (from this directory, no flags), then open"
    return f"browse: {start} {link}"
