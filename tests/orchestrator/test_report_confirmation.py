"""A confirmation read back from a real MLflow store whose runs were written here by hand (no training):
which seeds count, the order of the configurations, every pair compared; each p-value is SciPy's paired
t-test and each Holm adjustment is worked by hand. Then the lines and the JSON a person reads."""

from __future__ import annotations

from statistics import stdev

import pytest
from mlflow.tracking import MlflowClient
from scipy.stats import t, ttest_rel

from cvstudy.orchestrator.report.confirmation import (
    comparison_lines,
    correction_line,
    summarise,
    summary_dict,
)

BAL = {  # test balanced accuracy of each configuration's seeds
    3: {0: 0.70, 1: 0.74, 2: 0.69},
    5: {0: 0.60, 1: 0.66, 2: 0.61},
    8: {0: 0.71, 1: 0.70, 2: 0.73},
}


def _store(root, study: str):
    """A new MLflow store holding the experiment ``<study>-confirm``, and a function that writes a finished
    (or ``status``) run of ``role`` there, nested under ``parent``, with ``tags``."""
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.create_experiment(f"{study}-confirm", artifact_location=(root / "artifacts").as_uri())

    def run(role, name=None, parent=None, status="FINISHED", study=study, **tags):
        all_tags = {"cvstudy.study": study, "cvstudy.role": role, **tags}
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        run_id = client.create_run(experiment, tags=all_tags, run_name=name).info.run_id
        client.set_terminated(run_id, status)
        return run_id

    return client, run


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Study "hand"'s confirmation: trials 3, 5 and 8, three finished seeds each (a fourth of trial 5
    failed), trial 9 with none finished; a run of another study in the same experiment."""
    client, run = _store(tmp_path_factory.mktemp("confirmation"), "hand")
    parent = run("confirm")
    for trial in (3, 5, 8, 9):
        config = run(
            "confirm_config", f"trial {trial}", parent, **{"cvstudy.confirms_trial": str(trial)},
            **{"cvstudy.params": f"lr={trial / 1000}", "cvstudy.baseline": "true" if trial == 8 else "false"},
        )  # fmt: skip
        for seed, bal in BAL.get(trial, {}).items():
            seed_run = run("confirm_seed", parent=config, **{"cvstudy.seed": str(seed)})
            client.log_metric(seed_run, "test/balanced_accuracy", bal)
            client.log_metric(seed_run, "test/accuracy", bal + 0.1)
            for split, digest in (("train", "t"), ("val", "v"), ("test", "s" if trial != 8 else "s2")):
                client.set_tag(seed_run, f"cvstudy.data_digest.{split}", digest)
        if trial in (5, 9):
            failed = run("confirm_seed", parent=config, status="FAILED", **{"cvstudy.seed": "7"})
            client.log_metric(failed, "test/balanced_accuracy", 0.0)
    run("confirm_config", "other", study="other", **{"cvstudy.confirms_trial": "1"})
    return client, parent


def scipy_p_values() -> dict[str, float]:
    """SciPy's paired t-test of each pair, better ranked first (8, 3, 5)."""
    out = {}
    for a, b in ((8, 3), (8, 5), (3, 5)):
        out[f"trial {a} vs trial {b}"] = ttest_rel([BAL[a][s] for s in range(3)], [BAL[b][s] for s in range(3)]).pvalue
    return out


def holm_by_hand(p_values: dict[str, float]) -> dict[str, float]:
    """The smallest of m times m, the next times m - 1 (no smaller than the one before), ..., each at most 1."""
    holm, running = {}, 0.0
    for k, name in enumerate(sorted(p_values, key=p_values.get)):
        running = max(running, min(1.0, (len(p_values) - k) * p_values[name]))
        holm[name] = running
    return holm


def test_a_confirmation_is_each_configurations_finished_seeds_in_the_studys_order(store):
    client, parent = store
    summary = summarise(client, "hand", ranked_numbers=[8, 1, 3, 5])
    assert summary.parent_run_id == parent and summary.study == "hand"
    assert [c.trial for c in summary.configs] == [8, 3, 5]  # trial 9 finished no seed; 5 is ranked last
    assert summary.winner.trial == 8
    by_trial = {c.trial: c for c in summary.configs}
    assert by_trial[5].per_seed["balanced_accuracy"] == BAL[5]  # the failed seed 7 left out
    assert by_trial[3].per_seed["accuracy"] == pytest.approx({s: v + 0.1 for s, v in BAL[3].items()})
    assert (by_trial[8].label, by_trial[8].params, by_trial[8].baseline) == ("trial 8", "lr=0.008", True)
    assert by_trial[3].baseline is False and by_trial[3].data_digests == {("t", "v", "s")}
    assert summary.mixed_data  # trial 8's seeds were tested on s2
    # without a ranking, by trial number
    assert [c.trial for c in summarise(client, "hand").configs] == [3, 5, 8]
    assert summarise(client, "nothing") is None


def test_every_pair_is_compared_better_ranked_first_with_holm_over_the_family(store):
    client, _ = store
    summary = summarise(client, "hand", ranked_numbers=[8, 3, 5])
    expected = scipy_p_values()
    assert {f"{p.a} vs {p.b}": p.p_value for p in summary.comparisons} == pytest.approx(expected, rel=1e-9)
    assert [f"{p.a} vs {p.b}" for p in summary.comparisons] == list(expected)
    holm = holm_by_hand(expected)
    assert {f"{p.a} vs {p.b}": p.p_adjusted for p in summary.comparisons} == pytest.approx(holm, rel=1e-9)
    differences = {f"{p.a} vs {p.b}": p.difference.mean for p in summary.comparisons}
    # means 0.71333, 0.71 and 0.62333
    expected = {"trial 8 vs trial 3": 0.01 / 3, "trial 8 vs trial 5": 0.09, "trial 3 vs trial 5": 0.26 / 3}
    assert differences == pytest.approx(expected)


def test_the_lines_a_person_reads_say_every_comparison_and_the_family_it_belongs_to(store):
    client, _ = store
    summary = summarise(client, "hand", ranked_numbers=[8, 3, 5])
    lines = comparison_lines(summary)
    assert lines[0] == (
        "warning: these runs did not all train on the same data (data digests differ, column 'data'): their "
        "comparison mixes data with configuration"
    )
    assert (
        lines[1]
        == correction_line(summary)
        == (
            "3 comparisons, one family: each p-value is shown as its test gave it and adjusted by Holm's step-down, "
            "and 'significant' is read on the adjusted value (family-wise error 0.05)"
        )
    )
    assert len(lines) == 5 and [line.split(":")[0] for line in lines[2:]] == [
        "trial 8 vs trial 3", "trial 8 vs trial 5", "trial 3 vs trial 5",
    ]  # fmt: skip
    # trial 8 vs 5 from SciPy: the seeds' differences 0.11, 0.04, 0.12, their t interval and paired t-test;
    diffs = [0.11, 0.04, 0.12]
    low, high = t.interval(0.95, 2, loc=0.09, scale=stdev(diffs) / 3**0.5)
    p = scipy_p_values()["trial 8 vs trial 5"]
    adjusted = holm_by_hand(scipy_p_values())["trial 8 vs trial 5"]
    assert lines[3] == (
        f"trial 8 vs trial 5: test balanced accuracy difference +0.090 [{low:+.3f}, {high:+.3f}] over 3 paired "
        f"seeds, paired t-test p = {p:.3g}, Holm-adjusted p = {adjusted:.3g}: "
        + ("significant at 0.05" if adjusted < 0.05 else "not significant at 0.05")
    )


def test_one_comparison_has_no_family_to_adjust_over(store):
    client, _ = store
    summary = summarise(client, "hand", ranked_numbers=[8, 3, 5])
    summary.comparisons = summary.comparisons[:1]
    summary.configs = [c for c in summary.configs if c.trial != 8]  # one dataset left
    assert correction_line(summary) is None
    (line,) = comparison_lines(summary)
    assert ", Holm-adjusted" not in line and line.startswith("trial 8 vs trial 3: ")


def test_the_confirmation_json_holds_each_configurations_interval_and_each_comparison(store):
    client, _ = store
    summary = summarise(client, "hand", ranked_numbers=[8, 3, 5])
    out = summary_dict(summary)
    assert out["study"] == "hand"
    assert out["test"] == "paired t-test over seeds (scipy.stats.ttest_rel), test balanced_accuracy"
    assert out["correction"] == "Holm's step-down over the 3 comparisons (family-wise error 0.05)"
    first = out["configurations"][0]
    assert (first["trial"], first["label"], first["params"], first["baseline"]) == (8, "trial 8", "lr=0.008", True)
    assert first["balanced_accuracy"]["mean"] == pytest.approx(sum(BAL[8].values()) / 3)
    assert first["balanced_accuracy"]["n"] == 3 and "macro_f1" not in first  # no seed logged macro F1
    assert first["accuracy"]["mean"] == pytest.approx(sum(BAL[8].values()) / 3 + 0.1)
    assert first["per_seed"]["balanced_accuracy"] == BAL[8]
    compared = out["comparisons"][1]
    p = summary.comparisons[1]
    assert compared == {
        "a": "trial 8", "b": "trial 5", "seeds": 3, "difference": vars(p.difference), "p_value": p.p_value,
        "p_value_holm": p.p_adjusted, "test": "paired t-test",
    }  # fmt: skip


def test_a_family_of_two_is_adjusted_and_a_significant_pair_says_so():
    """Hand-made comparisons: p 0.01 and 0.04, Holm-adjusted 0.02 and 0.04 (2 x 0.01, then max(0.02,
    0.04)): both significant at 0.05; alone, the first prints no adjusted value."""
    from cvstudy.orchestrator.report.confirmation import ConfirmSummary
    from cvstudy.orchestrator.stats import Interval, Paired

    first = Paired("A", "B", 4, Interval(0.05, 0.01, 4, 0.034, 0.066), 0.01, p_adjusted=0.02)
    second = Paired("A", "C", 4, Interval(0.02, 0.01, 4, 0.004, 0.036), 0.04, p_adjusted=0.04)
    summary = ConfirmSummary("s", [], None, [first, second])
    assert comparison_lines(summary) == [
        "2 comparisons, one family: each p-value is shown as its test gave it and adjusted by Holm's step-down, "
        "and 'significant' is read on the adjusted value (family-wise error 0.05)",
        "A vs B: test balanced accuracy difference +0.050 [+0.034, +0.066] over 4 paired seeds, paired t-test "
        "p = 0.01, Holm-adjusted p = 0.02: significant at 0.05",
        "A vs C: test balanced accuracy difference +0.020 [+0.004, +0.036] over 4 paired seeds, paired t-test "
        "p = 0.04, Holm-adjusted p = 0.04: significant at 0.05",
    ]
    alone = ConfirmSummary("s", [], None, [Paired("A", "B", 4, first.difference, 0.01)])
    assert comparison_lines(alone) == [
        "A vs B: test balanced accuracy difference +0.050 [+0.034, +0.066] over 4 paired seeds, paired t-test "
        "p = 0.01: significant at 0.05"
    ]


def test_a_confirmation_without_a_parent_run_or_params_and_with_other_nested_runs(tmp_path):
    """Study "bare": one configuration run, no parent run, no params tag; nested under it two seeds and a
    finished run of another role (a superseded seed, say) whose value must not count."""
    client, run = _store(tmp_path, "bare")
    config = run("confirm_config", "trial 4", **{"cvstudy.confirms_trial": "4"})
    for seed, bal, role in ((0, 0.6, "confirm_seed"), (1, 0.7, "confirm_seed"), (2, 0.0, "superseded")):
        client.log_metric(run(role, parent=config, **{"cvstudy.seed": str(seed)}), "test/balanced_accuracy", bal)
    summary = summarise(client, "bare")
    assert summary.parent_run_id is None
    (only,) = summary.configs
    assert (only.trial, only.label, only.params, only.baseline, only.run_id) == (4, "trial 4", "", False, config)
    assert only.per_seed == {"balanced_accuracy": {0: 0.6, 1: 0.7}}


def test_a_configuration_ranked_late_still_precedes_an_unranked_one_and_one_without_the_metric_is_not_compared(
    tmp_path,
):
    """Trial 95 is 96th of the study's ranking; trials 7 and 8 are not in it (after every ranked one, by
    number). Trials 95 and 8 logged accuracy but not balanced accuracy: shown, and compared with nothing
    (as the first of a pair and as the second)."""
    client, run = _store(tmp_path, "late")
    for trial, metric in ((7, "test/balanced_accuracy"), (8, "test/accuracy"), (95, "test/accuracy")):
        config = run("confirm_config", **{"cvstudy.confirms_trial": str(trial)})
        for seed in range(3):
            seed_run = run("confirm_seed", parent=config, **{"cvstudy.seed": str(seed)})
            client.log_metric(seed_run, metric, 0.5 + seed / 10)
    summary = summarise(client, "late", ranked_numbers=list(range(100, 195)) + [95])
    assert [c.trial for c in summary.configs] == [95, 7, 8] and summary.winner.trial == 95
    assert summary.comparisons == []
