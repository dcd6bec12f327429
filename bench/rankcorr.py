"""How early can a bad trial be told from a good one? Over the complete trials of a study run without
pruning, the Spearman rank correlation between each epoch's validation objective and the trial's final
test balanced accuracy. Hyperband's ``min_epochs`` should be the first epoch where it is high.

    cvstudy sweep --study-file bench/photos_wide.yaml --data DIR      # pruner none, sampler random
    PYTHONPATH=. python bench/rankcorr.py photos [--storage sqlite:///optuna.db]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import record  # noqa: E402


def main() -> None:
    import optuna
    from scipy.stats import spearmanr

    from cvstudy.orchestrator.sweep.trials import current_trials
    from cvstudy.orchestrator.tracking.schema import TrialAttr

    parser = argparse.ArgumentParser()
    parser.add_argument("study")
    parser.add_argument("--storage", default=f"sqlite:///{Path('optuna.db').resolve()}")
    args = parser.parse_args()
    study = optuna.load_study(study_name=args.study, storage=args.storage)
    test = TrialAttr.test("balanced_accuracy")
    trials = [t for t in current_trials(study) if t.state.name == "COMPLETE" and test in t.user_attrs]
    epochs = min(len(t.intermediate_values) for t in trials)
    final = [t.user_attrs[test] for t in trials]
    rows = []
    for k in range(1, epochs + 1):
        rho = spearmanr([t.intermediate_values[k] for t in trials], final).statistic
        rows.append(round(float(rho), 3))
        print(f"epoch {k:2d}: rank correlation of validation objective with final test balanced accuracy {rho:+.3f}")
    best_val = spearmanr([t.value for t in trials], final).statistic
    record(
        "rankcorr",
        study=args.study,
        trials=len(trials),
        epochs=epochs,
        spearman_by_epoch=rows,
        spearman_selected_val=round(float(best_val), 3),
        test_balanced_accuracy=sorted(round(v, 4) for v in final),
    )


if __name__ == "__main__":
    main()
