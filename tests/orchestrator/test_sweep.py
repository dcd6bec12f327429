"""The sweep: pruning, failures, kills and resume, concurrent workers on SQLite and PostgreSQL."""

import re
import signal
import subprocess
import sys
import uuid

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from cvstudy.orchestrator.sweep.manager import SweepSettings, sweep
from cvstudy.orchestrator.sweep.study import load_study_spec
from cvstudy.orchestrator.sweep.trials import count_trials
from cvstudy.orchestrator.tracking.schema import run_metrics
from tests.conftest import CVSTUDY, clean_env, mlflow_runs, postgres_url, run_cli, start_mlflow_server, wait_for

pytestmark = pytest.mark.slow  # starts processes, servers or sweeps (make test-fast skips it)

STUDY = """
name: tiny
objective: val_balanced_accuracy
trials: 4
pruner: {pruner}
min_epochs: 1
sampler: {sampler}
fixed: {{model: test_resnet, epochs: {epochs}, batch_size: 8, data: {data}, val_fraction: 0.25}}
space:
{space}
"""


def study_file(
    tmp_path,
    data,
    space="  lr: {low: 1.0e-3, high: 1.0e-2, log: true}\n  aug: [none, basic]",
    pruner="hyperband",
    sampler="tpe",
    epochs=3,
):
    path = tmp_path / "tiny.yaml"
    path.write_text(STUDY.format(pruner=pruner, sampler=sampler, epochs=epochs, data=data, space=space))
    return path


# Three trials that learn, then three that never do (lr 1e-9): the median pruner judges from its sixth
# trial on (5 startup trials), so the last of these is stopped; Hyperband's rungs see the good ones first.
GOOD_THEN_BAD = [{"lr": lr, "seed": seed} for lr in (3.0e-3, 1.0e-9) for seed in (0, 1, 2)]


def enqueue_first(storage_url: str, trials: list[dict], name: str = "tiny", directions=("maximize",)) -> None:
    """Create the study and enqueue these trials first, in this order (Optuna's public enqueue_trial): a
    pruning test then rests on the order it states, not on the order a sampler happens to draw (the sweep
    loads the study and runs what is enqueued before sampling)."""
    study = optuna.create_study(study_name=name, storage=storage_url, directions=list(directions))
    for params in trials:
        study.enqueue_trial(params)


def _load(tmp_path, name="tiny", storage=None):
    return optuna.load_study(study_name=name, storage=storage or f"sqlite:///{tmp_path / 'optuna.db'}")


def test_pruning_stops_bad_trials_and_marks_their_runs(tmp_path, tiny_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # lr 1e-9 never learns: the median pruner must stop those trials after min_epochs.
    spec = load_study_spec(
        study_file(
            tmp_path, tiny_data, "  lr: [3.0e-3, 1.0e-9]\n  seed: [0, 1, 2]", pruner="median", sampler="grid", epochs=6
        )
    )
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    enqueue_first(storage, GOOD_THEN_BAD)
    outcome = sweep(spec, SweepSettings(storage_url=storage, trials=6))
    assert outcome.counts.done == 6
    runs = {
        r.data.tags["cvstudy.trial_number"]: r
        for r in mlflow_runs(tmp_path, "tiny")
        if "cvstudy.trial_number" in r.data.tags
    }
    assert len(runs) == 6
    pruned = [r for r in runs.values() if r.data.tags.get("cvstudy.trial_state") == "PRUNED"]
    assert pruned and outcome.counts.pruned == len(pruned)
    for run in pruned:
        assert run.info.status == "KILLED" and run.data.params["lr"] == "1e-09"
        assert int(run.data.tags["cvstudy.pruned_at_epoch"]) < 6 and run.data.metrics["epochs_run"] < 6
    parent = [r for r in mlflow_runs(tmp_path, "tiny") if r.data.tags.get("cvstudy.role") == "study"]
    assert len(parent) == 1 and all(r.data.tags["mlflow.parentRunId"] == parent[0].info.run_id for r in runs.values())
    # MLflow's experiment page describes the study (the study file names none: Optuna's study, its file)
    experiment = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_experiment_by_name("tiny")
    assert experiment.tags["mlflow.note.content"] == "Optuna study tiny (study file tiny.yaml; cvstudy sweep)"
    # the parent run's description: a Markdown leaderboard of the complete trials, read against the trial
    # runs' own metrics in MLflow, best validation objective first (ties to the earlier trial)
    note = parent[0].data.tags["mlflow.note.content"]
    counts = outcome.counts
    assert note.startswith(
        f"Optuna study tiny\n\n**{counts.complete} complete** trials ({counts.pruned} pruned, 0 failed)"
    )
    table = [line.split(" | ") for line in note.splitlines() if line.startswith("| ") and line[2].isdigit()]
    complete = [r for r in runs.values() if r.data.tags.get("cvstudy.trial_state") == "COMPLETE"]
    complete.sort(
        key=lambda r: (-r.data.metrics["val/best_balanced_accuracy"], int(r.data.tags["cvstudy.trial_number"]))
    )
    assert [row[1] for row in table] == [r.data.tags["cvstudy.trial_number"] for r in complete]
    for row, r in zip(table, complete):
        m = run_metrics(r)
        assert row[2:6] == [
            f"{m[k]:.4f}"
            for k in ("best_val_balanced_accuracy", "test_balanced_accuracy", "test_accuracy", "test_macro_f1")
        ]
        assert (
            row[-1] == f"`{r.info.run_id[:8]}` |"
            and row[-2] == f"lr={r.data.params['lr']}, seed={r.data.params['seed']}"
        )


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path, tiny_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = load_study_spec(
        study_file(
            tmp_path,
            tiny_data,
            "  lr: [1.0e+30, 3.0e-3]\n  optimizer: [sgd]\n  momentum: [0.0]",
            sampler="grid",
            pruner="none",
            epochs=2,
        )
    )
    outcome = sweep(spec, SweepSettings(storage_url="memory", trials=2))
    assert (outcome.counts.complete, outcome.counts.failed) == (1, 1)
    runs = [r for r in mlflow_runs(tmp_path, "tiny") if "cvstudy.trial_number" in r.data.tags]
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert len(failed) == 1 and "NonFiniteLossError" in failed[0].data.tags["cvstudy.error"]
    assert [r.info.status for r in runs if r not in failed] == ["FINISHED"]


@pytest.mark.parametrize(("lrs", "code"), [("[1.0e+30, 2.0e+30]", 1), ("[1.0e+30, 3.0e-3]", 0)])
def test_a_sweep_whose_every_trial_failed_exits_1_in_one_line_naming_the_first_error(tmp_path, tiny_data, lrs, code):
    """Trials that fail are recorded and the sweep goes on; but a sweep none of whose trials trained is not
    a success for a script or a scheduler (on a GPU a first-CUDA-call failure ended 6 of 6 trials, exit 0)."""
    path = study_file(tmp_path, tiny_data, f"  lr: {lrs}\n  optimizer: [sgd]\n  momentum: [0.0]", "none", "grid", 2)
    proc = run_cli(["sweep", "--study-file", str(path), "--trials", "2"], cwd=tmp_path)
    assert proc.returncode == code, proc.stderr
    states = sorted(t.state.name for t in _load(tmp_path).trials)
    assert states == (["FAIL", "FAIL"] if code else ["COMPLETE", "FAIL"])
    if code:
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith("error: every trial this sweep ran failed (2); the first: NonFiniteLossError"), line
        assert line.endswith("(each run's error is in MLflow, tag cvstudy.error)") and "Traceback" not in proc.stderr
        # a rerun with the target reached runs nothing, and says so without failing
        assert run_cli(["sweep", "--study-file", str(path), "--trials", "2"], cwd=tmp_path).returncode == 0
    else:
        assert proc.stderr.strip() == ""


def test_a_sweep_that_trains_after_an_earlier_sweeps_failure_succeeds(tmp_path, tiny_data):
    """Only this sweep's trials decide: a failure left by the previous sweep does not fail the next one."""
    path = study_file(tmp_path, tiny_data, "  lr: [1.0e+30, 3.0e-3]\n  optimizer: [sgd]\n  momentum: [0.0]", "none")
    enqueue_first(f"sqlite:///{tmp_path / 'optuna.db'}", [{"lr": 1.0e30}, {"lr": 3.0e-3}])
    assert run_cli(["sweep", "--study-file", str(path), "--trials", "1"], cwd=tmp_path).returncode == 1
    proc = run_cli(["sweep", "--study-file", str(path), "--trials", "2"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [t.state.name for t in _load(tmp_path).trials] == ["FAIL", "COMPLETE"]


@pytest.mark.long
def test_sigkill_mid_trial_then_rerun_reaches_the_target(tmp_path, tiny_data):
    path = study_file(tmp_path, tiny_data, epochs=40, pruner="none")
    args = ["sweep", "--study-file", path, "--trials", "3", "--epochs", "3"]
    assert run_cli(args[:-2] + ["--trials", "1", "--epochs", "3"], cwd=tmp_path).returncode == 0
    first = _load(tmp_path).trials[0]
    # a long trial, killed in the middle
    proc = subprocess.Popen(
        [CVSTUDY, "sweep", "--study-file", str(path), "--trials", "3"],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: any(t.state == TrialState.RUNNING and t.intermediate_values for t in _load(tmp_path).trials))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = next(t for t in _load(tmp_path).trials if t.state == TrialState.RUNNING)
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    trials = _load(tmp_path).trials
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert count_trials(_load(tmp_path)).done == 3
    again = trials[killed.number]
    assert again.state == TrialState.FAIL
    retry = [t for t in trials if t.user_attrs.get("retry_of") == killed.number]
    assert len(retry) == 1 and retry[0].params == killed.params and retry[0].state == TrialState.COMPLETE
    assert trials[0].datetime_complete == first.datetime_complete and trials[0].value == first.value
    statuses = {r.info.run_id: r.info.status for r in mlflow_runs(tmp_path, "tiny")}
    assert "RUNNING" not in statuses.values()
    assert statuses[killed.user_attrs["mlflow_run_id"]] == "KILLED"
    # rerunning adds nothing and says so
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0 and "target reached" in proc.stdout and len(_load(tmp_path).trials) == len(trials)


def _check_concurrent_result(tmp_path, name, storage, n, workers=2, tracking_uri=None):
    """Exactly ``n`` counted trials, nothing RUNNING or WAITING, one trial run per trial (none left
    RUNNING), at most ``workers`` processes behind them."""
    study = _load(tmp_path, name, storage)
    counted = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]
    assert len(counted) == n and len({t.number for t in counted}) == n
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    if tracking_uri is None:
        every = mlflow_runs(tmp_path, name)
    else:
        client = MlflowClient(tracking_uri)
        every = client.search_runs([client.get_experiment_by_name(name).experiment_id], max_results=1000)
    assert not [r for r in every if r.info.status == "RUNNING"]
    runs = [r for r in every if "cvstudy.trial_number" in r.data.tags]
    by_trial = {}
    for r in runs:
        by_trial.setdefault(int(r.data.tags["cvstudy.trial_number"]), []).append(r)
    assert sorted(by_trial) == sorted(t.number for t in counted)
    assert all(len(v) == 1 for v in by_trial.values())
    assert {t.user_attrs["mlflow_run_id"] for t in counted} == {r.info.run_id for r in runs}
    # at most the workers ran them (that several run at once is witnessed, not timed, in test_dispatch:
    # on a loaded machine one worker may take every trial before the others have imported torch)
    assert 1 <= len({t.user_attrs["pid"] for t in counted}) <= workers


def _sweeps_at_once(tmp_path, path, args: list, workers: int) -> None:
    """``workers`` `cvstudy sweep` processes started together on one study, as SLURM array tasks are; each
    exits 0 and none says its store was locked."""
    cmd = [CVSTUDY, "sweep", "--study-file", str(path), *args]
    procs = [
        subprocess.Popen(
            cmd, cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(workers)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * workers, outs
    assert not [out for out in outs if "locked" in out.lower()], outs


def test_two_local_workers_share_the_default_sqlite_storage(tmp_path, tiny_data):
    path = study_file(tmp_path, tiny_data, pruner="none")
    proc = run_cli(["sweep", "--study-file", path, "--trials", "6", "--workers", "2"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _check_concurrent_result(tmp_path, "tiny", f"sqlite:///{tmp_path / 'optuna.db'}", 6)
    # output to a file, as under SLURM or nohup: each trial's first and last epoch said, with ETAs
    progress = re.findall(r"^trial (\d+) epoch (\d+)/(\d+): .* in; trial ETA \S+, study ETA \S+", proc.stdout, re.M)
    said = {(int(t), int(e)) for t, e, _ in progress}
    epochs = int(progress[0][2]) if progress else 0
    assert {(t, e) for t in range(6) for e in (1, epochs)} <= said, proc.stdout


@pytest.mark.postgres
def test_three_machines_share_one_postgresql_study_and_one_mlflow_server(tmp_path, tiny_data):
    """The cluster set-up, small (bench/scale.py workers measures it up to 32): three workers started
    together against one PostgreSQL study and one `mlflow server`, to the exact target."""
    url = postgres_url()
    name = f"pg-{uuid.uuid4().hex[:8]}"
    path = study_file(tmp_path, tiny_data, pruner="none")
    server, port = start_mlflow_server(tmp_path / "server.db")
    tracking_uri = f"http://127.0.0.1:{port}"
    try:
        args = ["--study", name, "--trials", "6", "--storage", url, "--tracking-uri", tracking_uri]
        _sweeps_at_once(tmp_path, path, args, workers=3)
        _check_concurrent_result(tmp_path, name, url, 6, workers=3, tracking_uri=tracking_uri)
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_three_processes_share_one_journal_file_study(tmp_path, tiny_data):
    """A cluster without a database server: an Optuna journal file on the shared filesystem; the ask lock
    (a lock file beside the journal) still keeps three concurrent sweeps to the target."""
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    from cvstudy.orchestrator.tracking.client import Tracker

    path = study_file(tmp_path, tiny_data, pruner="none")
    Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    _sweeps_at_once(tmp_path, path, ["--trials", "6", "--storage", f"journal:///{tmp_path / 'study.journal'}"], 3)
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "study.journal")))
    _check_concurrent_result(tmp_path, "tiny", storage, 6, workers=3)
    # workers on a journal beat through a trial attribute (the journal has no Optuna heartbeat)
    assert all("heartbeat" in t.user_attrs for t in optuna.load_study(study_name="tiny", storage=storage).trials)
    assert not (tmp_path / "study.journal.ask.lock").exists()  # released


def test_ctrl_c_fails_and_requeues_the_trial_kills_its_run_and_exits_130(tmp_path, tiny_data):
    # long trials (~0.1 s an epoch), so the first is still running when the signal lands however loaded the machine
    path = study_file(tmp_path, tiny_data, epochs=400, pruner="none")
    from cvstudy.orchestrator.tracking.client import Tracker

    Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    proc = subprocess.Popen(
        [CVSTUDY, "sweep", "--study-file", str(path), "--trials", "2"],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: (t := _load(tmp_path).trials) and t[0].state == TrialState.RUNNING and t[0].intermediate_values)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    trials = _load(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[1].user_attrs["retry_of"] == 0
    runs = mlflow_runs(tmp_path, "tiny")
    assert {r.info.status for r in runs} == {"KILLED"}  # the trial's run and the study's parent run
    assert {r.data.tags.get("cvstudy.trial_state") for r in runs if "cvstudy.trial_number" in r.data.tags} == {
        "INTERRUPTED"
    }
    proc = run_cli(["sweep", "--study-file", path, "--trials", "2", "--epochs", "2"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    trials = _load(tmp_path).trials
    assert count_trials(_load(tmp_path)).complete == 2 and trials[1].params == trials[0].params


def test_a_study_asking_for_missing_pretrained_weights_stops_before_any_trial(tmp_path, tiny_data):
    from cvstudy.orchestrator.sweep.study import shipped_studies

    proc = run_cli(
        ["sweep", "--study-file", shipped_studies() / "reproduction.yaml", "--data", tiny_data],
        cwd=tmp_path,
        HF_HUB_CACHE=str(tmp_path / "empty-cache"),
    )
    assert (
        proc.returncode == 2
        and "pretrained weights for resnet50 (timm/resnet50.a1_in1k) are not available offline" in proc.stderr
    )
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "optuna.db").exists() and mlflow_runs(tmp_path) == []


RACE = """
import sys, time
from cvstudy.orchestrator.sweep.storage import open_storage
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # every process starts at the same instant
open_storage(sys.argv[1])
"""


@pytest.mark.postgres
def test_workers_opening_a_fresh_postgresql_database_together_all_open_it(tmp_path):
    """Sixteen processes create Optuna's tables in a new database at the same instant (machines starting
    together): the ones that lose the race open what the winner created, none fails."""
    import time

    import sqlalchemy

    admin = postgres_url()
    name = f"race_{uuid.uuid4().hex[:8]}"
    engine = sqlalchemy.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    try:
        url = admin.rsplit("/", 1)[0] + f"/{name}"
        start = time.time() + 8  # after every interpreter has imported Optuna
        procs = [
            subprocess.Popen([sys.executable, "-c", RACE, url, str(start)], stderr=subprocess.PIPE, text=True)
            for _ in range(16)
        ]
        results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
        assert all(code == 0 for code, _ in results), [err[-500:] for code, err in results if code]
    finally:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        engine.dispose()
