"""Steered generation: add α·v to the residual stream at one hook while the model writes.

Positions follow TransformerLens hook names: ``blocks.{l}.hook_resid_pre`` is the input of block
``l`` and ``blocks.{l}.hook_resid_post`` its output (for the last block, before the final norm).

Generation is Hugging Face ``generate`` (KV cache, left padding) with one forward hook on that
block, so steering costs one small tensor operation per decoding step. Each row of a batch carries
its own vector and α, so prompts, emotions, vector kinds and α values share the same batches.

Window: the prefill pass steers the last ``prompt_tokens`` prompt tokens; decoding step ``s``
(``s = 1`` feeds back the first generated token) steers that token while ``s <= generated_tokens``.
``None`` means all. The first generated token is therefore written from the steered prompt only.

Schedule: α at step ``s`` (``s = 0`` in the prefill) is multiplied by 1 (``constant``),
``exp(-decay_rate * s)`` (``exp_decay``) or ``min(1, (s + 1) / ramp_steps)`` (``linear_ramp``).

Mode: ``add`` writes ``h + α v``; ``swap`` writes ``h + α (v − h)``, so α = 1 replaces the residual
with ``v`` (e.g. an emotion prompt's residual) and α = 0 leaves it alone.

Norms: with ``return_norms=True`` the hook also records, per row, the mean ``‖h‖`` of the residuals it
modifies (before the change) and the mean ``‖change‖`` it writes, over every steered position of the
prompt window and the decoding steps, so ``‖α v‖ / ‖resid‖`` is known at the positions actually steered.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from emotion_circuits.models.loading import LoadedModel
from emotion_circuits.models.padding import pad_left
from emotion_circuits.progress import Progress

SCHEDULES = ("constant", "exp_decay", "linear_ramp")
MODES = ("add", "swap")
_HOOK_NAME = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")


@dataclass(frozen=True)
class Steering:
    """Where, when and how a batch of rows is steered (the vectors and α values are per row).

    Attributes:
        hook_name: ``blocks.{l}.hook_resid_pre`` or ``blocks.{l}.hook_resid_post``.
        prompt_tokens: how many final prompt tokens to steer (``None``: all, 0: none).
        generated_tokens: how many generated tokens to steer (``None``: all, 0: none).
        schedule: one of ``SCHEDULES``.
        decay_rate: per-step rate of ``exp_decay``.
        ramp_steps: steps ``linear_ramp`` takes to reach full α.
        mode: ``add`` or ``swap``.
    """

    hook_name: str
    prompt_tokens: int | None = None
    generated_tokens: int | None = None
    schedule: str = "constant"
    decay_rate: float = 0.1
    ramp_steps: int = 5
    mode: str = "add"

    def __post_init__(self):
        if not _HOOK_NAME.match(self.hook_name):
            raise ValueError(f"Steering hook must be blocks.{{l}}.hook_resid_pre or _post; got {self.hook_name!r}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"Steering schedule must be one of {SCHEDULES}; got {self.schedule!r}.")
        if self.mode not in MODES:
            raise ValueError(f"Steering mode must be one of {MODES}; got {self.mode!r}.")
        for name in ("prompt_tokens", "generated_tokens"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"Steering window '{name}' must be >= 0 or null (all); got {value}.")

    @property
    def layer(self) -> int:
        return int(_HOOK_NAME.match(self.hook_name).group(1))

    @property
    def after_block(self) -> bool:
        return self.hook_name.endswith("post")

    def alpha_multiplier(self, step: int) -> float:
        """The schedule's factor on α at decoding step ``step`` (0 = prefill)."""
        if self.schedule == "exp_decay":
            return math.exp(-self.decay_rate * step)
        if self.schedule == "linear_ramp":
            return min(1.0, (step + 1) / self.ramp_steps)
        return 1.0


class SteeredOutput(NamedTuple):
    """What `steered_generate` returns with ``return_norms=True``.

    Attributes:
        ids: generated token ids per row (as without ``return_norms``).
        resid_norm: ``[n_rows]`` mean ``‖h‖`` over the positions the hook modified, before the change
            (NaN where nothing was steered: no steering, α = 0 or an empty window).
        steer_norm: ``[n_rows]`` mean ``‖change‖`` written at those positions (``‖α·schedule·v‖`` in
            ``add`` mode, ``‖α (v − h)‖`` in ``swap`` mode).
    """

    ids: list[list[int]]
    resid_norm: np.ndarray
    steer_norm: np.ndarray


def resid_index(hook_name: str) -> int:
    """Index of a hook into ``[n_layers + 1]`` residual arrays (0 = ``blocks.0.hook_resid_pre``)."""
    match = _HOOK_NAME.match(hook_name)
    if not match:
        raise ValueError(f"Not a residual-stream hook name: {hook_name!r}")
    return int(match.group(1)) + (match.group(2) == "post")


def steered_generate(
    model: LoadedModel,
    prompts: Sequence[Sequence[int]],
    steering: Steering | None = None,
    vectors: np.ndarray | None = None,
    alphas: np.ndarray | None = None,
    max_new_tokens: int = 30,
    min_new_tokens: int = 0,
    batch_size: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    share_prompt_prefix: bool = False,
    show_progress: bool = True,
    return_norms: bool = False,
    progress: Progress | None = None,
    intervention: Callable[[np.ndarray, int], contextlib.AbstractContextManager] | None = None,
) -> list[list[int]] | SteeredOutput:
    """Generates a continuation per prompt, each row steered by its own ``alphas[i] * vectors[i]``.

    Args:
        model: the loaded model.
        prompts: token ids per row (special tokens included), ``n_rows`` of them.
        steering: hook, window, schedule and mode; ``None`` generates unsteered.
        vectors: ``[n_rows, d_model]`` direction (``add``) or target residual (``swap``) per row.
        alphas: ``[n_rows]`` strength per row (0 reproduces the unsteered generation exactly).
        max_new_tokens: tokens to generate per row.
        min_new_tokens: end-of-sequence is suppressed before this many (benchmarks use it to fix
            the work).
        batch_size: rows per ``generate`` call (sorted by length to keep padding small).
        do_sample: sample instead of greedy decoding; ``torch`` is seeded with ``seed`` + batch
            number before each batch, so a run repeats exactly with the same rows and batch size.
        temperature: sampling temperature.
        top_p: nucleus sampling mass.
        seed: see ``do_sample``.
        share_prompt_prefix: batch rows with the same prompt together and run the part of the
            prompt before the steering window once per batch (its KV cache is copied to every
            row): a sweep steers each prompt many times. Same tokens as without, up to float
            rounding.
        show_progress: show a progress bar over batches.
        return_norms: also return the residual and steering norms at the steered positions.
        progress: an overall `Progress` (e.g. of a whole sweep) to advance by each batch's rows
            instead of showing a bar of this call's batches.
        intervention: instead of ``steering``, a factory ``(rows, padded_prompt_length)`` → context
            manager entered around each batch's ``generate`` (e.g. `emotion_circuits.models.heads.head_hooks`
            with per-row head edits); prompts are left-padded to ``padded_prompt_length``.

    Returns:
        Generated token ids per row, in input order, cut before the first end-of-sequence token; with
        ``return_norms`` a `SteeredOutput` holding them and the per-row norms.
    """
    n_rows = len(prompts)
    if n_rows == 0:
        raise ValueError("No prompts to generate from.")
    if steering is not None:
        vectors, alphas = _check_rows(model, steering, vectors, alphas, n_rows)
    config = generation_config(model, max_new_tokens, min_new_tokens, do_sample, temperature, top_p)
    batches = (_shared_prompt_batches(prompts, steering, batch_size) if share_prompt_prefix
               else _padded_batches(prompts, batch_size))
    generated: list[list[int]] = [[] for _ in range(n_rows)]
    norms = np.full((2, n_rows), np.nan)
    bar_off = progress is not None or not show_progress
    for number, (rows, prefix_len) in enumerate(tqdm(batches, desc=f"generate {model.alias}", unit="batch",
                                                      leave=False, disable=bar_off)):
        input_ids, mask = pad_left([prompts[r] for r in rows], model)
        cache = prefix_cache(model, input_ids[:1, :prefix_len], len(rows)) if prefix_len else None
        if steering is not None:
            steerer = _Steerer(model, steering, vectors[rows], alphas[rows])
        else:
            steerer = intervention(rows, input_ids.shape[1]) if intervention else contextlib.nullcontext()
        if do_sample:
            torch.manual_seed(seed + number)
        with torch.inference_mode(), steerer:
            output = model.hf_model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config,
                                             **cache_kwargs(model.hf_model, cache))
        for row, ids in zip(rows, output[:, input_ids.shape[1]:].tolist()):
            generated[row] = _cut_at_eos(ids, config.eos_token_id)
        if steering is not None:
            norms[:, rows] = steerer.mean_norms()
        if progress is not None:
            progress.update(len(rows))
    if return_norms:
        return SteeredOutput(generated, norms[0], norms[1])
    return generated


def generation_config(model: LoadedModel, max_new_tokens: int, min_new_tokens: int = 0, do_sample: bool = False,
                      temperature: float = 1.0, top_p: float = 1.0):
    """A fresh ``GenerationConfig``: the model's own defaults (repetition penalties, ...) are not inherited."""
    from transformers import GenerationConfig

    eos = model.hf_model.generation_config.eos_token_id or model.tokenizer.eos_token_id
    sampling = {"temperature": temperature, "top_p": top_p} if do_sample else {}
    return GenerationConfig(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, do_sample=do_sample,
                            pad_token_id=model.tokenizer.pad_token_id, eos_token_id=eos, **sampling)


def _padded_batches(prompts: Sequence[Sequence[int]], batch_size: int) -> list[tuple[np.ndarray, int]]:
    """Rows sorted by length (little padding), no shared prefix."""
    order = np.argsort([-len(p) for p in prompts], kind="stable")
    return [(order[i:i + batch_size], 0) for i in range(0, len(order), batch_size)]


def _shared_prompt_batches(prompts: Sequence[Sequence[int]], steering: Steering | None,
                           batch_size: int) -> list[tuple[np.ndarray, int]]:
    """Batches of rows that share one prompt, with the length of the prefix no hook changes.

    A prompt with fewer than half a batch of rows (or a remainder that small) would make small
    batches, which cost more than the shared prefix saves; those rows are padded together instead.
    """
    by_prompt: dict[tuple, list[int]] = {}
    for row, prompt in enumerate(prompts):
        by_prompt.setdefault(tuple(prompt), []).append(row)
    # the prefill must keep at least one token; a window over the whole prompt leaves no prefix
    steered = 1 if steering is None else steering.prompt_tokens
    batches, leftovers = [], []
    for prompt, rows in by_prompt.items():
        prefix_len = 0 if steered is None else max(0, len(prompt) - max(1, steered))
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            if len(chunk) >= max(2, batch_size // 2):
                batches.append((np.array(chunk), prefix_len))
            else:
                leftovers += chunk
    padded = _padded_batches([prompts[r] for r in leftovers], batch_size) if leftovers else []
    return batches + [(np.array(leftovers)[rows], 0) for rows, _ in padded]


def prefix_cache(model: LoadedModel, prefix_ids: torch.Tensor, n_rows: int):
    """KV cache of one unsteered prompt prefix ``[1, prefix_len]``, repeated for ``n_rows`` rows."""
    with torch.inference_mode():
        output = model.hf_model(input_ids=prefix_ids, use_cache=True, logits_to_keep=1)
    cache = getattr(output, cache_keyword(model.hf_model))
    cache.batch_repeat_interleave(n_rows)
    return cache


def cache_keyword(hf_model) -> str:
    """The name the installed transformers gives the KV cache in ``forward``/``generate`` and their outputs.

    transformers renamed ``past_key_values`` to ``cache`` during 5.x (the old name is deprecated, to be
    removed in 5.40 for ``forward`` and 6.0 for ``generate``); 5.17 knows only ``past_key_values``. The
    model class's own ``forward`` signature says which one this installation wants (the class's, not the
    instance's: accelerate and tests may wrap the instance's ``forward``).
    """
    return "cache" if "cache" in inspect.signature(type(hf_model).forward).parameters else "past_key_values"


def cache_kwargs(hf_model, cache) -> dict:
    """``{cache_keyword: cache}`` for a ``forward``/``generate`` call, or nothing without a cache."""
    return {} if cache is None else {cache_keyword(hf_model): cache}


def _check_rows(model, steering, vectors, alphas, n_rows) -> tuple[torch.Tensor, torch.Tensor]:
    if steering.layer >= model.n_layers:
        raise ValueError(f"Steering hook {steering.hook_name} is beyond {model.alias}'s {model.n_layers} blocks.")
    if vectors is None or alphas is None:
        raise ValueError("Steered generation needs one vector and one alpha per prompt.")
    vectors, alphas = np.asarray(vectors), np.asarray(alphas, dtype=np.float32)
    if vectors.shape != (n_rows, model.d_model) or alphas.shape != (n_rows,):
        raise ValueError(f"Expected vectors [{n_rows}, {model.d_model}] and alphas [{n_rows}]; "
                         f"got {vectors.shape} and {alphas.shape}.")
    if not (np.isfinite(vectors).all() and np.isfinite(alphas).all()):
        raise ValueError("Steering vectors and alphas must be finite.")
    return torch.from_numpy(vectors.astype(np.float32)), torch.from_numpy(alphas)


def _cut_at_eos(ids: list[int], eos) -> list[int]:
    stops = set(eos) if isinstance(eos, (list, tuple)) else {eos}
    for i, token in enumerate(ids):
        if token in stops:
            return ids[:i]
    return ids


class _Steerer(contextlib.AbstractContextManager):
    """The forward (pre-)hook that steers one ``generate`` call; counts the decoding steps."""

    def __init__(self, model: LoadedModel, steering: Steering, vectors: torch.Tensor, alphas: torch.Tensor):
        self._block = model.decoder_layers[steering.layer]
        self._steering = steering
        self._vectors = vectors.to(model.device, model.dtype)[:, None, :]
        self._alphas = alphas.to(model.device)[:, None, None]
        self._step = 0
        self._handle = None
        # per row: summed ‖h‖ before the change, summed ‖change‖, number of steered positions
        self._sums = torch.zeros(3, len(alphas), dtype=torch.float32, device=model.device)

    def __enter__(self):
        if self._steering.after_block:
            self._handle = self._block.register_forward_hook(self._after)
        else:
            self._handle = self._block.register_forward_pre_hook(self._before, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self._handle.remove()
        return False

    def _before(self, _module, args, kwargs):
        if args:
            return (self._steer(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": self._steer(kwargs["hidden_states"])}

    def _after(self, _module, _inputs, output):
        if isinstance(output, tuple):
            return (self._steer(output[0]), *output[1:])
        return self._steer(output)

    def _steer(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden``: ``[batch, seq, d_model]``; the prefill sees the whole prompt, decoding one token."""
        step, self._step = self._step, self._step + 1
        n_steered = self._window(step, hidden.shape[1])
        multiplier = self._steering.alpha_multiplier(step)
        if n_steered == 0 or multiplier == 0.0:
            return hidden
        hidden = hidden.clone()
        window = hidden[:, -n_steered:]
        alpha = (self._alphas * multiplier).to(hidden.dtype)
        if self._steering.mode == "add":
            change = (alpha * self._vectors).expand_as(window)
        else:
            change = alpha * (self._vectors - window)
        self._record(window, change)
        hidden[:, -n_steered:] = window + change
        return hidden

    def _record(self, window: torch.Tensor, change: torch.Tensor) -> None:
        """Adds this step's per-row norms (float32) of the steered residuals and of the change."""
        self._sums[0] += window.float().norm(dim=-1).sum(dim=1)
        self._sums[1] += change.float().norm(dim=-1).sum(dim=1)
        self._sums[2] += window.shape[1]

    def mean_norms(self) -> np.ndarray:
        """``[2, batch]`` mean ``‖h‖`` and mean ``‖change‖`` per row; NaN where nothing was changed."""
        sums = self._sums.cpu().numpy().astype(np.float64)
        steered = (sums[2] > 0) & (sums[1] > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = sums[:2] / sums[2]
        return np.where(steered, means, np.nan)

    def _window(self, step: int, seq_len: int) -> int:
        """How many of the last ``seq_len`` positions this step steers."""
        limit = self._steering.prompt_tokens if step == 0 else self._steering.generated_tokens
        if step > 0 and limit is not None and step > limit:
            return 0
        return seq_len if limit is None else min(limit, seq_len)
