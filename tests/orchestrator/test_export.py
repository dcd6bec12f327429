"""`cvstudy export`: a run's checkpoint as ONNX, preprocessing inside. The oracles: onnxruntime run here on
the test images against `cvstudy predict`'s own CSV (no resize: the same pipeline), and against the
evaluation pipeline written out by hand with torch (a run that resizes); the artifact read back with
MLflow's client."""

from __future__ import annotations

import csv

import numpy as np
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient

import cvstudy
from cvstudy.orchestrator.tracking.models import checkpoint_path
from cvstudy.trainers.data import load_dataset
from cvstudy.trainers.loop import load_checkpoint
from cvstudy.trainers.models import normalisation
from tests.conftest import run_cli

pytestmark = pytest.mark.slow  # trains runs and starts the command line


def _onnx_probabilities(path, images: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(None, {"images": images})
    return probabilities


def test_an_exported_model_predicts_what_cvstudy_predict_does_and_is_logged_to_its_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["train", "--model", "test_resnet", "--epochs", "2", "--device", "cpu"]  # no ./data: the demo set
    assert run_cli([*args, "--tracking-uri", uri], tmp_path).returncode == 0
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("cvstudy-train").experiment_id])
    run_id = run.info.run_id

    refused = run_cli(["export", run_id, "--format", "tflite", "--tracking-uri", uri], tmp_path)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1 and "tflite" in refused.stderr

    done = run_cli(["export", run_id, "--out", tmp_path / "m.onnx", "--tracking-uri", uri], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    predicted = run_cli(["predict", "--run-id", run_id, "--out", tmp_path / "p.csv", "--tracking-uri", uri], tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    with open(tmp_path / "p.csv") as fh:
        rows = list(csv.DictReader(fh))
    expected = np.array([[float(v) for k, v in r.items() if k.startswith("prob_")] for r in rows])

    test_x = load_dataset(None).test_x  # the demo set's images, at the resolution the run trained at
    got = _onnx_probabilities(tmp_path / "m.onnx", test_x)
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)  # the CSV has 6 decimals
    assert got.argmax(1).tolist() == [int(r["Predicted Label"]) for r in rows]
    assert _onnx_probabilities(tmp_path / "m.onnx", test_x[:3]).shape[0] == 3  # any batch size

    logged = [a.path for a in client.list_artifacts(run_id, "onnx")]
    assert logged == ["onnx/m.onnx"]
    copy = client.download_artifacts(run_id, "onnx/m.onnx", str(tmp_path / "back"))
    assert open(copy, "rb").read() == (tmp_path / "m.onnx").read_bytes()


def test_a_run_that_resizes_exports_the_resize_and_matches_its_float_pipeline(tmp_path, tiny_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = cvstudy.train(model="test_resnet", data=str(tiny_data), epochs=1, img_size=24, tracking_uri=uri, quiet=True)
    from cvstudy.orchestrator.commands.export import PROBABILITY_TOLERANCE, export

    out, check = export(run.run_id, out=str(tmp_path / "r.onnx"), tracking_uri=uri)
    assert check.images == len(load_dataset(str(tiny_data)).test_x)

    # the evaluation pipeline by hand: normalise in float, resize bilinearly to 24 px, the mean of the
    # logits of each image and its mirror (the default tta=hflip), softmax
    client = MlflowClient(uri)
    model, _, meta = load_checkpoint(checkpoint_path(client, client.get_run(run.run_id)))
    assert meta["img_size"] == 24
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in normalisation(model))
    test_x = load_dataset(str(tiny_data)).test_x
    x = (torch.from_numpy(test_x).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        resized = F.interpolate(x, size=(24, 24), mode="bilinear", align_corners=False)
        expected = ((model.eval()(resized) + model(resized.flip(3))) / 2).softmax(1)
    got = _onnx_probabilities(out, test_x)
    np.testing.assert_allclose(got, expected.numpy(), atol=PROBABILITY_TOLERANCE)
    assert (got.argmax(1) == expected.numpy().argmax(1)).all()
