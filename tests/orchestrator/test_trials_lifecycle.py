"""The trial lifecycle's bookkeeping on hand-built in-memory Optuna studies: counting (retries left
out), what ran (effective and changed settings), the leaderboard MLflow shows, re-queues and their
limits. Every expected value is worked out by hand from the trials the test wrote; the sweeps that
produce such trials are tested end to end in test_sweep.py and test_trials.py."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from cvstudy.orchestrator.sweep.trials import (
    MAX_RETRIES,
    Counts,
    baseline_trial,
    best_trial,
    changed_params,
    count_trials,
    current_trials,
    effective_params,
    expected_run_statuses,
    first_value,
    format_params,
    leaderboard_markdown,
    requeue,
    superseded_numbers,
)

LR = FloatDistribution(1e-5, 1.0, log=True)
AUG = CategoricalDistribution(["none", "basic", "strong"])


def _trial(state=TrialState.COMPLETE, value=None, values=None, params=None, **attrs):
    params = params if params is not None else {"lr": 0.01, "aug": "basic"}
    return create_trial(
        state=state,
        value=value,
        values=values,
        params=params,
        distributions={k: {"lr": LR, "aug": AUG}[k] for k in params},
        user_attrs=attrs,
    )


def _study(trials, name="hand", directions=("maximize",)):
    study = optuna.create_study(study_name=name, directions=list(directions))
    study.add_trials(trials)
    return study


# ----------------------------------------------------------------------------- counting
def test_counts_leave_out_trials_a_retry_superseded_and_count_what_runs_toward_the_target():
    study = _study(
        [
            _trial(value=0.5),  # 0 complete
            _trial(TrialState.PRUNED, value=0.2),  # 1 pruned
            _trial(TrialState.FAIL),  # 2 failed, retried by 6
            _trial(TrialState.FAIL),  # 3 failed, not retried
            _trial(TrialState.RUNNING),  # 4 running
            _trial(value=0.6),  # 5 complete
            _trial(TrialState.WAITING, retry_of=2),  # 6 the retry of 2, queued
            _trial(TrialState.FAIL, retry_of=99),  # 7 names a trial that does not exist
        ]
    )
    trials = study.get_trials(deepcopy=False)
    assert superseded_numbers(trials) == {2, 99}
    assert [t.number for t in current_trials(study)] == [0, 1, 3, 4, 5, 6, 7]
    counts = count_trials(study)
    assert counts == Counts(complete=2, pruned=1, failed=2, running=1, waiting=1, retried=2)
    assert (counts.done, counts.counted) == (5, 6)


def test_an_empty_study_counts_nothing():
    counts = count_trials(_study([]))
    assert counts == Counts() and (counts.done, counts.counted) == (0, 0)


@pytest.mark.parametrize(
    ("state", "statuses"),
    [
        (TrialState.COMPLETE, ("FINISHED",)),
        (TrialState.PRUNED, ("KILLED",)),
        (TrialState.FAIL, ("FAILED", "KILLED")),  # the config failed, or its retries ran out
        (TrialState.RUNNING, ()),
        (TrialState.WAITING, ()),
    ],
)
def test_a_trials_state_admits_these_mlflow_run_statuses(state, statuses):
    trial = _study([_trial(state, value=0.5 if state in (TrialState.COMPLETE, TrialState.PRUNED) else None)]).trials[0]
    assert expected_run_statuses(trial) == statuses


# ----------------------------------------------------------------------------- ranking helpers
def test_the_best_and_the_baseline_are_complete_trials_and_first_value_reads_any_study():
    study = _study(
        [
            _trial(value=0.4, baseline=True),
            _trial(TrialState.PRUNED, value=0.9),  # pruned: never the best, whatever its last value
            _trial(value=0.7),
            _trial(TrialState.FAIL, baseline=True),
        ]
    )
    assert best_trial(study).number == 2
    assert baseline_trial(study).number == 0
    assert first_value(study.trials[2]) == 0.7 and first_value(study.trials[3]) is None
    assert best_trial(_study([_trial(TrialState.FAIL)])) is None
    assert baseline_trial(_study([_trial(value=0.1)])) is None  # no trial is the baseline

    two = _study([_trial(values=[0.3, 9.0])], directions=("maximize", "minimize"))
    assert first_value(two.trials[0]) == 0.3  # FrozenTrial.value raises with two objectives


# ----------------------------------------------------------------------------- what ran
def test_effective_settings_are_the_config_that_trained_and_changed_ones_say_both_values():
    trial = _trial(value=0.5, params={"lr": 0.1, "aug": "basic"}, config={"lr": 0.01, "aug": "basic", "epochs": 3})
    assert effective_params(trial) == {"lr": 0.01, "aug": "basic"}  # searched keys only, as they trained
    assert changed_params(trial) == {"lr": (0.1, 0.01)}
    unrecorded = _trial(value=0.5, params={"lr": 0.1, "aug": "none"})
    assert effective_params(unrecorded) == {"lr": 0.1, "aug": "none"} and changed_params(unrecorded) == {}
    partial = _trial(value=0.5, params={"lr": 0.1, "aug": "none"}, config={"aug": "strong"})
    assert effective_params(partial) == {"lr": 0.1, "aug": "strong"}


def test_settings_are_written_with_three_significant_digits_for_floats_only():
    params = {"lr": 0.00036612, "aug": "basic", "epochs": 3, "wd": 5e-4, "big": 123456.0, "on": True}
    assert format_params(params) == "lr=0.000366, aug=basic, epochs=3, wd=0.0005, big=1.23e+05, on=True"
    assert format_params({}) == ""


# ----------------------------------------------------------------------------- the leaderboard
def _ran(value, number_attrs, run_id, **tests):
    attrs = {f"test_{k}": v for k, v in tests.items()}
    return _trial(value=value, mlflow_run_id=run_id, **number_attrs, **attrs)


def test_the_leaderboard_is_the_best_complete_trials_with_their_test_metrics_and_settings():
    study = _study(
        [
            _ran(0.61, {"epochs_run": 5, "config": {"lr": 0.003, "aug": "basic"}}, "a" * 32, balanced_accuracy=0.58),
            _trial(TrialState.PRUNED, value=0.9),
            _ran(0.7, {"epochs_run": 8}, "0123456789abcdef", balanced_accuracy=0.66, accuracy=0.7, macro_f1=0.65),
            _trial(TrialState.FAIL),
            _ran(0.55, {}, "b" * 32),
        ],
        name="lab",
    )
    text = leaderboard_markdown(study, ["val bal. acc"], top=2)
    assert text.splitlines() == [
        "**3 complete** trials (1 pruned, 1 failed), best first: selected on validation; test metrics of "
        "each trial's selected checkpoint, one seed per trial unless repeats are set. `cvstudy report lab` "
        "adds intervals and plots.",
        "",
        "| rank | trial | val bal. acc | test bal. acc | test acc | test macro F1 | epochs | settings | run |",
        "|---|---|---|---|---|---|---|---|---|",
        "| 1 | 2 | 0.7000 | 0.6600 | 0.7000 | 0.6500 | 8 | lr=0.01, aug=basic | `01234567` |",
        "| 2 | 0 | 0.6100 | 0.5800 |  |  | 5 | lr=0.003, aug=basic | `aaaaaaaa` |",
        "",
        "1 more complete trials: `cvstudy report lab`.",
    ]
    exactly = leaderboard_markdown(study, ["val bal. acc"], top=3).splitlines()
    assert len(exactly) == 7 and exactly[-1].startswith("| 3 | 4 | 0.5500 |")  # all shown, no "more" line


def test_a_two_objective_leaderboard_has_a_column_per_objective_and_ranks_the_front_first():
    study = _study(
        [
            _trial(values=[0.6, 3.0], mlflow_run_id="r0"),
            _trial(values=[0.7, 5.0], mlflow_run_id="r1"),
            _trial(values=[0.5, 6.0], mlflow_run_id="r2"),  # dominated by both others
        ],
        name="two",
        directions=("maximize", "minimize"),
    )
    lines = leaderboard_markdown(study, ["val acc", "seconds"]).splitlines()
    assert lines[2] == (
        "| rank | trial | val acc | seconds | test bal. acc | test acc | test macro F1 | epochs | settings | run |"
    )
    assert lines[3] == "|---|---|---|---|---|---|---|---|---|---|"
    assert lines[4:] == [
        "| 1 | 1 | 0.7000 | 5.0000 |  |  |  |  | lr=0.01, aug=basic | `r1` |",
        "| 2 | 0 | 0.6000 | 3.0000 |  |  |  |  | lr=0.01, aug=basic | `r0` |",
        "| 3 | 2 | 0.5000 | 6.0000 |  |  |  |  | lr=0.01, aug=basic | `r2` |",
    ]  # all three shown: the default top is 10, and no "more" line


# ----------------------------------------------------------------------------- re-queues
def test_a_requeue_carries_the_parameters_the_baseline_and_the_run_to_resume():
    study = _study([_trial(TrialState.FAIL, baseline=True, warm_start="src/3", epochs_run=2, retries=1)])
    params = {"lr": 0.02, "aug": "none"}
    attrs = study.trials[0].user_attrs
    assert requeue(study, 0, params, attrs, resume_run_id="run0", resume_epoch=4) is True
    queued = study.trials[1]
    assert queued.state == TrialState.WAITING and queued.params == {}  # Optuna applies the params when asked
    assert queued.system_attrs["fixed_params"] == params
    assert queued.user_attrs == {
        "baseline": True,
        "warm_start": "src/3",
        "retry_of": 0,
        "retries": 0,  # it progressed: resumes from epoch 4, past the 0 it had
        "resume_run_id": "run0",
        "resume_epoch": 4,
    }
    assert requeue(study, 0, params, attrs) is False  # once per trial: 0 is superseded now


def test_retries_that_make_no_progress_stop_after_the_limit_and_progress_starts_the_count_again():
    params = {"lr": 0.02, "aug": "none"}
    study = _study([_trial(TrialState.FAIL, retries=MAX_RETRIES - 1, resume_epoch=3)])
    assert requeue(study, 0, params, study.trials[0].user_attrs, "run", resume_epoch=3) is True
    assert study.trials[1].user_attrs["retries"] == MAX_RETRIES  # no progress: one more
    assert study.trials[1].user_attrs["resume_epoch"] == 3

    spent = _study([_trial(TrialState.FAIL, retries=MAX_RETRIES, resume_epoch=3)])
    assert requeue(spent, 0, params, spent.trials[0].user_attrs, "run", resume_epoch=3) is False
    assert len(spent.trials) == 1
    assert requeue(spent, 0, params, spent.trials[0].user_attrs, "run", resume_epoch=4) is True  # it progressed
    assert spent.trials[1].user_attrs["retries"] == 0

    fresh = _study([_trial(TrialState.FAIL)])
    assert requeue(fresh, 0, params, {}) is True
    assert fresh.trials[1].user_attrs == {"retry_of": 0, "retries": 1}  # no run to resume: none named
    no_epoch = _study([_trial(TrialState.FAIL)])
    assert requeue(no_epoch, 0, params, {}, "run", resume_epoch=None) is True
    assert no_epoch.trials[1].user_attrs == {"retry_of": 0, "retries": 1, "resume_run_id": "run"}
    at_zero = _study([_trial(TrialState.FAIL)])
    assert requeue(at_zero, 0, params, {}, "run", resume_epoch=0) is True  # no epoch saved: from the start
    assert at_zero.trials[1].user_attrs == {"retry_of": 0, "retries": 1, "resume_run_id": "run"}


def test_a_first_resume_from_epoch_1_is_progress_and_a_trial_without_a_run_shows_an_empty_run_cell():
    fresh = _study([_trial(TrialState.FAIL)])
    assert requeue(fresh, 0, {"lr": 0.02, "aug": "none"}, {}, "run", resume_epoch=1) is True
    assert fresh.trials[1].user_attrs["retries"] == 0  # epoch 1 is past the none saved before

    runless = _study([_trial(value=0.5)], name="r")
    assert (
        leaderboard_markdown(runless, ["v"]).splitlines()[-1]
        == "| 1 | 0 | 0.5000 |  |  |  |  | lr=0.01, aug=basic | `` |"
    )
