"""Where a run's resume state lives, when it is written, and when it goes.

A resumable run (every ``cvstudy train`` run, every single-seed sweep trial) keeps its latest
``TrainState`` as a run artifact, ``state/epoch-NNNN/state.safetensors``: wherever the run's artifacts
are (``./mlruns``, or a tracking server's store), so any worker that reaches the tracking server reaches
the state. The tag ``cvstudy.state`` names the current file and is set only after the file is fully
uploaded; the previous file is deleted after that. A worker killed in the middle of an upload
therefore leaves the previous state valid.

Cost: a state holds the weights, the best-so-far weights and the optimiser's moments, about four times
the weights (ResNet-50: 377 MB, 0.5-0.9 s to write and upload to a local store; on the demo set that
was a quarter of an epoch). Trainers hand out a state every epoch. The keeper writes one when the epoch
is a multiple of ``persist_every`` *and* at least ``min_seconds`` have passed since the last write (or
the start), so writing never costs more than about 1 % of the time; the others it keeps as a host-memory
copy, written when the run is interrupted (Ctrl-C, or SIGTERM from a scheduler). After a SIGKILL the
last written state is what remains: at most about ``min_seconds`` of training is lost. A finished,
pruned or failed run's state is deleted.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from typing import TYPE_CHECKING

from mlflow.entities import RunTag

from cvstudy.trainers.config import TrainConfig

if TYPE_CHECKING:  # the keeper is handed states; reading one back is results.load_state (torch)
    from cvstudy.trainers.state import TrainState

from . import digests
from .artifacts import run_repository
from .schema import DELETED, Tag

log = logging.getLogger("cvstudy")

STATE_DIR = "state"
STATE_PATH = re.compile(r"state/epoch-\d{4,}")  # what Tag.STATE may name: a run's tag decides what is deleted
MIN_SECONDS = 60.0
"""Default least time between two state writes, in seconds (a SIGKILL loses at most about this much)."""


class StateKeeper:
    """The trainer's ``on_state``: writes the state of every ``persist_every``-th epoch that comes at least
    ``min_seconds`` after the last write to the run's artifacts, and keeps the newest other one in host
    memory until ``flush`` (on interruption) writes it."""

    def __init__(self, run, config: TrainConfig, persist_every: int = 1, min_seconds: float = MIN_SECONDS):
        if persist_every < 1 or min_seconds < 0:
            raise ValueError(f"persist_every must be >= 1 and min_seconds >= 0; got {persist_every}, {min_seconds}")
        self.run, self.flat, self.persist_every, self.min_seconds = run, config.to_flat(), persist_every, min_seconds
        self.last_write = time.monotonic()
        tags = run.client.get_run(run.run_id).data.tags
        current = tags.get(Tag.STATE, "")
        self.current = current if STATE_PATH.fullmatch(current) else None
        self.written_epoch = int(tags[Tag.STATE_EPOCH]) if tags.get(Tag.STATE_EPOCH, "").isdigit() else 0
        self.pending: TrainState | None = None
        self.size_bytes = 0

    def __call__(self, state: TrainState) -> None:
        state.config = self.flat
        if state.epoch % self.persist_every == 0 and time.monotonic() - self.last_write >= self.min_seconds:
            self.pending = None
            self.write(state)
        else:
            self.pending = state.to_cpu()  # the live tensors change with the next step

    def flush(self) -> None:
        """Write the newest state if it was only held in memory (called when the run is interrupted)."""
        if self.pending is not None and self.pending.epoch > self.written_epoch:
            self.write(self.pending)
        self.pending = None

    def write(self, state: TrainState) -> None:
        artifact = f"{STATE_DIR}/epoch-{state.epoch:04d}"
        with tempfile.TemporaryDirectory(prefix="cvstudy-state-") as tmp:
            path = state.save(tmp)
            self.size_bytes = path.stat().st_size
            digest = digests.sha256(path)
            try:
                self.run.client.log_artifact(self.run.run_id, str(path), artifact)
            except BaseException:  # a full disk, an interrupt: no partial copy stays behind
                _remove_quietly(self.run, artifact)
                raise
        # only now is it the state
        self.run.set_tags({Tag.STATE: artifact, Tag.STATE_EPOCH: state.epoch, Tag.STATE_SHA256: digest})
        previous, self.current, self.written_epoch = self.current, artifact, state.epoch
        self.last_write = time.monotonic()
        if previous and previous != artifact:
            try:
                run_repository(self.run.client, self.run.run_id).delete_artifacts(previous)
            except Exception as err:  # noqa: BLE001 -- a leftover file costs space, not correctness
                log.warning("could not delete the previous state %s of run %s: %s", previous, self.run.run_id, err)


def _remove_quietly(run, artifact: str) -> None:
    try:
        run_repository(run.client, run.run_id).delete_artifacts(artifact)
    except Exception as err:  # noqa: BLE001 -- nothing was copied, or the store is down: the next write replaces it
        log.warning("could not remove the partial state %s of run %s: %s", artifact, run.run_id, err)


def saved_epoch(run) -> int | None:
    """Epochs completed by the run's saved state (an MLflow Run), or None when it has none."""
    value = run.data.tags.get(Tag.STATE_EPOCH, "")
    return int(value) if value.isdigit() else None


def delete_state(client, run_id: str, why: str = "the run finished") -> None:
    """Remove a run's resume state(s) from the artifact store and say so in its tags."""
    try:
        run_repository(client, run_id).delete_artifacts(STATE_DIR)
    except FileNotFoundError:
        pass
    except Exception as err:  # noqa: BLE001 -- an unreachable store must not fail a finished run
        log.warning("could not delete the resume state of run %s: %s", run_id, err)
        return

    client.log_batch(
        run_id, tags=[RunTag(tag, f"{DELETED}: {why}") for tag in (Tag.STATE_EPOCH, Tag.STATE, Tag.STATE_SHA256)]
    )
