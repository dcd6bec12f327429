"""The GPU configuration through the real entry points on the CPU: a run trained with bf16 autocast,
channels-last and torch.compile records what ran, and its checkpoint predicts the same through
`cvstudy predict` and the MLflow pyfunc model; a sweep trial compiles too."""

import csv

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from cvstudy.orchestrator.tracking.schema import run_metrics
from cvstudy.trainers.data import load_dataset
from tests.conftest import mlflow_runs, run_cli
from tests.orchestrator.test_sweep import study_file

pytestmark = pytest.mark.slow  # starts processes, servers or sweeps (make test-fast skips it)

GPU_FLAGS = ["--amp", "--channels-last", "--compile"]
RAN = ("cvstudy.amp_dtype", "cvstudy.memory_format", "cvstudy.compiled")


def test_a_compiled_bf16_checkpoint_predicts_the_same_through_predict_and_pyfunc(tmp_path, tiny_data, monkeypatch):
    proc = run_cli(
        [
            "train",
            "--model",
            "test_resnet",
            "--data",
            tiny_data,
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--device",
            "cpu",
            *GPU_FLAGS,
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run,) = mlflow_runs(tmp_path, "cvstudy-train")
    assert tuple(run.data.tags[k] for k in RAN) == ("bfloat16", "channels_last", "true")
    assert run.data.params["amp"] == "True" and run.data.params["compile"] == "True"

    out = run_cli(["predict", "--run-id", run.info.run_id, "--out", tmp_path / "p.csv"], tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    probabilities = np.array([[float(r[f"prob_{c}"]) for c in range(3)] for r in rows])

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(f"models:/{run.data.tags['cvstudy.model_id']}")
    test_x = load_dataset(str(tiny_data), 0.1, 0).test_x
    probs = model.predict(test_x)
    assert probs.shape == probabilities.shape and np.allclose(probs, probabilities, atol=1e-6)
    # bf16 on both sides: as the run evaluated, so the predictions match the logged test metrics' argmax
    logged = run_metrics(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(run.info.run_id))
    labels = np.array([int(r["True Label"]) for r in rows])
    assert (probs.argmax(1) == labels).mean() == logged["test_accuracy"]


@pytest.mark.long
def test_a_sweep_trial_compiles_once_and_records_it(tmp_path, tiny_data):
    path = study_file(tmp_path, tiny_data, "  lr: {low: 1.0e-3, high: 1.0e-2, log: true}", pruner="none", epochs=2)
    proc = run_cli(
        ["sweep", "--study-file", path, "--trials", "1", "--set", "compile=true", "--devices", "cpu"], cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (trial,) = [r for r in mlflow_runs(tmp_path, "tiny") if "cvstudy.trial_number" in r.data.tags]
    assert trial.info.status == "FINISHED" and trial.data.tags["cvstudy.compiled"] == "true"
    assert trial.data.tags["cvstudy.amp_dtype"] == "float32"  # the CPU's default: only compile was asked for
