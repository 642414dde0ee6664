"""Selecting rows of an ``activations_*`` dict (see DESIGN §4) for analysis."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def usable_rows(activations: dict, position: str, splits: Sequence[str] | None = None,
                skip_first_token: bool = True) -> np.ndarray:
    """Boolean mask ``[n_prompts]`` of the rows to analyse at one position kind.

    Args:
        activations: an ``activations_*`` contract dict.
        position: ``trigger`` or ``sentence_end``.
        splits: keep only these prompt splits (None: all).
        skip_first_token: drop prompts whose token at ``position`` is the sequence's first. In
            models without a BOS token (SmolLM2) that token is the attention sink, whose residual
            norm is 10x the others' from the middle layers on and would dominate any mean or PCA.
    """
    keep = np.ones(len(activations["ids"]), dtype=bool)
    if splits is not None:
        keep &= np.isin(np.asarray(activations["splits"]), list(splits))
    if skip_first_token:
        keep &= np.asarray(activations["token_positions"][position]) > 0
    return keep
