"""`cvstudy compare`: two models on the same test images. The expected values come from each run's saved
predictions through scikit-learn (the metrics), SciPy (McNemar's exact test as a binomial test on the
discordant images) and counts made here; the saved predictions are tied to the numbers the runs logged."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from scipy.stats import binomtest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from cvstudy.orchestrator.commands.compare import compare
from cvstudy.orchestrator.errors import CompareError
from cvstudy.orchestrator.sweep.manager import SweepSettings, sweep
from cvstudy.orchestrator.sweep.study import load_study_spec
from cvstudy.orchestrator.tracking.predictions import Side, load_side, paired_over_images
from cvstudy.orchestrator.tracking.schema import run_metrics
from tests.conftest import make_arrays, run_cli, write_dataset
from tests.orchestrator.test_report_numbers import skewed_test_labels
from tests.orchestrator.test_sweep import enqueue_first, study_file


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """Two trials of a tiny model on data with a 30-image test set: one learns, one (lr 1e-9) never does,
    so they disagree on images; without and with augmentation, two groups of the report's grouped table."""
    root = tmp_path_factory.mktemp("compare")
    data = write_dataset(root / "data", skewed_test_labels(make_arrays(n_test=10)))
    before = os.getcwd()
    os.chdir(root)
    try:
        space = "  lr: [3.0e-3, 1.0e-9]\n  aug: [none, basic]"
        spec = load_study_spec(study_file(root, data, space, "none", "tpe", epochs=3))
        storage = f"sqlite:///{root / 'optuna.db'}"
        enqueue_first(storage, [{"lr": 3.0e-3, "aug": "none"}, {"lr": 1.0e-9, "aug": "basic"}])  # one never learns
        sweep(spec, SweepSettings(storage_url=storage, trials=2))
    finally:
        os.chdir(before)
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = {}
    for run in client.search_runs([client.get_experiment_by_name("tiny").experiment_id]):
        if run.data.tags.get("cvstudy.role") == "trial":
            saved = json.loads(
                Path(client.download_artifacts(run.info.run_id, "test_predictions.json", root)).read_text()
            )
            runs[int(run.data.tags["cvstudy.trial_number"])] = (run, saved)
    return root, runs


def test_each_run_saves_its_test_predictions_and_they_give_its_logged_metrics(swept):
    _, runs = swept
    assert sorted(runs) == [0, 1]
    for run, saved in runs.values():
        y, p = np.array(saved["labels"]), np.array(saved["predictions"])
        assert saved["classes"] == 3 and len(y) == len(p) == 30
        m = run_metrics(run)
        assert m["test_accuracy"] == pytest.approx(accuracy_score(y, p), abs=1e-12)
        assert m["test_balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p), abs=1e-12)
        assert m["test_macro_f1"] == pytest.approx(f1_score(y, p, average="macro", labels=[0, 1, 2]), abs=1e-12)


def test_compare_two_trials_of_a_study_gives_scikit_learns_values_and_mcnemars_p(swept):
    root, runs = swept
    (_, a), (_, b) = runs[0], runs[1]
    y, pa, pb = (np.array(v) for v in (a["labels"], a["predictions"], b["predictions"]))
    if (pa == pb).all():
        pytest.fail("the premise: the two trials must disagree on some images")
    storage, tracking = f"sqlite:///{root / 'optuna.db'}", f"sqlite:///{root / 'mlflow.db'}"
    result = compare("tiny#0", "tiny#1", storage_url=storage, tracking_uri=tracking)
    only_a, only_b = int(((pa == y) & (pb != y)).sum()), int(((pb == y) & (pa != y)).sum())
    assert (result.only_a, result.only_b) == (only_a, only_b)
    expected_p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    assert result.mcnemar_p == pytest.approx(expected_p, abs=1e-12)
    for name, score in (("accuracy", accuracy_score), ("balanced_accuracy", balanced_accuracy_score)):
        difference, low, high = result.differences[name]
        assert difference == pytest.approx(score(y, pa) - score(y, pb), abs=1e-12), name
        assert low <= difference <= high, name
    assert result.a.run_id == runs[0][0].info.run_id and result.b.run_id == runs[1][0].info.run_id


def test_a_run_compared_with_itself_differs_by_nothing(swept):
    root, runs = swept
    top = max(e[0].data.metrics["val/best_balanced_accuracy"] for e in runs.values())
    leaders = {e[0].info.run_id for e in runs.values() if e[0].data.metrics["val/best_balanced_accuracy"] == top}
    storage, tracking = f"sqlite:///{root / 'optuna.db'}", f"sqlite:///{root / 'mlflow.db'}"
    same = compare("tiny@best", "tiny@best", storage_url=storage, tracking_uri=tracking)
    assert same.a.run_id == same.b.run_id and same.a.run_id in leaders  # best on validation
    assert (same.only_a, same.only_b, same.mcnemar_p) == (0, 0, 1.0)
    assert all(v == (0.0, 0.0, 0.0) for v in same.differences.values())


def _side(ref, labels, predictions, digest="d1"):
    return Side(ref, ref, np.array(labels), np.array(predictions), 3, digest)


def test_models_tested_on_different_images_are_refused():
    a = _side("a", [0, 1, 2], [0, 1, 2])
    with pytest.raises(CompareError, match="different test sets"):
        paired_over_images(a, _side("b", [0, 1, 2], [0, 1, 1], digest="d2"))
    with pytest.raises(CompareError, match="different test sets"):
        paired_over_images(a, _side("b", [0, 1, 1], [0, 1, 1]))  # same digest claimed, other labels


@pytest.fixture
def store(tmp_path):
    """A real MLflow store holding runs made here: saved predictions, and a test-set digest tag as the
    trainer writes them, so that each side's fields are known without training."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("saved", artifact_location=(tmp_path / "artifacts").as_uri())

    def run(labels, predictions, digest=None, saved=True):
        run_id = client.create_run(experiment).info.run_id
        if saved:
            saved_predictions = {"labels": labels, "predictions": predictions, "classes": 3}
            client.log_dict(run_id, saved_predictions, "test_predictions.json")
        if digest is not None:
            client.set_tag(run_id, "cvstudy.data_digest.test", digest)
        return run_id

    return client, run


def test_a_side_is_the_runs_saved_predictions_under_the_name_the_user_gave(store):
    client, run = store
    run_id = run([0, 1, 2, 2], [0, 2, 2, 1], digest="d1")
    side = load_side(client, run_id)
    assert (side.ref, side.run_id, side.num_classes, side.test_digest) == (run_id, run_id, 3, "d1")
    assert side.labels.tolist() == [0, 1, 2, 2] and side.predictions.tolist() == [0, 2, 2, 1]
    assert load_side(client, run_id, "tiny#4").ref == "tiny#4"


def test_runs_tested_on_other_images_with_the_same_labels_are_refused_by_their_digests(store):
    client, run = store
    labels = [0, 1, 2, 0, 1, 2]
    a = load_side(client, run(labels, [0, 1, 2, 0, 1, 1], digest="d1"), "A")
    same = load_side(client, run(labels, [0, 1, 1, 1, 1, 2], digest="d1"), "B")
    other = load_side(client, run(labels, [0, 1, 1, 1, 1, 2], digest="d2"), "C")
    untagged = load_side(client, run(labels, [0, 1, 1, 1, 1, 2]), "D")
    comparison = paired_over_images(a, same)
    assert (comparison.num_classes, comparison.only_a, comparison.only_b) == (3, 2, 1)
    with pytest.raises(CompareError) as refused:
        paired_over_images(a, other)
    assert str(refused.value) == (
        "A and C were tested on different test sets (test digests d1 and d2): a paired comparison needs the same images"
    )
    with pytest.raises(CompareError) as refused:
        paired_over_images(untagged, a)
    assert str(refused.value) == (
        "D and A were tested on different test sets (test digests none and d1): a paired comparison needs the "
        "same images"
    )
    with pytest.raises(CompareError, match=r"^A and D .*\(test digests d1 and none\)"):
        paired_over_images(a, untagged)


def test_a_missing_run_or_missing_predictions_are_refused_in_words_naming_the_reference(store):
    client, run = store
    absent = "0" * 32
    with pytest.raises(CompareError) as refused:
        load_side(client, absent, "tiny#9")
    assert str(refused.value) == f"tiny#9: no run {absent} in the tracking store"
    unsaved = run([0], [0], saved=False)
    with pytest.raises(CompareError) as refused:
        load_side(client, unsaved)
    assert str(refused.value) == (
        f"{unsaved}: run {unsaved} has no test_predictions.json (it finished before cvstudy saved test "
        "predictions, or did not finish); retrain it to compare it"
    )


def test_the_command_line_refuses_bad_references_in_one_line(swept):
    root, runs = swept
    bad = run_cli(["compare", "not-a-run", runs[0][0].info.run_id], root)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "expected a run id" in bad.stderr and "Traceback" not in bad.stderr
    missing = run_cli(["compare", "tiny#7", "tiny#0"], root)
    assert missing.returncode == 2 and "no complete trial 7" in missing.stderr, missing.stderr
    shown = run_cli(["compare", "tiny#0", "tiny#1"], root)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "McNemar" in shown.stdout and "balanced accuracy" in shown.stdout


def test_the_reports_grouped_table_sets_each_groups_best_against_the_studys_best(swept):
    from cvstudy.orchestrator.commands.report import report
    from tests.orchestrator.test_report_numbers import _find, _md_tables

    root, runs = swept
    before = os.getcwd()
    os.chdir(root)
    try:
        result = report(["tiny"], storage_url=f"sqlite:///{root / 'optuna.db'}")
    finally:
        os.chdir(before)
    head, body = _find(_md_tables((root / result.paths["md"]).read_text()), "model", "McNemar p (Holm)")
    assert len(body) == 2  # aug none, aug basic
    by_trial = {int(row[head.index("trial")]): row for row in body}
    best = next(n for n, row in by_trial.items() if row[head.index("bal-acc - best's")] == "(the study's best)")
    other = 1 - best
    (_, a), (_, b) = runs[best], runs[other]
    y, pa, pb = (np.array(v) for v in (a["labels"], a["predictions"], b["predictions"]))
    cell = by_trial[other][head.index("bal-acc - best's")]
    difference = balanced_accuracy_score(y, pb) - balanced_accuracy_score(y, pa)
    shown = float(cell.split(" [")[0])
    decimals = len(cell.split(" [")[0].split(".")[1])
    assert shown == pytest.approx(difference, abs=10**-decimals / 2 + 1e-12), cell
    only_a, only_b = int(((pa == y) & (pb != y)).sum()), int(((pb == y) & (pa != y)).sum())
    expected_p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0  # one test: Holm = raw
    for column in ("McNemar p", "McNemar p (Holm)"):
        assert float(by_trial[other][head.index(column)]) == pytest.approx(expected_p, rel=5e-3), column
