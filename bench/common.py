"""Shared by the benchmarks: timing, the machine's description, one JSON line per result."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("results.jsonl")


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {gpu}"


def best_times(*fns, rounds: int = 3) -> list[float]:
    """Best wall time, seconds, of each function over ``rounds`` interleaved rounds (a, b, a, b, ...).

    This 2-core VM's speed drifts by tens of percent over seconds; interleaving exposes both sides to
    the same drift. Each timed call follows an untimed one of the same function, so neither side is
    timed just after the other has churned the heap and caches (not the steady state of either)."""
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            fn()
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def record(bench: str, **fields) -> None:
    line = json.dumps({"bench": bench, "machine": machine(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **fields})
    print(line)
    with open(RESULTS, "a") as fh:
        fh.write(line + "\n")
