"""Token positions of character spans, from the tokenizer's own offsets.

String search on decoded pieces breaks on leading spaces (``Ġthanks``, ``▁thanks``), words split
into several tokens and added BOS tokens; the offset mapping of a fast tokenizer does not.
"""

from __future__ import annotations

import re
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

    Uses the fast tokenizer's character-to-token map (its offsets), so leading-space tokens,
    words split into pieces and an added BOS are all handled the same way.

    Args:
        tokenizer: a fast HF tokenizer.
        texts: the prompts, ``n_prompts`` of them.
        spans: character span ``(start, end)`` in each text, e.g. of the trigger word.
        labels: names for error messages (prompt ids); defaults to row numbers.

    Returns:
        Token ids and positions; positions index into the ids with special tokens (BOS) included.

    Raises:
        ValueError: mismatched lengths, an empty text, or a span no token covers.
    """
    if len(texts) != len(spans):
        raise ValueError(f"{len(texts)} texts but {len(spans)} spans")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("Position finding needs a fast tokenizer (character offsets).")
    labels = list(labels) if labels is not None else [f"row {i}" for i in range(len(texts))]
    encoded = tokenizer(list(texts))
    span_end, sentence_end = [], []
    for i, (text, (start, end)) in enumerate(zip(texts, spans)):
        last_char = _last_visible_char(text, start, end)
        token = encoded.char_to_token(i, last_char) if last_char is not None else None
        if token is None:
            raise ValueError(f"Prompt {labels[i]}: no token covers characters {start}:{end} of {text!r}")
        span_end.append(token)
        text_end = _last_visible_char(text, 0, len(text))
        if text_end is None:
            raise ValueError(f"Prompt {labels[i]} has no tokens: {text!r}")
        sentence_end.append(encoded.char_to_token(i, text_end))
    return TokenizedPrompts(list(encoded["input_ids"]), np.array(span_end), np.array(sentence_end))


def span_token_positions(tokenizer, texts: Sequence[str], spans: Sequence[tuple[int, int]],
                         labels: Sequence[str] | None = None) -> list[np.ndarray]:
    """Per text, the index of every token that overlaps its character span (special tokens excluded).

    Raises:
        ValueError: mismatched lengths, or a span no token overlaps (names the prompt).
    """
    if len(texts) != len(spans):
        raise ValueError(f"{len(texts)} texts but {len(spans)} spans")
    labels = list(labels) if labels is not None else [f"row {i}" for i in range(len(texts))]
    encoded = tokenizer(list(texts), return_offsets_mapping=True)
    result = []
    for i, (start, end) in enumerate(spans):
        tokens = [t for t, (a, b) in enumerate(encoded["offset_mapping"][i]) if b > a and a < end and b > start]
        if not tokens:
            raise ValueError(f"Prompt {labels[i]}: no token overlaps characters {start}:{end} of {texts[i]!r}")
        result.append(np.array(tokens, dtype=int))
    return result


def _last_visible_char(text: str, start: int, end: int) -> int | None:
    """Index of the last non-whitespace character in ``text[start:end]`` (whitespace maps to no token)."""
    stripped = text[start:min(end, len(text))].rstrip()
    return start + len(stripped) - 1 if stripped and start >= 0 else None


_WORD = re.compile(r"\S+")


def word_end_positions(tokenizer, texts: Sequence[str]) -> tuple[list[list[int]], list[np.ndarray], list[np.ndarray]]:
    """Token ids and the last token of every whitespace-delimited word, per text.

    Words are what two models with different tokenizers share: the residual at a word's last
    token in model A and in model B describe the same text, so such pairs can fit a map A → B.
    The first token of a sequence is skipped (the attention sink of models without BOS), and a
    token that ends several words counts once (for the last of them).

    Returns:
        ``input_ids`` per text; per text ``word_index`` ``[n_words_kept]`` (index among the text's
        words) and ``token_index`` ``[n_words_kept]`` (position in its ids).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("Word positions need a fast tokenizer (character offsets).")
    encoded = tokenizer(list(texts))
    word_indices, token_indices = [], []
    for i, text in enumerate(texts):
        by_token: dict[int, int] = {}
        for w, match in enumerate(_WORD.finditer(text)):
            token = encoded.char_to_token(i, match.end() - 1)
            if token is not None and token > 0:
                by_token[token] = w
        tokens = np.array(sorted(by_token), dtype=int)
        word_indices.append(np.array([by_token[t] for t in tokens], dtype=int))
        token_indices.append(tokens)
    return list(encoded["input_ids"]), word_indices, token_indices
