"""Resume states: what keeping them costs. ResNet-50 on the embedded demo set (epochs of ~2 s on 2 CPU
cores, where a 377 MB state write weighs most), 6 epochs, trained three ways side by side in one
process, twice, interleaved: no state; cvstudy's default (a write at most once a minute, the newest
epoch held in memory); and a write every epoch (``--state-min-seconds 0``). Prints each as a ratio to
no state. Goal: the default within noise of no state.

    PYTHONPATH=. python bench/states.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import record  # noqa: E402

EPOCHS = 6


def main() -> None:
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import warnings

    warnings.filterwarnings("ignore")
    from cvstudy.orchestrator.tracking.client import TrackedRun, Tracker
    from cvstudy.orchestrator.tracking.fitting import fit_and_log
    from cvstudy.orchestrator.tracking.states import StateKeeper
    from cvstudy.trainers.config import TrainConfig
    from cvstudy.trainers.data import load_dataset

    config = TrainConfig.from_flat({"model": "resnet50", "epochs": EPOCHS})  # ./data, else the demo set
    data = load_dataset(*config.split)
    with tempfile.TemporaryDirectory() as tmp:
        tracker = Tracker(f"sqlite:///{tmp}/mlflow.db")
        experiment = tracker.experiment_id("bench-states")
        seconds: dict[str, list[float]] = {}
        size = 0
        for _ in range(2):
            for name, keeper_args in (("none", None), ("default", {}), ("every_epoch", {"min_seconds": 0})):
                run = TrackedRun(tracker.client, tracker.client.create_run(experiment).info.run_id)
                keeper = StateKeeper(run, config, **keeper_args) if keeper_args is not None else None
                t0 = time.perf_counter()
                fit_and_log(run, config, data, state=keeper, checkpoint=False)
                seconds.setdefault(name, []).append(time.perf_counter() - t0)
                size = max(size, keeper.size_bytes if keeper else 0)
    base = min(seconds["none"])
    record(
        "states",
        model="resnet50",
        epochs=EPOCHS,
        state_mb=round(size / 1e6),
        seconds={k: [round(s, 2) for s in v] for k, v in seconds.items()},
        ratio_default_to_none=round(min(seconds["default"]) / base, 2),
        ratio_every_epoch_to_none=round(min(seconds["every_epoch"]) / base, 2),
        goal="default within noise of none (<= 1.05)",
    )


if __name__ == "__main__":
    main()
