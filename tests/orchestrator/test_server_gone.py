"""A tracking server that dies under a running trial (a real MLflow server on loopback, killed after the
trial's second epoch): the sweep waits a bounded time (cvstudy's default: about 30 s when connections are
refused; here the user's own setting of one retry), re-queues the trial, ends in one line (exit 3) and
leaves the study resumable; once a server answers again on the same store, a rerun continues the same
run from its saved state. While the server is silent, SIGTERM acts at once: the wait is not a database
call that must finish."""

from __future__ import annotations

import signal
import subprocess

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import CVSTUDY, clean_env, kill_tree, run_cli, start_mlflow_server, wait_for, wait_for_http
from tests.orchestrator.test_sweep import study_file

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def _server(tmp_path):
    server, port = start_mlflow_server(tmp_path / "server.db", tmp_path / "server-artifacts")
    wait_for_http(f"http://127.0.0.1:{port}/health", server, what="mlflow server")
    return server, f"http://127.0.0.1:{port}"


def _trial_epochs(url: str) -> int:
    client = MlflowClient(url)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id], "tags.`cvstudy.role` = 'trial'") if experiment else []
    return len(client.get_metric_history(runs[0].info.run_id, "train/loss")) if runs else 0


@pytest.mark.long
def test_a_server_that_dies_mid_trial_ends_the_sweep_in_one_line_and_the_trial_resumes(tmp_path, tiny_data):
    path = study_file(tmp_path, tiny_data, "  lr: [3.0e-3]", "none", "grid", 6)
    path.write_text(path.read_text() + "state_min_seconds: 0\n")  # a state every epoch
    server, url = _server(tmp_path)
    args = ["sweep", "--study-file", str(path), "--trials", "1", "--tracking-uri", url]
    # one retry instead of cvstudy's four (about 2 s instead of 30 of waiting; a user's setting wins)
    env = clean_env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="1")
    sweep = subprocess.Popen(
        [CVSTUDY, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: _trial_epochs(url) >= 2, timeout=300)
    finally:
        kill_tree(server)  # with the worker processes that answer requests, as a lost node would
    out, err = sweep.communicate(timeout=300)  # the bounded wait: about 30 s, far below this
    lines = [line for line in err.splitlines() if line.strip()]
    assert sweep.returncode == 3 and len(lines) == 1, out + err
    assert "the MLflow tracking server stopped answering under trial 0, which is re-queued" in lines[0]
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL", "WAITING"]

    server, url = _server(tmp_path)  # the same store, served again (on another port)
    try:
        again = run_cli([*args[:-1], url], tmp_path)
        assert again.returncode == 0, again.stdout + again.stderr
        study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
        assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
        client = MlflowClient(url)
        runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
        trial_runs = [r for r in runs if r.data.tags.get("cvstudy.role") == "trial"]
        assert len(trial_runs) == 1 and trial_runs[0].info.status == "FINISHED"  # the same run, continued
        assert int(trial_runs[0].data.tags["cvstudy.resumes"]) == 1
        assert sorted(m.step for m in client.get_metric_history(trial_runs[0].info.run_id, "train/loss")) == list(
            range(6)
        )
        assert not [r for r in runs if r.info.status == "RUNNING"]
    finally:
        kill_tree(server)  # with the worker processes that answer requests, as a lost node would


@pytest.mark.long
def test_sigterm_acts_at_once_while_the_server_is_silent(tmp_path, tiny_data):
    path = study_file(tmp_path, tiny_data, "  lr: [3.0e-3]", "none", "grid", 30)
    server, url = _server(tmp_path)
    # MLflow's retries stretched to about 17 minutes: only an interrupt raised at once ends this in time
    env = clean_env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="9")
    sweep = subprocess.Popen(
        [CVSTUDY, "sweep", "--study-file", str(path), "--trials", "1", "--tracking-uri", url],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: _trial_epochs(url) >= 2, timeout=300)
    finally:
        kill_tree(server)  # with the worker processes that answer requests, as a lost node would
    sweep.send_signal(signal.SIGTERM)
    out, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 130, out + err
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL", "WAITING"]  # re-queued, resumable
