"""How cvstudy's cost grows with the work: one JSON line per figure, like the other benches.

    python bench/scale.py                         # every axis measured so far (make bench-scale)
    python bench/scale.py studies                 # axis 2: `cvstudy report` on 30, 300, 3,000 trials
    python bench/scale.py studies --sizes 30 300
    python bench/scale.py worker                  # axis 4: one worker's memory over 50 trials

Axis 2, large studies. A real sweep trains one tiny trial (a registered test model on 16 px images, one
epoch) through `cvstudy sweep`; the bench then grows the study to each size by copying what that trial
wrote, through the public APIs a worker uses: an Optuna trial (``create_trial``: its parameters, value,
epochs and user attributes) and an MLflow run nested under the study's (its tags, parameters, metrics
and artifacts but the model; every trial past ``keep_checkpoints`` has none either). Each copy is
checked against the real trial: the same tag, parameter and metric names and the same artifacts. The
copies differ where trials differ: the searched learning rate, the objective and the test metrics.
Then `cvstudy report` runs as a user runs it, in a subprocess: its wall seconds and its peak resident
memory (the child's own, from ``wait4``). Last, five studies of the middle size side by side.

Axis 4, long-lived workers. One `cvstudy sweep` process runs 50 trials of ResNet-18 one after another;
each trial records the worker's resident memory once its training ended (``worker_memory_mib``). Goal:
flat after the first few trials (imports, allocator pools), within the tolerance the suite's test states
(tests/orchestrator/test_worker_memory.py).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import record  # noqa: E402
from orchestrator.tracking.schema import DELETED, Tag, TrialAttr  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CVSTUDY = str(Path(sys.executable).parent / "cvstudy")
AXES = ("studies", "worker")
STUDY = """name: {name}
fixed:
  model: {model}
  data: {data}
  epochs: 1
  batch_size: 16
sampler: tpe
pruner: none
space:
  lr: {{low: 1.0e-3, high: 1.0e-1, log: true}}
"""


def _env() -> dict[str, str]:
    return {**os.environ, "MLFLOW_LOGGING_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}


def seed_study(work: Path, name: str, model: str = "test_resnet", trials: int = 1) -> None:
    """A real sweep of ``name`` in ``work``: ``trials`` trials of ``model``, one epoch each."""
    import numpy as np

    data = work / "data"
    if not data.exists():
        data.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for split, n in (("train", 120), ("test", 40)):
            y = np.repeat(np.arange(4), n // 4)
            x = np.clip(rng.normal(60 * y[:, None, None, None] + 40, 30, (n, 16, 16, 3)), 0, 255)
            np.save(data / f"{split}_data.npy", x.astype(np.uint8))
            np.save(data / f"{split}_target.npy", y.astype(np.int64))
    (work / f"{name}.yaml").write_text(STUDY.format(name=name, data=data, model=model))
    proc = subprocess.run(
        [CVSTUDY, "sweep", "--study-file", f"{name}.yaml", "--trials", str(trials)],
        cwd=work,
        env=_env(),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"the seed sweep failed:\n{proc.stdout}\n{proc.stderr}")


def grow(work: Path, name: str, size: int) -> float:
    """Copy the study's first trial until it has ``size`` trials; returns the seconds the copies took."""
    import optuna
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{work / 'optuna.db'}")
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    real = study.trials[0]
    run = client.get_run(real.user_attrs[TrialAttr.MLFLOW_RUN_ID])
    artifacts = Path(tempfile.mkdtemp(prefix="cvstudy-scale-"))
    for item in client.list_artifacts(run.info.run_id):
        if not item.is_dir:  # the files; the model (a folder) only the kept trials have
            client.download_artifacts(run.info.run_id, item.path, str(artifacts))
    history = [m for key in run.data.metrics for m in client.get_metric_history(run.info.run_id, key)]
    rng = random.Random(size)
    t0 = time.perf_counter()
    for number in range(len(study.trials), size):
        lr = 10 ** rng.uniform(-3, -1)
        value = rng.uniform(0.2, 0.9)  # the objective and the test metrics: as varied as real trials'
        tags = {**run.data.tags, Tag.TRIAL_NUMBER: str(number), Tag.CHECKPOINT: f"{DELETED}: not kept"}
        for key in (Tag.MODEL_ID, MLFLOW_RUN_NAME):  # the copy has no model; its name is its own
            tags.pop(key, None)
        new = client.create_run(run.info.experiment_id, run_name=f"trial-{number:03d}", tags=tags).info.run_id
        now = int(time.time() * 1000)
        metrics = [
            Metric(m.key, value + rng.uniform(-0.05, 0.05) if _varies(m.key) else m.value, now, m.step) for m in history
        ]
        params = [Param(k, str(lr) if k == "lr" else v) for k, v in run.data.params.items()]
        client.log_batch(new, metrics=metrics, params=params)
        client.log_artifacts(new, str(artifacts))
        client.set_terminated(new, "FINISHED")
        attrs = {**real.user_attrs, TrialAttr.MLFLOW_RUN_ID: new, TrialAttr.CHECKPOINT_RUN_ID: new}
        attrs[TrialAttr.CONFIG] = {**real.user_attrs[TrialAttr.CONFIG], "lr": lr}
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": lr},
                distributions=real.distributions,
                value=value,
                intermediate_values={1: value},
                user_attrs=attrs,
            )
        )
        if number == 1:
            check_copy(client, run.info.run_id, new)
    shutil.rmtree(artifacts)
    return time.perf_counter() - t0


def _varies(key: str) -> bool:
    """A metric that differs from trial to trial as the objective does (accuracies, F1, their intervals)."""
    return key.startswith(("val/", "test/")) and "loss" not in key


def check_copy(client, real: str, copy: str) -> None:
    """A copy holds what the real trial's run holds: the same tag, parameter and metric names, the same
    per-epoch steps and the same artifacts but the model."""
    a, b = client.get_run(real), client.get_run(copy)
    assert set(a.data.tags) - {Tag.MODEL_ID} == set(b.data.tags) - {Tag.MODEL_ID}, "tags"
    assert set(a.data.params) == set(b.data.params) and set(a.data.metrics) == set(b.data.metrics), "names"
    for key in a.data.metrics:
        steps = [m.step for m in client.get_metric_history(real, key)]
        assert steps == [m.step for m in client.get_metric_history(copy, key)], key
    files = {f.path for f in client.list_artifacts(real) if not f.is_dir}
    assert files == {f.path for f in client.list_artifacts(copy)}, "artifacts"


def report(work: Path, names: list[str]) -> tuple[float, float]:
    """`cvstudy report NAMES` as a user runs it: (wall seconds, the process's peak resident MiB)."""
    with tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen([CVSTUDY, "report", *names], cwd=work, env=_env(), stdout=out, stderr=out)
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own peak memory, not the bench's
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            out.seek(0)
            raise SystemExit(f"cvstudy report {' '.join(names)} failed:\n{out.read().decode()}")
    return seconds, usage.ru_maxrss / 1024  # Linux reports ru_maxrss in KiB


def studies(sizes: list[int], side_by_side: int) -> None:
    with tempfile.TemporaryDirectory(prefix="cvstudy-scale-") as tmp:
        for size in sizes:
            work = Path(tmp) / f"n{size}"
            work.mkdir()
            seed_study(work, "big")
            fill = grow(work, "big", size)
            (seconds, mib), (again, _) = report(work, ["big"]), report(work, ["big"])  # twice: the spread
            record(
                "scale",
                axis="studies",
                trials=size,
                fill_seconds=round(fill, 1),
                report_seconds=[round(seconds, 2), round(again, 2)],
                report_peak_mib=round(mib),
            )
        size = sizes[len(sizes) // 2]
        work = Path(tmp) / "side-by-side"
        work.mkdir()
        names = [f"s{i}" for i in range(side_by_side)]
        for name in names:
            seed_study(work, name)
            grow(work, name, size)
        seconds, mib = report(work, names)
        record(
            "scale",
            axis="studies_side_by_side",
            studies=len(names),
            trials_each=size,
            report_seconds=round(seconds, 2),
            report_peak_mib=round(mib),
        )


def long_lived_worker(trials: int) -> list[float]:
    """Axis 4: one worker (the real `cvstudy sweep`, one process) runs ``trials`` trials of ResNet-18 on
    16 px images, one epoch each (weights and optimiser moments of ~130 MB a trial: a trial's model
    left behind shows); returns the worker's resident MiB after each trial, as the trials recorded it."""
    import optuna

    with tempfile.TemporaryDirectory(prefix="cvstudy-scale-") as tmp:
        work = Path(tmp)
        seed_study(work, "worker", model="resnet18", trials=trials)
        study = optuna.load_study(study_name="worker", storage=f"sqlite:///{work / 'optuna.db'}")
        ordered = sorted(study.trials, key=lambda t: t.number)
        return [t.user_attrs[TrialAttr.WORKER_MEMORY]["host_resident"] for t in ordered]


def worker_memory(trials: int, warm: int = 5) -> None:
    import numpy as np

    rss = long_lived_worker(trials)
    slope = float(np.polyfit(np.arange(warm, len(rss)), rss[warm:], 1)[0])
    record(
        "scale",
        axis="long_lived_worker",
        trials=len(rss),
        resident_mib_after=[round(v) for v in rss],
        resident_mib_first=round(rss[0]),
        resident_mib_warm=round(rss[warm - 1]),
        resident_mib_last=round(rss[-1]),
        growth_mib_per_trial_after_warm=round(slope, 2),
    )


def main() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("axes", nargs="*", metavar="AXIS", help=f"one or more of {', '.join(AXES)} (default: all)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[30, 300, 3000], help="trials per study")
    parser.add_argument("--side-by-side", type=int, default=5, help="studies reported together")
    parser.add_argument("--worker-trials", type=int, default=50, help="trials in one long-lived worker")
    args = parser.parse_args()
    args.axes = args.axes or list(AXES)
    if set(args.axes) - set(AXES):
        parser.error(f"unknown axis {sorted(set(args.axes) - set(AXES))[0]!r}; the axes: {', '.join(AXES)}")
    if "studies" in args.axes:
        studies(sorted(args.sizes), args.side_by_side)
    if "worker" in args.axes:
        worker_memory(args.worker_trials)


if __name__ == "__main__":
    main()
