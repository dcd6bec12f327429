"""The one way cvstudy trains and records: ``fit`` (or a configuration's seeds with ``fit_together``)
with every epoch, the result and the checkpoint logged to MLflow runs."""

from __future__ import annotations

import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlflow.entities import Param

from cvstudy.trainers.config import TrainConfig
from cvstudy.trainers.loop import FitResult, fit, fit_together
from cvstudy.trainers.metrics import CI_HIGH, CI_LOW

from ..processes import raise_if_interrupted
from ..stats import mean_std
from .client import TrackedRun, Tracker, metric_history
from .results import final_metrics, log_inputs, log_result
from .schema import Role, Tag
from .states import delete_state


def fit_and_log(
    run: TrackedRun, config: TrainConfig, data, on_epoch=None, checkpoint: bool = True, resume=None, state=None
) -> FitResult:
    """``fit`` with every epoch, the result and the checkpoint logged to ``run``. ``on_epoch(row) ->
    bool`` may ask to stop (then the test split is evaluated on the selected checkpoint, as at the end),
    or raise to abandon the run (the sweep's pruning raises ``optuna.TrialPruned``: no test evaluation,
    no checkpoint; the epochs so far are logged). ``checkpoint=False`` logs no model (confirmation
    runs: their statistics are the point). ``state`` (a ``states.StateKeeper``) keeps the run's resume
    state in its artifacts, written again on Ctrl-C / SIGTERM and deleted when the run finishes;
    ``resume`` continues from one in the same run, its curves at the following steps."""
    logged: set[int] = set()
    if resume is None:
        log_inputs(run, config, data)
    else:  # epochs recorded after the saved state are recomputed, bit for bit: record each step once
        logged = {m.step for m in metric_history(run.client, run.run_id, "train_loss")}

    def hook(row: dict) -> bool:
        if int(row["epoch"]) not in logged:
            run.log_epoch(row)
        raise_if_interrupted()  # after the epoch is logged: the resumed run continues from the next
        return bool(on_epoch(row)) if on_epoch is not None else False

    with tempfile.TemporaryDirectory(prefix="cvstudy-ckpt-") as checkpoint_dir:
        try:
            result = fit(
                config, data, hook, checkpoint_dir=checkpoint_dir if checkpoint else None, resume=resume, on_state=state
            )
        except KeyboardInterrupt:
            if state is not None:
                state.flush()  # the newest epoch, if it was only held in memory
            raise
        log_result(run, result, data.train_x.shape[1:], data.test_y)
    if state is not None:
        delete_state(run.client, run.run_id)
    return result


def seed_configs(config: TrainConfig, repeats: int) -> list[TrainConfig]:
    """A configuration's ``repeats`` training seeds: seed, seed + 1, ...; the validation split stays the
    configuration's own (split_seed fixed), so its seeds are compared on the same images."""
    split_seed = config.split[2]  # (data, val_fraction, split_seed)
    return [
        TrainConfig.from_flat({"seed": config.run.seed + k, "split_seed": split_seed}, base=config)
        for k in range(repeats)
    ]


@dataclass
class SeedResults:
    results: list[FitResult]
    run_ids: list[str]
    """The seeds' MLflow runs, in seed order."""
    best: int
    """Index of the seed best on validation: the one whose checkpoint is kept."""
    summary: dict[str, float]
    """Mean and ``_std`` of every final metric, as logged on the parent run."""


def fit_seeds_and_log(
    tracker: Tracker,
    experiment: str,
    parent: TrackedRun,
    name: str,
    configs: list[TrainConfig],
    data,
    on_epoch=None,
    tags: dict | None = None,
    ends: dict | None = None,
) -> SeedResults:
    """A configuration's seeds trained together (``fit_together``), each logged to its own MLflow run
    nested under ``parent``. ``parent`` gets each epoch's mean over seeds (``on_epoch`` sees that mean
    row), then mean and ``_std`` of every final metric, ``seeds``, the test confusion matrix summed over
    seeds, and the checkpoint only of the seed best on validation (``Tag.CHECKPOINT_RUN_ID``).
    Seed runs are named ``<name>-seed<N>``."""
    metric = configs[0].run.select_metric
    log_inputs(parent, configs[0], data)
    parent.client.log_batch(parent.run_id, params=[Param("seeds", ",".join(str(c.run.seed) for c in configs))])
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="cvstudy-ckpt-") as tmp:
        runs = []
        for config in configs:
            seed_tags = {**(tags or {}), Tag.ROLE: Role.SEED, Tag.SEED: str(config.run.seed)}
            run = stack.enter_context(
                tracker.run(experiment, f"{name}-seed{config.run.seed}", seed_tags, parent.run_id, ends)
            )
            log_inputs(run, config, data)
            runs.append(run)

        def hook(rows: dict[int, dict]) -> bool:
            for i, row in rows.items():
                runs[i].log_epoch(row)
            raise_if_interrupted()
            keys = set.intersection(*(set(r) for r in rows.values()))
            mean = {k: float(np.mean([r[k] for r in rows.values()])) for k in keys if k != "epoch"}
            mean["epoch"] = next(iter(rows.values()))["epoch"]
            mean[f"{metric}_std"] = mean_std([r[metric] for r in rows.values()])[1]
            mean["seeds_reporting"] = len(rows)
            parent.log_epoch(mean)
            return bool(on_epoch(mean)) if on_epoch is not None else False

        dirs: list[Path | str | None] = [Path(tmp) / str(i) for i in range(len(configs))]
        results = fit_together(configs, data, hook, dirs)
        sign = 1.0 if metric == "val_loss" else -1.0
        best = min(range(len(results)), key=lambda i: (sign * results[i].history[results[i].best_epoch][metric], i))
        for i, (run, result) in enumerate(zip(runs, results)):
            if i != best:
                result.checkpoint = None  # one checkpoint per trial: the seed best on validation
            log_result(run, result, data.train_x.shape[1:], data.test_y)
        finals = [final_metrics(r) for r in results]
        summary = {}
        for key in finals[0]:
            if key.endswith((CI_LOW, CI_HIGH)):
                continue  # a test-set interval belongs to one seed's predictions: the seeds' spread stands here
            summary[key], summary[f"{key}_std"] = mean_std([f[key] for f in finals])
        summary["seeds"] = len(results)
        parent.log_metrics(summary)
        matrix = np.sum([r.test["confusion_matrix"] for r in results], axis=0).tolist()
        parent.log_confusion(matrix, f"test, summed over {len(results)} seeds", {"seeds": len(results)})
        parent.set_tags(
            {
                Tag.CHECKPOINT_RUN_ID: runs[best].run_id,
                Tag.SEEDS: len(results),
                Tag.STOP_REASON: ",".join(sorted({r.stop_reason for r in results})),
                # the seeds share one configuration, so one set-up's warnings stand for all
                **{Tag.check(name): said[:5000] for r in results for name, said in r.checks.items()},
            }
        )
    return SeedResults(results, [r.run_id for r in runs], best, summary)
