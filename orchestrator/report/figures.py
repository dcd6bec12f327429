"""The report's figures: Optuna's plots on the effective configurations, the best trial's confusion
matrix and per-class recall, studies side by side, and per-seed spreads. Each returns PNG bytes."""

from __future__ import annotations

import io
import json
import random
import warnings
from pathlib import Path

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.importance import FanovaImportanceEvaluator
from optuna.visualization import matplotlib as ovm

from ..stats import t_interval
from ..tracking.client import Tracker
from ..tracking.figures import confusion_figure, plt, restyle, styled  # tracking.figures: the headless backend
from .data import StudyData

IMPORTANCE_TRIALS = 500  # fANOVA's time grows faster than its trials: 20 s of the 55 at 3,000 on 2 cores


def importance_sample(study: optuna.Study, limit: int = IMPORTANCE_TRIALS) -> tuple[optuna.Study, str]:
    """The trials fANOVA ranks the settings on: all of them, or past ``limit`` a seeded random sample
    of ``limit`` (the same each time the report is written); and what the figure's title says of it."""
    trials = study.get_trials(deepcopy=False)
    if len(trials) <= limit:
        return study, f"fANOVA on the {len(trials)} complete trials"
    sample = optuna.create_study(direction=study.direction)
    sample.add_trials(random.Random(0).sample(trials, limit))  # a seeded draw of trials, no secret  # nosec B311
    return sample, f"fANOVA on {limit:,} of the {len(trials):,} complete trials, drawn at random (seed 0)"


def importance_evaluator() -> FanovaImportanceEvaluator:
    """Optuna's fANOVA, seeded: a report gives the same importances each time it is written."""
    return FanovaImportanceEvaluator(seed=0)


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def effective_study(data: StudyData):
    """An in-memory copy of the study's complete trials carrying the *effective* values of the searched
    settings, for Optuna's plots. A distribution is widened where an override set a value outside it."""
    source = {t.number: t for t in data.optuna_study.get_trials(deepcopy=False)}
    complete = data.complete
    dists: dict = {}
    for r in complete:
        for key, value in r.params.items():
            d = dists.get(key) or source[r.number].distributions[key]
            if isinstance(d, CategoricalDistribution):
                d = d if value in d.choices else CategoricalDistribution([*d.choices, value])
            elif isinstance(d, (FloatDistribution, IntDistribution)) and not d.low <= value <= d.high:
                d = type(d)(min(d.low, value), max(d.high, value), log=d.log)
            dists[key] = d
    study = optuna.create_study(direction=data.optuna_study.directions[0])  # the first objective's
    for r in complete:
        study.add_trial(
            optuna.trial.create_trial(params=r.params, distributions={k: dists[k] for k in r.params}, value=r.value)
        )
    return study


def figures(data: StudyData, tracker: Tracker) -> dict[str, bytes | str]:
    """Named PNGs: optimisation history, importances, parallel coordinates, best confusion matrix and
    per-class recall; in place of each that cannot be drawn, the reason, for the report to say."""
    out: dict[str, bytes | str] = {}
    complete = [r for r in data.rows if r.state == "COMPLETE"]
    study = effective_study(data)
    with warnings.catch_warnings(), styled():
        warnings.simplefilter("ignore")
        if complete:
            first = (lambda t: t.values[0]) if data.multi_objective else None  # Optuna plots one objective
            ax = ovm.plot_optimization_history(data.optuna_study, target=first, target_name=data.objective)
            restyle(ax, integer_x=True)
            out["history"] = png(ax.figure)
        else:
            out["history"] = "needs a complete trial; none so far"
        if len(complete) >= 2 and complete[0].params:
            try:
                sample, said = importance_sample(study)
                ax = ovm.plot_param_importances(sample, evaluator=importance_evaluator(), target_name=data.objective)
                ax.set_title(f"Hyperparameter importances ({said})", loc="left", fontsize=9)  # Optuna's, with n
                restyle(ax)
                out["importances"] = png(ax.figure)
            except (RuntimeError, ValueError, ZeroDivisionError):
                out["importances"] = "the complete trials' settings vary too little to rank them"
            ax = ovm.plot_parallel_coordinate(study, target_name=data.objective)
            restyle(ax)
            out["parallel"] = png(ax.figure)
        else:
            why = (
                "the study searches no settings"
                if complete and not complete[0].params
                else f"needs at least 2 complete trials; {len(complete)} so far"
            )
            out["importances"] = out["parallel"] = why
        ranked = data.ranked
        if not (ranked and ranked[0].run_id):
            out["confusion"] = out["recall"] = "needs a complete trial with its MLflow run; none so far"
            return out
        try:
            path = tracker.client.download_artifacts(ranked[0].run_id, "confusion_matrix.json")
            cm = json.loads(Path(path).read_text())
        except Exception as err:  # noqa: BLE001 -- artifact store unreachable: the report says so and goes on
            out["confusion"] = out["recall"] = (
                f"the best trial's confusion matrix could not be read ({str(err).splitlines()[0][:150]})"
            )
            return out
        out["confusion"] = png(
            confusion_figure(cm["matrix"], cm["labels"], title=f"{data.name} trial {ranked[0].number}: test")
        )
        m = np.asarray(cm["matrix"], dtype=float)
        recall = np.diag(m) / np.maximum(m.sum(1), 1)
        fig, ax = plt.subplots(figsize=(6, 2.6))
        ax.bar(cm["labels"], recall, color="#3b7dd8")
        ax.grid(axis="y")
        ax.set_ylim(0, 1)
        ax.set_ylabel("test recall")
        ax.set_xlabel("class")
        ax.set_title("per-class recall of the best trial")
        out["recall"] = png(fig)
    return out


@styled()
def comparison_figure(studies: list[StudyData]) -> bytes:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for data in studies:
        values = [
            r.value for r in sorted(data.rows, key=lambda r: r.number) if r.value is not None and r.state == "COMPLETE"
        ]
        best = [
            max(values[: i + 1]) if data.direction == "maximize" else min(values[: i + 1]) for i in range(len(values))
        ]
        ax.plot(range(1, len(best) + 1), best, marker="o", markersize=3, label=data.name)
    ax.set_xlabel("complete trials")
    ax.set_ylabel("best validation objective so far")
    ax.legend()
    ax.grid(alpha=0.3)
    return png(fig)


@styled()
def spread_figure(title: str, groups: list[tuple[str, list[float]]]) -> bytes:
    """Per-seed test balanced accuracy of each configuration: one dot per seed, the mean and its 95 %
    t interval beside them."""
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(groups), 3.4))
    rng = np.random.default_rng(0)  # horizontal jitter only
    for i, (_, values) in enumerate(groups):
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(values)), values, s=18, alpha=0.75, color="#3b7dd8", zorder=3)
        iv = t_interval(values)
        ax.errorbar(
            i + 0.28,
            iv.mean,
            yerr=[[iv.mean - iv.low], [iv.high - iv.mean]],
            fmt="o",
            color="black",
            capsize=4,
            zorder=4,
        )
    ax.set_xticks(range(len(groups)), [label for label, _ in groups], fontsize=8)
    ax.set_ylabel("test balanced accuracy")
    ax.set_title(f"{title}: one dot per seed; black: mean and 95 % interval", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return png(fig)
