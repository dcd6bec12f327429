"""Devices and workers without GPUs: which worker gets which device (device labels stand in for GPUs),
how many trials a device runs at once, and a worker killed mid-trial, with real subprocesses."""

import contextlib
import json
import os
import signal
import sqlite3
import subprocess

import pytest
from optuna.trial import TrialState

from cvstudy.orchestrator.errors import SweepError
from cvstudy.orchestrator.sweep.supervise import cpu_threads, plan_devices
from tests.conftest import CVSTUDY, clean_env, run_cli, wait_for
from tests.orchestrator.test_sweep import _check_concurrent_result, _load, study_file

TWO_GPUS = ["cuda:0", "cuda:1"]


@pytest.mark.parametrize(
    "devices, workers, per_device, visible, planned",
    [
        (None, None, 1, TWO_GPUS, TWO_GPUS),  # every visible GPU, one worker each
        (None, None, 2, TWO_GPUS, ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]),  # K workers share each GPU
        (None, 1, 3, TWO_GPUS, ["cuda:0"] * 3),  # the first N GPUs
        ("cuda:1", None, 1, TWO_GPUS, ["cuda:1"]),
        (None, None, 1, [], ["cpu"]),  # no GPU: the CPU
        (None, 2, 1, [], ["cpu", "cpu"]),  # N CPU workers
        (None, None, 2, [], ["cpu", "cpu"]),
    ],
)
def test_each_worker_gets_a_device_and_a_device_hosts_at_most_k(devices, workers, per_device, visible, planned):
    assert plan_devices(devices, workers, per_device, visible, cores=8) == planned


@pytest.mark.parametrize(
    "devices, workers, per_device, message",
    [
        ("cuda:0,cuda:0", None, 1, "listed twice"),
        ("cuda:2", None, 1, "not a visible device"),
        (None, 3, 1, "only 2 GPUs visible"),
        (None, None, 0, "--trials-per-device must be >= 1"),
        (None, 0, 1, "--workers must be >= 1"),
        (",", None, 1, "names no device"),
        (" , ", None, 1, "names no device"),
        (None, None, 17, "at most 16 trials share a device"),
        (None, None, 100000, "at most 16 trials share a device"),
    ],
)
def test_impossible_device_plans_are_refused(devices, workers, per_device, message):
    with pytest.raises(SweepError, match=message):
        plan_devices(devices, workers, per_device, TWO_GPUS, cores=8)


@pytest.mark.parametrize(("workers", "per_device"), [(9, 1), (5, 2), (None, 9), (100000, 1)])
def test_more_cpu_workers_than_cores_are_refused(workers, per_device):
    with pytest.raises(SweepError, match="CPU workers .* on 8 cores: at most one worker per core"):
        plan_devices(None, workers, per_device, [], cores=8)
    assert len(plan_devices(None, 8, 1, [], cores=8)) == 8 == len(plan_devices(None, 4, 2, [], cores=8))


def test_no_more_workers_start_than_trials_are_left(tmp_path, tiny_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = study_file(tmp_path, tiny_data, "  lr: [3.0e-3]", pruner="none", sampler="grid", epochs=1)
    proc = run_cli(["sweep", "--study-file", path, "--trials", "1", "--workers", "2"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "devices cpu: 0 of 1 trials done" in proc.stdout  # one worker for the one trial, not two


def test_cpu_workers_split_the_cores():
    assert cpu_threads(["cpu"]) is None  # one worker: torch's own default
    assert cpu_threads(["cuda:0", "cuda:0"]) is None
    assert cpu_threads(["cpu"] * 2) == max(1, (os.cpu_count() or 1) // 2)


def _max_overlap(trials) -> int:
    """The most trials that were running at one instant."""
    events = sorted(
        [(t.datetime_start, 1) for t in trials] + [(t.datetime_complete, -1) for t in trials],
        key=lambda e: (e[0], e[1]),
    )
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


@pytest.mark.slow
@pytest.mark.long
def test_two_trials_per_device_reach_the_target_exactly(tmp_path, tiny_data):
    """Two workers share the one device: both run trials at the same time (witnessed in the storage while
    the sweep runs, not inferred from timings), never three, and the study ends at exactly 6."""
    path = study_file(tmp_path, tiny_data, pruner="none", epochs=4)  # six trials of four epochs: they overlap
    sweep = subprocess.Popen(
        [CVSTUDY, "sweep", "--study-file", path, "--trials", "6", "--devices", "cpu", "--trials-per-device", "2"],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: set = set()  # the worker pids seen running a trial at one instant, two once they overlap

    def two_at_once() -> bool:
        # read with sqlite3, not optuna.load_study: ten polls a second of a whole study would take a core
        try:
            with contextlib.closing(sqlite3.connect(f"file:{tmp_path / 'optuna.db'}?mode=ro", uri=True)) as db:
                pids = {
                    json.loads(value)
                    for (value,) in db.execute(
                        "SELECT a.value_json FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
                        "WHERE t.state = 'RUNNING' AND a.key = 'pid'"
                    )
                }
        except sqlite3.OperationalError:  # not created yet, or its tables not yet
            return sweep.poll() is not None
        assert len(pids) <= 2, pids  # never three on the device
        if len(pids) == 2:
            seen.update(pids)
        return len(seen) == 2 or sweep.poll() is not None

    try:
        wait_for(two_at_once, timeout=600, every=0.1)
        out, _ = sweep.communicate(timeout=600)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 0, out
    assert len(seen) == 2, "the sweep ended before its two workers ran trials at the same time"
    _check_concurrent_result(tmp_path, "tiny", f"sqlite:///{tmp_path / 'optuna.db'}", 6)
    done = [t for t in _load(tmp_path).trials if t.state == TrialState.COMPLETE]
    assert len({t.user_attrs["pid"] for t in done}) == 2 and _max_overlap(done) <= 2


@pytest.mark.slow
@pytest.mark.long
def test_a_worker_killed_mid_trial_does_not_stop_the_others(tmp_path, tiny_data):
    path = study_file(tmp_path, tiny_data, pruner="none", epochs=6)
    sweep = subprocess.Popen(
        [CVSTUDY, "sweep", "--study-file", path, "--trials", "6", "--workers", "2"],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def running():
            return [t for t in _load(tmp_path).trials if t.state == TrialState.RUNNING]

        wait_for(lambda: len({t.user_attrs.get("pid") for t in running()} - {None}) == 2, timeout=300)
        victim = running()[0]
        os.kill(victim.user_attrs["pid"], signal.SIGKILL)  # one worker process dies mid-trial
        out, _ = sweep.communicate(timeout=600)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 0, out
    assert "exited with code" in out  # the parent saw the worker die and went on
    study = _load(tmp_path)
    retries = [t for t in study.trials if t.user_attrs.get("retry_of") == victim.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE  # its trial was re-queued and trained
    counted = [t for t in study.trials if t.number != victim.number and t.state != TrialState.RUNNING]
    assert len(counted) == 6 and not [t for t in study.trials if t.state == TrialState.RUNNING]
