"""Warm starts: ``cvstudy sweep ... --warm-start OTHER[:K]`` enqueues the K best effective configurations
of another study's complete trials (same storage) as this study's first trials.

Only the keys this study searches are kept (the others are the study file's); a value outside this
study's space is refused in one line naming it, before anything is created. Each enqueued trial names
its source in a user attribute (``warm_start``: ``OTHER/NUMBER``), which its MLflow run carries as a tag.
A study records the sources it was warm-started from, so rerunning the command enqueues nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..boundaries import check_name
from ..errors import SweepError, UserError
from ..tracking.schema import StudyAttr, TrialAttr
from .storage import find_study
from .study import StudySpec
from .trials import count_trials, ranked_complete

DEFAULT_K = 3


@dataclass(frozen=True)
class WarmStart:
    source: str
    """The study whose best trials are enqueued."""
    trials: tuple[tuple[dict, dict], ...]
    """(params, user attributes) of each trial to enqueue, best first."""

    @property
    def key(self) -> str:
        return f"{self.source}:{len(self.trials)}"


def parse(text: str) -> tuple[str, int]:
    """``OTHER`` or ``OTHER:K`` -> (study name, K)."""
    name, sep, count = text.partition(":")
    check_name(name, "--warm-start")
    if not sep:
        return name, DEFAULT_K
    if not (count.isascii() and count.isdigit()) or int(count) < 1:  # '²' and '٣' are digits to str
        raise UserError(f"--warm-start {text!r}: K must be a whole number >= 1 (OTHER_STUDY:K)")
    return name, int(count)


def plan(spec: StudySpec, storage, text: str, study_name: str, target: int) -> WarmStart:
    """The trials ``--warm-start text`` enqueues into a sweep of ``target`` counted trials, checked against
    ``spec``'s space and against the trials the sweep has left to run (SweepError or UserError otherwise)."""
    source, k = parse(text)
    if source == study_name:
        raise UserError(f"--warm-start {source}: a study cannot warm-start from itself")
    other = find_study(storage, source)
    if other is None:
        raise SweepError(f"--warm-start {source}: no study of that name in the storage")
    best = ranked_complete(other)[:k]
    if not best:
        raise SweepError(f"--warm-start {source}: that study has no complete trial")
    dims = {d.name: d for d in spec.space}
    trials = []
    for t in best:
        config = t.user_attrs.get(TrialAttr.CONFIG) or t.params  # what trained: effective values
        params = {key: config[key] for key in dims if key in config}
        outside = [f"{key}={value!r}" for key, value in params.items() if not dims[key].contains(value)]
        if outside:
            raise SweepError(
                f"--warm-start {source}: trial {t.number}'s {', '.join(outside)} lie outside this study's space "
                f"({spec.path}); widen the space or warm-start from fewer trials (OTHER:K)"
            )
        trials.append((params, {TrialAttr.WARM_START: f"{source}/{t.number}"}))
    study = find_study(storage, study_name)
    if study is None or not _warm_started_from(study, source):  # a rerun enqueues nothing again
        taken = count_trials(study) if study is not None else None
        left = target - (taken.counted + taken.waiting if taken is not None else 0)
        if len(best) > left:
            # the extra ones would wait in the study, unrun, for whichever sweep comes next
            raise UserError(
                f"--warm-start {text}: enqueues {len(best)} trial(s), but this sweep has {max(left, 0)} left to run "
                f"(--trials {target}); warm-start from at most {max(left, 0)} (OTHER:K), or raise --trials"
            )
    return WarmStart(source, tuple(trials))


def enqueue(study, warm: WarmStart) -> int:
    """Enqueue ``warm``'s trials unless this study was already warm-started from that source; returns how
    many were enqueued. Call it under the ask lock."""
    done = list(study.user_attrs.get(StudyAttr.WARM_STARTS, []))
    if _warm_started_from(study, warm.source):
        return 0
    for params, attrs in warm.trials:
        study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=False)
    study.set_user_attr(StudyAttr.WARM_STARTS, [*done, warm.key])
    return len(warm.trials)


def _warm_started_from(study, source: str) -> bool:
    return any(entry.split(":")[0] == source for entry in study.user_attrs.get(StudyAttr.WARM_STARTS, []))
