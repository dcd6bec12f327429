"""``trials.csv`` on hand-built trials, read back with the csv module: every column by name, each value
as it was put in, to the decimals its column states."""

from __future__ import annotations

import csv

from rich.console import Console

from cvstudy.orchestrator.report.data import StudyData, TrialRow, effective_operations
from cvstudy.orchestrator.report.writer import print_study, write_trials_csv
from cvstudy.orchestrator.sweep.trials import Counts

TEST = {"accuracy": 0.61234, "balanced_accuracy": 0.59876, "macro_precision": 0.5, "macro_recall": 0.45678,
        "macro_f1": 0.40001}  # fmt: skip
OPS = ("hflip", "vflip", "crop_pad", "rotate", "translate", "scale", "jitter", "hue", "trivial", "erase")
COST = ("params", "gflops", "peak_memory_mb", "train_device_seconds", "train_images",
        "inference_images_per_second", "inference_ms_per_batch")  # fmt: skip
METRICS = tuple(TEST)


def _rows() -> list[TrialRow]:
    one_seed = TrialRow(
        "s", 3, "COMPLETE", 0.812345678, {"lr": 0.001, "aug": "basic"}, "run-3", test=TEST, epochs=4,
        seconds=12.345, intervals={"accuracy": (0.58321, 0.64123)}, data=("a", "b", "c"),
        cost={"params": 1234567, "gflops": 0.5555559, "peak_memory_mb": 100.25}, device_seconds=10.12345,
        augmentation=effective_operations({"aug": "basic"}), changed={"lr": (0.01, 0.001)},
        values={"val_acc": 0.81, "gflops": 0.55, "val_loss": 0.3}, pareto_optimal=True,
    )  # fmt: skip
    seeds = TrialRow(
        "s", 4, "PRUNED", None, {"lr": 0.1}, None, seeds=3, std={"objective": 0.01, "accuracy": 0.02},
        test={"accuracy": 0.5},
    )  # fmt: skip
    return [one_seed, seeds]


def test_each_trial_is_a_row_and_each_value_its_own_column(tmp_path):
    path = tmp_path / "trials.csv"
    write_trials_csv(path, _rows())
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        first, second = list(reader)
        columns = reader.fieldnames
    assert columns == [
        "study", "trial", "state", "seeds", "objective", "objective_std",
        "objective_val_loss",  # a further objective; gflops, one too, is a cost column already
        "pareto_optimal", "aug", "lr", *OPS, "changed_by_overrides",
        *(f"test_{m}" for m in METRICS), *(f"test_{m}_std" for m in METRICS),
        *(f"test_{m}_{end}" for m in METRICS for end in ("ci_low", "ci_high")),
        "epochs", "seconds", *COST, "device_seconds", "data_digest_train", "data_digest_val", "data_digest_test",
        "mlflow_run_id",
    ]  # fmt: skip
    empty = dict.fromkeys(columns, "")
    assert first == empty | {
        "study": "s", "trial": "3", "state": "COMPLETE", "seeds": "1", "objective": "0.812346",
        "objective_val_loss": "0.300000", "pareto_optimal": "yes", "aug": "basic", "lr": "0.001",
        # the operations as they trained, printed as they are: basic is pad-crop 4 and hflip 0.5
        "hflip": "0.5", "vflip": "0.0", "crop_pad": "4", "rotate": "0.0", "translate": "0.0", "scale": "0.0",
        "jitter": "0.0", "hue": "0.0", "trivial": "False", "erase": "0.0",
        "changed_by_overrides": "lr: sampled 0.01 -> 0.001",
        "test_accuracy": "0.612340", "test_balanced_accuracy": "0.598760", "test_macro_precision": "0.500000",
        "test_macro_recall": "0.456780", "test_macro_f1": "0.400010",
        "test_accuracy_ci_low": "0.583210", "test_accuracy_ci_high": "0.641230",
        "epochs": "4", "seconds": "12.3", "params": "1234567", "gflops": "0.555556", "peak_memory_mb": "100.250000",
        "device_seconds": "10.123", "data_digest_train": "a", "data_digest_val": "b", "data_digest_test": "c",
        "mlflow_run_id": "run-3",
    }  # fmt: skip
    assert second == empty | {
        "study": "s", "trial": "4", "state": "PRUNED", "seeds": "3", "objective_std": "0.010000", "lr": "0.1",
        "test_accuracy": "0.500000", "test_accuracy_std": "0.020000",
    }  # fmt: skip


def test_the_terminal_leaderboard_shows_the_top_trials_with_their_test_cells(tmp_path):
    rows = _rows()[:1] + [
        TrialRow("s", 5, "COMPLETE", 0.7, {"lr": 0.2}, "abcdefghijkl", test={"accuracy": 0.9}, epochs=2),
        TrialRow("s", 6, "COMPLETE", 0.6, {"lr": 0.3}, None),
    ]
    data = StudyData("s", "val_acc", "maximize", rows, Counts(3, 1, 2), ["trial 9 names no MLflow run"], None, rows)
    console = Console(record=True, width=200, color_system=None)
    print_study(data, 2, console)
    text = console.export_text()
    assert "study s: top 2 by val_acc (3 complete, 1 pruned, 2 failed)" in text
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in text.splitlines() if line.startswith("│")]
    assert cells == [  # test cells to 3 decimals, or what the interval supports; the run id's first 8
        ["3", "0.812", "0.612 [0.583, 0.641]", "0.599", "0.500", "0.457", "0.400", "4", "run-3"],
        ["5", "0.700", "0.900", "", "", "", "", "2", "abcdefgh"],
    ]
    assert "  trial 3: lr=0.001, aug=basic (changed by overrides: lr sampled 0.01 -> 0.001)" in text
    assert "trial 6" not in text  # below the top 2
    assert "Optuna/MLflow mismatch: trial 9 names no MLflow run" in text
    assert "Single-seed ranking: each trial of s trained one seed" in text
