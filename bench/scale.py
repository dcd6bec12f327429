"""How cvstudy's cost grows with the work: one JSON line per figure, like the other benches.

    python bench/scale.py                         # every axis (make bench-scale)
    python bench/scale.py workers                 # axis 1: 1, 4, 16, 32 workers on each storage
    python bench/scale.py workers --counts 32 --storages journal postgresql --trackers sqlite
    python bench/scale.py studies                 # axis 2: `cvstudy report` on 30, 300, 3,000 trials
    python bench/scale.py studies --sizes 30 300
    python bench/scale.py data                    # axis 3: loading 20,431 x 32 px, 200,000 x 32 px, 20,000 x 224 px
    python bench/scale.py worker                  # axis 4: one worker's memory over 50 trials

Axis 1, workers on one store. N `cvstudy sweep` processes start together on one study (as N SLURM array
tasks do), each a worker, against one Optuna storage (SQLite, the journal file, PostgreSQL on loopback
from CVSTUDY_TEST_POSTGRES_URL as .ci/run starts it) and one MLflow store (SQLite, or an `mlflow server`
on loopback over SQLite), with a target of max(8, N) tiny trials. Checked at every point: every process
exited 0, the study holds exactly the target, nothing RUNNING or WAITING, one FINISHED trial run per
counted trial, no "database is locked" in any log, the best trial registered as `models:/w@best`.
Figures: wall seconds; the seconds before the first trial started (N interpreters importing torch on 2
cores); trials per minute between the first trial's
start and the last one's end; CPU seconds per trial, all processes together (from ``wait4``), with and
without each worker's startup (the CPU of one more `cvstudy sweep` that finds the target reached, for each
worker); orchestration seconds per trial (a trial's wall time less its training epochs' seconds:
asking, evaluating, testing, logging).

Axis 3, large data. Synthetic arrays in the users' layout (the bench writes them, uint8, 10 classes)
are loaded as a run loads them (``load_dataset``, then a ``Trainer`` on the CPU, which keeps the images
where they are) in a fresh process: the load's seconds, and the process's peak resident memory past what
it held before the load, as a multiple of the arrays' bytes (goal: at most about 1.3).

Axis 2, large studies. A real sweep trains one tiny trial (a registered test model on 16 px images, one
epoch) through `cvstudy sweep`; the bench then grows the study to each size by copying what that trial
wrote, through the public APIs a worker uses: an Optuna trial (``create_trial``: its parameters, value,
epochs and user attributes) and an MLflow run nested under the study's (its tags, parameters, metrics
and artifacts but the model; every trial past ``keep_checkpoints`` has none either). Each copy is
checked against the real trial: the same tag, parameter and metric names and the same artifacts. The
copies differ where trials differ: the searched learning rate, the objective and the test metrics.
Then `cvstudy report` runs as a user runs it, in a subprocess: its wall seconds and its peak resident
memory (``VmHWM``, its own: see ``PEAK``). Last, five studies of the middle size side by side.

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
from cvstudy.orchestrator.tracking.schema import DELETED, Tag, TrialAttr, logged_name  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CVSTUDY = str(Path(sys.executable).parent / "cvstudy")
AXES = ("workers", "studies", "data", "worker")
STORAGES = ("sqlite", "journal", "postgresql")
CONTROL = "separate"  # each worker a store of its own: the CPU contention alone
TRACKERS = ("sqlite", "server")
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


def tiny_data(work: Path) -> Path:
    """``work/data``: 120 train and 40 test images of 16 px, 4 classes (written once)."""
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
    return data


def seed_study(work: Path, name: str, model: str = "test_resnet", trials: int = 1) -> None:
    """A real sweep of ``name`` in ``work``: ``trials`` trials of ``model``, one epoch each."""
    data = tiny_data(work)
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


# Runs a console script and writes its process's peak resident memory (VmHWM, kB) to argv[1] at exit.
# Not wait4's ru_maxrss: Linux carries the parent's high-water mark into a child across fork and exec,
# so a child of a large bench process would report the bench's peak.
PEAK = """
import atexit, runpy, sys
from pathlib import Path

def peak():
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM:"))
    Path(out).write_text(line.split()[1])

atexit.register(peak)
out, sys.argv = sys.argv[1], sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def report(work: Path, names: list[str]) -> tuple[float, float]:
    """`cvstudy report NAMES` as a user runs it: (wall seconds, the process's peak resident MiB)."""
    peak = work / "report-peak-kb"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", PEAK, str(peak), CVSTUDY, "report", *names],
        cwd=work,
        env=_env(),
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"cvstudy report {' '.join(names)} failed:\n{proc.stdout}{proc.stderr}")
    return seconds, int(peak.read_text()) / 1024


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


# ----------------------------------------------------------------------------- axis 1: workers on one store
def _postgres_database(name: str) -> tuple[str, object]:
    """A fresh database on the PostgreSQL server of CVSTUDY_TEST_POSTGRES_URL: (its URL, the admin engine)."""
    import sqlalchemy

    admin = os.environ.get("CVSTUDY_TEST_POSTGRES_URL")
    if not admin:
        raise SystemExit("axis 1 on postgresql needs CVSTUDY_TEST_POSTGRES_URL (as .ci/run sets it)")
    engine = sqlalchemy.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    return admin.rsplit("/", 1)[0] + f"/{name}", engine


def _mlflow_server(database: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """``mlflow server`` on loopback over ``database``, on a port it chose; (the server, its URI)."""
    import re

    mlflow = str(Path(sys.executable).parent / "mlflow")
    args = [mlflow, "server", "--host", "127.0.0.1", "--port", "0", "--backend-store-uri", f"sqlite:///{database}"]
    args += ["--artifacts-destination", str(database.parent / "mlartifacts")]  # not the bench's working folder
    server = subprocess.Popen(  # noqa: SIM115
        args, cwd=database.parent, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=_env()
    )
    deadline = time.time() + 180
    while time.time() < deadline and server.poll() is None:
        found = re.search(r"running on https?://[^\s:]+:(\d+)", log.read_text(), flags=re.I)
        if found:
            return server, f"http://127.0.0.1:{found.group(1)}"
        time.sleep(0.5)
    server.kill()
    raise SystemExit(f"mlflow server did not start:\n{log.read_text()[-2000:]}")


# One torch thread a worker, as a SLURM task given one CPU has (and as `--workers N` splits the cores): with
# torch's default two threads each, 16 workers on 2 cores managed 16 trials a minute, not 51.
def _worker_env() -> dict[str, str]:
    return {**_env(), "OMP_NUM_THREADS": "1"}


def _together(jobs: list[tuple[list[str], Path, Path]]) -> tuple[list[int], float, float]:
    """Start every ``(command, cwd, log)`` at once and wait for all: (exit codes, CPU seconds of them all
    from ``wait4``, wall seconds)."""
    t0, procs = time.time(), []
    try:
        for command, cwd, log in jobs:
            with open(log, "w") as out:
                procs.append(subprocess.Popen(command, cwd=cwd, env=_worker_env(), stdout=out, stderr=out))
        codes, cpu = [], 0.0
        for proc in procs:
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            codes.append(proc.returncode)
            cpu += usage.ru_utime + usage.ru_stime
        return codes, cpu, time.time() - t0
    finally:
        for proc in procs:
            if proc.returncode is None and proc.poll() is None:
                proc.kill()


def _startup_cpu(command: list[str], cwd: Path) -> float:
    """What one worker costs before and after its trials: the CPU seconds of a sweep that finds its study's
    target reached."""
    idle = subprocess.Popen(command, cwd=cwd, env=_worker_env(), stdout=subprocess.DEVNULL)
    usage = os.wait4(idle.pid, 0)[2]
    return usage.ru_utime + usage.ru_stime


def workers_point(work: Path, workers: int, storage: str, tracker: str) -> dict:
    """``workers`` `cvstudy sweep` processes at once on one study; checks the study and runs, returns the
    point's figures."""
    import optuna
    from mlflow import MlflowClient

    from cvstudy.orchestrator.sweep.storage import open_storage
    from cvstudy.orchestrator.sweep.trials import count_trials, current_trials

    work.mkdir(parents=True)
    data = tiny_data(work)
    (work / "w.yaml").write_text(STUDY.format(name="w", data=data, model="test_resnet"))
    target = max(8, workers)
    engine, server = None, None
    if storage == "postgresql":
        url, engine = _postgres_database(f"scale_{work.name}")
    else:
        url = f"sqlite:///{work / 'optuna.db'}" if storage == "sqlite" else f"journal:///{work / 'optuna.journal'}"
    if tracker == "server":
        server, tracking_uri = _mlflow_server(work / "mlflow.db", work / "server.log")
    else:
        tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
    command = [CVSTUDY, "sweep", "--study-file", "w.yaml", "--trials", str(target), "--storage", url]
    command += ["--tracking-uri", tracking_uri]
    try:
        t0 = time.time()
        codes, cpu, wall = _together([(command, work, work / f"worker{i}.log") for i in range(workers)])
        startup = _startup_cpu(command, work)
        logs = "".join((work / f"worker{i}.log").read_text() for i in range(workers))
        study = optuna.load_study(study_name="w", storage=open_storage(url))
        counts = count_trials(study)
        counted = [t for t in current_trials(study) if t.state.name in ("COMPLETE", "PRUNED", "FAIL")]
        client = MlflowClient(tracking_uri)
        experiment = client.get_experiment_by_name("w")
        runs = client.search_runs([experiment.experiment_id], max_results=5000)
        trial_runs = {r.info.run_id: r for r in runs if r.data.tags.get(Tag.ROLE) == "trial"}
        problems = []
        if set(codes) != {0}:
            problems.append(f"exit codes {sorted(set(codes))}")
        if len(counted) != target or counts.running or counts.waiting:
            problems.append(f"{len(counted)} counted of {target}, {counts.running} running, {counts.waiting} waiting")
        if sorted(trial_runs) != sorted(t.user_attrs[TrialAttr.MLFLOW_RUN_ID] for t in counted):
            problems.append(f"{len(trial_runs)} trial runs for {len(counted)} trials")
        if [r for r in runs if r.info.status == "RUNNING"]:
            problems.append("runs left RUNNING")
        if "locked" in logs.lower():
            problems.append('"database is locked" reached a log')
        problems += _registry_problems(client, "w", study)
        if problems:
            kept = Path(tempfile.gettempdir()) / f"cvstudy-scale-failed-{work.name}"
            shutil.copytree(work, kept, dirs_exist_ok=True)  # the workers' logs outlive the bench's folder
            raise SystemExit(f"{workers} workers on {storage}, MLflow {tracker}: {'; '.join(problems)} ({kept})")
        start = min(t.datetime_start for t in counted).timestamp()
        window = max(t.datetime_complete for t in counted).timestamp() - start
        orchestration = []
        for t in counted:
            run = trial_runs[t.user_attrs[TrialAttr.MLFLOW_RUN_ID]]
            trained = run.data.metrics.get(logged_name("train_device_seconds"), 0.0)
            orchestration.append((t.datetime_complete - t.datetime_start).total_seconds() - trained)
        return {
            "workers": workers,
            "storage": storage,
            "mlflow": tracker,
            "trials": len(counted),
            "wall_seconds": round(wall, 1),
            "first_trial_after_seconds": round(start - t0, 1),
            "trials_per_minute": round(60 * len(counted) / window, 1),
            "cpu_seconds_per_trial": round(cpu / len(counted), 2),
            "worker_startup_cpu_seconds": round(startup, 2),
            "cpu_seconds_per_trial_past_startup": round((cpu - workers * startup) / len(counted), 2),
            "orchestration_seconds_per_trial": round(sum(orchestration) / len(orchestration), 2),
        }
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
        if engine is not None:
            import sqlalchemy

            with engine.connect() as conn:
                conn.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS scale_{work.name} WITH (FORCE)"))


def _registry_problems(client, name: str, study) -> list[str]:
    """What is wrong with the study's registered best model: ``models:/<name>@best`` must exist and be
    the best trial's (every worker registers at its end; a refused registration is only a warning in
    its log, so the bench reads the registry itself)."""
    from mlflow.exceptions import MlflowException

    from cvstudy.orchestrator.sweep.trials import best_trial
    from cvstudy.orchestrator.tracking.models import BEST_ALIAS

    best = best_trial(study)
    try:
        version = client.get_model_version_by_alias(name, BEST_ALIAS)
    except MlflowException as err:
        return [f"no models:/{name}@{BEST_ALIAS}: {str(err).splitlines()[0][:200]}"]
    if best is not None and version.tags.get(Tag.TRIAL) != str(best.number):
        return [f"models:/{name}@{BEST_ALIAS} is trial {version.tags.get(Tag.TRIAL)}, the best is {best.number}"]
    return []


def separate_stores_point(work: Path, workers: int) -> dict:
    """The control for ``workers_point``: as many `cvstudy sweep` processes at once, each on a study,
    journal and MLflow SQLite file of its own (the same trials in all: the target split among them), so
    that what differs from a shared store is the sharing, not 2 cores divided among the processes."""
    work.mkdir(parents=True)
    data = tiny_data(work)
    target = max(8, workers)
    shares = [target // workers + (i < target % workers) for i in range(workers)]
    jobs = []
    for i, share in enumerate(shares):
        own = work / f"w{i}"
        own.mkdir()
        (own / "w.yaml").write_text(STUDY.format(name="w", data=data, model="test_resnet"))
        command = [CVSTUDY, "sweep", "--study-file", "w.yaml", "--trials", str(share)]
        command += [
            "--storage",
            f"journal:///{own / 'optuna.journal'}",
            "--tracking-uri",
            f"sqlite:///{own / 'mlflow.db'}",
        ]
        jobs.append((command, own, own / "worker.log"))
    codes, cpu, wall = _together(jobs)
    if set(codes) != {0}:
        raise SystemExit(f"a separate-store worker failed ({work})")
    startup = _startup_cpu(*jobs[-1][:2])
    return {
        "workers": workers,
        "storage": "separate",
        "mlflow": "separate",
        "trials": target,
        "wall_seconds": round(wall, 1),
        "cpu_seconds_per_trial": round(cpu / target, 2),
        "worker_startup_cpu_seconds": round(startup, 2),
        "cpu_seconds_per_trial_past_startup": round((cpu - workers * startup) / target, 2),
    }


def workers_on_one_store(counts: list[int], storages: list[str], trackers: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="cvstudy-scale-") as tmp:
        for tracker in trackers:
            for storage in storages:
                if storage == CONTROL and tracker != trackers[0]:
                    continue  # the control has one MLflow file per worker, nothing to vary
                for n in counts:
                    if storage == CONTROL:
                        point = separate_stores_point(Path(tmp) / f"separate_{n}", n)
                    else:
                        point = workers_point(Path(tmp) / f"{storage}_{tracker}_{n}", n, storage, tracker)
                    record("scale", axis="workers", **point)


# ----------------------------------------------------------------------------- axis 3: large data
DATA_SIZES = {"users": (20_431, 32), "many": (200_000, 32), "large": (20_000, 224)}
LOAD = """
import json, sys, time
from pathlib import Path
import torch  # imported before the baseline: it is there in every run
from cvstudy.trainers.config import TrainConfig
from cvstudy.trainers.data import load_dataset
from cvstudy.trainers.loop import Trainer

def status_mib(field):
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field + ":"))
    return int(line.split()[1]) / 1024  # kB

def load(directory):
    t0 = time.perf_counter()
    data = load_dataset(directory, 0.1, 0)
    seconds = time.perf_counter() - t0
    config = TrainConfig.from_flat({"model": "test_resnet", "device": "cpu", "data": directory, "batch_size": 64})
    trainer = Trainer(config, data)
    trainer.batch_on_device(torch.arange(64))  # a batch is gathered where the images are
    assert trainer.train_x.data_ptr() == torch.from_numpy(data.train_x).data_ptr()  # the CPU run holds no copy
    return seconds, trainer.execution.data_on

load(sys.argv[2])  # a tiny set first: the imports and allocator pools a run starts with are not the data's
before = status_mib("VmRSS")
Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from here
seconds, data_on = load(sys.argv[1])
peak = status_mib("VmHWM")
print(json.dumps({"load_seconds": seconds, "before_mib": before, "peak_mib": peak, "data_on": data_on}))
"""


def write_arrays(directory: Path, images: int, size: int, test_per_class: int = 100) -> int:
    """Long-tailed train (10 classes, 10x imbalance) and balanced test arrays of random pixels, written
    through a memory map a slice at a time; returns the four files' bytes."""
    import numpy as np

    directory.mkdir(parents=True, exist_ok=True)
    weights = 10.0 ** (-np.arange(10) / 9)  # class c holds 10^(-c/9) of class 0's images
    per_class = np.maximum(2, np.round(images * weights / weights.sum())).astype(int)
    per_class[0] += images - per_class.sum()
    rng = np.random.default_rng(0)
    for split, counts in (("train", per_class), ("test", np.full(10, test_per_class))):
        labels = rng.permutation(np.repeat(np.arange(10), counts)).astype(np.int64)
        np.save(directory / f"{split}_target.npy", labels)
        out = np.lib.format.open_memmap(
            directory / f"{split}_data.npy", mode="w+", dtype=np.uint8, shape=(len(labels), size, size, 3)
        )
        for start in range(0, len(labels), 2000):
            stop = min(start + 2000, len(labels))
            out[start:stop] = rng.integers(0, 256, (stop - start, size, size, 3), dtype=np.uint8)
        out.flush()
        del out
    return sum(f.stat().st_size for f in directory.iterdir())


def large_data(names: list[str]) -> None:
    import json

    with tempfile.TemporaryDirectory(prefix="cvstudy-scale-", dir=os.environ.get("CVSTUDY_BENCH_TMP")) as tmp:
        for name in names:
            images, size = DATA_SIZES[name]
            directory = Path(tmp) / name
            nbytes = write_arrays(directory, images, size)
            env = {**_env(), "PYTHONPATH": str(ROOT)}
            args = [sys.executable, "-c", LOAD, str(directory), str(tiny_data(Path(tmp)))]
            proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"loading {name} failed:\n{proc.stdout}{proc.stderr}")
            said = json.loads(proc.stdout.strip().splitlines()[-1])
            peak = said["peak_mib"]
            arrays_mib = nbytes / 2**20
            record(
                "scale",
                axis="data",
                images=images,
                size=size,
                arrays_mib=round(arrays_mib),
                load_seconds=round(said["load_seconds"], 2),
                peak_mib=round(peak),
                before_load_mib=round(said["before_mib"]),
                peak_past_before_over_arrays=round((peak - said["before_mib"]) / arrays_mib, 2),
                data_on=said["data_on"],
            )
            shutil.rmtree(directory)


# ----------------------------------------------------------------------------- axis 4: long-lived workers
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
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 4, 16, 32], help="workers on one store")
    parser.add_argument(
        "--storages", nargs="+", default=list(STORAGES), choices=(*STORAGES, CONTROL), help="Optuna storages"
    )
    parser.add_argument("--trackers", nargs="+", default=list(TRACKERS), choices=TRACKERS, help="MLflow stores")
    parser.add_argument("--data-sizes", nargs="+", default=list(DATA_SIZES), choices=DATA_SIZES, help="data sets")
    args = parser.parse_args()
    args.axes = args.axes or list(AXES)
    if set(args.axes) - set(AXES):
        parser.error(f"unknown axis {sorted(set(args.axes) - set(AXES))[0]!r}; the axes: {', '.join(AXES)}")
    if "workers" in args.axes:
        workers_on_one_store(args.counts, args.storages, args.trackers)
    if "studies" in args.axes:
        studies(sorted(args.sizes), args.side_by_side)
    if "data" in args.axes:
        large_data(args.data_sizes)
    if "worker" in args.axes:
        worker_memory(args.worker_trials)


if __name__ == "__main__":
    main()
