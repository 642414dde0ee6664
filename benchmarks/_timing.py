"""Shared timing helpers for the benchmark scripts: interleaved repeats, medians, device sync."""

from __future__ import annotations

import statistics
import time

import torch


def interleaved_times(contenders: dict, repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds per contender; one warm-up each, then the contenders take turns."""
    for run in contenders.values():  # warm-up: allocator, kernels, tokenizer caches
        run()
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, run in contenders.items():
            sync(device)
            started = time.perf_counter()
            run()
            sync(device)
            samples[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in samples.items()}


def sync(device: torch.device) -> None:
    """Waits for queued GPU work, so wall-clock times are real."""
    if device.type == "cuda":
        torch.cuda.synchronize()
