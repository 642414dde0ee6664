"""Memory-aware placement: what a model needs, where it fits, and a clear error before loading when it does not.

A model's weight memory is estimated from its architecture config alone (the registry's written-out
configs, a local ``config.json``, a ``.gguf`` header or the Hugging Face cache), by building it on
PyTorch's ``meta`` device and counting its unique parameters and buffers: exact for the weights, no
download, no allocation. `plan_placement` then puts the model on one device when weights plus a
working margin fit there, splits it block by block across several devices with accelerate's
``infer_auto_device_map`` (what ``device_map="auto"`` does) when they do not, and otherwise raises
`ModelDoesNotFitError` naming the estimate and the devices' memory. `load_placed` loads it there.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from emotion_circuits.models.loading import LoadedModel, load_model, resolve_device, resolve_dtype
from emotion_circuits.models.registry import ModelNotAvailableError, ModelSpec, registry_config

logger = logging.getLogger(__name__)

GIB = 1024**3


class ModelDoesNotFitError(ModelNotAvailableError):
    """The model's estimated memory exceeds what the devices offer; the message gives both."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Weight memory of a model in one dtype.

    Attributes:
        n_params: unique parameters (tied embeddings counted once).
        weight_bytes: parameters and buffers at ``dtype``.
        dtype: ``float32``, ``bfloat16`` or ``float16``.
    """

    n_params: int
    weight_bytes: int
    dtype: str

    @property
    def weight_gib(self) -> float:
        return self.weight_bytes / GIB


@dataclass(frozen=True)
class Placement:
    """Where one model goes: a JSON-able record that `load_placed` follows.

    Attributes:
        alias: the model name as given.
        device: the device of the embeddings (inputs go there), e.g. ``cuda:0`` or ``cpu``.
        dtype: torch dtype name of the weights.
        device_map: module name → device (``{"": device}`` on one device).
        budget_bytes: device → bytes the plan allowed there.
        needed_bytes: estimated weights plus working memory.
        n_params, weight_bytes, n_layers, d_model: from the config.
    """

    alias: str
    device: str
    dtype: str
    device_map: dict[str, Any]
    budget_bytes: dict[str, int]
    needed_bytes: int
    n_params: int
    weight_bytes: int
    n_layers: int
    d_model: int
    notes: list[str] = field(default_factory=list)

    @property
    def split(self) -> bool:
        """Whether the model spans several devices."""
        return len(set(map(str, self.device_map.values()))) > 1

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "device_map": {k: str(v) for k, v in self.device_map.items()},
                "budget_bytes": {str(k): int(v) for k, v in self.budget_bytes.items()}}

    @classmethod
    def from_dict(cls, stored: dict[str, Any]) -> Placement:
        device_map = {k: int(v) if str(v).isdigit() else v for k, v in stored["device_map"].items()}
        return cls(**{**stored, "device_map": device_map})


def model_config(spec: ModelSpec):
    """The model's ``transformers`` config without loading weights.

    Registry aliases use the config written out in `registry`; local directories their
    ``config.json``; ``.gguf`` files their header; hub ids the Hugging Face cache (or the hub).

    Raises:
        ModelNotAvailableError: no config can be had without the weights.
    """
    from transformers import AutoConfig

    written = registry_config(spec.alias)
    try:
        if written is not None:
            return AutoConfig.for_model(written.pop("model_type"), **written)
        if spec.source == "local" and spec.gguf_file:
            return AutoConfig.from_pretrained(str(Path(spec.location).parent), gguf_file=spec.gguf_file)
        return AutoConfig.from_pretrained(spec.location)
    except (OSError, ValueError, KeyError) as error:
        raise ModelNotAvailableError(f"No config for model '{spec.alias}' ({spec.location}): {error}") from error


def text_config(config):
    """The language model's part of a (possibly multimodal) config."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def meta_model(config) -> torch.nn.Module:
    """The model built on the ``meta`` device: shapes and module tree, no memory (tied weights tied)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()
    return model


def estimate_memory(config, dtype: str | torch.dtype) -> MemoryEstimate:
    """Weight memory of ``config``'s model at ``dtype``, counted on the meta device.

    Every floating parameter and buffer takes ``dtype``'s size (``from_pretrained(dtype=...)`` casts
    them all); tied parameters count once.
    """
    torch_dtype = _torch_dtype(dtype)
    model = meta_model(config)
    n_params = sum(p.numel() for p in model.parameters())
    n_buffers = sum(b.numel() for b in model.buffers())
    size = torch.empty((), dtype=torch_dtype).element_size()
    return MemoryEstimate(n_params=int(n_params), weight_bytes=int((n_params + n_buffers) * size),
                          dtype=str(torch_dtype).removeprefix("torch."))


def working_bytes(config, dtype: str | torch.dtype, batch_size: int, seq_len: int, kept_bytes: int = 0) -> int:
    """Memory a batched forward pass needs beside the weights (a generous margin, not a measurement).

    Per token: the residual stream, the attention projections and the MLP's hidden layer, a few
    copies each; per head: one ``seq × seq`` score matrix in float32 (eager attention). Plus
    ``kept_bytes``, what the caller keeps on the device (selected positions).
    """
    text = text_config(config)
    width = text.hidden_size
    hidden = getattr(text, "intermediate_size", None) or 4 * width
    heads = text.num_attention_heads
    size = torch.empty((), dtype=_torch_dtype(dtype)).element_size()
    per_token = (6 * width + 3 * hidden) * size
    return int(batch_size * seq_len * per_token + batch_size * heads * seq_len**2 * 4 + kept_bytes)


def device_budget(device: str, max_memory: dict[str, Any] | None = None, headroom: float = 0.9) -> dict[str, int]:
    """Bytes the plan may use per device: ``max_memory`` as given, else ``headroom`` × what is free now.

    ``device`` ``cuda`` (or ``auto`` with GPUs) offers every visible GPU; ``cuda:1`` only that one;
    ``cpu`` and ``mps`` the host's available memory. ``max_memory`` maps device names or GPU
    indices to sizes (``"70GiB"``, ``"500MB"`` or bytes), as accelerate takes them.
    """
    if max_memory:
        from accelerate.utils import convert_file_size_to_int

        return {_device_name(k): int(convert_file_size_to_int(v)) for k, v in max_memory.items()}
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        indices = [resolved.index] if resolved.index is not None else list(range(torch.cuda.device_count()))
        return {f"cuda:{i}": int(headroom * torch.cuda.mem_get_info(i)[0]) for i in indices}
    return {resolved.type: int(headroom * _host_available_bytes())}


def plan_placement(alias: str, config, dtype: str | torch.dtype, budget: dict[str, int],
                   working: int = 0) -> Placement:
    """Where ``alias`` goes: one device if weights + ``working`` fit there, else split block by block.

    Args:
        alias: the model name (for messages).
        config: its transformers config.
        dtype: weight dtype.
        budget: device → bytes allowed (`device_budget`), in order of preference.
        working: bytes a forward pass needs beside the weights (`working_bytes`), on every device used.

    Raises:
        ModelDoesNotFitError: naming the estimate and each device's budget.
    """
    estimate = estimate_memory(config, dtype)
    text = text_config(config)
    needed = estimate.weight_bytes + working
    common = {"alias": alias, "dtype": estimate.dtype, "budget_bytes": budget, "needed_bytes": needed,
              "n_params": estimate.n_params, "weight_bytes": estimate.weight_bytes,
              "n_layers": int(text.num_hidden_layers), "d_model": int(text.hidden_size)}
    # with GPUs in the budget, the host only takes what they cannot (accelerate's offload), never the whole model
    whole = [d for d in budget if d.startswith("cuda")] or list(budget)
    for device in whole:
        if needed <= budget[device]:
            return Placement(device=device, device_map={"": device}, **common)
    if len(budget) > 1:
        device_map = _split_map(config, estimate.dtype, {d: b - working for d, b in budget.items()})
        if device_map is not None:
            first = str(next(iter(device_map.values())))
            return Placement(device=_device_name(first), device_map=device_map, **common,
                             notes=[f"split over {sorted(set(map(str, device_map.values())))}"])
    offered = ", ".join(f"{d}: {b / GIB:.2f} GiB" for d, b in budget.items())
    raise ModelDoesNotFitError(
        f"Model '{alias}' does not fit: it needs about {needed / GIB:.2f} GiB ({estimate.n_params / 1e9:.2f}B "
        f"parameters = {estimate.weight_gib:.2f} GiB in {estimate.dtype}, plus {working / GIB:.2f} GiB for a "
        f"batch), and the devices offer {offered}. Use a smaller dtype (dtype=bfloat16), more GPUs (device=cuda "
        "uses all visible ones), or another device.")


def load_placed(placement: Placement) -> LoadedModel:
    """Loads the model where ``placement`` says (one device, or accelerate's block-by-block split)."""
    device_map = placement.device_map if placement.split else None
    logger.info("Loading %s in %s on %s", placement.alias, placement.dtype,
                placement.device if device_map is None else sorted(set(map(str, device_map.values()))))
    return load_model(placement.alias, device=placement.device, dtype=placement.dtype, device_map=device_map)


def measured_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's unique parameters and buffers as loaded."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return int(sum(t.numel() * t.element_size() for t in tensors.values()))


def peak_memory(devices: list[str]) -> dict[str, int]:
    """Peak bytes allocated per CUDA device since the last reset, or the process's peak RSS on the host."""
    cuda = [d for d in devices if d.startswith("cuda")]
    if cuda:
        return {d: int(torch.cuda.max_memory_allocated(torch.device(d))) for d in cuda}
    import resource

    return {"host_rss": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024}


def reset_peak(devices: list[str]) -> None:
    for device in devices:
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(torch.device(device))


def _split_map(config, dtype: str, budget: dict[str, int]) -> dict[str, Any] | None:
    """accelerate's block-by-block device map within ``budget``; None when it would need the disk."""
    from accelerate import infer_auto_device_map

    model = meta_model(config)
    limits = {_accelerate_key(d): max(int(b), 0) for d, b in budget.items()}
    device_map = infer_auto_device_map(model, max_memory=limits, no_split_module_classes=model._no_split_modules,
                                       dtype=_torch_dtype(dtype))
    if not device_map or any(str(v) == "disk" for v in device_map.values()):
        return None
    return {name: (f"cuda:{v}" if isinstance(v, int) else v) for name, v in device_map.items()}


def _accelerate_key(device: str) -> int | str:
    """accelerate names GPUs by index."""
    return int(device.split(":")[1]) if device.startswith("cuda:") else device


def _device_name(key: Any) -> str:
    """``0`` → ``cuda:0``; other names unchanged."""
    return f"cuda:{key}" if isinstance(key, int) or str(key).isdigit() else str(key)


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    return resolve_dtype(dtype, resolve_device("auto") if dtype == "auto" else torch.device("cpu"))


def _host_available_bytes() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil ships with the project's dependencies
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
