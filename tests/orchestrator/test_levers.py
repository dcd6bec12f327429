"""A run with both recipe levers on (a weight average and test-time flips) predicts what it recorded:
`cvstudy predict`, the MLflow pyfunc model and the exported ONNX model each reproduce the run's logged
test accuracy (read with MLflow's client) from the same images, and the flips are really in them."""

from __future__ import annotations

import csv

import mlflow
import numpy as np
import onnxruntime
import pytest
import torch
from mlflow.tracking import MlflowClient

import cvstudy
from cvstudy.orchestrator.tracking.models import checkpoint_path
from cvstudy.orchestrator.tracking.schema import logged_name
from cvstudy.trainers.augment import NO_AUGMENTATION, BatchTransform
from cvstudy.trainers.data import load_dataset
from cvstudy.trainers.loop import load_checkpoint, predict_logits
from cvstudy.trainers.models import normalisation
from tests.conftest import run_cli

pytestmark = pytest.mark.slow  # trains a run and starts the command line


def test_predict_pyfunc_and_export_reproduce_the_logged_test_accuracy_with_both_levers(
    tmp_path, tiny_data, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    flat = {"model": "test_resnet", "epochs": 3, "batch_size": 8, "lr": 1e-2, "device": "cpu", "seed": 1}
    run = cvstudy.train(data=str(tiny_data), ema=0.5, tta="hflip", tracking_uri=uri, quiet=True, **flat)
    client = MlflowClient(uri)
    recorded = client.get_run(run.run_id)
    assert recorded.data.params["ema"] == "0.5" and recorded.data.params["tta"] == "hflip"
    logged_accuracy = recorded.data.metrics[logged_name("test_accuracy")]
    test = load_dataset(str(tiny_data))
    test_x, test_y = test.test_x, test.test_y

    predicted = run_cli(
        ["predict", "--run-id", run.run_id, "--out", tmp_path / "p.csv", "--tracking-uri", uri], tmp_path
    )
    assert predicted.returncode == 0, predicted.stderr
    with open(tmp_path / "p.csv") as fh:
        rows = list(csv.DictReader(fh))
    by_predict = np.array([[float(v) for k, v in r.items() if k.startswith("prob_")] for r in rows])
    assert (by_predict.argmax(1) == test_y).mean() == pytest.approx(logged_accuracy, abs=1e-12)

    # the premise: the mirrored view moves the probabilities, so a path that dropped it would differ
    network, _, meta = load_checkpoint(checkpoint_path(client, recorded))
    transform = BatchTransform(NO_AUGMENTATION, meta["img_size"], *normalisation(network))
    one_view = predict_logits(network, torch.from_numpy(test_x), transform, False).softmax(1).numpy()
    assert np.abs(one_view - by_predict).max() > 1e-3

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    by_pyfunc = mlflow.pyfunc.load_model(f"models:/{recorded.data.tags['cvstudy.model_id']}").predict(test_x)
    np.testing.assert_allclose(by_pyfunc, by_predict, atol=1e-5)  # the CSV has 6 decimals

    from cvstudy.orchestrator.commands.export import export

    out, _ = export(run.run_id, out=str(tmp_path / "m.onnx"), tracking_uri=uri)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (by_onnx,) = session.run(None, {"images": test_x})
    np.testing.assert_allclose(by_onnx, by_predict, atol=1e-5)
