"""``cvstudy confirm STUDY --top N --seeds S``: retrain a study's best configurations with fresh seeds,
and say with how much confidence the winner beats the others and the baseline.

- Which configurations: the study's ``N`` best complete trials other than its baseline (ranked on
  validation, the one ranking sweep, report and predict use) plus its baseline trial when it has one;
  fewer when the study has fewer, said in one line. Each retrains with the
  configuration that trained in the sweep (its ``config`` user attribute: overrides and flags applied),
  for its full epochs, without pruning.
- Which seeds: ``CONFIRM_SEED``, ``CONFIRM_SEED + 1``, ... for every configuration: fresh (a sweep's trials
  use the study seed and the next ``repeats - 1``) and shared, so seed ``i`` of two configurations pairs
  them. The validation split is each trial's own (split seed fixed), the test split is touched once per run.
- Where: MLflow experiment ``<study>-confirm``: one parent run per study (tagged with the study and its
  sweep's parent run), one run per configuration under it (mean, std and 95 % interval of the test
  metrics), one run per seed under that. Everything is read back from MLflow, so a rerun resumes: seeds
  with a FINISHED run are skipped, a run left RUNNING by a dead process is marked KILLED / INTERRUPTED and
  its seed trains again (as a sweep's trial would). Confirmation runs keep no checkpoint (20 ResNet-50
  checkpoints would be 1.9 GB); the confirmed trials keep theirs.
- Statistics: a t interval per configuration (mean ± t(0.975, S-1) · std / √S) and, for the winner (the
  study's best trial on validation) against each other configuration, a paired t-test over seeds on
  test balanced accuracy (``scipy.stats.ttest_rel``) with the mean difference and its 95 % interval;
  likewise for every other pair. Paired, because seed i of both shares initial randomness stream and
  data; t rather than Wilcoxon, whose smallest two-sided p with 5 pairs is 0.0625.
"""

from __future__ import annotations

import os

import optuna
from rich.console import Console

from cvstudy.trainers.config import TrainConfig
from cvstudy.trainers.data import DatasetCache

from ..boundaries import redact
from ..errors import ConfirmError
from ..processes import HOST, running_here
from ..report.confirmation import (
    COMPARED,
    CONFIRMED_METRICS,
    ConfirmSummary,
    comparison_lines,
    confirm_experiment,
    summarise,
    summary_dict,
)
from ..report.tables import summary_table
from ..sweep.display import epoch_lines
from ..sweep.storage import default_storage, find_study, open_storage
from ..sweep.trials import baseline_trial, effective_params, format_params, ranked_complete
from ..tracking.client import TrackedRun, Tracker, end_run, study_runs
from ..tracking.fitting import fit_and_log
from ..tracking.results import provenance_tags
from ..tracking.schema import Role, StudyAttr, Tag, TrialAttr

CONFIRM_SEED = 1000  # first confirmation seed: far above any sweep seed (study seed + repeats)


def configurations(ranked: list, baseline, top: int) -> tuple[list, str | None]:
    """The ``top`` best complete trials other than the baseline, then the baseline (if the study has
    one): ``--top N`` counts what is compared with the baseline, never the baseline itself. With a note
    when the study holds fewer than ``top`` such trials."""
    others = [t for t in ranked if baseline is None or t.number != baseline.number][:top]
    chosen = others + ([baseline] if baseline is not None else [])
    if len(others) >= top:
        return chosen, None
    besides = " besides its baseline" if baseline is not None else ""
    if not others:
        return chosen, "no complete trial besides its baseline: the baseline is confirmed alone, nothing is compared"
    return chosen, f"{len(others)} complete trial(s){besides}, fewer than --top {top}: confirming {len(others)}"


def confirm(
    study_name: str,
    top: int = 3,
    seeds: int = 5,
    storage_url: str | None = None,
    tracking_uri: str | None = None,
    device: str = "auto",
    console: Console | None = None,
) -> ConfirmSummary:
    console = console or Console()
    if top < 1 or seeds < 2:
        raise ConfirmError(f"--top must be >= 1 and --seeds >= 2 (a spread needs two seeds); got {top}, {seeds}")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    tracker = Tracker(tracking_uri)
    storage_url = storage_url or default_storage(tracker.uri)
    study = find_study(open_storage(storage_url), study_name)
    if study is None:
        raise ConfirmError(f"no study named {study_name!r} in {redact(storage_url)}")
    ranked = ranked_complete(study)
    if not ranked:
        raise ConfirmError(f"study {study_name!r} has no complete trial to confirm")
    chosen, shortfall = configurations(ranked, baseline_trial(study), top)
    if shortfall:
        console.print(f"study {study_name!r}: {shortfall}", highlight=False)
    for t in chosen:
        TrainConfig.from_flat({**t.user_attrs[TrialAttr.CONFIG], "device": device})  # a bad --device fails here

    experiment = confirm_experiment(study_name)
    runs = study_runs(tracker.client, tracker.experiment_id(experiment), study_name)
    _end_dead_runs(tracker, runs, study_name)
    base_tags = {**provenance_tags(), Tag.STUDY: study_name, Tag.STORAGE: redact(storage_url), Tag.COMMAND: "confirm"}
    parent = _find_or_create(
        tracker,
        experiment,
        runs,
        {
            **base_tags,
            Tag.ROLE: Role.CONFIRM,
            Tag.STUDY_RUN_ID: study.user_attrs.get(StudyAttr.PARENT_RUN_ID, ""),
            Tag.NOTE: f"Confirmation of study {study_name}: its best configurations retrained with fresh seeds",
        },
        f"confirm-{study_name}",
        None,
    )
    config_runs, todo = _plan_seeds(
        tracker, experiment, runs, chosen, base_tags, parent, [CONFIRM_SEED + i for i in range(seeds)]
    )
    console.print(
        f"confirming study {study_name!r}: trials {', '.join(str(t.number) for t in chosen)} x {seeds} seeds "
        f"({len(todo)} runs to train), MLflow experiment {experiment!r} at {tracker.shown}"
    )
    try:
        _train_seeds(tracker, experiment, todo, config_runs, base_tags, device, console)
    except BaseException:  # Ctrl-C, SIGTERM, an error: the seed run says why; its parents must not stay RUNNING
        for run_id in (*config_runs.values(), parent):
            end_run(tracker.client, run_id, "INTERRUPTED", {Tag.ERROR: "confirm stopped before all seeds ran"})
        raise
    summary = summarise(tracker.client, study_name, [t.number for t in ranked])
    if summary is None:  # every seed trained above, so this means the runs could not be read back
        raise ConfirmError(f"the confirmation runs of {study_name!r} could not be read back from {tracker.shown}")
    _record(tracker, parent, summary)
    console.print(summary_table(summary))
    for line in comparison_lines(summary):
        console.print(line, highlight=False)
    return summary


def _end_dead_runs(tracker: Tracker, runs: dict, study_name: str) -> None:
    """Runs left RUNNING by a confirm that is gone: refuse if it lives, else mark them interrupted."""
    for r in list(runs.values()):
        if r.info.status == "RUNNING" and r.data.tags.get(Tag.ROLE) == Role.CONFIRM_SEED:
            pid, host = int(r.data.tags.get(Tag.PID, 0)), r.data.tags.get(Tag.HOST)
            if running_here(host, pid):
                raise ConfirmError(f"a confirmation of {study_name!r} is running (pid {pid}); wait for it or stop it")
            end_run(tracker.client, r.info.run_id, "INTERRUPTED", {Tag.ERROR: "its confirm process died"})
            runs[r.info.run_id] = tracker.client.get_run(r.info.run_id)


def _find_or_create(tracker: Tracker, experiment: str, runs: dict, tags: dict, name: str, parent: str | None) -> str:
    """The run with these role and trial tags under ``parent`` (RUNNING again), else a new one."""
    key = {k: v for k, v in tags.items() if k in (Tag.ROLE, Tag.CONFIRMS_TRIAL)}
    for r in runs.values():
        if all(r.data.tags.get(k) == v for k, v in key.items()) and r.data.tags.get(Tag.PARENT_RUN_ID) == parent:
            tracker.client.update_run(r.info.run_id, status="RUNNING")
            return r.info.run_id
    return tracker.create_run(experiment, name, tags, parent)


def _plan_seeds(
    tracker: Tracker, experiment: str, runs: dict, chosen: list, base_tags: dict, parent: str, seed_list: list[int]
) -> tuple[dict[int, str], list]:
    """Each chosen trial's configuration run, and the (trial, label, seed) runs not yet FINISHED."""
    todo, config_runs = [], {}
    for t in chosen:
        label = f"trial-{t.number:03d}" + (" (baseline)" if t.user_attrs.get(TrialAttr.BASELINE) else "")
        config_runs[t.number] = _find_or_create(
            tracker,
            experiment,
            runs,
            {
                **base_tags,
                Tag.ROLE: Role.CONFIRM_CONFIG,
                Tag.CONFIRMS_TRIAL: str(t.number),
                Tag.BASELINE: str(bool(t.user_attrs.get(TrialAttr.BASELINE))).lower(),
                Tag.PARAMS: format_params(effective_params(t))[:5000],
                Tag.TRIAL_RUN_ID: t.user_attrs.get(TrialAttr.MLFLOW_RUN_ID, ""),
            },
            label,
            parent,
        )
        done = {
            int(r.data.tags.get(Tag.SEED, -1))
            for r in runs.values()
            if r.data.tags.get(Tag.PARENT_RUN_ID) == config_runs[t.number] and r.info.status == "FINISHED"
        }
        todo += [(t, label, s) for s in seed_list if s not in done]
    return config_runs, todo


def _train_seeds(
    tracker: Tracker, experiment: str, todo: list, config_runs: dict, base_tags: dict, device: str, console: Console
) -> None:
    """Train each (trial, label, seed) of ``todo`` in its own run nested under its configuration's run."""
    datasets = DatasetCache()
    for i, (t, label, seed) in enumerate(todo, 1):
        flat = t.user_attrs[TrialAttr.CONFIG]
        split_seed = flat.get("split_seed")
        config = TrainConfig.from_flat(
            {**flat, "seed": seed, "device": device, "split_seed": flat["seed"] if split_seed is None else split_seed}
        )
        data = datasets.get(config)
        metric = config.run.select_metric
        tags = {
            **base_tags,
            Tag.ROLE: Role.CONFIRM_SEED,
            Tag.CONFIRMS_TRIAL: str(t.number),
            Tag.SEED: str(seed),
            Tag.PID: str(os.getpid()),
            Tag.HOST: HOST,
            Tag.MODEL: config.network.model,
            Tag.DATA: data.source,
        }
        console.print(f"[{i}/{len(todo)}] {label} seed {seed}", highlight=False)
        with tracker.run(experiment, f"trial-{t.number:03d}-seed{seed}", tags, config_runs[t.number]) as run:
            progress = epoch_lines(console, f"[{i}/{len(todo)}] {label} seed {seed}", config.optim.epochs, metric)
            result = fit_and_log(run, config, data, on_epoch=progress, checkpoint=False)  # the trials keep theirs
            run.end("COMPLETE", {Tag.OBJECTIVE: result.history[result.best_epoch][config.run.select_metric]})


def _record(tracker: Tracker, parent: str, summary: ConfirmSummary) -> None:
    """Each configuration's intervals on its run, the whole summary on the parent; all FINISHED."""
    for c in summary.configs:
        metrics: dict[str, float] = {"seeds": len(c.per_seed.get(COMPARED, {}))}
        for m in CONFIRMED_METRICS:
            iv = c.interval(m)
            if iv is not None:
                metrics.update(
                    {
                        f"test_{m}": iv.mean,
                        f"test_{m}_std": iv.std,
                        f"test_{m}_ci_low": iv.low,
                        f"test_{m}_ci_high": iv.high,
                    }
                )
        TrackedRun(tracker.client, c.run_id).log_metrics(metrics)
        end_run(tracker.client, c.run_id, "COMPLETE")
    tracker.client.log_dict(parent, summary_dict(summary), "confirmation.json")
    end_run(tracker.client, parent, "COMPLETE")
