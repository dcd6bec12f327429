"""The classification metrics on a prediction set worked by hand."""

import warnings

import pytest

from cvstudy.trainers.metrics import SCALARS, classification_metrics, flat


def test_metrics_and_the_confusion_matrixs_orientation_on_a_hand_worked_case():
    """true 0 0 0 1 1 2, predicted 0 0 1 1 2 2. Rows are true classes, columns predicted:
    [[2, 1, 0], [0, 1, 1], [0, 0, 1]]. Recall 2/3, 1/2, 1; precision 1, 1/2, 1/2; F1 4/5, 1/2, 2/3."""
    m = classification_metrics([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2], 3)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6, abs=1e-12)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3, abs=1e-12)  # 13/18
    assert m["macro_recall"] == pytest.approx(13 / 18, abs=1e-12)
    assert m["macro_precision"] == pytest.approx((1 + 1 / 2 + 1 / 2) / 3, abs=1e-12)
    assert m["macro_f1"] == pytest.approx((4 / 5 + 1 / 2 + 2 / 3) / 3, abs=1e-12)  # 59/90, not the harmonic mean
    assert m["macro_f1"] != pytest.approx(2 * (2 / 3) * (13 / 18) / (2 / 3 + 13 / 18), abs=1e-3)
    assert m["recall_per_class"] == pytest.approx([2 / 3, 1 / 2, 1.0], abs=1e-12)
    assert m["precision_per_class"] == pytest.approx([1.0, 1 / 2, 1 / 2], abs=1e-12)
    assert m["f1_per_class"] == pytest.approx([4 / 5, 1 / 2, 2 / 3], abs=1e-12)
    assert m["support_per_class"] == [3, 2, 1]
    # Plain Python numbers: they go to JSON and MLflow as they are.
    assert all(type(m[k]) is float for k in SCALARS)
    assert all(type(v) is float for k in ("precision", "recall", "f1") for v in m[f"{k}_per_class"])
    assert all(type(v) is int for v in m["support_per_class"])


def test_a_class_never_seen_counts_zero_and_keeps_its_row_and_column():
    """With 4 classes and class 3 absent from both sides: its row and column are zeros, its precision and
    recall 0 (no division warning), and the macro means average over all 4 classes as scikit-learn's do
    with labels given."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = classification_metrics([0, 1, 2], [0, 1, 1], 4)
    assert caught == []
    assert m["confusion_matrix"] == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    assert m["macro_recall"] == pytest.approx((1 + 1 + 0 + 0) / 4, abs=1e-12)
    assert m["macro_precision"] == pytest.approx((1 + 1 / 2 + 0 + 0) / 4, abs=1e-12)
    assert m["macro_f1"] == pytest.approx((1 + 2 / 3 + 0 + 0) / 4, abs=1e-12)
    assert m["accuracy"] == pytest.approx(2 / 3, abs=1e-12)
    assert m["precision_per_class"] == [1.0, 0.5, 0.0, 0.0]  # class 2 never predicted: 0, not 1 or NaN
    assert m["recall_per_class"] == [1.0, 1.0, 0.0, 0.0]
    assert m["f1_per_class"] == pytest.approx([1.0, 2 / 3, 0.0, 0.0], abs=1e-12)
    assert m["support_per_class"] == [1, 1, 1, 0]
    # Balanced accuracy is scikit-learn's: the mean recall over the classes the true labels hold (3 here).
    assert m["balanced_accuracy"] == pytest.approx((1 + 1 + 0) / 3, abs=1e-12)


def test_a_prediction_of_a_class_no_image_has_is_counted_without_a_warning():
    """true 0 1 1, predicted 0 2 1 with 3 classes: class 2 has no image, so its recall is 0 (not NaN) and
    balanced accuracy, over classes 0 and 1 only, is (1 + 1/2) / 2; scikit-learn would warn of it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = classification_metrics([0, 1, 1], [0, 2, 1], 3)
    assert caught == []
    assert m["balanced_accuracy"] == pytest.approx(3 / 4, abs=1e-12)
    assert m["recall_per_class"] == [1.0, 0.5, 0.0] and m["precision_per_class"] == [1.0, 1.0, 0.0]
    assert m["macro_recall"] == pytest.approx(1.5 / 3, abs=1e-12)
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 1, 1], [0, 0, 0]]


def test_flat_names_each_scalar_and_per_class_value_under_its_prefix():
    m = classification_metrics([0, 1, 1], [0, 1, 0], 2)
    out = flat({**m, "loss": 0.25}, "test")
    assert {f"test_{k}" for k in SCALARS} | {"test_loss"} <= set(out)
    assert out["test_recall_class_1"] == pytest.approx(0.5) and out["test_precision_class_0"] == pytest.approx(0.5)
    assert out["test_accuracy"] == pytest.approx(2 / 3) and out["test_loss"] == 0.25
