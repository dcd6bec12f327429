"""Tracking and storage URIs: where runs go by default, SQLite paths, and UI links (redaction is
``boundaries.redact``).

Default store: MLflow's own default, ``sqlite:///mlflow.db`` in the working directory with artifacts
under ``./mlruns``, so a plain ``mlflow ui`` started there shows every run. ``MLFLOW_TRACKING_URI``
or ``--tracking-uri`` override it (e.g. ``http://host:5000`` for a shared tracking server).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlencode

from .schema import run_filter

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


def ui_link(
    tracking_uri: str,
    experiment_id: str,
    run_id: str | None = None,
    role: str | None = None,
    sort_metric: str | None = None,
    charts: bool = False,
) -> str:
    """A link into the MLflow UI's "Model training" view: one run's page, or the experiment's runs
    (optionally only those of one ``role``, best first by ``sort_metric``, as charts)."""
    base = without_userinfo(tracking_uri.rstrip("/")) if is_http(tracking_uri) else UI_DEFAULT
    if run_id:
        return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"
    query = {"workflowType": "machine_learning"}
    if role:
        query["searchFilter"] = run_filter(role=role)
    if sort_metric:
        query.update(orderByKey=f"metrics.`{sort_metric}`", orderByAsc="false")
    if charts:
        query["compareRunsMode"] = "CHART"
    return f"{base}/#/experiments/{experiment_id}/runs?{urlencode(query)}"


def browse_hint(tracking_uri: str, link: str) -> str:
    start = "open" if is_http(tracking_uri) else "`mlflow ui` (from this directory, no flags), then open"
    return f"browse: {start} {link}"
