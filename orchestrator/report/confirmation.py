"""A confirmation as MLflow records it: each configuration's seeds, intervals and paired comparisons,
read back from the ``<study>-confirm`` experiment, and their tables. ``cvstudy confirm`` writes these
runs; ``confirm`` and ``report`` show them."""

from __future__ import annotations

from dataclasses import dataclass, field

from cvstudy.trainers.metrics import SCALARS

from ..stats import ALPHA, Interval, Paired, paired_over_seeds, t_interval, with_holm
from ..tracking import digests
from ..tracking.client import study_runs
from ..tracking.schema import Role, Tag, run_metrics

CONFIRMED_METRICS = ("balanced_accuracy", "accuracy", "macro_f1")  # reported with mean, std and interval
COMPARED = "balanced_accuracy"  # the metric of the paired comparisons (the test set is balanced)


def confirm_experiment(study_name: str) -> str:
    return f"{study_name}-confirm"


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
        return bool(self.data_labels())

    def data_labels(self) -> dict[tuple, str]:
        """``{digests: "A"}`` for each distinct (train, val, test) data among the confirmation's runs;
        empty when they agree (``digests.labels``)."""
        return digests.labels(d for c in self.configs for d in c.data_digests)


def summarise(client, study_name: str, ranked_numbers: list[int] | None = None) -> ConfirmSummary | None:
    """A study's confirmation as MLflow records it (None when it has none). ``ranked_numbers``: the
    study's trials best first, to name the winner (else the configuration with the lowest rank tag)."""
    exp = client.get_experiment_by_name(confirm_experiment(study_name))
    if exp is None:
        return None
    runs = list(study_runs(client, exp.experiment_id, study_name).values())
    parent = next((r for r in runs if r.data.tags.get(Tag.ROLE) == Role.CONFIRM), None)
    configs = {}
    for r in runs:
        if r.data.tags.get(Tag.ROLE) == Role.CONFIRM_CONFIG:
            t = r.data.tags
            configs[r.info.run_id] = Confirmed(
                int(t[Tag.CONFIRMS_TRIAL]),
                r.info.run_name,
                t.get(Tag.PARAMS, ""),
                t.get(Tag.BASELINE) == "true",
                r.info.run_id,
            )
    for r in runs:
        c = configs.get(r.data.tags.get(Tag.PARENT_RUN_ID))
        if c is None or r.data.tags.get(Tag.ROLE) != Role.CONFIRM_SEED or r.info.status != "FINISHED":
            continue
        seed = int(r.data.tags[Tag.SEED])
        logged = run_metrics(r)
        for m in SCALARS:  # all five: the paper table shows precision and recall too
            if f"test_{m}" in logged:
                c.per_seed.setdefault(m, {})[seed] = logged[f"test_{m}"]
        c.data_digests.add(tuple(r.data.tags.get(Tag.data_digest(s)) for s in ("train", "val", "test")))
    ordered = sorted(
        configs.values(),
        key=lambda c: (
            ranked_numbers.index(c.trial) if ranked_numbers and c.trial in ranked_numbers else 10**9,
            c.trial,
        ),
    )
    ordered = [c for c in ordered if c.per_seed]
    if not ordered:
        return None
    comparisons = []  # every pair, the better-ranked configuration first
    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            result = paired_over_seeds(a.label, a.per_seed.get(COMPARED, {}), b.label, b.per_seed.get(COMPARED, {}))
            if result is not None:
                comparisons.append(result)
    winner = ordered[0]
    comparisons = with_holm(comparisons)  # every pair printed is one test of the family
    return ConfirmSummary(study_name, ordered, winner, comparisons, parent.info.run_id if parent else None)


def summary_dict(summary: ConfirmSummary) -> dict:
    return {
        "study": summary.study,
        "test": "paired t-test over seeds (scipy.stats.ttest_rel), test " + COMPARED,
        "correction": f"Holm's step-down over the {len(summary.comparisons)} comparisons (family-wise error {ALPHA})",
        "configurations": [
            {
                "trial": c.trial,
                "label": c.label,
                "params": c.params,
                "baseline": c.baseline,
                **{m: vars(c.interval(m)) for m in CONFIRMED_METRICS if c.interval(m)},
                "per_seed": c.per_seed,
            }
            for c in summary.configs
        ],
        "comparisons": [
            {
                "a": p.a,
                "b": p.b,
                "seeds": p.seeds,
                "difference": vars(p.difference),
                "p_value": p.p_value,
                "p_value_holm": p.p_adjusted,
                "test": p.test,
            }
            for p in summary.comparisons
        ],
    }


def correction_line(summary: ConfirmSummary) -> str | None:
    """What the adjusted p-values mean, when there is more than one comparison to adjust over."""
    n = len(summary.comparisons)
    if n < 2:
        return None
    return (
        f"{n} comparisons, one family: each p-value is shown as its test gave it and adjusted by Holm's "
        f"step-down, and 'significant' is read on the adjusted value (family-wise error {ALPHA})"
    )


def comparison_lines(summary: ConfirmSummary) -> list[str]:
    lines = []
    if summary.mixed_data:
        lines.append(
            "warning: these runs did not all train on the same data (data digests differ, column 'data'): "
            "their comparison mixes data with configuration"
        )
    if correction := correction_line(summary):
        lines.append(correction)
    for p in summary.comparisons:
        d = p.difference
        verdict = f"significant at {ALPHA}" if p.significant else f"not significant at {ALPHA}"
        adjusted = f", Holm-adjusted p = {p.p_adjusted:.3g}" if len(summary.comparisons) > 1 else ""
        lines.append(
            f"{p.a} vs {p.b}: test balanced accuracy difference {d.mean:+.3f} "
            f"[{d.low:+.3f}, {d.high:+.3f}] over {p.seeds} paired seeds, {p.test} p = {p.p_value:.3g}"
            f"{adjusted}: {verdict}"
        )
    return lines
