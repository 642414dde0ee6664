"""Throughput of the project's activation extraction against a plain Hugging Face forward pass.

"Plain HF forward" is ``model(**batch)`` with logits, what one would write by hand; "hidden states"
is the base model with ``output_hidden_states`` and no unembedding, the cheapest HF way to the
same residuals. All run in this one process on the same prompts, device, dtype and batch size, so the ratio
compares across noisy machines. Tokens/s counts real (non-padding) tokens.

    python benchmarks/activations.py                      # smollm2-135m, best device
    python benchmarks/activations.py --model gemma3-270m --n-prompts 2048 --batch-size 256
    python benchmarks/activations.py --with-bridge        # also TransformerLens run_with_cache
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

from _timing import benchmark_parser, fill_size_defaults, interleaved_times
from emotion_circuits.models import load_model
from emotion_circuits.models.architecture import resid_hook_names
from emotion_circuits.models.extraction import extract_residuals
from emotion_circuits.models.positions import find_span, tokenize_with_positions

PROMPTS = Path(__file__).resolve().parents[1] / "data/01_raw/emotion_prompts.csv"


def main() -> None:
    args = _parse_args()
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    prompts = pd.read_csv(PROMPTS, keep_default_na=False)
    prompts = pd.concat([prompts] * (args.n_prompts // len(prompts) + 1)).head(args.n_prompts)
    texts, triggers = prompts.text.tolist(), prompts.trigger.tolist()
    n_tokens = sum(len(ids) for ids in model.tokenizer(texts).input_ids)

    def project() -> None:
        spans = [find_span(t, g) for t, g in zip(texts, triggers)]
        tokenized = tokenize_with_positions(model.tokenizer, texts, spans)
        extract_residuals(model, tokenized, {"trigger": tokenized.span_end_positions,
                                             "sentence_end": tokenized.sentence_end_positions},
                          batch_size=args.batch_size, show_progress=False)

    def plain_hf() -> None:
        with torch.inference_mode():
            for i in range(0, len(texts), args.batch_size):
                enc = model.tokenizer(texts[i:i + args.batch_size], return_tensors="pt", padding=True)
                model.hf_model(**enc.to(model.device), logits_to_keep=0)  # logits stay on the device

    def plain_hf_hidden_states() -> None:
        with torch.inference_mode():
            for i in range(0, len(texts), args.batch_size):
                enc = model.tokenizer(texts[i:i + args.batch_size], return_tensors="pt", padding=True)
                out = model.hf_model.base_model(**enc.to(model.device), output_hidden_states=True)
                torch.stack(out.hidden_states, dim=1)[:, :, -1].float().cpu()

    if args.check:
        print(f"max |extraction - HF hidden states| / max|HF| on {model.device}: {_check(model, texts, triggers):.2e}")

    contenders = {"plain HF forward": plain_hf, "plain HF base model, hidden states": plain_hf_hidden_states,
                  "emotion_circuits extraction": project}
    times = interleaved_times(contenders, args.repeats, model.device)
    if args.with_bridge:  # booting wraps the HF modules, so it is timed last
        times["TransformerLens run_with_cache (resid_post)"] = _bridge_times(model, texts, args)
    print(f"model={model.alias} device={model.device} dtype={model.dtype} prompts={len(texts)} "
          f"tokens={n_tokens} batch_size={args.batch_size} repeats={args.repeats} torch={torch.__version__}")
    for name, seconds in times.items():
        print(f"{name:45s} {n_tokens / seconds:12.0f} tok/s  (median {seconds:.3f} s)")
    ratio = times["plain HF forward"] / times["emotion_circuits extraction"]
    strict = times["plain HF base model, hidden states"] / times["emotion_circuits extraction"]
    print(f"ratio extraction / plain HF forward: {ratio:.2f}  (target >= 0.8)")
    print(f"ratio extraction / plain HF hidden states without unembedding: {strict:.2f}")


def _check(model, texts: list[str], triggers: list[str], n: int = 16) -> float:
    """Largest relative difference to HF's own hidden states, one prompt at a time (blocks 0..L-1)."""
    spans = [find_span(t, g) for t, g in zip(texts[:n], triggers[:n])]
    tokenized = tokenize_with_positions(model.tokenizer, texts[:n], spans)
    stored = extract_residuals(model, tokenized, {"trigger": tokenized.span_end_positions}, batch_size=8,
                                show_progress=False)
    worst = 0.0
    with torch.inference_mode():
        for i, ids in enumerate(tokenized.input_ids):
            hidden = model.hf_model(torch.tensor([ids], device=model.device), output_hidden_states=True).hidden_states
            ref = torch.stack(hidden[:-1])[:, 0, tokenized.span_end_positions[i]].float().cpu().numpy()
            worst = max(worst, float(abs(stored["resid"]["trigger"][i, :-1] - ref).max() / abs(ref).max()))
    return worst


def _bridge_times(model, texts: list[str], args) -> float:
    bridge = model.bridge
    names = set(resid_hook_names(model.n_layers)[1:])

    def run() -> None:
        with torch.inference_mode():
            for i in range(0, len(texts), args.batch_size):
                enc = model.tokenizer(texts[i:i + args.batch_size], return_tensors="pt", padding=True)
                bridge.run_with_cache(enc.input_ids.to(model.device),
                                      attention_mask=enc.attention_mask.to(model.device),
                                      names_filter=lambda n: n in names)

    return interleaved_times({"bridge": run}, args.repeats, model.device)["bridge"]


def _parse_args() -> argparse.Namespace:
    parser = benchmark_parser(__doc__, gpu_prompts=2048, cpu_prompts=256)
    parser.add_argument("--with-bridge", action="store_true")
    parser.add_argument("--check", action="store_true", help="first compare stored values with HF's")
    args = fill_size_defaults(parser.parse_args(), gpu_prompts=2048, cpu_prompts=256)
    return args


if __name__ == "__main__":
    main()
