"""The one place cvstudy reaches MLflow's artifact repositories directly.

``MlflowClient`` downloads and uploads artifacts but cannot delete them; deleting a logged model's
files, a pruned trial's checkpoint or a finished run's resume state needs the repository of the
artifact location itself. MLflow exposes that only through ``artifact_repository_registry``, an
internal module: every use goes through ``repository`` here, so a change in MLflow touches one line.
"""

from __future__ import annotations

from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository


def repository(location: str, client):
    """The artifact repository of ``location`` (a run's or a logged model's artifact URI), resolved
    against the client's tracking server (``mlflow-artifacts:`` locations)."""
    return get_artifact_repository(location, tracking_uri=client.tracking_uri)


def run_repository(client, run_id: str):
    return repository(client.get_run(run_id).info.artifact_uri, client)
