"""What a report shows, read once: each study's trials as rows (effective parameters, test metrics,
seeds, data digests), ranked on validation, cross-checked against the MLflow runs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import optuna

from cvstudy.trainers.config import AUG_OPS, COST_METRICS, TrainConfig
from cvstudy.trainers.errors import CvstudyError
from cvstudy.trainers.metrics import CI_HIGH, CI_LOW, SCALARS

from ..errors import CompareError, ReportError
from ..stats import with_interval
from ..sweep.storage import find_study, study_names
from ..sweep.trials import (
    Counts,
    changed_params,
    count_trials,
    current_trials,
    effective_params,
    expected_run_statuses,
    first_value,
    format_params,
    pareto_ranked,
)
from ..tracking.client import Tracker, metric_history, study_runs
from ..tracking.predictions import Comparison, load_side, paired_over_images
from ..tracking.schema import Role, StudyAttr, Tag, TrialAttr, run_metrics
from .confirmation import ConfirmSummary, summarise

# The original study's published table (README of DSBA_CV_Study): accuracy, macro precision, macro recall,
# and its "F1" = harmonic mean of macro precision and macro recall (not scikit-learn's macro F1).
PUBLISHED = {  # study -> (model, pretrained) -> (accuracy, precision, recall, F1) as published
    "dsba-cv-study": {
        ("resnet50", False): (0.68, 0.7200, 0.6815, 0.7002),
        ("resnet50", True): (0.68, 0.7261, 0.6809, 0.7028),
        ("vit_s16", False): (0.49, 0.5777, 0.4932, 0.5321),
        ("vit_s16", True): (0.98, 0.9824, 0.9821, 0.9822),
    }
}


@dataclass
class TrialRow:
    study: str
    number: int
    state: str
    value: float | None
    params: dict
    """The searched settings as they trained (effective values, after overrides and flags)."""
    run_id: str | None
    test: dict = field(default_factory=dict)
    epochs: int | None = None
    seconds: float | None = None
    config: dict = field(default_factory=dict)
    changed: dict = field(default_factory=dict)
    """Searched settings an override changed after sampling: {key: (sampled, effective)}."""
    seeds: int = 1
    """Training seeds behind the row's figures (a study's ``repeats``)."""
    std: dict = field(default_factory=dict)
    """Standard deviation over seeds of the test metrics (and ``objective``), when seeds > 1."""
    data: tuple = ()
    """The run's (train, validation, test) data digests."""
    per_seed: list = field(default_factory=list)
    """Test balanced accuracy of each finished seed run, when seeds > 1."""
    augmentation: dict = field(default_factory=dict)
    """The augmentation operations' effective values the trial trained with (``AugConfig``)."""
    cost: dict = field(default_factory=dict)
    """The run's cost metrics (``trainers.cost.COST_METRICS``; means over seeds with repeats)."""
    device_seconds: float | None = None
    """Device seconds the trial trained and validated, over all its seeds, pruned or not."""
    finished: float | None = None
    """When the trial finished (seconds since the epoch), for the time-to-accuracy curve."""
    values: dict = field(default_factory=dict)
    """A complete trial's value of each objective, ``{metric: value}`` (``value`` is the first)."""
    pareto_optimal: bool = False
    """On the study's Pareto front (``trials.pareto_ranked``; with one objective: ties the best)."""

    checks: dict = field(default_factory=dict)
    """The run's set-up warnings (``trainers.loop.reviewer_checks``), ``{name: line}``, from its tags."""
    intervals: dict = field(default_factory=dict)
    """A single-seed run's 95 % interval of each test metric over the test images, ``{metric: (low,
    high)}`` (``trainers.intervals``); none for runs logged before cvstudy recorded them."""

    def cell(self, key: str, digits: int = 4) -> str:
        """A test metric (or ``objective``) as ``mean ± std`` when several seeds stand behind it, else
        with its test-set interval, ``0.655 [0.626, 0.684]``, rounded to what the interval supports."""
        value = self.value if key == "objective" else self.test.get(key)
        if value is None:
            return ""
        if key in self.std:
            return f"{fmt(value, digits)} ± {fmt(self.std[key], digits)}"
        if key in self.intervals:
            return with_interval(value, *self.intervals[key])
        return fmt(value, digits)

    @property
    def params_text(self) -> str:
        text = format_params(self.params)
        if self.changed:
            text += (
                " (changed by overrides: "
                + ", ".join(f"{k} sampled {a} -> {b}" for k, (a, b) in self.changed.items())
                + ")"
            )
        return text


@dataclass
class StudyData:
    name: str
    objective: str
    direction: str
    rows: list[TrialRow]
    counts: Counts
    problems: list[str]
    optuna_study: optuna.Study
    ranked: list[TrialRow] = field(default_factory=list)
    """Complete trials, best first (``trials.ranked_complete``: the one ranking sweep and predict use)."""
    confirmation: ConfirmSummary | None = None
    """The confirmation when ``cvstudy confirm`` ran on the study."""
    objectives: list[tuple[str, str]] = field(default_factory=list)
    """Every objective as ``(metric, direction)``, the first being ``objective``/``direction``."""
    reproduces: str = ""
    """The published study this one reproduces, as the study recorded it (``StudyAttr.REPRODUCES``)."""
    versus_best: dict[int, Comparison | None] = field(default_factory=dict)
    """Each group's best trial (``grouped``) against the study's best, on the same test images (``trial
    number: Comparison`` with the group's trial as B; None where either run saved no predictions or
    either has repeats)."""

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def pareto(self) -> list[TrialRow]:
        """The Pareto-optimal trials, best first."""
        return [r for r in self.ranked if r.pareto_optimal]

    @property
    def single_seed(self) -> bool:
        return all(r.seeds == 1 for r in self.ranked)

    @property
    def complete(self) -> list[TrialRow]:
        """Complete trials with a value, in trial order."""
        return [r for r in self.rows if r.state == "COMPLETE" and r.value is not None]


def load_study_data(name: str, storage, tracker: Tracker) -> StudyData:
    study = find_study(storage, name)
    if study is None:
        names = study_names(storage)
        raise ReportError(f"no study named {name!r} in the storage (studies there: {', '.join(names) or 'none'})")
    objective = study.user_attrs.get(StudyAttr.OBJECTIVE)
    metrics = study.user_attrs.get(StudyAttr.OBJECTIVES)
    if objective is None or metrics is None:
        raise ReportError(
            f"study {name!r} records no objectives: not a cvstudy sweep's study, or an early one; run `cvstudy "
            f"sweep --study {name} --trials 1` once with its study file to record them (it trains nothing new)"
        )
    objectives = list(zip(metrics, (d.name.lower() for d in study.directions)))
    exp = tracker.client.get_experiment_by_name(name)
    runs = study_runs(tracker.client, exp.experiment_id, name) if exp is not None else {}
    every_run_id = {t.user_attrs.get(TrialAttr.MLFLOW_RUN_ID) for t in study.get_trials(deepcopy=False)}
    seed_runs: dict[str, list] = {}
    for r in runs.values():
        if r.data.tags.get(Tag.ROLE) == Role.SEED:
            seed_runs.setdefault(r.data.tags.get(Tag.PARENT_RUN_ID, ""), []).append(r)
    rows, problems = [], []
    for t in current_trials(study):
        run_id = t.user_attrs.get(TrialAttr.MLFLOW_RUN_ID)
        row = TrialRow(
            name,
            t.number,
            t.state.name,
            first_value(t),
            effective_params(t),
            run_id,
            seconds=(t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else None,
            changed=changed_params(t),
            finished=t.datetime_complete.timestamp() if t.datetime_complete else None,
            augmentation=effective_operations(t.user_attrs.get(TrialAttr.CONFIG) or {}),
            values=dict(zip(metrics, t.values)) if t.state.name == "COMPLETE" and t.values else {},
        )
        run = runs.get(run_id) if run_id else None
        if run_id is None:
            if t.state.name in ("COMPLETE", "PRUNED"):
                problems.append(f"trial {t.number} ({t.state.name}) names no MLflow run")
        elif run is None:
            problems.append(
                f"trial {t.number}: MLflow run {run_id} not found among study {name}'s runs at {tracker.shown}"
            )
        else:
            problems += _fill_from_run(row, t, run, seed_runs.get(run_id, []), tracker.client)
        rows.append(row)
    # seed runs are nested under their trial's run, and checked there; superseded ones name their successor
    roles = (Role.STUDY, Role.SEED, Role.SUPERSEDED)
    orphans = [rid for rid, r in runs.items() if r.data.tags.get(Tag.ROLE) not in roles and rid not in every_run_id]
    if orphans:
        problems.append(f"{len(orphans)} MLflow run(s) of study {name} match no trial: {', '.join(orphans[:3])}")
    by_number = {r.number: r for r in rows}
    order = pareto_ranked(study)  # ranked once: the leaderboard's order and the front
    for t, rank in order:
        by_number[t.number].pareto_optimal = rank == 0
    ranked = [by_number[t.number] for t, _ in order]
    confirmation = summarise(tracker.client, name, [t.number for t, _ in order])
    data = StudyData(
        name,
        objective,
        objectives[0][1],
        rows,
        count_trials(study),
        problems,
        study,
        ranked,
        confirmation,
        objectives,
        reproduces=str(study.user_attrs.get(StudyAttr.REPRODUCES, "")),
    )
    data.versus_best = versus_best(data, tracker.client)
    return data


def versus_best(data: StudyData, client) -> dict[int, Comparison | None]:
    """The study's best against each other group's best, paired on their saved test predictions."""
    if not data.ranked:
        return {}
    best = data.ranked[0]
    out: dict[int, Comparison | None] = {}
    for _, r in grouped(data):
        if r.number == best.number:
            continue
        out[r.number] = None
        if best.seeds == 1 and r.seeds == 1 and best.run_id and r.run_id:
            try:
                out[r.number] = paired_over_images(load_side(client, best.run_id), load_side(client, r.run_id))
            except CompareError:  # logged before predictions were saved, or on another test set
                pass
    return out


def _fill_from_run(row: TrialRow, t, run, seed_runs: list, client) -> list[str]:
    """Fill ``row`` from trial ``t``'s MLflow run; returns the mismatches between the two."""
    problems = []
    run_id, tags, m = run.info.run_id, run.data.tags, run_metrics(run)
    if tags.get(Tag.TRIAL_NUMBER) != str(t.number):
        problems.append(f"trial {t.number}: run {run_id} is tagged as trial {tags.get(Tag.TRIAL_NUMBER)}")
    if tags.get(Tag.ROLE) != Role.TRIAL:
        problems.append(f"trial {t.number}: run {run_id} has role {tags.get(Tag.ROLE)!r}, not {Role.TRIAL!r}")
    expected = expected_run_statuses(t)
    if expected and run.info.status not in expected:
        problems.append(f"trial {t.number} is {t.state.name} but run {run_id} is {run.info.status}")
    row.test = {k: m[f"test_{k}"] for k in SCALARS if f"test_{k}" in m}
    row.seeds = int(m.get("seeds", 1))
    row.intervals = {  # a single seed's: with repeats, the spread over seeds is what the row shows
        k: (m[f"test_{k}_{CI_LOW}"], m[f"test_{k}_{CI_HIGH}"])
        for k in SCALARS
        if row.seeds == 1 and f"test_{k}_{CI_LOW}" in m and f"test_{k}_{CI_HIGH}" in m
    }
    row.epochs = int(m["epochs_run"]) if "epochs_run" in m else None
    row.config = dict(run.data.params)
    row.data = tuple(tags.get(Tag.data_digest(split)) for split in ("train", "val", "test"))
    prefix = Tag.check("")
    row.checks = {k.removeprefix(prefix): v for k, v in tags.items() if k.startswith(prefix)}
    row.cost = {k: m[k] for k in COST_METRICS if k in m}
    row.device_seconds = _device_seconds(client, run_id, m, row.seeds)
    resumed_at = int(t.user_attrs.get(TrialAttr.RESUME_EPOCH) or 0)
    if row.seconds is not None and resumed_at and t.user_attrs.get(TrialAttr.RESUME_RUN_ID) == run_id:
        # a trial resumed in its run trained the epochs before it too: their seconds as the run logged
        # them (not the pause between), so seconds and device seconds count the same epochs
        history = metric_history(client, run_id, "epoch_seconds")
        row.seconds += sum(h.value for h in history if h.step < resumed_at)
    if row.seeds > 1:
        row.std = {k: m[f"test_{k}_std"] for k in SCALARS if f"test_{k}_std" in m}
        if "objective_std" in m:
            row.std["objective"] = m["objective_std"]
        finished = [r for r in seed_runs if r.info.status == "FINISHED"]
        row.per_seed = [
            value for value in (run_metrics(r).get("test_balanced_accuracy") for r in finished) if value is not None
        ]
        if t.state.name == "COMPLETE" and len(finished) != row.seeds:
            problems.append(
                f"trial {t.number}: run {run_id} averages {row.seeds} seeds but "
                f"{len(finished)} finished seed runs are nested under it"
            )
    return problems


def _device_seconds(client, run_id: str, metrics: dict, seeds: int) -> float | None:
    """A trial's device time over its seeds: its logged ``train_device_seconds``, or (pruned and failed
    runs, which end before it is logged) the sum of its epochs' ``epoch_seconds``."""
    if "train_device_seconds" in metrics:
        return metrics["train_device_seconds"] * seeds  # a mean over seeds with repeats
    history = metric_history(client, run_id, "epoch_seconds")
    if not history:
        return None
    if seeds == 1:
        return sum(m.value for m in history)
    reporting = {m.step: m.value for m in metric_history(client, run_id, "seeds_reporting")}
    return sum(m.value * reporting.get(m.step, 1) for m in history)  # means over the seeds reporting


def effective_operations(config: dict) -> dict:
    """The operation values a trial's recorded configuration trained with (presets resolved); none for
    a trial that never started (no configuration recorded), rather than the defaults' values."""
    if not config:
        return {}
    keys = TrainConfig.keys()
    try:
        aug = TrainConfig.from_flat({k: v for k, v in config.items() if keys.get(k) == "augmentation"}).augmentation
    except CvstudyError:
        return {}
    return {op: getattr(aug, op) for op in AUG_OPS}


def fmt(v, digits=4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def group_key(r: TrialRow) -> tuple:
    c = r.config
    return (c.get("model", "?"), c.get("pretrained", "?"), c.get("aug", "?"))


def grouped(data: StudyData) -> list[tuple[tuple, TrialRow]]:
    """Best complete trial (by the validation objective) of each model x pretrained x augmentation group."""
    best: dict[tuple, TrialRow] = {}
    for r in data.ranked:
        best.setdefault(group_key(r), r)
    return sorted(best.items())
