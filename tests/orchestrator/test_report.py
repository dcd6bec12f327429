"""Report formatting that a reader relies on."""

from orchestrator.report.data import TrialRow
from orchestrator.sweep.trials import format_params


def test_parameters_keep_three_significant_digits():
    """A learning rate of 3.16e-4 must not print as 0.000 (it did, with fixed decimals)."""
    row = TrialRow(
        study="s",
        number=3,
        state="COMPLETE",
        value=0.5,
        run_id=None,
        params={"lr": 0.000316227, "weight_decay": 0.0172, "aug": "seed", "mixup": 0.0, "epochs": 12},
    )
    assert format_params(row.params) == "lr=0.000316, weight_decay=0.0172, aug=seed, mixup=0, epochs=12"
