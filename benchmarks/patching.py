"""Throughput of the project's steered generation against plain Hugging Face ``generate``.

Both generate ``--new-tokens`` tokens for the same rows (neutral prompts and real-world texts),
with the same ``GenerationConfig`` (greedy, KV cache, left padding, end-of-sequence suppressed so
the work is identical), batch size, device and dtype, in this one process; the project's run adds
α·v at ``blocks.{L/2}.hook_resid_post``, each row with its own vector and α. New tokens/s counts
rows × new tokens. Two workloads:

- distinct: every row a different prompt, steered over every prompt and generated token (the
  cost of the hook itself);
- sweep: ``--settings`` rows per prompt, as in the patching pipeline, steered over the last 4
  prompt tokens and every generated one; the project shares each prompt's prefix (`share_prompt_prefix`).

On CUDA a third contender is HF ``generate`` with ``cache_implementation="static"`` (a static KV cache
and a compiled decoding step), the bar issue 15 sets; ``--no-static`` leaves it out.

    python benchmarks/patching.py                          # smollm2-135m, best device
    python benchmarks/patching.py --model gemma3-270m --n-prompts 1024 --batch-size 256
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from _timing import benchmark_parser, fill_size_defaults, interleaved_times
from emotion_circuits.models import load_model
from emotion_circuits.models.steering import Steering, generation_config, steered_generate

RAW = Path(__file__).resolve().parents[1] / "data/01_raw"


def main() -> None:
    args = _parse_args()
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    model.tokenizer.padding_side = "left"
    print(f"model={model.alias} device={model.device} dtype={model.dtype} rows={args.n_prompts} "
          f"new_tokens={args.new_tokens} batch_size={args.batch_size} repeats={args.repeats} torch={torch.__version__}")
    distinct = _prompts(args.n_prompts)
    sweep = [t for t in _prompts(max(1, args.n_prompts // args.settings)) for _ in range(args.settings)]
    for name, texts, steering, shared in [
        ("distinct", distinct, Steering(f"blocks.{model.n_layers // 2}.hook_resid_post"), False),
        (f"sweep ({args.settings} per prompt)", sweep,
         Steering(f"blocks.{model.n_layers // 2}.hook_resid_post", prompt_tokens=4), True),
    ]:
        _compare(model, name, texts, steering, shared, args)


def _compare(model, workload: str, texts: list[str], steering: Steering, shared: bool, args) -> None:
    prompt_ids = model.tokenizer(texts).input_ids
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((len(texts), model.d_model)).astype(np.float32)
    alphas = rng.uniform(-1, 1, len(texts)).astype(np.float32)
    config = generation_config(model, args.new_tokens, min_new_tokens=args.new_tokens)

    def plain_hf() -> None:
        with torch.inference_mode():
            for i in range(0, len(texts), args.batch_size):
                enc = model.tokenizer(texts[i:i + args.batch_size], return_tensors="pt", padding=True)
                model.hf_model.generate(**enc.to(model.device), generation_config=config)

    def project() -> None:
        steered_generate(model, prompt_ids, steering, vectors, alphas, max_new_tokens=args.new_tokens,
                         min_new_tokens=args.new_tokens, batch_size=args.batch_size, share_prompt_prefix=shared,
                         show_progress=False)

    def static_hf() -> None:
        static = copy.deepcopy(config)
        static.cache_implementation = "static"
        with torch.inference_mode():
            for i in range(0, len(texts), args.batch_size):
                enc = model.tokenizer(texts[i:i + args.batch_size], return_tensors="pt", padding=True)
                model.hf_model.generate(**enc.to(model.device), generation_config=static)

    contenders = {"plain HF generate (no hooks)": plain_hf, "emotion_circuits steered_generate": project}
    if args.static:
        contenders["HF generate, static cache (compiled)"] = static_hf
    times = interleaved_times(contenders, args.repeats, model.device)
    new_tokens = len(texts) * args.new_tokens
    print(f"-- {workload}: {len(texts)} rows")
    for name, seconds in times.items():
        print(f"{name:40s} {new_tokens / seconds:10.0f} new tok/s  (median {seconds:.3f} s)")
    ratio = times["plain HF generate (no hooks)"] / times["emotion_circuits steered_generate"]
    print(f"ratio steered / plain HF generate ({workload}): {ratio:.2f}  (target >= 0.8)")
    if args.static:
        static = times["HF generate, static cache (compiled)"] / times["emotion_circuits steered_generate"]
        print(f"ratio steered / static-cache HF generate ({workload}): {static:.2f}  (issue 15 target >= 1.0)")


def _prompts(n: int) -> list[str]:
    """Neutral prompts and real-world texts, interleaved and repeated to ``n``."""
    emotion = pd.read_csv(RAW / "emotion_prompts.csv", keep_default_na=False)
    real = pd.read_csv(RAW / "real_world_prompts.csv", keep_default_na=False)
    pool = [t for pair in zip(emotion[emotion.emotion == "neutral"].text, real.text) for t in pair]
    return (pool * (n // len(pool) + 1))[:n]


def _parse_args() -> argparse.Namespace:
    parser = benchmark_parser(__doc__, gpu_prompts=1024, cpu_prompts=64)
    parser.add_argument("--new-tokens", type=int, default=30)
    parser.add_argument(
        "--settings", type=int, default=None, help="rows per prompt in the sweep (default: the batch size)"
    )
    parser.add_argument("--no-static", dest="static", action="store_false",
                        help="leave out the static-cache HF baseline (included on CUDA)")
    args = fill_size_defaults(parser.parse_args(), gpu_prompts=1024, cpu_prompts=64)
    args.settings = args.settings or args.batch_size
    args.static = args.static and torch.cuda.is_available() and args.device in ("auto", "cuda")
    return args


if __name__ == "__main__":
    main()
