"""What a run cost and what its model costs to use: forward GFLOPs per image, peak memory, and inference
throughput measured on the run's device. Measured once per run, after training (``loop.test_selected``).

- ``params``: parameters of the model.
- ``train_device_seconds``: wall seconds of every epoch's training and validation (resumed epochs
  included, the test evaluation and this measurement not); ``train_images``: images the optimiser
  stepped on (augmented copies counted each time).
- ``gflops``: forward FLOPs of one image at the run's input size (``torch.utils.flop_counter``, which
  counts a multiply-add as 2 FLOPs), in 1e9.
- ``peak_memory_mb``: on CUDA, the peak of memory allocated by tensors on the run's device since the run
  started (``torch.cuda.max_memory_allocated``); on the CPU, the peak resident set of the whole process
  (``ru_maxrss``), which also holds the data, the libraries and any earlier run of the same process.
- ``inference_ms_per_batch`` / ``inference_images_per_second``: the selected model in evaluation mode
  with the run's autocast, memory format and compilation, on ``INFERENCE_BATCH`` normalised images
  already on the device (no input pipeline), after one warm-up batch, timed over up to
  ``INFERENCE_BATCHES`` batches or ``INFERENCE_SECONDS``, whichever comes first.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

INFERENCE_BATCH = 32  # images per timed batch: a fixed size, so runs compare
INFERENCE_BATCHES = 5
INFERENCE_SECONDS = 0.25  # the timing stops after this much (at least one timed batch)


def forward_gflops(model: torch.nn.Module, img_size: int, device: torch.device) -> float:
    """GFLOPs of one forward pass of one image (eval mode, no autocast)."""
    was_training = model.training
    model.eval()
    x = torch.zeros(1, 3, img_size, img_size, device=device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() / 1e9


def reset_peak_memory(device: torch.device) -> None:
    """Start the run's CUDA peak from now (the CPU's peak RSS cannot be reset)."""
    if device.type == "cuda":
        # the allocator's statistics exist once CUDA is initialised: in a fresh process whose first CUDA
        # call this is, resetting them failed ("Invalid device argument", seen on an H200)
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def inference_speed(
    forward: Callable, img_size: int, device: torch.device, amp: bool, memory_format: torch.memory_format
) -> tuple[float, float]:
    """(milliseconds per batch of ``INFERENCE_BATCH``, images per second) on the run's device."""
    generator = torch.Generator(device).manual_seed(0)  # its own: the run's random streams stay untouched
    x = torch.randn(INFERENCE_BATCH, 3, img_size, img_size, device=device, generator=generator)
    x = x.contiguous(memory_format=memory_format)

    def one_batch() -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            forward(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    one_batch()  # warm-up: kernel selection, caches (and a compiled model's compilation for this shape)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < INFERENCE_BATCHES and (not times or time.perf_counter() - start < INFERENCE_SECONDS):
        t0 = time.perf_counter()
        one_batch()
        times.append(time.perf_counter() - t0)
    seconds = sorted(times)[len(times) // 2]  # the median batch
    return seconds * 1e3, INFERENCE_BATCH / seconds
