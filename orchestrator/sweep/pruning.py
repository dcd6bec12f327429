"""Pruning on the first objective, in single- and multi-objective studies alike.

A single-objective trial reports each epoch's value to Optuna (``trial.report``) and asks the study's
pruner (``trial.should_prune``). Optuna refuses both in a multi-objective study (optuna#3450), so there
cvstudy keeps a *pruning companion*: a single-objective study in the same storage, named
``<study>:pruning`` (``:`` is never in a user's study name), directed like the first objective and
judged by the same pruner. Each trial of the study gets one companion trial, which receives the first
objective's epoch values and answers ``should_prune`` with Optuna's own pruner, successive-halving rungs
and all, shared by every worker on the storage. The decision is recorded on the study's trial as in a
single-objective study (PRUNED, ``epochs_run``, the run's ``pruned_at_epoch``); the companion trial ends
with the same state, names its trial (``judges_trial``) and is named by it (``pruning_trial``).

A companion trial left RUNNING by a killed worker is failed by the next worker or sweep that looks
(``end_orphans``), as its study's trial is recovered.
"""

from __future__ import annotations

import warnings

import optuna
from optuna.trial import TrialState

from ..tracking.schema import StudyAttr, TrialAttr

SUFFIX = ":pruning"


def companion_name(study_name: str) -> str:
    return f"{study_name}{SUFFIX}"


def is_companion(study_name: str) -> bool:
    return study_name.endswith(SUFFIX)


class Judge:
    """One trial's pruning: its epochs' first-objective values go in, Optuna's decision comes out."""

    def __init__(self, trial: optuna.Trial, companion: optuna.Study | None = None):
        self.companion = companion
        self.judged = trial
        if companion is not None:
            with warnings.catch_warnings():  # Optuna's heartbeat beats for optimize()'s trials: the study's
                warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
                self.judged = companion.ask()
            self.judged.set_user_attr(TrialAttr.JUDGES_TRIAL, trial.number)
            trial.set_user_attr(TrialAttr.PRUNING_TRIAL, self.judged.number)

    def report(self, value: float, epoch: int) -> None:
        self.judged.report(value, epoch)

    def should_prune(self) -> bool:
        return self.judged.should_prune()

    def end(self, state: TrialState, value: float | None = None) -> None:
        """The companion trial ends as its study's trial did (a no-op in a single-objective study)."""
        if self.companion is not None:
            values = value if state == TrialState.COMPLETE else None
            self.companion.tell(self.judged, values, state=state, skip_if_finished=True)


class Pruning:
    """A worker's pruning: Optuna's own for a single-objective study, the companion's otherwise."""

    def __init__(self, study: optuna.Study, storage, pruner: optuna.pruners.BasePruner):
        self.companion = None
        if len(study.directions) > 1:
            self.companion = open_companion(study, storage, pruner)

    def judge(self, trial: optuna.Trial) -> Judge:
        return Judge(trial, self.companion)

    def end_orphans(self, study: optuna.Study) -> list[int]:
        return end_orphans(study, self.companion) if self.companion is not None else []


def open_companion(study: optuna.Study, storage, pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    """The multi-objective ``study``'s pruning companion, created on first use."""
    companion = optuna.create_study(
        study_name=companion_name(study.study_name),
        storage=storage,
        direction=study.directions[0],
        pruner=pruner,
        sampler=optuna.samplers.RandomSampler(),  # it samples nothing: its trials only hold epoch values
        load_if_exists=True,
    )
    companion.set_user_attr(StudyAttr.PRUNING_FOR, study.study_name)
    return companion


def end_orphans(study: optuna.Study, companion: optuna.Study) -> list[int]:
    """FAIL every RUNNING companion trial whose study trial is no longer running (its worker was killed,
    or it ended without a word to the companion); returns their numbers."""
    running = {
        t.user_attrs.get(TrialAttr.PRUNING_TRIAL)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    }
    ended = []
    for t in companion.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number not in running:
            companion.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            ended.append(t.number)
    return ended
