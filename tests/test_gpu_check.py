"""`make gpu-check`'s script: on the CPU it refuses in one line, and its smoke mode runs every step
(the CUDA tests, the throughput bench, the demo sweep at several trials per device) end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import clean_env

pytestmark = pytest.mark.slow  # starts processes, servers or sweeps (make test-fast skips it)

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where there is no GPU")
def test_without_cuda_it_refuses_in_one_line():
    proc = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True, env=clean_env(), timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "needs CUDA" in proc.stderr


@pytest.mark.long
def test_the_smoke_mode_runs_every_step_and_writes_one_line_per_figure(tmp_path):
    results = tmp_path / "results.jsonl"
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--smoke"],
        capture_output=True,
        text=True,
        timeout=900,
        env=clean_env(CVSTUDY_BENCH_RESULTS=str(results)),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    tests = next(r for r in lines if r.get("step") == "cuda tests")
    assert "skipped" in tests["summary"] or "passed" in tests["summary"]
    speed = [r for r in lines if r["bench"] == "gpu"]
    assert [r["compile"] for r in speed] == [False] and all(r["images_per_s"] > 0 for r in speed)  # eager in smoke
    assert all(0 < r["data_share"] for r in speed)
    sweeps = [r for r in lines if r.get("step") == "demo sweep"]
    assert [r["trials_per_device"] for r in sweeps] == [1, 2]
    assert all(r["returncode"] == 0 and r["trials_per_hour"] > 0 and r["peak_memory_mib"] > 0 for r in sweeps)
    # what the runs recorded (read back by MLflow's client in the script): every trial a run, on the CPU
    assert all(r["runs"] == r["finished"] == 2 and r["devices"] == ["cpu"] for r in sweeps)
    assert all(r["run_peak_memory_mib"] > 0 for r in sweeps)
    # trials per hour are those that trained: 2 finished runs over the sweep's seconds
    assert all(r["trials_per_hour"] == pytest.approx(2 * 3600 / r["seconds"], rel=0.01) for r in sweeps)
    # the verdict is the sweeps' own figures: the K with the most trials per hour (the lines round them to
    # 0.1, so a near-tie may go either way), and its ratio to K = 1 (rounded to 0.01, from unrounded rates)
    per_hour = {r["trials_per_device"]: r["trials_per_hour"] for r in sweeps}
    final = next(r for r in lines if r.get("step") == "trials per device")
    assert final["best_k"] in per_hour and per_hour[final["best_k"]] >= max(per_hour.values()) - 0.1
    expected = per_hour[final["best_k"]] / per_hour[1]
    assert final["speedup_over_k1"] == pytest.approx(expected, rel=0.02, abs=0.01)
