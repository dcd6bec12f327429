"""Shared fixtures: tiny synthetic datasets on disk and the real `cvstudy` entry point as a subprocess."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

CVSTUDY = str(Path(sys.executable).parent / "cvstudy")
# Tests never reach the internet: nothing in this process may try the real Hugging Face Hub (the hub
# tests start a stand-in on loopback and point their subprocesses at it).
os.environ["HF_HUB_OFFLINE"] = "1"
# One compute thread per test process, its subprocesses included (they inherit the environment): the suite
# runs several test processes, and the sweeps and servers they start, on few cores, where OpenMP threads
# that outnumber the cores spin at every barrier. Measured on 2 cores, tests/trainers' loop, loss and model
# tests under `-n 3`: 182 s of CPU and 108 s of wall time with torch's default threads, 73 s and 41 s with one.
# (cvstudy's own CPU workers still set their share, torch.set_num_threads, as they do for a user.)
os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"


def pytest_collection_modifyitems(items):
    """Longest first: the tests marked long (minutes each on 2 cores), then the rest of those that start
    processes, servers or sweeps (marked slow), then the others. `make test` hands tests out in this
    order as workers free up (pytest-xdist's load scheduling, two queued per worker), so the run does not
    end on one core busy with a long test collected last while the others idle."""
    items.sort(key=lambda item: 0 if item.get_closest_marker("long") else 1 if item.get_closest_marker("slow") else 2)


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


def postgres_url() -> str:
    """The test PostgreSQL server's URL (``CVSTUDY_TEST_POSTGRES_URL``, set by .ci/run): a test needing it
    fails in CI without it and is skipped elsewhere."""
    url = os.environ.get("CVSTUDY_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("CVSTUDY_TEST_POSTGRES_URL is not set in CI (.ci/run starts PostgreSQL and sets it)")
        pytest.skip("PostgreSQL not available: set CVSTUDY_TEST_POSTGRES_URL (as .ci/run does)")
    return url


def clean_env(**extra) -> dict:
    # a user's tracking settings and cvstudy's debug switch stay out: a test asks for them by name
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_") and k != "CVSTUDY_DEBUG"}
    env.update({"HF_HUB_OFFLINE": "1", "COLUMNS": "200", **extra})
    return env


def wait_for(predicate, timeout: float = 180, every: float = 0.5, explain=None):
    """Poll ``predicate`` until it is true. It may raise meanwhile (a store being created, a study not
    there yet); if it is still failing at the deadline, its last exception surfaces, not a bare timeout,
    followed by what ``explain()`` returns (a log to read)."""
    deadline = time.time() + timeout
    last: Exception | None = None
    while time.time() < deadline:
        try:
            if predicate():
                return True
            last = None
        except Exception as err:  # noqa: BLE001 -- retried until the deadline, then raised
            last = err
        time.sleep(every)
    said = f"\n{explain()}" if explain else ""
    if last is not None:
        raise AssertionError(f"timed out after {timeout} s; the condition last raised {last!r}{said}") from last
    raise AssertionError(f"timed out after {timeout} s waiting for the condition{said}")


def _descendants(pid: int) -> list[int]:
    children = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            ppid = next(line.split()[1] for line in status.read_text().splitlines() if line.startswith("PPid:"))
        except (OSError, StopIteration):
            continue
        if ppid == str(pid):
            children.append(int(status.parent.name))
    return children + [d for c in children for d in _descendants(c)]


@pytest.fixture(autouse=True)
def _own_subprocesses(monkeypatch):
    """Every subprocess a test starts is killed, with its children (sweep workers, server processes),
    when the test ends: passed, failed or timed out (pytest-timeout's signal method runs teardown)."""
    started: list[subprocess.Popen] = []
    real_init = subprocess.Popen.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        started.append(self)

    monkeypatch.setattr(subprocess.Popen, "__init__", init)
    yield
    for proc in started:
        if proc.poll() is None:
            kill_tree(proc)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process and its descendants, children after their parents' children, and reap it."""
    for pid in [*reversed(_descendants(proc.pid)), proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def run_cli(
    args: list[str], cwd: Path, timeout: float = 600, process: bool = False, **env
) -> subprocess.CompletedProcess:
    """Run ``cvstudy ARGS`` in ``cwd`` with a clean environment (plus ``env``) and return what a process
    would: exit code, standard output and error.

    By default the real command-line app runs in this process (Typer's CliRunner, the same entry point and
    error handling): each `cvstudy` process spends about 10 s importing torch, timm, MLflow and Optuna,
    which this process has already done. ``process=True`` runs the installed ``cvstudy`` in a subprocess
    instead, for what only a process shows (its environment read at import, as the Hugging Face variables
    are, or its start-up); tests of signals and kills start their own processes. Workers a sweep starts
    are real processes either way."""
    if process or any(k.startswith("HF_") for k in env):  # huggingface_hub reads these once, at import
        return subprocess.run(
            [CVSTUDY, *map(str, args)], cwd=cwd, env=clean_env(**env), capture_output=True, text=True, timeout=timeout
        )
    return _run_cli_here([str(a) for a in args], Path(cwd), clean_env(**env))


def _run_cli_here(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    import logging
    import traceback

    from typer.testing import CliRunner

    from cvstudy.orchestrator.cli import app

    app_module = sys.modules["cvstudy.orchestrator.cli.app"]  # the package's `app` is the Typer object

    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    root = logging.getLogger()
    saved_logging = (list(root.handlers), root.level)
    # A process makes its consoles after reading COLUMNS; here they exist already: give them its width.
    consoles = [app_module.console, app_module.err_console]
    widths = [c.width for c in consoles]
    for c in consoles:
        c.width = int(env.get("COLUMNS", 80))
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, args)
    finally:
        for c, w in zip(consoles, widths):
            c.width = w
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        for s, h in handlers.items():  # the command line installs its own
            signal.signal(s, h)
        root.handlers[:], root.level = saved_logging  # it points logging at the runner's (closed) stream
    stderr = result.stderr
    code = result.exit_code
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        # what an uncaught exception prints in a process: its traceback, exit 1
        stderr += "".join(traceback.format_exception(result.exception))
        code = 1
    return subprocess.CompletedProcess(["cvstudy", *args], code, result.stdout, stderr)


def mlflow_runs(cwd: Path, experiment: str | None = None):
    """Every run in the MLflow store at cwd/mlflow.db (all experiments unless one is named)."""
    from mlflow.tracking import MlflowClient

    if not (cwd / "mlflow.db").exists():
        return []
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}")
    exps = [e.experiment_id for e in client.search_experiments() if experiment in (None, e.name)]
    return client.search_runs(exps, max_results=1000) if exps else []


def start_server(args: list, what: str, timeout: float = 180, **popen) -> tuple[subprocess.Popen, int]:
    """Start a server told to bind port 0 (no race for a free port) and return it with the port it got,
    read from its "running on http://HOST:PORT" line (uvicorn's, which MLflow's servers use)."""
    server = subprocess.Popen(
        list(map(str, args)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
    )
    found: list[int] = []

    def read() -> None:  # keeps draining the output, so the server never blocks on a full pipe
        for line in server.stdout:
            match = re.search(r"running on https?://[^\s:]+:(\d+)", line, flags=re.I)
            if match and not found:
                found.append(int(match.group(1)))

    threading.Thread(target=read, daemon=True).start()
    deadline = time.time() + timeout
    while not found:
        assert time.time() < deadline and server.poll() is None, f"{what} did not start"
        time.sleep(0.2)
    return server, found[0]


def start_mlflow_server(database: Path, artifacts: Path | None = None, **popen) -> tuple[subprocess.Popen, int]:
    """A real MLflow tracking server on loopback over ``database`` (and an artifact store), on a port it
    chose itself; returns it and the port."""
    args = [
        Path(sys.executable).parent / "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--backend-store-uri",
        f"sqlite:///{database}",
        "--workers",
        "1",
    ]
    if artifacts is not None:
        args += ["--artifacts-destination", artifacts]
    return start_server(args, what="mlflow server", **popen)


def preempted_state(fit, config, data, directory: Path, after_epoch: int):
    """Run ``fit`` until epoch ``after_epoch`` has been recorded, then stop it as SIGTERM would (the
    callback raises), its states saved to ``directory``; returns the state it left."""
    from cvstudy.trainers.state import TrainState

    class Preempted(Exception):
        pass

    def preempt(row):
        if row["epoch"] == after_epoch:
            raise Preempted
        return False

    with pytest.raises(Preempted):
        fit(config, data, on_epoch=preempt, on_state=lambda s: s.save(directory))
    return TrainState.load(directory)


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
