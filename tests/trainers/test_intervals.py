"""The 95 % interval beside every test metric: Wilson's for accuracy against statsmodels and a hand-worked
case; the bootstrap's macro formulas against scikit-learn on each resampled set; its endpoints against a
stratified bootstrap written here, which calls scikit-learn on every resample."""

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix
from statsmodels.stats.proportion import proportion_confint

from cvstudy.trainers.intervals import (
    macro_scores,
    mcnemar,
    paired_difference_intervals,
    resampled_confusions,
    sampling_intervals,
    wilson,
)
from cvstudy.trainers.metrics import SCALARS, classification_metrics, flat


def _predictions(n_per_class=(120, 80, 60, 40), hit=(0.9, 0.7, 0.5, 0.3), seed=0):
    """A long-tailed test set and a classifier whose accuracy falls with the class's size."""
    rng = np.random.default_rng(seed)
    k = len(n_per_class)
    y_true = np.repeat(np.arange(k), n_per_class)
    wrong = (y_true + rng.integers(1, k, size=len(y_true))) % k
    y_pred = np.where(rng.random(len(y_true)) < np.asarray(hit)[y_true], y_true, wrong)
    return y_true, y_pred


def test_wilson_matches_statsmodels_and_a_hand_worked_case():
    # 68 of 100, z = 1.96: centre (68 + z^2/2) / (100 + z^2) = 69.921 / 103.842 = 0.6733; half-width
    # z / 103.842 * sqrt(68 * 32 / 100 + z^2/4) = 0.018875 * 4.7666 = 0.0900; so [0.5834, 0.7633]
    low, high = wilson(68, 100)
    assert (low, high) == pytest.approx((0.5834, 0.7633), abs=2e-4)
    for correct, total in ((0, 20), (20, 20), (655, 1000), (7, 9)):
        assert wilson(correct, total) == pytest.approx(proportion_confint(correct, total, method="wilson"), abs=1e-9)


def test_the_macro_formulas_equal_scikit_learns_on_every_confusion_matrix():
    """Random label sets with a class never predicted and a class absent from the truth, as a resample
    of a small test set can be."""
    rng = np.random.default_rng(1)
    k = 5
    for _ in range(50):
        y_true = rng.integers(0, k - 1, size=40)  # class 4 never true
        y_pred = rng.choice([0, 1, 2, 4], size=40)  # class 3 never predicted
        cm = confusion_matrix(y_true, y_pred, labels=np.arange(k))
        ours = macro_scores(cm[None])
        expected = classification_metrics(y_true, y_pred, k)
        for name in SCALARS:
            assert ours[name][0] == pytest.approx(expected[name], abs=1e-12), name


def test_the_macro_formulas_at_their_edges_a_single_image_class_and_a_class_in_neither_labels_nor_predictions():
    """Class 0 holds one image, predicted once (recall and precision 1, not 0); class 2 is in neither the
    truth nor the predictions (F1 0, scikit-learn's zero_division=0, and no NaN); balanced accuracy
    averages the classes present, the one-image class among them."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, precision_score, recall_score

    y_true = np.array([0, 1, 1, 1, 3, 3])
    y_pred = np.array([0, 1, 1, 3, 3, 1])
    labels = np.arange(4)
    ours = macro_scores(confusion_matrix(y_true, y_pred, labels=labels)[None])
    macro = {"average": "macro", "labels": labels, "zero_division": 0}
    expected = {
        "accuracy": accuracy_score(y_true, y_pred),
        "balanced_accuracy": balanced_accuracy_score(y_true, y_pred),
        "macro_precision": precision_score(y_true, y_pred, **macro),
        "macro_recall": recall_score(y_true, y_pred, **macro),
        "macro_f1": f1_score(y_true, y_pred, **macro),
    }
    assert {name: float(v[0]) for name, v in ours.items()} == pytest.approx(expected, abs=1e-12)
    # by hand: recalls 1, 2/3, (absent), 1/2; precisions 1, 2/3, 0, 1/2; F1s 1, 2/3, 0, 1/2
    assert expected["balanced_accuracy"] == pytest.approx((1 + 2 / 3 + 1 / 2) / 3)
    assert expected["macro_f1"] == pytest.approx((1 + 2 / 3 + 0 + 1 / 2) / 4)


def test_a_stack_of_any_depth_is_scored_matrix_by_matrix():
    """``macro_scores`` takes (..., K, K): a (2, 3, K, K) stack (two models' resamples, say) scores each
    matrix as scikit-learn scores its labels alone; the class sizes differ across it on purpose."""
    rng = np.random.default_rng(7)
    k = 4
    sets = [[(rng.integers(0, k, 10 + 5 * (2 * m + r)), rng.integers(0, k, 10 + 5 * (2 * m + r))) for r in range(3)]
            for m in range(2)]  # fmt: skip
    stack = np.array([[confusion_matrix(t, p, labels=np.arange(k)) for t, p in row] for row in sets])
    ours = macro_scores(stack)
    for m in range(2):
        for r in range(3):
            expected = classification_metrics(*sets[m][r], k)
            for name in SCALARS:
                assert ours[name].shape == (2, 3)
                assert ours[name][m, r] == pytest.approx(expected[name], abs=1e-12), (name, m, r)


def test_each_resample_keeps_every_class_size_and_on_average_the_observed_confusion():
    y_true, y_pred = _predictions()
    observed = confusion_matrix(y_true, y_pred, labels=np.arange(4))
    stack = resampled_confusions(y_true, y_pred, 4, 2000, np.random.default_rng(0))
    assert stack.shape == (2000, 4, 4)
    assert (stack.sum(axis=2) == observed.sum(axis=1)).all()  # stratified: each true class keeps its size
    # each cell is a binomial draw with the observed share as its mean: within 5 of its standard errors
    n = observed.sum(axis=1, keepdims=True)
    share = observed / n
    se = np.sqrt(n * share * (1 - share) / 2000)
    assert (np.abs(stack.mean(axis=0) - observed) <= 5 * se + 1e-9).all()
    assert stack.std(axis=0)[0, 0] > 0  # they do vary


def _bootstrap_with_scikit_learn(y_true, y_pred, k, resamples, seed):
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(y_true == c) for c in range(k)]
    values = {name: [] for name in SCALARS}
    for _ in range(resamples):
        idx = np.concatenate([rng.choice(ix, size=len(ix), replace=True) for ix in by_class])
        m = classification_metrics(y_true[idx], y_pred[idx], k)
        for name in SCALARS:
            values[name].append(m[name])
    return {name: (np.quantile(v, 0.025), np.quantile(v, 0.975), np.std(v)) for name, v in values.items()}


def test_the_bootstrap_interval_matches_one_written_with_scikit_learn_within_monte_carlo_error():
    """Two bootstraps with different random draws agree up to Monte Carlo error: endpoints of 500 and of
    4,000 resamples differ by about 0.13 of the metric's standard error (sd of the difference); allowed: 0.5
    (the draws are seeded: the outcome is the same on every machine)."""
    y_true, y_pred = _predictions()
    ours = sampling_intervals(y_true, y_pred, 4, seed=3, resamples=4000)
    theirs = _bootstrap_with_scikit_learn(y_true, y_pred, 4, 500, seed=11)
    observed = classification_metrics(y_true, y_pred, 4)
    for name in SCALARS:
        if name == "accuracy":
            continue
        low, high, sd = theirs[name]
        assert ours[name] == pytest.approx((low, high), abs=0.5 * sd), name
        # 95 %: about 1.96 standard errors each side on these near-normal resamples (90 % would be 1.64)
        assert (ours[name][1] - ours[name][0]) / 2 / sd == pytest.approx(1.96, abs=0.12), name
        assert ours[name][0] < observed[name] < ours[name][1], name
    correct = int((y_true == y_pred).sum())
    assert ours["accuracy"] == pytest.approx(proportion_confint(correct, len(y_true), method="wilson"), abs=1e-9)


def test_the_same_seed_gives_the_same_interval_and_more_images_a_narrower_one():
    y_true, y_pred = _predictions()
    assert sampling_intervals(y_true, y_pred, 4, seed=5) == sampling_intervals(y_true, y_pred, 4, seed=5)
    big_true, big_pred = _predictions(n_per_class=(1200, 800, 600, 400))
    small, big = sampling_intervals(y_true, y_pred, 4), sampling_intervals(big_true, big_pred, 4)
    for name in SCALARS:  # ten times the images: about a third of the width
        assert (big[name][1] - big[name][0]) < 0.5 * (small[name][1] - small[name][0]), name


def test_labels_and_predictions_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="as long"):
        sampling_intervals(np.array([0, 1]), np.array([0]), 2)


def test_flat_logs_each_interval_beside_its_metric():
    y_true, y_pred = _predictions()
    m = classification_metrics(y_true, y_pred, 4)
    m["intervals"] = sampling_intervals(y_true, y_pred, 4)
    out = flat(m, "test")
    for name in SCALARS:
        assert (out[f"test_{name}_ci_low"], out[f"test_{name}_ci_high"]) == m["intervals"][name]
    assert not any("ci_" in key for key in flat(classification_metrics(y_true, y_pred, 4), "val"))


def test_mcnemar_on_a_hand_worked_case():
    """20 images: both right on 10, both wrong on 2, only A right on 7, only B right on 1. Exact
    two-sided p = 2 * P(X >= 7), X ~ Binomial(8, 1/2) = 2 * (8 + 1) / 256 = 0.0703125."""
    y = np.zeros(20, dtype=int)
    a = np.array([0] * 10 + [1] * 2 + [0] * 7 + [1])
    b = np.array([0] * 10 + [1] * 2 + [1] * 7 + [0])
    assert mcnemar(y, a, b) == (7, 1, pytest.approx(0.0703125, abs=1e-12))
    assert mcnemar(y, a, a) == (0, 0, 1.0)


def test_the_paired_interval_matches_a_paired_bootstrap_written_with_scikit_learn():
    """B is A with 25 of 300 predictions changed: the two are strongly correlated, so only a bootstrap that
    draws the same images for both gets the difference's narrow interval."""
    y_true, pred_a = _predictions()
    rng = np.random.default_rng(4)
    pred_b = pred_a.copy()
    changed = rng.choice(len(pred_b), 25, replace=False)
    pred_b[changed] = (pred_b[changed] + 1) % 4
    ours = paired_difference_intervals(y_true, pred_a, pred_b, 4, seed=2, resamples=4000)
    by_class = [np.flatnonzero(y_true == c) for c in range(4)]
    draws = {name: [] for name in SCALARS}
    for _ in range(500):
        idx = np.concatenate([rng.choice(ix, size=len(ix), replace=True) for ix in by_class])
        ma, mb = (classification_metrics(y_true[idx], p[idx], 4) for p in (pred_a, pred_b))
        for name in SCALARS:
            draws[name].append(ma[name] - mb[name])
    for name in SCALARS:
        d = np.array(draws[name])
        low, high = ours[name]
        assert (low, high) == pytest.approx(tuple(np.quantile(d, [0.025, 0.975])), abs=0.5 * d.std()), name
        single = sampling_intervals(y_true, pred_a, 4)[name]  # one model's own interval is far wider
        assert high - low < 0.7 * (single[1] - single[0]), name


def test_the_level_reaches_every_interval():
    """At 90 %: Wilson's interval as statsmodels gives it at alpha 0.1; bootstrap intervals narrower than at 95 %."""
    assert wilson(68, 100, level=0.9) == pytest.approx(
        proportion_confint(68, 100, alpha=0.1, method="wilson"), abs=1e-9
    )
    y_true, y_pred = _predictions()
    at90, at95 = sampling_intervals(y_true, y_pred, 4, level=0.9), sampling_intervals(y_true, y_pred, 4)
    correct = int((y_true == y_pred).sum())
    assert at90["accuracy"] == pytest.approx(
        proportion_confint(correct, len(y_true), alpha=0.1, method="wilson"), abs=1e-9
    )
    for name in SCALARS:
        assert at90[name][1] - at90[name][0] < at95[name][1] - at95[name][0], name


def test_empty_or_unequal_inputs_are_refused_and_a_single_image_is_not():
    for bad in ((np.array([], dtype=int),) * 3, (np.array([0, 1]), np.array([0, 1]), np.array([0]))):
        with pytest.raises(ValueError, match="non-empty and as long"):
            paired_difference_intervals(*bad, 2)
    with pytest.raises(ValueError, match="non-empty and as long"):
        sampling_intervals(np.array([], dtype=int), np.array([], dtype=int), 2)
    one = np.array([1])
    assert sampling_intervals(one, one, 2)["accuracy"][1] == pytest.approx(1.0)
    assert paired_difference_intervals(one, one, one, 2)["accuracy"] == (0.0, 0.0)


def test_the_paired_interval_is_reproducible_and_its_endpoints_are_the_2_5_and_97_5_percentiles():
    """Accuracy's paired difference, bootstrapped here with NumPy (3,000 draws within each class): the
    endpoints agree within 0.1 standard errors; at 96.7 % they would be 0.18 off."""
    y_true, pred_a = _predictions()
    pred_b = np.where(np.arange(len(pred_a)) % 7 == 0, (pred_a + 1) % 4, pred_a)
    first = paired_difference_intervals(y_true, pred_a, pred_b, 4, seed=9)
    assert first == paired_difference_intervals(y_true, pred_a, pred_b, 4, seed=9)
    rng = np.random.default_rng(21)
    by_class = [np.flatnonzero(y_true == c) for c in range(4)]
    draws = []
    for _ in range(3000):
        idx = np.concatenate([rng.choice(ix, size=len(ix), replace=True) for ix in by_class])
        draws.append(np.mean(pred_a[idx] == y_true[idx]) - np.mean(pred_b[idx] == y_true[idx]))
    low, high = paired_difference_intervals(y_true, pred_a, pred_b, 4, seed=9, resamples=4000)["accuracy"]
    expected = tuple(np.quantile(draws, [0.025, 0.975]))
    assert (low, high) == pytest.approx(expected, abs=0.1 * np.std(draws))


def test_a_class_absent_from_the_test_set_and_one_with_a_single_image_keep_their_sizes():
    stack = resampled_confusions(np.array([0, 0, 2]), np.array([0, 1, 1]), 3, 50, np.random.default_rng(0))
    assert (stack.sum(axis=2) == [2, 0, 1]).all()  # class 1 absent, class 2 one image: in every resample
    assert (stack[:, 2, 1] == 1).all()  # its one image, predicted 1, drawn every time


def test_a_class_never_predicted_raises_no_warning():
    import warnings

    cm = np.array([[[2, 0], [1, 0]]])  # class 1 never predicted: its precision is 0 by rule, not a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert macro_scores(cm)["macro_precision"][0] == pytest.approx((2 / 3 + 0) / 2)
        assert macro_scores(cm)["macro_f1"][0] == pytest.approx((2 * 2 / (2 + 3) + 0) / 2)


def test_resamples_drawn_in_chunks_equal_those_drawn_at_once(monkeypatch):
    """A large test set is resampled in chunks of rows (memory); the draws are the same either way."""
    import cvstudy.trainers.intervals as intervals

    y_true, y_pred = _predictions()
    whole = resampled_confusions(y_true, y_pred, 4, 300, np.random.default_rng(7))
    monkeypatch.setattr(intervals, "CHUNK", 1000)  # 120 images in class 0: 8 resamples a chunk
    chunked = resampled_confusions(y_true, y_pred, 4, 300, np.random.default_rng(7))
    assert (whole == chunked).all()
