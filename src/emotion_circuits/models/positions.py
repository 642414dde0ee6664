"""Token positions of character spans, from the tokenizer's own offsets.

String search on decoded pieces breaks on leading spaces (``Ġthanks``, ``▁thanks``), words split
into several tokens and added BOS tokens; the offset mapping of a fast tokenizer does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TokenizedPrompts:
    """Prompts tokenised once, with the positions that extraction reads.

    Attributes:
        input_ids: one list of token ids per prompt (special tokens included, no padding).
        span_end_positions: ``[n_prompts]`` index of the last token overlapping each span.
        sentence_end_positions: ``[n_prompts]`` index of the last non-special token.
    """

    input_ids: list[list[int]]
    span_end_positions: np.ndarray
    sentence_end_positions: np.ndarray


def find_span(text: str, phrase: str) -> tuple[int, int]:
    """Returns the character span ``[start, end)`` of the first verbatim occurrence of ``phrase``.

    Raises:
        ValueError: ``phrase`` is empty or not in ``text``.
    """
    start = text.find(phrase) if phrase else -1
    if start < 0:
        raise ValueError(f"{phrase!r} does not occur verbatim in {text!r}")
    return start, start + len(phrase)


def tokenize_with_positions(
    tokenizer, texts: Sequence[str], spans: Sequence[tuple[int, int]], labels: Sequence[str] | None = None
) -> TokenizedPrompts:
    """Tokenises ``texts`` and finds, per text, the last token of its span and of the text.

    Args:
        tokenizer: a fast HF tokenizer (it must return offset mappings).
        texts: the prompts, ``n_prompts`` of them.
        spans: character span ``(start, end)`` in each text, e.g. of the trigger word.
        labels: names for error messages (prompt ids); defaults to row numbers.

    Returns:
        Token ids and positions; positions index into the ids with special tokens (BOS) included.

    Raises:
        ValueError: mismatched lengths, an empty text, or a span no token overlaps.
    """
    if len(texts) != len(spans):
        raise ValueError(f"{len(texts)} texts but {len(spans)} spans")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("Position finding needs a fast tokenizer (offset mappings).")
    labels = list(labels) if labels is not None else [f"row {i}" for i in range(len(texts))]
    encoded = tokenizer(list(texts), return_offsets_mapping=True, return_special_tokens_mask=True)
    span_end, sentence_end = [], []
    for i, (start, end) in enumerate(spans):
        offsets = np.asarray(encoded["offset_mapping"][i]).reshape(-1, 2)
        real = ~np.asarray(encoded["special_tokens_mask"][i], dtype=bool)
        if not real.any():
            raise ValueError(f"Prompt {labels[i]} has no tokens: {texts[i]!r}")
        # overlap, not containment: BPE offsets may or may not include the leading space
        overlaps = real & (offsets[:, 0] < end) & (offsets[:, 1] > start)
        if not overlaps.any():
            raise ValueError(f"Prompt {labels[i]}: no token covers characters {start}:{end} of {texts[i]!r}")
        span_end.append(int(np.flatnonzero(overlaps)[-1]))
        sentence_end.append(int(np.flatnonzero(real)[-1]))
    return TokenizedPrompts(list(encoded["input_ids"]), np.array(span_end), np.array(sentence_end))
