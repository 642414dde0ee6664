"""Cost of the scaling study without downloads: random weights with the exact configs of 8B–12B models.

For each model, a randomly initialised causal LM is built from the architecture config written out in
`emotion_circuits.models.registry` (Llama-3.1-8B, Qwen3-8B-Base, Gemma-3-12B's text model; no hub), and
in one process, on the same 1,065 authored prompts, device, dtype and batch size:

- **plain HF forward**: ``model(input_ids, attention_mask)`` with logits, tokenised per batch with padding;
- **emotion_circuits extraction**: what the scaling pipeline runs (`tokenize_with_positions`, then
  `extract_at_depths` at every residual index and two positions per prompt, kept on the device, one
  copy to the host at the end).

It prints tokens/s (real tokens, padding excluded), the ratio (targets: ≥ 0.9), and the peak memory
allocated on the GPU relative to the weights (target ≤ 1.15), plus the placement plan's estimate
against the measured weights. Random weights cost the same as trained ones; the numbers are cost only.
The tokenizer is a byte-level BPE trained here on the prompts (vocabulary 4,000: 20,604 tokens for the
1,065 prompts, 19.3 per prompt with BOS for 14.2 words), since the models' own tokenizers need the hub;
token ids stay below every model's vocabulary.

    python benchmarks/scaling.py --tiny                                  # CPU smoke check, scaled-down configs
    python benchmarks/scaling.py --device cuda --dtype bfloat16          # one H100: llama3-8b qwen3-8b gemma3-12b
    python benchmarks/scaling.py --device cuda --dtype bfloat16 --models llama3-8b --batch-size 128

Needs torch, transformers, accelerate and tokenizers only (no kedro, TransformerLens, gguf or hub).
"""

from __future__ import annotations

import argparse
import csv
import gc
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the package need not be installed on a GPU box

from _timing import interleaved_times, sync  # noqa: E402
from emotion_circuits.models.depth_extraction import extract_at_depths  # noqa: E402
from emotion_circuits.models.loading import LoadedModel  # noqa: E402
from emotion_circuits.models.memory import (  # noqa: E402
    GIB,
    device_budget,
    estimate_memory,
    measured_weight_bytes,
    plan_placement,
    working_bytes,
)
from emotion_circuits.models.positions import find_span, tokenize_with_positions  # noqa: E402
from emotion_circuits.models.registry import registry_config  # noqa: E402

PROMPTS = ROOT / "data/01_raw/emotion_prompts.csv"
LADDER = ("llama3-8b", "qwen3-8b", "gemma3-12b")
_TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 4096, "query_pre_attn_scalar": 16,
         "sliding_window": 16}


def main() -> None:
    args = _parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    texts, triggers = _prompts(args.n_prompts)
    tokenizer = _tokenizer(texts)
    n_tokens = sum(len(ids) for ids in tokenizer(texts).input_ids)
    print(f"device={device} dtype={args.dtype} prompts={len(texts)} tokens={n_tokens} "
          f"({n_tokens / len(texts):.1f} per prompt) batch_size={args.batch_size} repeats={args.repeats} "
          f"torch={torch.__version__} gpu={torch.cuda.get_device_name(device) if device.type == 'cuda' else '-'}")
    for alias in args.models:
        _benchmark(alias, args, device, dtype, tokenizer, texts, triggers, n_tokens)
        gc.collect()  # the model goes with _benchmark's frame; give its memory back before the next one
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _benchmark(alias: str, args, device: torch.device, dtype: torch.dtype, tokenizer, texts: list[str],
               triggers: list[str], n_tokens: int) -> None:
    config = _config(alias, args.tiny)
    estimate = estimate_memory(config, dtype)
    plan = plan_placement(alias, config, dtype, device_budget(str(device)),
                          working_bytes(config, dtype, args.batch_size, 96))
    model = _random_model(alias, config, device, dtype, tokenizer)
    weights = measured_weight_bytes(model.hf_model)
    print(f"\n{alias}{' (tiny)' if args.tiny else ''}: {estimate.n_params / 1e9:.4f}B parameters, "
          f"{model.n_layers} blocks, d_model {model.d_model}; weights {weights / GIB:.4f} GiB measured, "
          f"{estimate.weight_gib:.4f} GiB estimated (ratio {estimate.weight_bytes / weights:.3f}); "
          f"plan: {'split ' if plan.split else ''}{sorted(set(map(str, plan.device_map.values())))}")
    indices = list(range(model.n_layers + 1))

    def project() -> None:
        spans = [find_span(t, g) for t, g in zip(texts, triggers)]
        tokenized = tokenize_with_positions(tokenizer, texts, spans)
        positions = list(zip(tokenized.span_end_positions, tokenized.sentence_end_positions))
        extract_at_depths(model, tokenized.input_ids, positions, indices, args.batch_size, show_progress=False
                          ).cpu().float()  # to the host in the model's dtype: no float32 copy on the GPU

    def plain_hf() -> None:
        with torch.inference_mode():
            for i in range(0, len(texts), args.batch_size):
                enc = tokenizer(texts[i:i + args.batch_size], return_tensors="pt", padding=True).to(device)
                model.hf_model(input_ids=enc.input_ids, attention_mask=enc.attention_mask)

    contenders = {"plain HF forward": plain_hf, "emotion_circuits extraction (every layer, 2 positions)": project}
    times = interleaved_times(contenders, args.repeats, device)
    peaks = {name: _peak(run, device) for name, run in contenders.items()}
    for name, seconds in times.items():
        peak = f"peak {peaks[name] / GIB:6.2f} GiB = {peaks[name] / weights:.3f} x weights" if peaks[name] else ""
        print(f"  {name:56s} {n_tokens / seconds:10.0f} tok/s  (median {seconds:.3f} s)  {peak}")
    ratio = times["plain HF forward"] / times["emotion_circuits extraction (every layer, 2 positions)"]
    print(f"  ratio extraction / plain HF forward: {ratio:.2f}  (target >= 0.9)")


def _config(alias: str, tiny: bool):
    from transformers import AutoConfig

    written = registry_config(alias)
    if written is None:
        raise SystemExit(f"No written-out config for {alias!r}; choose from {', '.join(LADDER)}.")
    if tiny:
        written |= {k: v for k, v in _TINY.items() if k in written or k in ("head_dim",)}
        for key in ("rope_scaling", "bos_token_id", "eos_token_id"):  # ids beyond the tiny vocabulary
            written.pop(key, None)
    return AutoConfig.for_model(written.pop("model_type"), **written)


def _random_model(alias: str, config, device: torch.device, dtype: torch.dtype, tokenizer) -> LoadedModel:
    """Random weights built directly on the device in ``dtype`` (an 8B model never passes through the host)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        hf_model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return LoadedModel(alias=alias, hf_model=hf_model, tokenizer=tokenizer, n_layers=int(text.num_hidden_layers),
                       d_model=int(text.hidden_size), device=device, dtype=dtype)


def _peak(run, device: torch.device) -> int:
    """Peak bytes allocated on the GPU during one ``run`` (weights included); 0 off CUDA."""
    if device.type != "cuda":
        return 0
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    run()
    sync(device)
    return int(torch.cuda.max_memory_allocated(device))


def _prompts(n: int | None) -> tuple[list[str], list[str]]:
    with open(PROMPTS, newline="") as handle:
        rows = list(csv.DictReader(handle))
    rows = (rows * ((n or len(rows)) // len(rows) + 1))[:n or len(rows)]
    return [r["text"] for r in rows], [r["trigger"] for r in rows]


def _tokenizer(texts: list[str]):
    """A byte-level BPE trained on the prompts, with a BOS token prepended like Llama's and Gemma's."""
    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=4000, min_frequency=2, special_tokens=["<bos>", "<pad>"],
                            show_progress=False)
    bpe._tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<bos>", pad_token="<pad>")


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(LADDER), choices=LADDER)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="default: bfloat16 on CUDA, float32 elsewhere")
    parser.add_argument("--n-prompts", type=int, default=None, help="default: all 1,065 (64 with --tiny)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 64 (8 with --tiny)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="scaled-down configs of the same architectures (CPU)")
    args = parser.parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    args.n_prompts = args.n_prompts or (64 if args.tiny else None)
    args.batch_size = args.batch_size or (8 if args.tiny else 64)
    return args


if __name__ == "__main__":
    main()
