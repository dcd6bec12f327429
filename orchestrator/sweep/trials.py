"""The trial lifecycle, on Optuna's public API: how a trial ends, how it is counted, how an interrupted
one is retried, which configuration it really trained, and which checkpoints a study keeps.

``sweep``, ``report`` and ``predict`` ask this module, and nothing else, about trials:

- Outcomes: ``schema.OUTCOMES``, the one table from a trial's outcome to its MLflow run status.
- Retries: an interrupted or dead trial is FAIL (``study.tell(..., skip_if_finished=True)``) and its
  parameters are enqueued again (``study.enqueue_trial(params, user_attrs={"retry_of": number})``),
  with ``resume_run_id`` naming its MLflow run (and ``resume_epoch`` when the run holds a saved state).
  The retry continues that run from that epoch, or from the start when it logged no epoch; only a run
  with epochs and no usable state is replaced, and then marked superseded (``worker``). So a counted
  trial is one MLflow run of role ``trial`` however often it was interrupted.
  A trial named by a retry's ``retry_of`` is *superseded*: it does not count toward the target.
- Counting: complete + pruned + failed + running, superseded ones excluded (``Counts``).
- Effective configuration: each trial stores the configuration that trained (after overrides and
  flags) as its ``config`` user attribute; ``effective_params`` reads the searched keys from it.
- Checkpoints: a study keeps those of its best ``keep`` complete trials; the rest are deleted from the
  artifact store and their runs say so in a tag.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from ..processes import HOST, lost_here
from ..stats import pareto_ranks
from ..tracking.client import Tracker, end_run, study_runs, trial_run_id
from ..tracking.models import KEPT_FILTER, delete_checkpoints, register_best
from ..tracking.schema import OUTCOMES, Tag, TrialAttr
from ..tracking.states import delete_state, saved_epoch
from .storage import GRACE_SECONDS

MAX_RETRIES = 3  # re-queues of the same parameters after a worker died or was interrupted


def expected_run_statuses(trial) -> tuple[str, ...]:
    """MLflow statuses consistent with a finished (not superseded) Optuna trial."""
    if trial.state.name == "FAIL":  # FAILED when the config failed; KILLED when retries ran out
        return (OUTCOMES["FAIL"].run_status, OUTCOMES["INTERRUPTED"].run_status)
    outcome = OUTCOMES.get(trial.state.name)
    return (outcome.run_status,) if outcome else ()


# ----------------------------------------------------------------------------- counting
@dataclass
class Counts:
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0
    retried: int = 0
    """Failed or interrupted trials whose parameters were re-queued: not counted toward the target."""

    @property
    def done(self) -> int:
        return self.complete + self.pruned + self.failed

    @property
    def counted(self) -> int:
        """What the target is measured against: finished trials plus the ones running now."""
        return self.done + self.running


def superseded_numbers(trials) -> set[int]:
    """Numbers of trials whose parameters were re-queued (a retry names them in ``retry_of``)."""
    return {t.user_attrs[TrialAttr.RETRY_OF] for t in trials if TrialAttr.RETRY_OF in t.user_attrs}


def current_trials(study) -> list:
    """Every trial that is not superseded by a retry: the study as a user sees it."""
    trials = study.get_trials(deepcopy=False)
    superseded = superseded_numbers(trials)
    return [t for t in trials if t.number not in superseded]


def count_trials(study) -> Counts:
    trials = study.get_trials(deepcopy=False)
    superseded = superseded_numbers(trials)
    c = Counts(retried=len(superseded))
    field = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}
    for t in trials:
        if t.number not in superseded and t.state.name in field:
            setattr(c, field[t.state.name], getattr(c, field[t.state.name]) + 1)
    return c


def ranked_complete(study) -> list:
    """Complete trials, best first: the one ranking of ``@best``, ``predict --best``, ``confirm --top``,
    checkpoint retention, warm starts and the report. Trials are ordered by Pareto rank over the study's
    objectives (the front first), then by the first objective, then by number (the earlier trial wins a
    tie). With one objective that is the objective's order; with several, the best trial is the best
    first objective among the Pareto-optimal trials, and the next ones are the rest of the front."""
    return [t for t, _ in pareto_ranked(study)]


def pareto_ranked(study) -> list[tuple]:
    """``ranked_complete`` with each trial's Pareto rank (0: on the front; with one objective, every
    trial that ties the best)."""
    done = [t for t in current_trials(study) if t.state.name == "COMPLETE" and t.values]
    losses = _losses(study, done)
    ranks = pareto_ranks(losses)
    order = sorted(range(len(done)), key=lambda i: (ranks[i], losses[i][0], done[i].number))
    return [(done[i], ranks[i]) for i in order]


def first_value(trial) -> float | None:
    """The trial's first objective (its only one in a single-objective study); None without values.
    (``FrozenTrial.value`` raises in a multi-objective study.)"""
    return trial.values[0] if trial.values else None


def _losses(study, trials) -> list[tuple[float, ...]]:
    """The trials' objective values as losses (maximised ones negated), for Pareto ranks."""
    signs = [-1.0 if d.name == "MAXIMIZE" else 1.0 for d in study.directions]
    return [tuple(s * v for s, v in zip(signs, t.values)) for t in trials]


def baseline_trial(study):
    """The study's baseline trial (the study file's ``baseline``, enqueued first), if complete."""
    return next((t for t in ranked_complete(study) if t.user_attrs.get(TrialAttr.BASELINE)), None)


def best_trial(study):
    """The best complete trial, or None."""
    ranked = ranked_complete(study)
    return ranked[0] if ranked else None


# ----------------------------------------------------------------------------- what ran
def effective_params(trial) -> dict:
    """The searched settings as they trained: the sampled values after overrides and flags."""
    config = trial.user_attrs.get(TrialAttr.CONFIG) or {}
    return {k: config.get(k, v) for k, v in trial.params.items()}


def format_params(params: dict) -> str:
    """``lr=0.00366, aug=basic``: three significant digits, so a learning rate of 3e-4 is not "0.000"."""
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


LEADERBOARD_ROWS = 10
LEADERBOARD_TEST = (("balanced_accuracy", "test bal. acc"), ("accuracy", "test acc"), ("macro_f1", "test macro F1"))


def leaderboard_markdown(study, metrics: list[str], top: int = LEADERBOARD_ROWS) -> str:
    """The study's best complete trials as a Markdown table (MLflow shows a run's description as
    Markdown): rank, trial, objective(s) on validation, the test metrics of each selected checkpoint,
    epochs, the settings as they trained and the trial's run. The same ranking as ``ranked_complete``."""
    counts, ranked = count_trials(study), ranked_complete(study)
    lines = [
        f"**{len(ranked)} complete** trials ({counts.pruned} pruned, {counts.failed} failed), best first: "
        f"selected on validation; test metrics of each trial's selected checkpoint, one seed per trial "
        f"unless repeats are set. `cvstudy report {study.study_name}` adds intervals and plots.",
        "",
        "| rank | trial | " + " | ".join(metrics) + " | " + " | ".join(h for _, h in LEADERBOARD_TEST)
        + " | epochs | settings | run |",
        "|" + "---|" * (5 + len(metrics) + len(LEADERBOARD_TEST)),
    ]  # fmt: skip
    for rank, trial in enumerate(ranked[:top], start=1):
        tests = [trial.user_attrs.get(TrialAttr.test(k)) for k, _ in LEADERBOARD_TEST]
        cells = [
            str(rank),
            str(trial.number),
            *(f"{v:.4f}" for v in trial.values),
            *("" if v is None else f"{v:.4f}" for v in tests),
            str(trial.user_attrs.get(TrialAttr.EPOCHS_RUN, "")),
            format_params(effective_params(trial)),
            f"`{trial.user_attrs.get(TrialAttr.MLFLOW_RUN_ID, '')[:8]}`",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if len(ranked) > top:
        lines.append(f"\n{len(ranked) - top} more complete trials: `cvstudy report {study.study_name}`.")
    return "\n".join(lines)


def changed_params(trial) -> dict[str, tuple]:
    """Searched settings that an override or flag changed after sampling: ``{key: (sampled, effective)}``."""
    effective = effective_params(trial)
    return {k: (v, effective[k]) for k, v in trial.params.items() if effective[k] != v}


# ----------------------------------------------------------------------------- retries and recovery
def requeue(
    study,
    number: int,
    params: dict,
    user_attrs: dict,
    resume_run_id: str | None = None,
    resume_epoch: int | None = None,
) -> bool:
    """Enqueue the parameters of trial ``number`` again, once per trial. The new trial's ``retry_of``
    names the one it supersedes; ``resume_run_id`` names the interrupted trial's MLflow run, which the
    retry continues from its saved state (``resume_epoch`` epochs done) or, when it logged no epoch,
    from the start (``worker``). A chain of retries stops after ``MAX_RETRIES`` that made no
    progress (a resume from a later epoch than the last one starts the count again)."""
    if number in superseded_numbers(study.get_trials(deepcopy=False)):
        return False
    retries = int(user_attrs.get(TrialAttr.RETRIES, 0))
    progressed = resume_epoch is not None and resume_epoch > int(user_attrs.get(TrialAttr.RESUME_EPOCH, 0))
    if retries >= MAX_RETRIES and not progressed:
        return False
    attrs = {k: user_attrs[k] for k in TrialAttr.CARRIED if k in user_attrs}
    attrs.update({TrialAttr.RETRY_OF: number, TrialAttr.RETRIES: 0 if progressed else retries + 1})
    if resume_run_id:
        attrs[TrialAttr.RESUME_RUN_ID] = resume_run_id
    if resume_run_id and resume_epoch:
        attrs[TrialAttr.RESUME_EPOCH] = resume_epoch
    study.enqueue_trial(params, user_attrs=attrs)
    return True


def requeue_with_state(study, number: int, params: dict, user_attrs: dict, client, run_id: str | None) -> bool:
    """Re-queue an interrupted trial, resuming its MLflow run when the run holds a saved state (every
    single-seed trial writes one); if the trial is not re-queued, its state is deleted. A trial stopped
    before it opened a run passes on the run it was to continue, if any."""
    run_id = run_id or user_attrs.get(TrialAttr.RESUME_RUN_ID)
    epoch = None
    if run_id:
        try:
            epoch = saved_epoch(client.get_run(run_id))
        except Exception:  # noqa: BLE001 -- the run may live on a tracking server that is down
            epoch = None
    queued = requeue(study, number, params, user_attrs, run_id, epoch)
    if not queued and epoch and run_id:
        delete_state(client, run_id, "the trial was not re-queued")
    return queued


def recover(study, trial, client, reason: str) -> None:
    """A trial whose worker is gone (already FAIL in Optuna): re-queue its parameters (resuming its run
    from its last saved state) and mark its run KILLED / INTERRUPTED with the reason. A worker killed
    between creating the run and naming it on the trial left the run findable by its tags."""
    run_id = trial.user_attrs.get(TrialAttr.MLFLOW_RUN_ID)
    try:
        run_id = run_id or trial_run_id(client, study.study_name, trial.number)
        end_run(client, run_id, "INTERRUPTED", {Tag.ERROR: reason}, only_if_running=True)
    except Exception:  # noqa: BLE001 -- the run may live on a tracking server that is down  # nosec B110
        pass
    requeue_with_state(study, trial.number, trial.params, trial.user_attrs, client, run_id)


def stale_callback(tracking_uri: str) -> Callable:
    """For Optuna's heartbeat check: a trial whose worker stopped beating (on any host)."""

    def callback(study, trial) -> None:
        recover(study, trial, Tracker(tracking_uri).client, "heartbeat stale")

    return callback


def fail_lost_trials(study, client) -> list[int]:
    """RUNNING trials whose worker is gone: started on this host by a process that no longer exists, or
    (journal storages) whose ``heartbeat`` attribute is older than the grace period, on any host.
    FAIL them, re-queue their parameters (resuming from their saved state), mark their runs KILLED.
    (On RDB storages, other hosts' dead workers are found by Optuna's heartbeat.) Call it under the ask
    lock, so two workers never recover the same trial."""
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, pid, beat = (t.user_attrs.get(k) for k in (TrialAttr.HOST, TrialAttr.PID, TrialAttr.HEARTBEAT))
        if lost_here(host, pid):
            reason = f"worker pid {pid} on {HOST} died"
        elif beat is not None and time.time() - beat > GRACE_SECONDS:
            reason = f"heartbeat stale for {time.time() - beat:.0f} s (worker pid {pid} on {host})"
        else:
            continue
        try:
            # not skip_if_finished: Optuna would return a trial finished since the read (its worker was
            # slow, not dead) as if failed here, and recovering it would supersede a finished result
            study.tell(t.number, state=TrialState.FAIL)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # finished by someone else since the read ("Cannot tell a COMPLETE trial"): it stands
        recover(study, t, client, reason)
        failed.append(t.number)
    return failed


# ----------------------------------------------------------------------------- checkpoints and the registry
def retain_checkpoints(study, client, experiment_id: str, study_name: str, keep: int) -> list[str]:
    """Keep the checkpoints of the best ``keep`` complete trials; delete every other one of the study's
    finished trials from the artifact store (local or tracking server) and tag its run. Returns the runs
    pruned.

    Only trials already finished when this starts are judged: another worker's trial logs its checkpoint
    before Optuna hears it complete, and one deleted in between may turn out the study's best, with no
    model left to register or predict with. Finished is read before the ranking, so a trial that
    completes in between is left for the next call."""
    finished = {str(t.number) for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    kept = ranked_complete(study)[:keep]  # a trial with repeats keeps its checkpoint in one seed's run
    keep_ids = {t.user_attrs.get(k) for t in kept for k in (TrialAttr.MLFLOW_RUN_ID, TrialAttr.CHECKPOINT_RUN_ID)}
    runs = [
        run
        for run in study_runs(client, experiment_id, study_name, KEPT_FILTER).values()
        if run.data.tags.get(Tag.TRIAL_NUMBER) in finished
    ]
    return delete_checkpoints(client, experiment_id, runs, keep_ids, f"not among the study's best {keep} trials")


def checkpoint_run_id(trial) -> str | None:
    """The MLflow run holding the trial's checkpoint: its own, or (a trial with repeats keeps one
    checkpoint) the run of its seed best on validation. None when the trial names no run."""
    return trial.user_attrs.get(TrialAttr.CHECKPOINT_RUN_ID) or trial.user_attrs.get(TrialAttr.MLFLOW_RUN_ID)


def register_best_trial(client, name: str, study, objectives: tuple[str, ...]):
    """The study's best trial's model as ``models:/<name>@best`` (``tracking.models.register_best``),
    tagged with its value of every objective."""
    best = best_trial(study)
    if best is None:
        return None
    run_id = checkpoint_run_id(best)
    tests = {k: v for k, v in best.user_attrs.items() if k.startswith(TrialAttr.test("")) and isinstance(v, float)}
    others = dict(zip(objectives[1:], best.values[1:]))
    return register_best(client, name, run_id, best.number, objectives[0], best.values[0], {**others, **tests})
