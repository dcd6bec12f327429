"""The sweep's best model as an MLflow model: registered as <study> (alias @best), loaded with
mlflow.pyfunc.load_model, served with `mlflow models serve`, each predicting what `cvstudy predict` does."""

import csv
import json
import os
import sys
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from cvstudy.orchestrator.sweep.manager import SweepSettings, sweep
from cvstudy.orchestrator.sweep.study import load_study_spec
from cvstudy.trainers.data import load_dataset
from tests.conftest import clean_env, run_cli, start_server, wait_for_http
from tests.orchestrator.test_sweep import study_file

pytestmark = pytest.mark.slow  # starts processes, servers or sweeps (make test-fast skips it)

MLFLOW = str(Path(sys.executable).parent / "mlflow")
PATH = f"{Path(sys.executable).parent}:{os.environ['PATH']}"  # the serving command starts the venv's uvicorn


def test_the_best_model_is_registered_loads_as_pyfunc_and_serves_the_same_predictions(tmp_path, tiny_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = load_study_spec(
        study_file(tmp_path, tiny_data, "  lr: [3.0e-3, 1.0e-9]", sampler="grid", pruner="none", epochs=2)
    )
    outcome = sweep(spec, SweepSettings(storage_url=f"sqlite:///{tmp_path / 'optuna.db'}", trials=2))
    client = MlflowClient(uri)
    version = client.get_model_version_by_alias("tiny", "best")
    best = outcome.best
    assert str(version.version) == "1" and version.run_id == best.user_attrs["mlflow_run_id"]
    assert version.tags["cvstudy.trial"] == str(best.number) and "test_balanced_accuracy" in version.tags
    assert float(version.tags["val_balanced_accuracy"]) == round(best.value, 6)
    # resuming with the same best adds no version
    sweep(spec, SweepSettings(storage_url=f"sqlite:///{tmp_path / 'optuna.db'}", trials=2))
    assert [str(v.version) for v in client.search_model_versions("name = 'tiny'")] == ["1"]

    # cvstudy predict on the registered model
    out = run_cli(["predict", "--model", "models:/tiny/1", "--out", tmp_path / "p.csv"], tmp_path)
    assert out.returncode == 0 and "matches the run's logged test metrics exactly" in out.stdout, (
        out.stdout + out.stderr
    )
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    predicted = np.array([int(r["Predicted Label"]) for r in rows])
    probabilities = np.array([[float(r[f"prob_{c}"]) for c in range(3)] for r in rows])
    alias = run_cli(["predict", "--model", "models:/tiny@best", "--out", tmp_path / "q.csv"], tmp_path)
    assert alias.returncode == 0 and (tmp_path / "q.csv").read_text() == (tmp_path / "p.csv").read_text()
    missing = run_cli(["predict", "--model", "models:/tiny/7"], tmp_path)
    assert missing.returncode == 2 and "not in the model registry" in missing.stderr
    assert "--study STUDY --best" in missing.stderr  # what does work, named

    # mlflow.pyfunc.load_model: the same predictions, from uint8 images as stored
    test_x = load_dataset(str(tiny_data), 0.25, 0).test_x
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pyfunc.load_model("models:/tiny@best")
    (spec_in,) = model.metadata.get_input_schema().inputs
    assert spec_in.type == np.dtype(np.uint8) and spec_in.shape == (-1, 16, 16, 3)
    probs = model.predict(test_x)
    assert probs.shape == (len(test_x), 3) and (probs.argmax(1) == predicted).all()
    assert np.allclose(probs, probabilities, atol=1e-6)

    # mlflow models serve on loopback answers POST /invocations with the same predictions

    server, port = start_server(
        [
            MLFLOW,
            "models",
            "serve",
            "-m",
            "models:/tiny@best",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            "0",
        ],
        cwd=tmp_path,
        env=clean_env(MLFLOW_TRACKING_URI=uri, PATH=PATH),
        what="mlflow models serve",
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", server, what="mlflow models serve")
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            method="POST",
            data=json.dumps({"inputs": test_x[:4].tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        served = np.array(json.loads(urllib.request.urlopen(request, timeout=60).read())["predictions"])
        assert served.shape == (4, 3) and (served.argmax(1) == predicted[:4]).all()
        assert np.allclose(served, probabilities[:4], atol=1e-6)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_sweep_stopped_by_ctrl_c_has_registered_its_best_complete_trial(tmp_path, tiny_data):
    """Ctrl-C is the README's safe way to stop: the registry then holds the best complete trial (Optuna's
    own ``best_trial``, the oracle), and `predict --model models:/tiny@best` answers."""
    import signal
    import subprocess

    import optuna
    from optuna.trial import TrialState

    from tests.conftest import wait_for

    path = study_file(tmp_path, tiny_data, pruner="none", epochs=20)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "cvstudy"), "sweep", "--study-file", str(path), "--trials", "40"],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def two_complete() -> bool:
        study = optuna.load_study(study_name="tiny", storage=storage)
        return len(study.get_trials(states=(TrialState.COMPLETE,))) >= 2

    wait_for(two_complete, timeout=300, every=0.5)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, out
    study = optuna.load_study(study_name="tiny", storage=storage)
    version = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_model_version_by_alias("tiny", "best")
    registered = study.trials[int(version.tags["cvstudy.trial"])]
    assert registered.state == TrialState.COMPLETE and registered.value == study.best_value, out
    assert "best model: models:/tiny@best" in out
    predicted = run_cli(["predict", "--model", "models:/tiny@best", "--out", tmp_path / "p.csv"], tmp_path)
    assert predicted.returncode == 0 and "matches the run's logged test metrics exactly" in predicted.stdout, (
        predicted.stdout + predicted.stderr
    )
