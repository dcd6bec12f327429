"""What the report reads from the stores, on a study and runs made here by hand (no training): a real
Optuna SQLite storage and a real MLflow SQLite store, each trial and run written with the client
libraries, so that every field of every row, and every mismatch the report flags, is known in advance.
The expected values are the ones written; the paired comparison's are counted by hand and its p-value
is SciPy's binomial test."""

from __future__ import annotations

import datetime as dt

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState
from scipy.stats import binomtest

from cvstudy.orchestrator.report.data import grouped, load_study_data
from cvstudy.orchestrator.tracking.client import Tracker

START = dt.datetime(2026, 1, 1, 12, 0, 0)
TEST = {"accuracy": 0.61, "balanced_accuracy": 0.59, "macro_precision": 0.5, "macro_recall": 0.45, "macro_f1": 0.4}
CONFIG = {"model": "resnet50", "pretrained": "False", "aug": "basic", "epochs": "4"}


class Hand:
    """The stores and what was written to them."""

    def __init__(self, root, reproduces: str | None = "dsba-cv-study"):
        self.tracker = Tracker(f"sqlite:///{root / 'mlflow.db'}")
        self.client = MlflowClient(self.tracker.uri)
        self.experiment = self.client.create_experiment("hand", artifact_location=(root / "artifacts").as_uri())
        self.storage = optuna.storages.RDBStorage(f"sqlite:///{root / 'optuna.db'}")
        self.study = optuna.create_study(study_name="hand", storage=self.storage, direction="maximize")
        self.study.set_user_attr("objective", "val_balanced_accuracy")
        self.study.set_user_attr("objectives", ["val_balanced_accuracy"])
        if reproduces is not None:
            self.study.set_user_attr("reproduces", reproduces)
        self.runs: dict[int, str] = {}

    def run(self, number, *, status="FINISHED", tags=None, metrics=None, params=None, history=None, parent=None):
        tags = {"cvstudy.study": "hand", "cvstudy.role": "trial", "cvstudy.trial_number": str(number), **(tags or {})}
        if parent:
            tags["mlflow.parentRunId"] = parent
        run_id = self.client.create_run(self.experiment, tags=tags).info.run_id
        for key, value in (metrics or {}).items():
            self.client.log_metric(run_id, key, value)
        for key, value in (params or {}).items():
            self.client.log_param(run_id, key, value)
        for key, values in (history or {}).items():
            for step, value in enumerate(values):
                self.client.log_metric(run_id, key, value, step=step)
        self.client.set_terminated(run_id, status)
        return run_id

    def trial(self, number, state, value, run_id=None, lr=0.01, config=None, seconds=100.0, sampled_lr=None, **attrs):
        """``lr``: the learning rate that trained; ``sampled_lr``: what the sampler drew, when an override
        changed it."""
        user_attrs = {"config": {"lr": lr, **(config if config is not None else {"model": "resnet50"})}, **attrs}
        if run_id:
            user_attrs["mlflow_run_id"] = run_id
        finished = state != TrialState.RUNNING
        self.study.add_trial(
            FrozenTrial(
                number=number, trial_id=number, state=state, value=value, values=None,
                datetime_start=START, datetime_complete=START + dt.timedelta(seconds=seconds) if finished else None,
                params={"lr": lr if sampled_lr is None else sampled_lr},
                distributions={"lr": FloatDistribution(1e-4, 1.0, log=True)}, user_attrs=user_attrs,
                system_attrs={}, intermediate_values={},
            )
        )  # fmt: skip


def _test_metrics(scale=1.0, intervals=True):
    out = {f"test/{k}": round(v * scale, 4) for k, v in TEST.items()}
    if intervals:
        out |= {f"test/{k}_ci_low": round(v * scale - 0.03, 4) for k, v in TEST.items()}
        out |= {f"test/{k}_ci_high": round(v * scale + 0.03, 4) for k, v in TEST.items()}
    return out


@pytest.fixture(scope="module")
def hand(tmp_path_factory):
    h = Hand(tmp_path_factory.mktemp("report-load"))
    # 0: complete, one seed, every field the row reads
    r0 = h.run(
        0,
        tags={"cvstudy.data_digest.train": "a", "cvstudy.data_digest.val": "b", "cvstudy.data_digest.test": "c",
              "cvstudy.check.small_input": "small input: 1 x 1"},
        metrics={**_test_metrics(), "epochs_run": 4, "seeds": 1, "cost/train_device_seconds": 90.0,
                 "cost/peak_memory_mb": 123.0, "val/balanced_accuracy": 0.8},
        params=CONFIG,
    )  # fmt: skip
    h.trial(0, TrialState.COMPLETE, 0.8, r0, config=dict(CONFIG))
    # 1: three seeds averaged, one of which failed; the learning rate an override changed
    r1 = h.run(
        1,
        metrics={**_test_metrics(0.9), "seeds": 3, "test/accuracy_std": 0.02, "test/macro_f1_std": 0.03,
                 "objective_std": 0.01, "cost/train_device_seconds": 50.0, "epochs_run": 4},
        params=CONFIG,
    )  # fmt: skip
    for status, bal in (("FINISHED", 0.5), ("FINISHED", 0.6), ("FAILED", 0.1)):
        h.run(1, status=status, tags={"cvstudy.role": "seed"}, metrics={"test/balanced_accuracy": bal}, parent=r1)
    h.trial(1, TrialState.COMPLETE, 0.85, r1, lr=0.05, sampled_lr=0.1, config=dict(CONFIG))
    # 2: pruned after two epochs: its device time is its epochs' seconds
    r2 = h.run(2, status="KILLED", metrics={"epochs_run": 2}, history={"cost/epoch_seconds": [10.0, 12.0]})
    h.trial(2, TrialState.PRUNED, None, r2, seconds=30.0)
    # 3: failed before it had a run; 4: names a run that is not there; 5: a run tagged for another trial,
    # with another role, still running; 6: pruned with no run
    h.trial(3, TrialState.FAIL, None)
    h.trial(4, TrialState.COMPLETE, 0.7, "0123456789abcdef0123456789abcdef")
    r5 = h.run(9, status="RUNNING", tags={"cvstudy.role": "confirm_seed"})
    h.trial(5, TrialState.COMPLETE, 0.75, r5)
    h.trial(6, TrialState.PRUNED, None)
    # 7: resumed at epoch 2 in its own run: its seconds count the two epochs before the resume
    r7 = h.run(7, metrics={"epochs_run": 4}, history={"cost/epoch_seconds": [5.0, 6.0, 7.0, 8.0]})
    h.trial(7, TrialState.COMPLETE, 0.6, r7, seconds=40.0, resume_run_id=r7, resume_epoch=2)
    # a trial run no trial names
    h.orphan = h.run(8)
    h.runs = {0: r0, 1: r1, 2: r2, 5: r5, 7: r7}
    return h


@pytest.fixture(scope="module")
def loaded(hand):
    return load_study_data("hand", hand.storage, hand.tracker)


def test_a_one_seed_row_holds_what_its_run_logged(hand, loaded):
    row = next(r for r in loaded.rows if r.number == 0)
    assert (row.study, row.state, row.value, row.run_id) == ("hand", "COMPLETE", 0.8, hand.runs[0])
    assert row.test == TEST
    assert row.intervals == {k: (pytest.approx(v - 0.03), pytest.approx(v + 0.03)) for k, v in TEST.items()}
    assert (row.seeds, row.epochs, row.seconds, row.device_seconds) == (1, 4, 100.0, 90.0)
    assert row.config == CONFIG and row.params == {"lr": 0.01} and row.changed == {}
    assert row.data == ("a", "b", "c") and row.checks == {"small_input": "small input: 1 x 1"}
    assert row.cost == {"train_device_seconds": 90.0, "peak_memory_mb": 123.0}
    assert row.std == {} and row.per_seed == []
    assert row.finished == (START + dt.timedelta(seconds=100)).timestamp()


def test_a_row_of_several_seeds_holds_their_spread_and_each_finished_seed(hand, loaded):
    row = next(r for r in loaded.rows if r.number == 1)
    assert row.seeds == 3 and row.intervals == {}  # the spread over seeds is what the row shows
    assert row.std == {"accuracy": 0.02, "macro_f1": 0.03, "objective": 0.01}
    assert sorted(row.per_seed) == [0.5, 0.6]  # the failed seed is left out
    assert row.device_seconds == 150.0  # a mean of 50 s over 3 seeds
    assert row.params == {"lr": 0.05} and row.changed == {"lr": (0.1, 0.05)}
    assert row.test == {k: pytest.approx(round(v * 0.9, 4)) for k, v in TEST.items()}


def test_a_pruned_rows_device_time_is_its_epochs_seconds(loaded):
    row = next(r for r in loaded.rows if r.number == 2)
    assert (row.state, row.value, row.epochs, row.device_seconds, row.seconds) == ("PRUNED", None, 2, 22.0, 30.0)
    assert row.test == {} and row.data == (None, None, None)


def test_a_trial_resumed_in_its_run_counts_the_epochs_before_the_resume(loaded):
    row = next(r for r in loaded.rows if r.number == 7)
    assert row.seconds == 40.0 + 5.0 + 6.0 and row.device_seconds == 26.0


def test_every_mismatch_between_trials_and_runs_is_a_problem(hand, tmp_path, loaded):
    assert loaded.problems == [
        f"trial 1: run {hand.runs[1]} averages 3 seeds but 2 finished seed runs are nested under it",
        f"trial 4: MLflow run 0123456789abcdef0123456789abcdef not found among study hand's runs at "
        f"{hand.tracker.shown}",
        f"trial 5: run {hand.runs[5]} is tagged as trial 9",
        f"trial 5: run {hand.runs[5]} has role 'confirm_seed', not 'trial'",
        f"trial 5 is COMPLETE but run {hand.runs[5]} is RUNNING",
        "trial 6 (PRUNED) names no MLflow run",
        f"1 MLflow run(s) of study hand match no trial: {hand.orphan}",
    ]
    assert [r.number for r in loaded.rows] == list(range(8))
    assert (loaded.counts.complete, loaded.counts.pruned, loaded.counts.failed) == (5, 2, 1)


def test_the_study_is_ranked_on_validation_and_keeps_what_it_recorded(loaded):
    assert [r.number for r in loaded.ranked] == [1, 0, 5, 4, 7]
    assert [r.number for r in loaded.pareto] == [1]
    assert (loaded.name, loaded.objective, loaded.direction) == ("hand", "val_balanced_accuracy", "maximize")
    assert loaded.objectives == [("val_balanced_accuracy", "maximize")] and loaded.reproduces == "dsba-cv-study"
    assert loaded.confirmation is None


def test_a_study_cvstudy_did_not_make_is_refused_with_what_to_do(hand):
    from cvstudy.orchestrator.errors import ReportError

    optuna.create_study(study_name="bare", storage=hand.storage)
    with pytest.raises(ReportError) as refused:
        load_study_data("bare", hand.storage, hand.tracker)
    assert str(refused.value) == (
        "study 'bare' records no objectives: not a cvstudy sweep's study, or an early one; run `cvstudy sweep "
        "--study bare --trials 1` once with its study file to record them (it trains nothing new)"
    )
    with pytest.raises(ReportError) as refused:
        load_study_data("nothing", hand.storage, hand.tracker)
    # the studies in the order they were made
    assert str(refused.value) == "no study named 'nothing' in the storage (studies there: hand, bare)"


def test_the_best_is_compared_with_each_other_groups_best_on_their_saved_predictions(tmp_path):
    """Trial 0 (the best) and trial 1 (another group) saved their predictions on the same 6 images:
    only 0 right on images 1 and 2, only 1 right on image 5; McNemar's exact p is the binomial test of
    2 of 3. Trial 2's group saved none: no comparison."""
    h = Hand(tmp_path)
    labels = [0, 1, 2, 0, 1, 2]
    for number, value, predictions, config in (
        (0, 0.9, [0, 1, 2, 0, 1, 0], {"model": "vit_s16"}),
        (1, 0.8, [0, 0, 0, 0, 1, 2], {"model": "resnet50"}),
        (2, 0.7, None, {"model": "convnext"}),
    ):
        run_id = h.run(number, params=config, tags={"cvstudy.data_digest.test": "same"})
        if predictions:
            saved = {"labels": labels, "predictions": predictions, "classes": 3}
            h.client.log_dict(run_id, saved, "test_predictions.json")
        h.trial(number, TrialState.COMPLETE, value, run_id)
    data = load_study_data("hand", h.storage, h.tracker)
    assert set(data.versus_best) == {1, 2} and data.versus_best[2] is None
    comparison = data.versus_best[1]
    assert (comparison.only_a, comparison.only_b) == (2, 1)
    assert comparison.mcnemar_p == pytest.approx(binomtest(2, 3, 0.5).pvalue, abs=1e-12)
    assert comparison.values["accuracy"] == pytest.approx((5 / 6, 4 / 6))


def test_a_pruned_trial_of_several_seeds_counts_each_epochs_seconds_once_per_seed_reporting(tmp_path):
    """Three seeds, pruned before it logged its device time: epoch 0's mean 10 s over 3 seeds reporting,
    epoch 1's 12 s over 2 (one seed had stopped), epoch 2's 14 s with no count logged (one seed):
    10 x 3 + 12 x 2 + 14 = 68 device seconds."""
    h = Hand(tmp_path)
    run_id = h.run(
        0, status="KILLED", metrics={"seeds": 3, "epochs_run": 3},
        history={"cost/epoch_seconds": [10.0, 12.0, 14.0], "seeds_reporting": [3, 2]},
    )  # fmt: skip
    h.trial(0, TrialState.PRUNED, None, run_id)
    (row,) = load_study_data("hand", h.storage, h.tracker).rows
    assert (row.seeds, row.device_seconds) == (3, 68.0)


def test_trials_whose_experiment_is_gone_are_each_a_problem(tmp_path):
    h = Hand(tmp_path)
    h.trial(0, TrialState.COMPLETE, 0.5, "0" * 32)
    h.client.delete_experiment(h.experiment)
    data = load_study_data("hand", h.storage, h.tracker)
    assert data.problems == [f"trial 0: MLflow run {'0' * 32} not found among study hand's runs at {h.tracker.shown}"]
    assert data.rows[0].test == {} and data.versus_best == {}


def _predictions(h, run_id, predictions, labels=(0, 1, 2, 0, 1, 2)):
    saved = {"labels": list(labels), "predictions": predictions, "classes": 3}
    h.client.log_dict(run_id, saved, "test_predictions.json")


def test_the_best_is_compared_with_every_later_group_but_not_with_repeats_or_runless_trials(tmp_path):
    """The best trial's group sorts before the others it is compared with ("a-net"), so each group after
    it is still compared. A trial of two seeds (with predictions saved) and a complete trial without a run
    are not compared: None."""
    h = Hand(tmp_path)
    best = h.run(0, params={"model": "a-net"}, metrics={"seeds": 1})
    _predictions(h, best, [0, 1, 2, 0, 1, 0])
    h.trial(0, TrialState.COMPLETE, 0.9, best)
    later = h.run(1, params={"model": "b-net"})
    _predictions(h, later, [0, 0, 0, 0, 1, 2])
    h.trial(1, TrialState.COMPLETE, 0.8, later)
    repeats = h.run(2, params={"model": "c-net"}, metrics={"seeds": 2})
    _predictions(h, repeats, [0, 1, 2, 0, 1, 2])
    h.trial(2, TrialState.COMPLETE, 0.7, repeats)
    h.trial(3, TrialState.COMPLETE, 0.6, None, config={"model": "d-net"})
    data = load_study_data("hand", h.storage, h.tracker)
    assert [r.number for _, r in grouped(data)] == [3, 0, 1, 2]  # the runless trial's "?" group, then the best's
    assert set(data.versus_best) == {1, 2, 3}
    assert (data.versus_best[1].only_a, data.versus_best[1].only_b) == (2, 1)
    assert data.versus_best[2] is None and data.versus_best[3] is None


def test_seconds_before_a_resume_count_only_for_a_trial_resumed_in_its_own_run(tmp_path):
    """Each run logged epochs of 5, 6, 7 s. Trial 0 resumed at epoch 0 (nothing before it), trial 1 at
    epoch 2 but in another run (its seconds are its own), trial 2 still running after resuming at epoch 2
    in its run (no seconds yet): none adds a thing. Trial 3 of two seeds has its spread; trial 4, pruned
    with one of its two seeds finished, is no mismatch (only a complete trial must have every seed)."""
    h = Hand(tmp_path)
    history = {"cost/epoch_seconds": [5.0, 6.0, 7.0]}
    r0, r1, r2 = (h.run(n, history=history) for n in range(3))
    h.trial(0, TrialState.COMPLETE, 0.5, r0, seconds=40.0, resume_run_id=r0, resume_epoch=0)
    h.trial(1, TrialState.COMPLETE, 0.5, r1, seconds=40.0, resume_run_id="another", resume_epoch=2)
    h.trial(2, TrialState.RUNNING, None, r2, resume_run_id=r2, resume_epoch=2)
    two = h.run(3, metrics={"seeds": 2, "test/accuracy": 0.5, "test/accuracy_std": 0.1, "objective_std": 0.2})
    for bal in (0.4, 0.6):
        h.run(3, tags={"cvstudy.role": "seed"}, metrics={"test/balanced_accuracy": bal}, parent=two)
    h.trial(3, TrialState.COMPLETE, 0.5, two)
    pruned = h.run(4, status="KILLED", metrics={"seeds": 2})
    h.run(4, tags={"cvstudy.role": "seed"}, metrics={"test/balanced_accuracy": 0.3}, parent=pruned)
    h.run(4, status="KILLED", tags={"cvstudy.role": "seed"}, parent=pruned)
    h.trial(4, TrialState.PRUNED, None, pruned)
    data = load_study_data("hand", h.storage, h.tracker)
    rows = {r.number: r for r in data.rows}
    assert [rows[n].seconds for n in range(3)] == [40.0, 40.0, None]
    assert rows[3].std == {"accuracy": 0.1, "objective": 0.2} and sorted(rows[3].per_seed) == [0.4, 0.6]
    assert rows[4].per_seed == [0.3] and data.problems == []


def test_a_storage_with_no_study_says_none(tmp_path):
    from cvstudy.orchestrator.errors import ReportError

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    with pytest.raises(ReportError) as refused:
        load_study_data("nothing", storage, Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}"))
    assert str(refused.value) == "no study named 'nothing' in the storage (studies there: none)"


def test_a_rows_operations_and_objective_values_are_its_trials(loaded):
    """Trial 0 trained the basic preset (pad-crop 4, hflip 0.5); a complete trial's values are its
    objectives', a pruned one has none."""
    rows = {r.number: r for r in loaded.rows}
    assert rows[0].augmentation == {
        "hflip": 0.5, "vflip": 0.0, "crop_pad": 4, "rotate": 0.0, "translate": 0.0, "scale": 0.0, "jitter": 0.0,
        "hue": 0.0, "trivial": False, "erase": 0.0,
    }  # fmt: skip
    assert rows[0].values == {"val_balanced_accuracy": 0.8} and rows[2].values == {}


def test_a_study_with_its_objective_but_not_the_list_of_them_is_refused(tmp_path):
    from cvstudy.orchestrator.errors import ReportError

    h = Hand(tmp_path)
    bare = optuna.create_study(study_name="half", storage=h.storage)
    bare.set_user_attr("objective", "val_balanced_accuracy")
    with pytest.raises(ReportError, match="^study 'half' records no objectives"):
        load_study_data("half", h.storage, h.tracker)


def test_a_study_with_no_experiment_in_the_tracking_store_has_its_trials_runs_missing(tmp_path):
    h = Hand(tmp_path)
    lone = optuna.create_study(study_name="lone", storage=h.storage)
    lone.set_user_attr("objective", "val_balanced_accuracy")
    lone.set_user_attr("objectives", ["val_balanced_accuracy"])
    lone.add_trial(optuna.trial.create_trial(value=0.5, user_attrs={"mlflow_run_id": "f" * 32}))
    data = load_study_data("lone", h.storage, h.tracker)
    assert data.problems == [f"trial 0: MLflow run {'f' * 32} not found among study lone's runs at {h.tracker.shown}"]


def test_what_a_bare_study_and_its_confirmation_give_the_report(tmp_path):
    """No `reproduces` recorded: "". A pruned trial with a last value has no objective values; a complete
    trial without a run and a two-seed run with no seed runs nested are problems; four runs no trial
    names are counted, three of them named. The confirmation is read with the study's ranking: trial 2
    (0.9) before trial 1 (0.8)."""
    h = Hand(tmp_path, reproduces=None)
    h.trial(0, TrialState.PRUNED, 0.3, h.run(0, status="KILLED"))
    h.trial(1, TrialState.COMPLETE, 0.8, None)
    two = h.run(2, metrics={"seeds": 2})
    h.trial(2, TrialState.COMPLETE, 0.9, two)
    orphans = [h.run(9) for _ in range(4)]
    confirm = h.client.create_experiment("hand-confirm")
    for trial in (1, 2):
        config = h.client.create_run(
            confirm,
            tags={"cvstudy.study": "hand", "cvstudy.role": "confirm_config", "cvstudy.confirms_trial": str(trial)},
        ).info.run_id
        for seed in range(2):
            seed_run = h.client.create_run(confirm, tags={
                "cvstudy.study": "hand", "cvstudy.role": "confirm_seed", "cvstudy.seed": str(seed),
                "mlflow.parentRunId": config}).info.run_id  # fmt: skip
            h.client.log_metric(seed_run, "test/balanced_accuracy", 0.5 + seed / 10)
            h.client.set_terminated(seed_run, "FINISHED")
    data = load_study_data("hand", h.storage, h.tracker)
    rows = {r.number: r for r in data.rows}
    assert data.reproduces == "" and rows[0].values == {} and rows[2].values == {"val_balanced_accuracy": 0.9}
    assert data.problems[:2] == [
        "trial 1 (COMPLETE) names no MLflow run",
        f"trial 2: run {two} averages 2 seeds but 0 finished seed runs are nested under it",
    ]
    listed = data.problems[2].removeprefix("4 MLflow run(s) of study hand match no trial: ").split(", ")
    assert len(listed) == 3 and set(listed) <= set(orphans)
    assert [c.trial for c in data.confirmation.configs] == [2, 1]
