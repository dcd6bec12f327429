"""Sweep overhead: a 20-trial sweep of a trivially small model on the default local storage (SQLite
Optuna + SQLite MLflow), against the same 20 trainings called directly. Reports the per-trial time
spent outside the trainer (Optuna, MLflow logging, checkpoint upload, hand-off). Goal: <= 0.5 s.

    PYTHONPATH=. python bench/overhead.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench.common import record  # noqa: E402

TRIALS = 20


def main() -> None:
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    import warnings

    warnings.filterwarnings("ignore")
    from rich.console import Console

    import cvstudy.orchestrator.tracking.fitting as fitting
    import cvstudy.trainers.loop as loop
    from cvstudy.orchestrator.sweep import manager as sweep_mod
    from cvstudy.orchestrator.sweep.study import load_study_spec
    from cvstudy.trainers.data import load_dataset

    work = Path(tempfile.mkdtemp(prefix="cvstudy-bench-"))
    os.chdir(work)
    rng = np.random.default_rng(0)
    data_dir = work / "data"
    data_dir.mkdir()
    for split, n in (("train", 240), ("test", 60)):
        np.save(data_dir / f"{split}_data.npy", rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8))
        np.save(data_dir / f"{split}_target.npy", np.arange(n) % 3)
    study = work / "tiny.yaml"
    study.write_text(f"""
name: overhead
pruner: none
sampler: random
fixed: {{model: test_resnet, epochs: 1, batch_size: 32, data: {data_dir}}}
space:
  lr: {{low: 1.0e-3, high: 1.0e-2, log: true}}
""")
    spec = load_study_spec(study)

    # Baseline: the trainer alone, TRIALS times.
    data = load_dataset(str(data_dir))
    configs = [spec.config_for({"lr": lr}) for lr in np.geomspace(1e-3, 1e-2, TRIALS)]
    loop.fit(configs[0], data)  # warm-up
    t0 = time.perf_counter()
    for config in configs:
        loop.fit(config, data)
    bare = time.perf_counter() - t0

    # The sweep, with the trainer's own time measured inside it.
    inside = []
    real_fit = fitting.fit  # what fit_and_log calls

    def timed_fit(*args, **kwargs):
        t = time.perf_counter()
        try:
            return real_fit(*args, **kwargs)
        finally:
            inside.append(time.perf_counter() - t)

    fitting.fit = timed_fit
    quiet = Console(file=open(os.devnull, "w"))
    t0 = time.perf_counter()
    sweep_mod.sweep(spec, sweep_mod.SweepSettings(trials=TRIALS), console=quiet)
    total = time.perf_counter() - t0
    per_trial = (total - sum(inside)) / TRIALS
    record(
        "overhead",
        trials=TRIALS,
        storage="sqlite (default)",
        sweep_seconds=round(total, 2),
        trainer_seconds=round(sum(inside), 2),
        bare_fit_seconds=round(bare, 2),
        overhead_per_trial_s=round(per_trial, 3),
        ratio_sweep_to_bare=round(total / bare, 2),
        goal="<= 0.5 s/trial",
    )


if __name__ == "__main__":
    main()
