"""``cvstudy confirm STUDY --top N --seeds S``: retrain a study's best configurations with fresh seeds,
and say with how much confidence the winner beats the others and the baseline.

- Which configurations: the study's ``N`` best complete trials (ranked on validation, the one ranking
  sweep, report and predict use) plus its baseline trial when it has one. Each retrains with the
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
  study's best trial on validation) against each other configuration, a paired t-test over seeds on test balanced accuracy (``scipy.stats.ttest_rel``)
  with the mean difference and its 95 % interval; likewise for every other pair. Paired, because seed i of both shares initial
  randomness stream and data; t rather than Wilcoxon, whose smallest two-sided p with 5 pairs is 0.0625.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table

from .storage import open_storage, redact
from .tracking import TAG, TrackedRun, Tracker, fit_and_log, mean_std, provenance_tags
from .trials import HOST, baseline_trial, end_run, pid_alive, ranked_complete, study_runs

CONFIRM_SEED = 1000  # first confirmation seed: far above any sweep seed (study seed + repeats)
METRICS = ("balanced_accuracy", "accuracy", "macro_f1")  # reported with mean, std and interval
COMPARED = "balanced_accuracy"  # the metric of the paired comparisons (the test set is balanced)


class ConfirmError(ValueError):
    """A study that cannot be confirmed, or a confirmation already running; one line for the user."""


def confirm_experiment(study_name: str) -> str:
    return f"{study_name}-confirm"


# ----------------------------------------------------------------------------- statistics
@dataclass
class Interval:
    mean: float
    std: float
    n: int
    low: float
    high: float

    def text(self, digits: int = 3) -> str:
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f} (n={self.n})"


def t_interval(values: list[float], level: float = 0.95) -> Interval:
    """Mean, sample std and the t interval of the mean (a single value: an interval of width 0)."""
    from scipy import stats

    mean, std = mean_std(values)
    n = len(values)
    half = stats.t.ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n) if n > 1 else 0.0
    return Interval(mean, std, n, mean - half, mean + half)


@dataclass
class Paired:
    a: str
    b: str
    seeds: int
    difference: Interval
    """a - b over paired seeds."""
    p_value: float
    test: str = "paired t-test"

    @property
    def significant(self) -> bool:
        return self.p_value < 0.05


def paired(a_label: str, a: dict[int, float], b_label: str, b: dict[int, float]) -> Paired | None:
    """Paired t-test of a - b over the seeds both have (None with fewer than 2 pairs)."""
    from scipy import stats

    common = sorted(set(a) & set(b))
    if len(common) < 2:
        return None
    x, y = [a[s] for s in common], [b[s] for s in common]
    diff = [u - v for u, v in zip(x, y)]
    p = 1.0 if all(d == diff[0] == 0 for d in diff) else float(stats.ttest_rel(x, y).pvalue)
    return Paired(a_label, b_label, len(common), t_interval(diff), p if not math.isnan(p) else 1.0)


# ----------------------------------------------------------------------------- reading back
@dataclass
class Confirmed:
    """One configuration's confirmation: its seeds' test metrics."""

    trial: int
    label: str
    params: str
    baseline: bool
    run_id: str
    per_seed: dict[str, dict[int, float]] = field(default_factory=dict)
    """metric -> {seed: value}, FINISHED seed runs only."""
    data_digests: set = field(default_factory=set)

    def interval(self, metric: str) -> Interval | None:
        values = list(self.per_seed.get(metric, {}).values())
        return t_interval(values) if values else None


@dataclass
class ConfirmSummary:
    study: str
    configs: list[Confirmed]
    winner: Confirmed
    """The best-ranked confirmed configuration (the study's best trial on validation)."""
    comparisons: list[Paired]
    parent_run_id: str | None = None

    @property
    def mixed_data(self) -> bool:
        return len(self.data_labels()) > 1

    def data_labels(self) -> dict[tuple, str]:
        """``{digests: "A"}`` for each distinct (train, val, test) data among the confirmation's runs."""
        digests = sorted({d for c in self.configs for d in c.data_digests}, key=str)
        return {d: chr(ord("A") + i) for i, d in enumerate(digests)}


def summarise(client, study_name: str, ranked_numbers: list[int] | None = None) -> ConfirmSummary | None:
    """A study's confirmation as MLflow records it (None when it has none). ``ranked_numbers``: the
    study's trials best first, to name the winner (else the configuration with the lowest rank tag)."""
    exp = client.get_experiment_by_name(confirm_experiment(study_name))
    if exp is None:
        return None
    runs = list(study_runs(client, exp.experiment_id, study_name).values())
    parent = next((r for r in runs if r.data.tags.get(f"{TAG}.role") == "confirm"), None)
    configs = {}
    for r in runs:
        if r.data.tags.get(f"{TAG}.role") == "confirm_config":
            t = r.data.tags
            configs[r.info.run_id] = Confirmed(int(t[f"{TAG}.confirms_trial"]), r.info.run_name,
                                               t.get(f"{TAG}.params", ""), t.get(f"{TAG}.baseline") == "true",
                                               r.info.run_id)
    for r in runs:
        c = configs.get(r.data.tags.get("mlflow.parentRunId"))
        if c is None or r.data.tags.get(f"{TAG}.role") != "confirm_seed" or r.info.status != "FINISHED":
            continue
        seed = int(r.data.tags[f"{TAG}.seed"])
        for m in METRICS:
            if f"test_{m}" in r.data.metrics:
                c.per_seed.setdefault(m, {})[seed] = r.data.metrics[f"test_{m}"]
        c.data_digests.add(tuple(r.data.tags.get(f"{TAG}.data_digest.{s}") for s in ("train", "val", "test")))
    ordered = sorted(configs.values(), key=lambda c: (ranked_numbers.index(c.trial) if ranked_numbers and
                                                      c.trial in ranked_numbers else 10**9, c.trial))
    ordered = [c for c in ordered if c.per_seed]
    if not ordered:
        return None
    comparisons = []  # every pair, the better-ranked configuration first
    for i, a in enumerate(ordered):
        for b in ordered[i + 1:]:
            result = paired(a.label, a.per_seed.get(COMPARED, {}), b.label, b.per_seed.get(COMPARED, {}))
            if result is not None:
                comparisons.append(result)
    winner = ordered[0]
    return ConfirmSummary(study_name, ordered, winner, comparisons, parent.info.run_id if parent else None)


# ----------------------------------------------------------------------------- running
def _find_or_create(tracker: Tracker, experiment: str, runs: dict, tags: dict, name: str, parent: str | None):
    key = {k: v for k, v in tags.items() if k in (f"{TAG}.role", f"{TAG}.confirms_trial")}
    for r in runs.values():
        if all(r.data.tags.get(k) == v for k, v in key.items()) and r.data.tags.get("mlflow.parentRunId") == parent:
            tracker.client.update_run(r.info.run_id, status="RUNNING")
            return r.info.run_id
    if parent:
        tags = {**tags, "mlflow.parentRunId": parent}
    return tracker.client.create_run(tracker.experiment_id(experiment), run_name=name, tags=tags).info.run_id


def confirm(study_name: str, top: int = 3, seeds: int = 5, storage_url: str | None = None,
            tracking_uri: str | None = None, device: str = "auto", console: Console | None = None) -> ConfirmSummary:
    import optuna

    from trainers.config import TrainConfig

    from .progress import format_params
    from .storage import default_storage
    from .trials import effective_params

    console = console or Console()
    if top < 1 or seeds < 2:
        raise ConfirmError(f"--top must be >= 1 and --seeds >= 2 (a spread needs two seeds); got {top}, {seeds}")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    tracker = Tracker(tracking_uri)
    storage_url = storage_url or default_storage(tracker.uri)
    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(storage_url))
    except KeyError:
        raise ConfirmError(f"no study named {study_name!r} in {redact(storage_url)}") from None
    ranked = ranked_complete(study)
    if not ranked:
        raise ConfirmError(f"study {study_name!r} has no complete trial to confirm")
    chosen = ranked[:top]
    baseline = baseline_trial(study)
    if baseline is not None and baseline not in chosen:
        chosen.append(baseline)
    for t in chosen:
        if "config" not in t.user_attrs:
            raise ConfirmError(f"trial {t.number} of {study_name!r} has no recorded configuration (a study from an "
                               "older cvstudy); rerun the sweep under a new --study name")
        TrainConfig.from_flat({**t.user_attrs["config"], "device": device})  # a bad --device fails here

    experiment = confirm_experiment(study_name)
    exp_id = tracker.experiment_id(experiment)
    runs = study_runs(tracker.client, exp_id, study_name)
    seed_list = [CONFIRM_SEED + i for i in range(seeds)]
    # Runs left RUNNING by a confirm that is gone: refuse if it lives, else mark them interrupted.
    for r in runs.values():
        if r.info.status == "RUNNING" and r.data.tags.get(f"{TAG}.role") == "confirm_seed":
            pid, host = int(r.data.tags.get(f"{TAG}.pid", 0)), r.data.tags.get(f"{TAG}.host")
            if host == HOST and pid and pid != os.getpid() and pid_alive(pid):
                raise ConfirmError(f"a confirmation of {study_name!r} is running (pid {pid}); wait for it or stop it")
            end_run(tracker.client, r.info.run_id, "INTERRUPTED", {f"{TAG}.error": "its confirm process died"})
            runs[r.info.run_id] = tracker.client.get_run(r.info.run_id)
    base_tags = {**provenance_tags(), f"{TAG}.study": study_name, f"{TAG}.storage": redact(storage_url),
                 f"{TAG}.command": "confirm"}
    parent = _find_or_create(tracker, experiment, runs, {
        **base_tags, f"{TAG}.role": "confirm", f"{TAG}.study_run_id": study.user_attrs.get("mlflow_parent_run_id", ""),
        "mlflow.note.content": f"Confirmation of study {study_name}: its best configurations retrained with fresh seeds"},
        f"confirm-{study_name}", None)
    todo = []
    config_runs = {}
    for t in chosen:
        label = f"trial-{t.number:03d}" + (" (baseline)" if t.user_attrs.get("baseline") else "")
        config_runs[t.number] = _find_or_create(tracker, experiment, runs, {
            **base_tags, f"{TAG}.role": "confirm_config", f"{TAG}.confirms_trial": str(t.number),
            f"{TAG}.baseline": str(bool(t.user_attrs.get("baseline"))).lower(),
            f"{TAG}.params": format_params(effective_params(t))[:5000],
            f"{TAG}.trial_run_id": t.user_attrs.get("mlflow_run_id", "")}, label, parent)
        done = {int(r.data.tags.get(f"{TAG}.seed", -1)) for r in runs.values()
                if r.data.tags.get("mlflow.parentRunId") == config_runs[t.number] and r.info.status == "FINISHED"}
        todo += [(t, label, s) for s in seed_list if s not in done]
    console.print(f"confirming study {study_name!r}: trials {', '.join(str(t.number) for t in chosen)} x {seeds} seeds "
                  f"({len(todo)} runs to train), MLflow experiment {experiment!r} at {tracker.uri}")
    try:
        _train_seeds(tracker, experiment, todo, config_runs, base_tags, device, console)
    except BaseException:  # Ctrl-C, SIGTERM, an error: the seed run says why; its parents must not stay RUNNING
        for run_id in (*config_runs.values(), parent):
            end_run(tracker.client, run_id, "INTERRUPTED", {f"{TAG}.error": "confirm stopped before all seeds ran"})
        raise
    summary = summarise(tracker.client, study_name, [t.number for t in ranked])
    for c in summary.configs:
        metrics = {"seeds": len(c.per_seed.get(COMPARED, {}))}
        for m in METRICS:
            iv = c.interval(m)
            if iv is not None:
                metrics.update({f"test_{m}": iv.mean, f"test_{m}_std": iv.std, f"test_{m}_ci_low": iv.low,
                                f"test_{m}_ci_high": iv.high})
        TrackedRun(tracker.client, c.run_id).log_metrics(metrics)
        end_run(tracker.client, c.run_id, "COMPLETE")
    tracker.client.log_dict(parent, summary_dict(summary), "confirmation.json")
    end_run(tracker.client, parent, "COMPLETE")
    console.print(summary_table(summary))
    for line in comparison_lines(summary):
        console.print(line, highlight=False)
    return summary


def _train_seeds(tracker: Tracker, experiment: str, todo: list, config_runs: dict, base_tags: dict, device: str,
                 console: Console) -> None:
    """Train each (trial, label, seed) of ``todo`` in its own run nested under its configuration's run."""
    from trainers.config import TrainConfig

    from .worker import DatasetCache

    datasets = DatasetCache()
    for i, (t, label, seed) in enumerate(todo, 1):
        flat = t.user_attrs["config"]
        split_seed = flat.get("split_seed")
        config = TrainConfig.from_flat({**flat, "seed": seed, "device": device,
                                        "split_seed": flat["seed"] if split_seed is None else split_seed})
        data = datasets.get(config)
        tags = {**base_tags, f"{TAG}.role": "confirm_seed", f"{TAG}.confirms_trial": str(t.number),
                f"{TAG}.seed": str(seed), f"{TAG}.pid": str(os.getpid()), f"{TAG}.host": HOST,
                f"{TAG}.model": config.model.model, f"{TAG}.data": data.source}
        console.print(f"[{i}/{len(todo)}] {label} seed {seed}", highlight=False)
        with tracker.run(experiment, f"trial-{t.number:03d}-seed{seed}", tags, config_runs[t.number]) as run:
            result = fit_and_log(run, config, data, checkpoint=False)  # the trials keep theirs
            run.end("COMPLETE", {f"{TAG}.objective": result.history[result.best_epoch][config.run.select_metric]})


def summary_dict(summary: ConfirmSummary) -> dict:
    return {"study": summary.study, "test": "paired t-test over seeds (scipy.stats.ttest_rel), test " + COMPARED,
            "configurations": [{"trial": c.trial, "label": c.label, "params": c.params, "baseline": c.baseline,
                                **{m: vars(c.interval(m)) for m in METRICS if c.interval(m)},
                                "per_seed": c.per_seed} for c in summary.configs],
            "comparisons": [{"a": p.a, "b": p.b, "seeds": p.seeds, "difference": vars(p.difference),
                             "p_value": p.p_value, "test": p.test} for p in summary.comparisons]}


def summary_table(summary: ConfirmSummary) -> Table:
    table = Table(title=f"confirmation of {summary.study}: test metrics, fresh seeds",
                  caption="mean ± std over seeds; 95% CI: t interval of the mean")
    label = summary.data_labels()
    for c in ("configuration", "seeds", "bal-acc", "95% CI", "acc", "macro F1") + (("data",) if summary.mixed_data else ()):
        table.add_column(c, justify="left" if c in ("configuration", "data") else "right")
    for c in summary.configs:
        b = c.interval(COMPARED)
        table.add_row(c.label, str(b.n), f"{b.mean:.3f} ± {b.std:.3f}", f"[{b.low:.3f}, {b.high:.3f}]",
                      *(f"{iv.mean:.3f} ± {iv.std:.3f}" if (iv := c.interval(m)) else "" for m in ("accuracy", "macro_f1")),
                      *([", ".join(sorted(label[d] for d in c.data_digests))] if summary.mixed_data else []))
    return table


def comparison_lines(summary: ConfirmSummary) -> list[str]:
    lines = []
    if summary.mixed_data:
        lines.append("warning: these runs did not all train on the same data (data digests differ, column 'data'): "
                     "their comparison mixes data with configuration")
    for p in summary.comparisons:
        d = p.difference
        verdict = "significant at 0.05" if p.significant else "not significant at 0.05"
        lines.append(f"{p.a} vs {p.b}: test balanced accuracy difference {d.mean:+.3f} "
                     f"[{d.low:+.3f}, {d.high:+.3f}] over {p.seeds} paired seeds, {p.test} p = {p.p_value:.3g}: {verdict}")
    return lines
