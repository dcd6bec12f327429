"""``make gpu-check``: one command that checks a real GPU and measures it, one JSON line per figure in
``bench/results.jsonl`` (``CVSTUDY_BENCH_RESULTS`` names another file).

    python bench/gpu_check.py            # needs CUDA; under 8 minutes on one GPU
    python bench/gpu_check.py --smoke    # the same steps on the CPU with a tiny model (eager), about a minute

Steps:
1. the CUDA tests (``pytest -m gpu``): the CUDA resize branch, the fused optimiser, resume within
   tolerance, peak memory over five trials in one worker, two workers on two GPUs (where two exist);
2. ``bench/gpu.py``'s throughput: ResNet-50 with the CIFAR stem at 32 px and ViT-S/16 at 224 px, bf16 +
   channels-last, eager and compiled, and the share of step time spent waiting for the input pipeline;
3. a short demo sweep (6 trials of 3 epochs) at ``--trials-per-device`` 1, 2 and 4: trials per hour and
   the device's peak memory for each, and the ratio of the best K to K = 1.

Goals on an H100-class GPU: >= 10,000 img/s (ResNet-50, 32 px), >= 3,000 img/s (ViT-S/16, 224 px),
under 5 % of step time waiting for data, and the best K at least 3x the trials per hour of K = 1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench import gpu  # noqa: E402
from bench.common import record  # noqa: E402
from cvstudy.orchestrator.tracking.schema import Tag, logged_name  # noqa: E402

CVSTUDY = str(Path(sys.executable).parent / "cvstudy")


class PeakMemory:
    """The highest memory in use while it runs, sampled every 0.5 s: the GPU's (nvidia-smi, MiB), or on
    the CPU the resident memory of this process's children (MiB)."""

    def __init__(self, cuda: bool):
        self.cuda, self.peak, self.stopped = cuda, 0.0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        while not self.stopped.wait(0.5):
            self.peak = max(self.peak, self.sample())

    def sample(self) -> float:
        if self.cuda:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
            )
            return sum(float(v) for v in out.stdout.split()) if out.returncode == 0 else 0.0
        total = 0.0
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                text = status.read_text()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
            if fields.get("PPid", "").strip() == str(os.getpid()) or "cvstudy" in fields.get("Name", ""):
                total += float(fields.get("VmRSS", "0 kB").split()[0]) / 1024
        return total


def cuda_tests(smoke: bool) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rfEs",
            "-m",
            "gpu",
            "-p",
            "no:cacheprovider",
            str(ROOT / "tests" / "gpu"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    lines = proc.stdout.strip().splitlines() or ["no output"]
    # what failed, was in error or was skipped, and why: the summary line alone says only how many
    outcomes = [line[:300] for line in lines if line.startswith(("FAILED", "ERROR", "SKIPPED"))]
    record(
        "gpu-check", step="cuda tests", returncode=proc.returncode, summary=lines[-1], outcomes=outcomes, smoke=smoke
    )


def throughput(smoke: bool) -> None:
    if smoke:  # the same measurement, on the CPU, with a tiny model at 16 px, eager only: compiling for
        # the CPU takes a minute and says nothing of the GPU (tests/orchestrator/test_gpu_configuration.py
        # compiles a trial on the CPU)
        cases = [("test_resnet-16px", {"model": "test_resnet", "img_size": 16, "batch_size": 64, "aug": "basic"})]
        gpu.run(cases, images=512, device="cpu", epochs=2, compiles=(False,))
    else:
        gpu.run(gpu.CASES, images=25_600, device="cuda", epochs=3)


def recorded(work: Path, study: str) -> dict:
    """What the sweep's runs recorded, read with MLflow's client: how many, how many finished (a sweep
    whose every trial fails still exits 0, as Optuna's do: on an H200 a first pass "ran" 6 trials in 20 s,
    each failing at its first CUDA call), the devices they trained on, and the highest peak memory (MiB)
    one run reported (torch's allocator on CUDA; nvidia-smi's total,
    sampled twice a second, read 4 MiB throughout the sweeps on an H200 virtual machine)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(study)
    # the runs that trained (the study's own summary run records no device)
    runs = (
        [r for r in client.search_runs([experiment.experiment_id]) if Tag.DEVICE in r.data.tags] if experiment else []
    )
    peaks = [
        r.data.metrics[logged_name("peak_memory_mb")] for r in runs if logged_name("peak_memory_mb") in r.data.metrics
    ]
    return {
        "runs": len(runs),
        "finished": sum(r.info.status == "FINISHED" for r in runs),
        "devices": sorted({r.data.tags[Tag.DEVICE] for r in runs}),
        "run_peak_memory_mib": round(max(peaks, default=0.0)),
    }


def sweeps(smoke: bool) -> None:
    cuda = torch.cuda.is_available() and not smoke
    trials, epochs, ks = (2, 1, (1, 2)) if smoke else (6, 3, (1, 2, 4))
    work = Path(tempfile.mkdtemp(prefix="cvstudy-gpu-check-"))
    flags = [
        "--model",
        "resnet50",
        "--trials",
        str(trials),
        "--epochs",
        str(epochs),
        "--devices",
        "cuda:0" if cuda else "cpu",
        "--pruner",
        "none",
    ]
    # ResNet-50 with the CIFAR stem at 32 px, as the users train it; the smoke mode's tiny model has no such stem
    flags += ["--set", "model=test_resnet", "--set", "batch_size=32"] if smoke else ["--set", "cifar_stem=true"]
    per_hour = {}
    try:
        for k in ks:
            env = {k_: v for k_, v in os.environ.items() if not k_.startswith("MLFLOW_")}
            with PeakMemory(cuda) as memory:
                t0 = time.perf_counter()
                proc = subprocess.run(
                    [CVSTUDY, "sweep", *flags, "--study", f"gpu-check-k{k}", "--trials-per-device", str(k)],
                    cwd=work,
                    env=env,
                    capture_output=True,
                    text=True,
                )
                seconds = time.perf_counter() - t0
            runs = recorded(work, f"gpu-check-k{k}")
            per_hour[k] = runs["finished"] * 3600 / seconds if proc.returncode == 0 else 0.0  # trained, not tried
            record(
                "gpu-check",
                step="demo sweep",
                trials_per_device=k,
                trials=trials,
                epochs=epochs,
                returncode=proc.returncode,
                seconds=round(seconds, 1),
                trials_per_hour=round(per_hour[k], 1),
                peak_memory_mib=round(memory.peak),
                memory="gpu" if cuda else "cpu rss",
                **runs,
                smoke=smoke,
                **({"error": proc.stderr.strip().splitlines()[-1][:300]} if proc.returncode and proc.stderr else {}),
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best = max(per_hour, key=lambda k: per_hour[k])
    speedup = per_hour[best] / per_hour[1] if per_hour[1] else 0.0
    record(
        "gpu-check",
        step="trials per device",
        best_k=best,
        speedup_over_k1=round(speedup, 2),
        goal="best K >= 3x the trials per hour of K = 1 at 32 px",
        smoke=smoke,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the same steps on the CPU with a tiny model")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        print(
            "make gpu-check needs CUDA and torch sees no GPU; `python bench/gpu_check.py --smoke` runs the same "
            "steps on the CPU",
            file=sys.stderr,
        )
        sys.exit(2)
    # cheapest and surest first, compilation last: a run cut short still leaves the tests and the K figures
    cuda_tests(args.smoke)
    sweeps(args.smoke)
    throughput(args.smoke)


if __name__ == "__main__":
    main()
