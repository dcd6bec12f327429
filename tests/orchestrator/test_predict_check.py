"""`cvstudy predict` checks itself: on the run's own test set and device its predictions must reproduce the
run's logged test metrics exactly; when they do not (a checkpoint damaged on disk), it exits 1, names the
run, and leaves its predictions marked as failed, not as a result."""

from __future__ import annotations

import json
import struct

import pytest

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
    for weights in copies:
        _zero_tensors(weights)
    # as a user runs it, a process: its standard error is what they read (one line)
    bad = run_cli(["predict", "--run-id", run.info.run_id, "--out", tmp_path / "q.csv"], tmp_path, process=True)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    (line,) = [x for x in bad.stderr.splitlines() if x.strip()]
    assert run.info.run_id in line and "do not reproduce its logged test metrics" in line and "q.FAILED.csv" in line
    assert not (tmp_path / "q.csv").exists() and (tmp_path / "q.FAILED.csv").exists()
    assert "Traceback" not in bad.stderr and "internal error" not in line
