"""Sweeps on a real SLURM cluster (`.ci/run` starts a single-node one): workers submitted as one job array
reach the target with one MLflow run per trial; a task signalled mid-trial is requeued and its trial
resumes from its saved epoch in the same MLflow run."""

import os
import shutil
import subprocess

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from cvstudy.orchestrator.sweep.storage import open_storage
from cvstudy.orchestrator.sweep.trials import count_trials, current_trials
from tests.conftest import run_cli, wait_for
from tests.orchestrator.test_sweep import _check_concurrent_result, study_file

pytestmark = pytest.mark.slow  # starts processes, servers or sweeps (make test-fast skips it)


def _slurm_ready() -> str | None:
    """None when a SLURM controller answers here, else why not."""
    if shutil.which("sbatch") is None:
        return "SLURM is not installed (sbatch not found; .ci/run installs slurm-wlm and starts a one-node cluster)"
    probe = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0 or not any(s in probe.stdout for s in ("idle", "mix", "alloc")):
        return f"no SLURM controller answers (sinfo: {(probe.stderr or probe.stdout).strip()[:200]}; see .ci/slurm-up)"
    return None


@pytest.fixture
def slurm():
    why = _slurm_ready()
    if why:
        if os.environ.get("CVSTUDY_TEST_SLURM"):
            pytest.fail(f"CVSTUDY_TEST_SLURM is set but {why}")
        pytest.skip(why)
    jobs: list[str] = []
    yield jobs
    for job in jobs:  # a requeued task may still wait for its begin time: nothing may outlive the test
        subprocess.run(["scancel", job], capture_output=True)


def _submit(tmp_path, path, slurm, trials: int, *extra) -> tuple[str, str]:
    storage = f"journal:///{tmp_path / 'study.journal'}"
    proc = run_cli(
        [
            "sweep",
            "--study-file",
            path,
            "--trials",
            str(trials),
            "--storage",
            storage,
            "--slurm",
            "--slurm-tasks",
            "2",
            "--slurm-cpus-per-task",
            "1",
            *extra,
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job = proc.stdout.split("submitted SLURM job ")[1].split(":")[0]
    slurm.append(job)
    assert f"squeue -j {job}" in proc.stdout
    return job, storage


def _study(tmp_path, storage):
    return optuna.load_study(study_name="tiny", storage=open_storage(storage))


def _done(tmp_path, storage, trials: int) -> bool:
    study = _study(tmp_path, storage)
    c = count_trials(study)
    return c.done == trials and c.running == 0 and c.waiting == 0


def _task_runs(job: str) -> set[str]:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%i %T"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.split() and line.split()[1] == "RUNNING"}


def test_a_sweep_submitted_to_slurm_reaches_its_target_with_one_run_per_trial(tmp_path, tiny_data, slurm):
    path = study_file(tmp_path, tiny_data, pruner="none")
    # 6 trials: enough that the second task, started a few seconds after the first, finds work left
    job, storage = _submit(tmp_path, path, slurm, 6)
    script = next((tmp_path / "slurm").glob("tiny-*.sbatch")).read_text()
    assert "--array=0-1" in script and "--requeue" in script and "--signal=TERM@300" in script
    wait_for(lambda: _done(tmp_path, storage, 6), timeout=400, every=2)
    wait_for(lambda: not _task_runs(job), timeout=120, every=1)  # both tasks exit once the target is reached
    _check_concurrent_result(tmp_path, "tiny", open_storage(storage), 6)
    study = _study(tmp_path, storage)
    tasks = {t.user_attrs["slurm_task"] for t in study.trials}
    assert tasks == {f"{job}_0", f"{job}_1"}  # each task one worker, both did work
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.data.tags["cvstudy.slurm_jobs"] == job
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "slurm")]  # the script that ran
    assert all(r.info.status != "RUNNING" for r in client.search_runs([parent.info.experiment_id]))


def test_a_task_signalled_mid_trial_is_requeued_and_its_trial_resumes_in_the_same_run(tmp_path, tiny_data, slurm):
    epochs = 12
    path = study_file(tmp_path, tiny_data, pruner="none", epochs=epochs)
    # every epoch's state written as it ends: the signal is sent once epoch 2's is in the store, so what
    # this test checks does not hang on the write on the way out (test_preemption checks that one)
    job, storage = _submit(tmp_path, path, slurm, 3, "--state-min-seconds", "0")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")

    def running_with_epoch_two_saved():
        study = _study(tmp_path, storage)
        for t in study.get_trials(states=(TrialState.RUNNING,)):
            if t.user_attrs.get("slurm_task") != f"{job}_0" or "mlflow_run_id" not in t.user_attrs:
                continue
            saved = client.get_run(t.user_attrs["mlflow_run_id"]).data.tags.get("cvstudy.state_epoch", "")
            if saved.isdigit() and int(saved) >= 2:
                return t
        return None

    wait_for(running_with_epoch_two_saved, timeout=300, every=0.5)
    victim = running_with_epoch_two_saved()
    subprocess.run(["scancel", "--signal=TERM", f"{job}_0"], check=True)
    wait_for(lambda: _done(tmp_path, storage, 3), timeout=600, every=2)

    study = _study(tmp_path, storage)
    counted = current_trials(study)
    retry = next(t for t in study.trials if t.user_attrs.get("retry_of") == victim.number)
    run_id = victim.user_attrs["mlflow_run_id"]
    log = tmp_path / "slurm" / f"tiny-{job}_0.out"
    assert retry.user_attrs["resume_run_id"] == run_id, log.read_text()
    assert retry.user_attrs.get("resume_epoch", 0) >= 2, log.read_text()
    assert retry.state == TrialState.COMPLETE and retry in counted
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["cvstudy.resumes"] == "1"
    assert run.data.tags["cvstudy.trial_number"] == str(retry.number)
    steps = sorted(m.step for m in client.get_metric_history(run_id, "train/loss"))
    assert steps == list(range(epochs))  # contiguous, none repeated
    exp = client.get_experiment_by_name("tiny")
    trial_runs = client.search_runs([exp.experiment_id], "tags.`cvstudy.role` = 'trial'")
    assert sorted(r.info.run_id for r in trial_runs) == sorted(t.user_attrs["mlflow_run_id"] for t in counted)
    # the signalled task requeued itself: SLURM counts a restart and its log says so
    wait_for(lambda: "cvstudy: re-queueing this task" in log.read_text(), timeout=60, explain=log.read_text)

    def restarts() -> str:
        return subprocess.run(["scontrol", "show", "job", f"{job}_0"], capture_output=True, text=True).stdout

    wait_for(lambda: "Restarts=1" in restarts(), timeout=60, explain=lambda: f"{restarts()}\n{log.read_text()}")


def test_the_sbatch_script_asks_for_the_signal_requeue_and_resources_and_passes_options_through(tmp_path):
    from cvstudy.orchestrator.sweep.slurm import SlurmOptions, render_script

    options = SlurmOptions(
        tasks=8,
        partition="gpu",
        gpus_per_task=1,
        cpus_per_task=6,
        time="04:00:00",
        signal_before=600,
        sbatch_args=("--account=mylab", "--qos=normal"),
    )
    script = render_script(
        options, ["/venv/bin/cvstudy", "sweep", "--study", "big study"], tmp_path, "cvstudy-big", "/logs/%A_%a.out"
    )
    for line in (
        "#SBATCH --array=0-7",
        "#SBATCH --signal=TERM@600",
        "#SBATCH --requeue",
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-task=1",
        "#SBATCH --cpus-per-task=6",
        "#SBATCH --time=04:00:00",
        "#SBATCH --account=mylab",
        "#SBATCH --qos=normal",
        "#SBATCH --open-mode=append",
    ):
        assert line + "\n" in script
    assert "srun --ntasks=1 --kill-on-bad-exit=0 /venv/bin/cvstudy sweep --study 'big study'\n" in script
    assert 'scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"' in script


def test_bad_slurm_options_exit_2_in_one_line_before_anything_is_written(tmp_path, tiny_data):
    path = study_file(tmp_path, tiny_data)
    for args, message in (
        (["--slurm", "--slurm-tasks", "0"], "--slurm-tasks must be >= 1"),
        (["--slurm", "--slurm-time", "four hours"], "--slurm-time 'four hours'"),
        (["--slurm-tasks", "4"], "need --slurm"),
        (["--slurm", "--workers", "2"], "do not apply with --slurm"),
    ):
        proc = run_cli(["sweep", "--study-file", path, *args], cwd=tmp_path)
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, (
            proc.stderr
        )
    assert not (tmp_path / "slurm").exists() and not (tmp_path / "mlflow.db").exists()
