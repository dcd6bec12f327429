"""The example notebook (docs/python-api.ipynb), run top to bottom in a Jupyter kernel on the demo set, as a
user runs it from a project directory; what it recorded is then read back with MLflow's and Optuna's own
clients."""

import os
from pathlib import Path

import mlflow
import nbformat
import optuna
import pytest
from nbclient import NotebookClient

from tests.conftest import clean_env

pytestmark = pytest.mark.slow  # a kernel, a sweep and a run (make test-fast skips it)

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "python-api.ipynb"


def test_the_example_notebook_runs_top_to_bottom_and_records_what_it_shows(tmp_path, monkeypatch):
    for key, value in clean_env().items():
        monkeypatch.setenv(key, value)  # the kernel inherits this process's environment
    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(key)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)  # every cell ran (an error would have raised above)
    printed = ["".join(o.text for o in c.outputs if o.output_type == "stream" and o.name == "stdout") for c in code]

    study = optuna.load_study(study_name="resnet50", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(study.trials) == 2 and all(t.state.is_finished() for t in study.trials)
    (table,) = [o.data["text/plain"] for o in code[1].outputs if o.output_type == "execute_result"]  # the DataFrame
    assert all(t.user_attrs["mlflow_run_id"] in table for t in study.trials)
    assert (tmp_path / "reports" / "resnet50" / "report.html").is_file()

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id, _, said = printed[4].partition(" ")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert f"{run.data.metrics['test/balanced_accuracy']:.4f}" in said
    assert client.get_experiment(run.info.experiment_id).name == "cvstudy-train"
    assert printed[3].endswith("as logged\n")  # the notebook's own check: predictions reproduce the logged accuracy
    assert printed[5].startswith("ConfigError ") and "lr" in printed[5]  # the one line the CLI would print
