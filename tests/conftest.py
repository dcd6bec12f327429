"""Shared fixtures: tiny synthetic datasets on disk and the real `cvstudy` entry point as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

CVSTUDY = str(Path(sys.executable).parent / "cvstudy")
# Tests never reach the internet: nothing in this process may try the real Hugging Face Hub (the hub
# tests start a stand-in on loopback and point their subprocesses at it).
os.environ["HF_HUB_OFFLINE"] = "1"


def make_arrays(n_per_class=(24, 12, 6), n_test=6, size=16, seed=0):
    """A learnable long-tailed set: each class is a different colour with noise and a bright square."""
    rng = np.random.default_rng(seed)
    colours = np.array([[220, 40, 40], [40, 220, 40], [40, 40, 220], [200, 200, 40]])[: len(n_per_class)]

    def split(counts):
        xs, ys = [], []
        for c, n in enumerate(counts):
            x = rng.normal(colours[c], 30, size=(n, size, size, 3))
            xs.append(np.clip(x, 0, 255).astype(np.uint8))
            ys.append(np.full(n, c, dtype=np.int64))
        return np.concatenate(xs), np.concatenate(ys)

    train_x, train_y = split(n_per_class)
    test_x, test_y = split([n_test] * len(n_per_class))
    return {"train_data.npy": train_x, "train_target.npy": train_y, "test_data.npy": test_x, "test_target.npy": test_y}


def write_dataset(directory: Path, arrays: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        np.save(directory / name, array)
    return directory


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    return write_dataset(tmp_path / "data", make_arrays())


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update({"HF_HUB_OFFLINE": "1", "COLUMNS": "200", **extra})
    return env


def wait_for(predicate, timeout: float = 180, every: float = 0.5):
    """Poll ``predicate`` until it is true; a store being created may raise meanwhile."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if predicate():
                return True
        except Exception:  # noqa: BLE001 -- the store may be mid-creation
            pass
        time.sleep(every)
    raise AssertionError("timed out waiting")


def run_cli(args: list[str], cwd: Path, timeout: float = 600, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CVSTUDY, *map(str, args)], cwd=cwd, env=clean_env(**env), capture_output=True, text=True, timeout=timeout
    )


def mlflow_runs(cwd: Path, experiment: str | None = None):
    """Every run in the MLflow store at cwd/mlflow.db (all experiments unless one is named)."""
    from mlflow.tracking import MlflowClient

    if not (cwd / "mlflow.db").exists():
        return []
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}")
    exps = [e.experiment_id for e in client.search_experiments() if experiment in (None, e.name)]
    return client.search_runs(exps, max_results=1000) if exps else []


def wait_for_http(url: str, server: subprocess.Popen, what: str, timeout: float = 180) -> None:
    """Poll ``url`` until it answers, failing if ``server`` exits first or ``timeout`` seconds pass."""
    import urllib.request

    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            assert time.time() < deadline and server.poll() is None, f"{what} did not start"
            time.sleep(0.5)
