"""A resume state carries the SHA-256 of its file in its run (``cvstudy.state_sha256``); a state whose
bytes changed on disk is refused by name (``train --resume``: exit 3, in test_cli_train) or, for a sweep's
re-queued trial, set aside: the trial starts afresh. The digest's oracle is hashlib on the stored file."""

from __future__ import annotations

import hashlib
import logging

import pytest
import torch

from cvstudy.orchestrator.errors import DamagedFile
from cvstudy.orchestrator.sweep.worker import saved_state
from cvstudy.orchestrator.tracking.client import TrackedRun, Tracker
from cvstudy.orchestrator.tracking.results import load_state
from cvstudy.orchestrator.tracking.states import StateKeeper
from cvstudy.trainers.config import TrainConfig
from cvstudy.trainers.state import RandomState, TrainState

CONFIG = TrainConfig.from_flat({"model": "test_resnet"})


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow puts a SQLite store's artifacts in ./mlruns


def _run_with_a_state(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = TrackedRun(tracker.client, tracker.client.create_run(tracker.experiment_id("s")).info.run_id)
    keeper = StateKeeper(run, CONFIG, min_seconds=0)
    state = TrainState(
        epoch=3,
        step=30,
        model={"w": torch.arange(4096.0)},
        optimizer={"state": {}, "param_groups": []},
        random=RandomState(device=torch.Generator().get_state(), host={"seed": 0}),
        history=[],
        best_row=None,
        best_val=None,
        best_state=None,
        stale_epochs=0,
    )
    keeper(state)
    (path,) = (tmp_path / "mlruns").rglob("state.safetensors")
    return tracker.client, run.run_id, path


def _damages(raw: bytes) -> dict[str, bytes]:
    middle = len(raw) // 2
    return {
        "a zeroed block": raw[:middle] + bytes(1024) + raw[middle + 1024 :],
        "one flipped bit": raw[:middle] + bytes([raw[middle] ^ 1]) + raw[middle + 1 :],
        "cut short": raw[:-10],
    }


def test_a_state_records_the_digest_of_the_file_it_stored(tmp_path):
    client, run_id, path = _run_with_a_state(tmp_path)
    tags = client.get_run(run_id).data.tags
    assert tags["cvstudy.state_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_state(client, run_id).epoch == 3


@pytest.mark.parametrize("damage", ["a zeroed block", "one flipped bit", "cut short"])
def test_a_damaged_state_is_refused_by_name_and_a_sweep_trial_starts_afresh(tmp_path, damage, caplog):
    client, run_id, path = _run_with_a_state(tmp_path)
    path.write_bytes(_damages(path.read_bytes())[damage])
    with pytest.raises(DamagedFile, match=f"run {run_id}: its resume state state/epoch-0003/state.safetensors is"):
        load_state(client, run_id)
    with caplog.at_level(logging.WARNING, logger="cvstudy"):
        assert saved_state(client, run_id, CONFIG.to_flat()) is None
    assert "trial starts from epoch 0" in caplog.text and "is damaged" in caplog.text


def test_a_state_written_before_digests_were_recorded_still_resumes(tmp_path):
    client, run_id, path = _run_with_a_state(tmp_path)
    client.delete_tag(run_id, "cvstudy.state_sha256")
    assert load_state(client, run_id).step == 30
    assert saved_state(client, run_id, CONFIG.to_flat()).epoch == 3


def test_datasets_are_labelled_only_when_runs_disagree_and_in_one_order_everywhere():
    from cvstudy.orchestrator.tracking.digests import labels

    small, large = ("t1", "v1", "s1"), ("t2", "v2", "s2")
    assert labels([small, None, small]) == {}  # one dataset: no data column anywhere
    assert labels([large, small, large]) == {small: "A", large: "B"}  # sorted, whichever run came first
    assert labels(iter([small, large])) == labels([large, small])  # a generator as a list
