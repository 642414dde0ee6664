"""Throughput of the heads screening against a plain Hugging Face forward that returns attention weights.

The screening reads, for every layer and head, the attention of each prompt's sentence-end token on
its trigger's tokens (`emotion_circuits.models.heads.probe_heads`, which also returns the heads'
outputs, mean values and scores at that row). The plain HF way to the same numbers is a forward with
``output_attentions=True``, which needs eager attention and materialises every ``[heads, seq, seq]``
pattern. Both run in this one process on the same prompts, device, dtype and batch size; a plain
(sdpa) forward without attention weights is timed too, as the floor.

    python benchmarks/heads.py                                   # smollm2-135m, best device
    python benchmarks/heads.py --model gemma3-270m --n-prompts 2048 --batch-size 256
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from _timing import benchmark_parser, fill_size_defaults, interleaved_times
from emotion_circuits.models import load_model
from emotion_circuits.models.heads import probe_heads
from emotion_circuits.models.positions import find_span, span_token_positions, tokenize_with_positions

PROMPTS = Path(__file__).resolve().parents[1] / "data/01_raw/emotion_prompts.csv"


def main() -> None:
    parser = benchmark_parser(__doc__, gpu_prompts=2048, cpu_prompts=256)
    parser.add_argument("--check", action="store_true", help="first compare the screening with HF's weights")
    args = fill_size_defaults(parser.parse_args(), gpu_prompts=2048, cpu_prompts=256)
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    prompts = pd.read_csv(PROMPTS, keep_default_na=False)
    prompts = pd.concat([prompts] * (args.n_prompts // len(prompts) + 1)).head(args.n_prompts)
    texts = prompts.text.tolist()
    spans = [find_span(t, g) for t, g in zip(texts, prompts.trigger)]
    n_tokens = sum(len(ids) for ids in model.tokenizer(texts).input_ids)

    def project() -> None:
        tokenized = tokenize_with_positions(model.tokenizer, texts, spans)
        trigger_tokens = span_token_positions(model.tokenizer, texts, spans)
        probe_heads(model, tokenized.input_ids, tokenized.sentence_end_positions, trigger_tokens, args.batch_size,
                    values=False)

    def hf(attentions: bool):
        def run() -> None:
            model.hf_model.set_attn_implementation("eager" if attentions else "sdpa")
            with torch.inference_mode():
                for i in range(0, len(texts), args.batch_size):
                    enc = model.tokenizer(texts[i:i + args.batch_size], return_tensors="pt", padding=True)
                    out = model.hf_model(**enc.to(model.device), logits_to_keep=1, output_attentions=attentions)
                    if attentions:  # the rows the screening keeps, as a user would gather them
                        torch.stack([a[:, :, -1] for a in out.attentions], dim=1).float().cpu()
            model.hf_model.set_attn_implementation("sdpa")
        return run

    if args.check:
        print(f"max |screening - HF eager attention| on {model.device}: {_check(model, texts, spans):.2e}")
    times = interleaved_times({"plain HF forward, output_attentions (eager)": hf(True),
                               "plain HF forward, no attentions (sdpa)": hf(False),
                               "emotion_circuits heads screening": project}, args.repeats, model.device)
    print(f"model={model.alias} device={model.device} dtype={model.dtype} prompts={len(texts)} tokens={n_tokens} "
          f"batch_size={args.batch_size} repeats={args.repeats} torch={torch.__version__}")
    for name, seconds in times.items():
        print(f"{name:48s} {n_tokens / seconds:12.0f} tok/s  (median {seconds:.3f} s)")
    ratio = times["plain HF forward, output_attentions (eager)"] / times["emotion_circuits heads screening"]
    floor = times["plain HF forward, no attentions (sdpa)"] / times["emotion_circuits heads screening"]
    print(f"ratio screening / HF forward with attentions: {ratio:.2f}  (target >= 1.0)")
    print(f"ratio screening / HF forward without attentions: {floor:.2f}")


def _check(model, texts: list[str], spans: list[tuple[int, int]], n: int = 16) -> float:
    """Largest difference to HF's eager attention weights, one prompt at a time."""
    tokenized = tokenize_with_positions(model.tokenizer, texts[:n], spans[:n])
    trigger_tokens = span_token_positions(model.tokenizer, texts[:n], spans[:n])
    readings = probe_heads(model, tokenized.input_ids, tokenized.sentence_end_positions, trigger_tokens, 8)
    model.hf_model.set_attn_implementation("eager")
    worst = 0.0
    with torch.inference_mode():
        for i, ids in enumerate(tokenized.input_ids):
            weights = model.hf_model(torch.tensor([ids], device=model.device), output_attentions=True).attentions
            row = tokenized.sentence_end_positions[i]
            ref = np.stack([w[0, :, row, trigger_tokens[i]].sum(-1).float().cpu().numpy() for w in weights])
            worst = max(worst, float(np.abs(readings["attn"][i] - ref).max()))
    model.hf_model.set_attn_implementation("sdpa")
    return worst


if __name__ == "__main__":
    main()
