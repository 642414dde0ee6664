"""Shared timing helpers for the benchmark scripts: interleaved repeats, medians, device sync."""

from __future__ import annotations

import argparse
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


def benchmark_parser(description: str, gpu_prompts: int, cpu_prompts: int) -> argparse.ArgumentParser:
    """The options every benchmark shares: model, device, dtype, rows, batch size, repeats."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument(
        "--n-prompts", type=int, default=None, help=f"default: {gpu_prompts} on GPU, {cpu_prompts} on CPU"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="default: 256 on GPU, 32 on CPU")
    parser.add_argument("--repeats", type=int, default=3)
    return parser


def fill_size_defaults(args: argparse.Namespace, gpu_prompts: int, cpu_prompts: int) -> argparse.Namespace:
    """Sets ``n_prompts`` and ``batch_size`` left unset to the GPU or CPU default."""
    on_gpu = torch.cuda.is_available() and args.device in ("auto", "cuda")
    args.n_prompts = args.n_prompts or (gpu_prompts if on_gpu else cpu_prompts)
    args.batch_size = args.batch_size or (256 if on_gpu else 32)
    return args
