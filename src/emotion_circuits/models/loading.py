"""Loading a registry model into a `LoadedModel`: HF weights, tokenizer and a lazy TransformerBridge.

GGUF files are dequantised to full precision once and cached as safetensors under
``$EMOTION_CIRCUITS_CACHE`` (default ``~/.cache/emotion_circuits``), keyed by the file's sha256,
so the second load takes seconds.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from emotion_circuits.models import architecture
from emotion_circuits.models.availability import check_available
from emotion_circuits.models.registry import ModelNotAvailableError, ModelSpec, resolve_model

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    """A causal LM ready for analysis.

    Attributes:
        alias: the name it was loaded by.
        hf_model: the Hugging Face ``*ForCausalLM`` in eval mode on ``device``.
        tokenizer: its fast tokenizer (BOS fixed where the GGUF conversion drops it).
        n_layers: number of transformer blocks.
        d_model: width of the residual stream.
        device: torch device the weights live on.
        dtype: torch dtype of the weights.
    """

    alias: str
    hf_model: Any
    tokenizer: Any
    n_layers: int
    d_model: int
    device: torch.device
    dtype: torch.dtype
    spec: ModelSpec | None = field(default=None, repr=False)

    @functools.cached_property
    def bridge(self):
        """The TransformerLens 4 ``TransformerBridge`` around ``hf_model``, booted on first use.

        Booting wraps the HF modules in hook points, so code that only needs residual streams
        (extraction) runs on ``hf_model`` before the bridge is ever built.
        """
        from transformer_lens.model_bridge import TransformerBridge

        return TransformerBridge.boot_transformers(
            self.spec.location if self.spec else self.alias,
            hf_model=self.hf_model, tokenizer=self.tokenizer,
            device=self.device, dtype=self.dtype,
        )

    @property
    def decoder_layers(self) -> torch.nn.ModuleList:
        """The transformer blocks of ``hf_model``, in order (see `architecture.decoder_layers`)."""
        return architecture.decoder_layers(self.hf_model)


def resolve_device(device: str = "auto") -> torch.device:
    """Maps ``auto`` to cuda, then mps, then cpu; passes other names through."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """Maps ``auto`` to bfloat16 on cuda and float32 elsewhere; names to torch dtypes."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"Parameter 'dtype' must be one of auto, {', '.join(_DTYPES)}; got {dtype!r}.")
    return _DTYPES[dtype]


def load_model(name: str, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Loads a model by alias, local path or hub id.

    Args:
        name: see `resolve_model`.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps``.
        dtype: ``auto``, ``float32``, ``bfloat16`` or ``float16``.

    Returns:
        The loaded model in eval mode on the chosen device.

    Raises:
        ModelNotAvailableError: unknown alias or weights that cannot be had here.
    """
    spec = resolve_model(name)
    check_available(spec)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    logger.info("Loading %s (%s) on %s in %s", spec.alias, spec.location, torch_device, torch_dtype)
    if spec.gguf_file or spec.source == "package_gguf":
        model_dir = _dequantised_gguf_dir(_gguf_path(spec), spec)
    else:
        model_dir = spec.location
    hf_model, tokenizer = _load_pretrained(model_dir, spec, torch_device, torch_dtype)
    config = architecture.text_config(hf_model)
    return LoadedModel(
        alias=spec.alias, hf_model=hf_model, tokenizer=tokenizer,
        n_layers=int(config.num_hidden_layers), d_model=int(config.hidden_size),
        device=torch_device, dtype=torch_dtype, spec=spec,
    )


def _load_pretrained(model_dir: str, spec: ModelSpec, device: torch.device, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        # straight to the accelerator: an 8B model should not pass through CPU memory twice
        device_map = {"": str(device)} if device.type == "cuda" else None
        hf_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, device_map=device_map)
    except OSError as error:
        raise ModelNotAvailableError(
            f"Model '{spec.alias}' could not be loaded from {model_dir}: {error}"
        ) from error
    if device_map is None:
        hf_model = hf_model.to(device)
    hf_model.eval()
    _set_architecture(hf_model.config, spec)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if _needs_bos(hf_model.config, spec):
        _ensure_bos(tokenizer)
    return hf_model, tokenizer


def _set_architecture(config, spec: ModelSpec) -> None:
    """GGUF-built configs leave ``architectures`` empty; TransformerLens needs it."""
    if config.architectures:
        return
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    guess = spec.architecture or MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type)
    config.architectures = [guess] if guess else None


def _needs_bos(config, spec: ModelSpec) -> bool:
    # Gemma is trained with <bos> first and degenerates without it, whatever the tokenizer says
    return spec.force_bos or str(config.model_type).startswith("gemma")


def _ensure_bos(tokenizer) -> None:
    """Makes the tokenizer prepend BOS (Gemma degenerates without it)."""
    if tokenizer("a").input_ids[0] == tokenizer.bos_token_id:
        return
    tokenizer.add_bos_token = True
    if hasattr(tokenizer, "update_post_processor"):
        tokenizer.update_post_processor()
    if tokenizer("a").input_ids[0] != tokenizer.bos_token_id:
        raise ModelNotAvailableError("Could not make the tokenizer prepend its BOS token.")


def _gguf_path(spec: ModelSpec) -> Path:
    if spec.source == "local":
        return Path(spec.location)
    module_dir = Path(importlib.util.find_spec(spec.location).submodule_search_locations[0])
    if spec.gguf_file:
        return module_dir / spec.gguf_file
    # packages split into chunks assemble the verified file into the user cache on first use
    return Path(importlib.import_module(spec.location).assemble())


def cache_root() -> Path:
    """Directory for dequantised weights (``$EMOTION_CIRCUITS_CACHE`` or ~/.cache/emotion_circuits)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "emotion_circuits"
    return Path(os.environ.get("EMOTION_CIRCUITS_CACHE", default))


def _dequantised_gguf_dir(gguf_path: Path, spec: ModelSpec) -> str:
    """Dequantises ``gguf_path`` once into a cached ``save_pretrained`` directory; returns it."""
    target = cache_root() / "dequantised" / f"{gguf_path.stem}-{_sha256(gguf_path)[:16]}"
    if (target / "config.json").exists():
        return str(target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("Dequantising %s once (cached in %s)", gguf_path.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                 dtype=torch.float32)
    _set_architecture(model.config, spec)
    if _needs_bos(model.config, spec):
        _ensure_bos(tokenizer)
    # the weights are already dequantised to fp32; drop the GGUF marker so they can be saved
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = target.with_name(target.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(target)  # a crash mid-write never leaves a half cache behind
    return str(target)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
