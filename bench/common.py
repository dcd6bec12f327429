"""Shared by the benchmarks: timing, the machine's description, one JSON line per result."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

# Where results go: bench/results.jsonl, or CVSTUDY_BENCH_RESULTS (the smoke test writes to its own file).
RESULTS = Path(os.environ.get("CVSTUDY_BENCH_RESULTS") or Path(__file__).with_name("results.jsonl"))


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {gpu}"


def best_time(fn, rounds: int = 3) -> float:
    """Best wall time, seconds, of ``rounds`` calls of ``fn``, each after an untimed warm-up call (the
    first call at a new size page-faults fresh memory until the C allocator settles: not steady state)."""
    best = float("inf")
    for _ in range(rounds):
        fn()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def record(bench: str, **fields) -> None:
    line = json.dumps({"bench": bench, "machine": machine(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **fields})
    print(line)
    with open(RESULTS, "a") as fh:
        fh.write(line + "\n")
