"""`cvstudy predict` checks itself: on the run's own test set and device its predictions must reproduce the
run's logged test metrics exactly; when they do not, it exits 1, names the run, and leaves its predictions
marked as failed, not as a result. Before that, a model file whose bytes are not the ones logged (the
digest recorded in the run) is refused: exit 3, one line naming the run and the file, no predictions."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import make_arrays, mlflow_runs, run_cli, write_dataset

pytestmark = pytest.mark.slow  # trains a run through the command line


def _zero_tensors(path) -> None:
    """Zero every tensor byte of a safetensors file, keeping its header (so it still loads)."""
    raw = bytearray(path.read_bytes())
    header = struct.unpack("<Q", raw[:8])[0]
    assert json.loads(raw[8 : 8 + header])  # a real safetensors header
    raw[8 + header :] = bytes(len(raw) - 8 - header)
    path.write_bytes(bytes(raw))


def test_predictions_that_do_not_reproduce_the_logged_metrics_fail_the_command(tmp_path, tiny_data):
    args = ["train", "--model", "test_resnet", "--data", tiny_data, "--epochs", "3", "--device", "cpu"]
    assert run_cli(args, tmp_path).returncode == 0
    (run,) = mlflow_runs(tmp_path, "cvstudy-train")
    good = run_cli(["predict", "--run-id", run.info.run_id, "--out", tmp_path / "p.csv"], tmp_path)
    assert good.returncode == 0 and "matches the run's logged test metrics exactly" in good.stdout, good.stderr

    other = write_dataset(tmp_path / "other", make_arrays(seed=7))  # the user's own images: not compared
    mine = run_cli(["predict", "--run-id", run.info.run_id, "--data", other, "--out", tmp_path / "o.csv"], tmp_path)
    assert mine.returncode == 0 and "not compared" in mine.stdout and (tmp_path / "o.csv").exists()

    copies = list((tmp_path / "mlruns").rglob("model.safetensors"))  # the logged model's, and any other copy
    assert copies
    intact = {weights: weights.read_bytes() for weights in copies}
    recorded = run.data.tags["cvstudy.model_sha256"]
    assert recorded in {hashlib.sha256(raw).hexdigest() for raw in intact.values()}  # the digest of what was logged

    # Damaged on disk (zeroed, then cut short): refused before any prediction, naming the run and the file.
    for damage in (_zero_tensors, lambda path: path.write_bytes(path.read_bytes()[:-1000])):
        for weights in copies:
            damage(weights)
        refused = run_cli(["predict", "--run-id", run.info.run_id, "--out", tmp_path / "d.csv"], tmp_path)
        lines = [x for x in refused.stderr.splitlines() if x.strip()]
        assert refused.returncode == 3 and len(lines) == 1, refused.stdout + refused.stderr
        assert run.info.run_id in lines[0] and "model.safetensors is damaged" in lines[0] and recorded[:12] in lines[0]
        assert not list(tmp_path.glob("d*.csv"))
        for weights, raw in intact.items():
            weights.write_bytes(raw)

    # A model file intact to its digest whose predictions still differ (another library's kernels, a
    # bug): the second line of defence, predict's own check. Emulated by zeroing the weights and
    # recording their digest, as if they had been logged that way.
    for weights in copies:
        _zero_tensors(weights)
    MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").set_tag(
        run.info.run_id, "cvstudy.model_sha256", hashlib.sha256(copies[0].read_bytes()).hexdigest()
    )
    # as a user runs it, a process: its standard error is what they read (one line)
    bad = run_cli(["predict", "--run-id", run.info.run_id, "--out", tmp_path / "q.csv"], tmp_path, process=True)
    lines = [x for x in bad.stderr.splitlines() if x.strip()]
    assert bad.returncode == 1 and len(lines) == 1, bad.stdout + bad.stderr
    (line,) = lines
    assert run.info.run_id in line and "do not reproduce its logged test metrics" in line and "q.FAILED.csv" in line
    assert not (tmp_path / "q.csv").exists() and (tmp_path / "q.FAILED.csv").exists()
    assert "Traceback" not in bad.stderr and "internal error" not in line
