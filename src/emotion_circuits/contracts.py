"""Typed contracts for the data that cross pipelines, with checks that name the offending field.

Each contract is a dataclass that nodes receive and return. On disk it is a plain dict of numpy
arrays and lists (``to_dict``), so a pickle stays readable without this package, and pickles
written before the contracts existed still load (`from_stored`). `emotion_circuits.datasets.
ContractDataset` validates on every load and save.

Axes: ``n`` prompts (rows), ``L`` blocks, residual index ``0..L`` (0 = ``blocks.0.hook_resid_pre``,
l = ``blocks.{l-1}.hook_resid_post``), ``d`` the residual width, ``k`` subspace directions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from emotion_circuits.alignment_maps import LinearMap


class ContractError(ValueError):
    """An artifact does not have the shape its contract promises; the message names the field."""


class _Contract:
    """Conversion to and from the stored dict, shared by every contract."""

    producer: ClassVar[str] = ""  # the pipeline that writes it, for "re-run" messages

    def validate(self) -> None:  # pragma: no cover - every contract overrides it
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """The stored form: ``{"contract": <class name>, <field>: <value>, ...}``."""
        return {"contract": type(self).__name__, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}

    @classmethod
    def from_stored(cls, stored: Any, source: str = "") -> Any:
        """Builds and validates the contract from what a pickle held (a contract or its dict).

        Raises:
            ContractError: naming ``source``, the missing or malformed field and the command to re-run.
        """
        where = f" in {source}" if source else ""
        rerun = f"; re-run `kedro run --pipelines={cls.producer}` to rewrite it" if cls.producer else ""
        if isinstance(stored, cls):
            instance = stored
        elif isinstance(stored, dict):
            names = {f.name for f in dataclasses.fields(cls)}
            required = {f.name for f in dataclasses.fields(cls)
                        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
            missing = sorted(required - stored.keys())
            if missing:
                raise ContractError(f"{cls.__name__}{where} lacks field(s) {missing}{rerun}.")
            instance = cls(**{k: v for k, v in stored.items() if k in names})
        else:
            raise ContractError(f"{cls.__name__}{where}: expected a dict, got {type(stored).__name__}{rerun}.")
        try:
            instance.validate()
        except ContractError as error:
            raise ContractError(f"{error}{where}{rerun}") from error
        return instance


def _fail(contract: str, name: str, problem: str) -> None:
    raise ContractError(f"{contract}.{name}: {problem}")


def _check_array(contract: str, name: str, array: Any, shape: Sequence[int | None], finite: bool = True) -> None:
    """``array`` is a numpy array of ``shape`` (None matches any size), finite unless told otherwise."""
    if not isinstance(array, np.ndarray):
        _fail(contract, name, f"expected a numpy array, got {type(array).__name__}")
    if array.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, array.shape)):
        expected = "[" + ", ".join("?" if s is None else str(s) for s in shape) + "]"
        _fail(contract, name, f"shape {list(array.shape)}, expected {expected}")
    if array.size == 0:
        _fail(contract, name, "is empty")
    if finite and np.issubdtype(array.dtype, np.number) and not np.all(np.isfinite(array)):
        _fail(contract, name, "contains NaN or infinite values")


def _check_length(contract: str, name: str, values: Sequence, n: int) -> None:
    if len(values) != n:
        _fail(contract, name, f"has {len(values)} entries for {n} rows")


@dataclass
class Activations(_Contract):
    """Residual streams of one model at chosen token positions of the emotion prompts.

    Attributes:
        resid: position kind (``trigger``, ``sentence_end``) → float32 ``[n, L + 1, d]``.
        token_positions: position kind → ``[n]`` token index read in each prompt.
        mlp_out: optional, position kind → ``[n, L, d]`` (``blocks.{l}.hook_mlp_out``).
    """

    producer: ClassVar[str] = "activations"

    model: str
    n_layers: int
    d_model: int
    ids: list[str]
    emotions: list[str]
    splits: list[str]
    hook_names: list[str]
    token_positions: dict[str, np.ndarray]
    resid: dict[str, np.ndarray]
    trigger_tokens: list[str] = field(default_factory=list)
    dtype: str = "float32"
    mlp_out: dict[str, np.ndarray] | None = None
    mlp_hook_names: list[str] | None = None

    def validate(self) -> None:
        name, n = "Activations", len(self.ids)
        if not self.model:
            _fail(name, "model", "is empty")
        if n == 0:
            _fail(name, "ids", "is empty")
        if len(set(self.ids)) != n:
            _fail(name, "ids", "repeats prompt ids")
        for attribute in ("emotions", "splits"):
            _check_length(name, attribute, getattr(self, attribute), n)
        _check_length(name, "hook_names", self.hook_names, self.n_layers + 1)
        if not self.resid:
            _fail(name, "resid", "has no position kinds")
        for kind, array in self.resid.items():
            _check_array(name, f"resid[{kind!r}]", array, (n, self.n_layers + 1, self.d_model))
            if kind not in self.token_positions:
                _fail(name, "token_positions", f"lacks {kind!r}")
            _check_length(name, f"token_positions[{kind!r}]", self.token_positions[kind], n)
        for kind, array in (self.mlp_out or {}).items():
            _check_array(name, f"mlp_out[{kind!r}]", array, (n, self.n_layers, self.d_model))

    def usable_rows(self, position: str, splits: Sequence[str] | None = None,
                    skip_first_token: bool = True) -> np.ndarray:
        """Boolean mask ``[n]`` of the rows to analyse at one position kind.

        Args:
            position: ``trigger`` or ``sentence_end``.
            splits: keep only these prompt splits (None: all).
            skip_first_token: drop prompts whose token at ``position`` is the sequence's first. In
                models without a BOS token (SmolLM2) that token is the attention sink, whose residual
                norm is 10x the others' from the middle layers on and would dominate any mean or PCA.
        """
        if position not in self.resid:
            raise ContractError(f"Activations of {self.model} have no position {position!r}; "
                                f"they have {sorted(self.resid)}.")
        keep = np.ones(len(self.ids), dtype=bool)
        if splits is not None:
            keep &= np.isin(np.asarray(self.splits), list(splits))
        if skip_first_token:
            keep &= np.asarray(self.token_positions[position]) > 0
        return keep


@dataclass
class TokenActivations(_Contract):
    """Residual streams of one model at the last token of every word of neutral texts.

    The texts are the neutral prompts and passages of an offline corpus; a row is one word, so two
    models' rows pair up by ``(text_ids[i], word_index[i])`` whatever their tokenizers.

    Attributes:
        text_ids: ``[n_tokens]`` the prompt or passage each row comes from.
        word_index: ``[n_tokens]`` index of the word within its text.
        resid: float16 ``[n_tokens, L + 1, d]`` (stored compactly: many thousand rows).
        corpus: where the passages came from (package, version, file).
    """

    producer: ClassVar[str] = "activations"

    model: str
    n_layers: int
    d_model: int
    hook_names: list[str]
    text_ids: list[str]
    word_index: np.ndarray
    resid: np.ndarray
    corpus: str = ""

    def validate(self) -> None:
        n = len(self.text_ids)
        if n == 0:
            _fail("TokenActivations", "text_ids", "is empty")
        _check_length("TokenActivations", "word_index", self.word_index, n)
        _check_length("TokenActivations", "hook_names", self.hook_names, self.n_layers + 1)
        _check_array("TokenActivations", "resid", self.resid, (n, self.n_layers + 1, self.d_model))
        keys = set(zip(self.text_ids, np.asarray(self.word_index).tolist()))
        if len(keys) != n:
            _fail("TokenActivations", "word_index", "repeats a (text, word) pair")


@dataclass
class EmotionVectors(_Contract):
    """Mean emotion − mean neutral residual: position → emotion → float32 ``[L + 1, d]``."""

    producer: ClassVar[str] = "subspaces"

    model: str
    hook_names: list[str]
    vectors: dict[str, dict[str, np.ndarray]]

    def validate(self) -> None:
        for position, by_emotion in self.vectors.items():
            for emotion, vector in by_emotion.items():
                _check_array("EmotionVectors", f"vectors[{position!r}][{emotion!r}]", vector,
                             (len(self.hook_names), None))


@dataclass
class EmotionSubspaces(_Contract):
    """Per position, emotion and residual index: an orthonormal basis of the top ``k_max`` directions.

    Attributes:
        bases: position → emotion → float32 ``[L + 1, d, k_max]``.
        explained: position → emotion → ``[L + 1, k_max]`` share of the differences' squared norm.
        prompt_ids: position → emotion → the prompt ids the subspace was built from.
    """

    producer: ClassVar[str] = "subspaces"

    model: str
    hook_names: list[str]
    k_max: int
    bases: dict[str, dict[str, np.ndarray]]
    explained: dict[str, dict[str, np.ndarray]]
    prompt_ids: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def validate(self) -> None:
        for position, by_emotion in self.bases.items():
            for emotion, basis in by_emotion.items():
                where = f"[{position!r}][{emotion!r}]"
                _check_array("EmotionSubspaces", f"bases{where}", basis, (len(self.hook_names), None, self.k_max))
                _check_array("EmotionSubspaces", f"explained{where}", np.asarray(self.explained[position][emotion]),
                             (len(self.hook_names), self.k_max))


@dataclass
class SteeringDirections(_Contract):
    """Unit steering directions of one model, the norms that scale them, and swap sources.

    Attributes:
        typical_norm: ``[L + 1]`` median residual norm of neutral prompts at their last token.
        directions: name (``trigger/anger``, ``random/07``, …) → float32 ``[L + 1, d]``, unit rows.
        swap_sources: emotion → ``{"ids": [...], "resid": float32 [n_sources, L + 1, d]}``.
    """

    producer: ClassVar[str] = "patching"

    model: str
    hook_names: list[str]
    typical_norm: np.ndarray
    directions: dict[str, np.ndarray]
    swap_sources: dict[str, dict[str, Any]] = field(default_factory=dict)

    def validate(self) -> None:
        n_positions = len(self.hook_names)
        _check_array("SteeringDirections", "typical_norm", np.asarray(self.typical_norm), (n_positions,))
        if not self.directions:
            _fail("SteeringDirections", "directions", "is empty")
        for name, direction in self.directions.items():
            _check_array("SteeringDirections", f"directions[{name!r}]", direction, (n_positions, None))
        for emotion, source in self.swap_sources.items():
            _check_array("SteeringDirections", f"swap_sources[{emotion!r}]['resid']", source["resid"],
                         (len(source["ids"]), n_positions, None))


@dataclass
class LinearMaps(_Contract):
    """Maps from model A's residual stream to model B's, per layer pair and method.

    Attributes:
        maps: ``(layer_a, layer_b, method)`` → `LinearMap` (residual indices, 0 = embeddings).
        fit_data: what the maps were fitted and scored on (text ids of each split, counts, corpus).
    """

    producer: ClassVar[str] = "alignment"

    model_a: str
    model_b: str
    maps: dict[tuple, LinearMap]
    fit_data: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if not self.maps:
            _fail("LinearMaps", "maps", "is empty")
        for key, linear_map in self.maps.items():
            if not (isinstance(key, tuple) and len(key) == 3):
                _fail("LinearMaps", "maps", f"key {key!r} is not (layer_a, layer_b, method)")
            if not isinstance(linear_map, LinearMap):
                _fail("LinearMaps", f"maps[{key!r}]", f"is a {type(linear_map).__name__}, not a LinearMap")


@dataclass
class SemanticActivations(_Contract):
    """Residuals at the ambiguous word and the logit lens on its sense tokens, for one model.

    Attributes:
        resid: float32 ``[n, L + 1, d]`` at the target word's last token.
        sense_log_probs: ``{"A", "B"}`` → ``[n, L + 1, n_tokens]`` log-softmax of each sense's tokens.
    """

    producer: ClassVar[str] = "semantic_phase"

    model: str
    n_layers: int
    ids: list[str]
    resid: np.ndarray
    sense_log_probs: dict[str, np.ndarray]

    def validate(self) -> None:
        n = len(self.ids)
        _check_array("SemanticActivations", "resid", self.resid, (n, self.n_layers + 1, None))
        for sense in ("A", "B"):
            if sense not in self.sense_log_probs:
                _fail("SemanticActivations", "sense_log_probs", f"lacks sense {sense!r}")
            _check_array("SemanticActivations", f"sense_log_probs[{sense!r}]", self.sense_log_probs[sense],
                         (n, self.n_layers + 1, None))


CONTRACTS: dict[str, type[_Contract]] = {
    cls.__name__: cls for cls in (Activations, TokenActivations, EmotionVectors, EmotionSubspaces,
                                  SteeringDirections, LinearMaps, SemanticActivations)
}


def check_same_model(*artifacts: Any) -> str:
    """Returns the one model alias all ``artifacts`` come from; raises naming them otherwise."""
    models = {a.model for a in artifacts}
    if len(models) != 1:
        names = ", ".join(f"{type(a).__name__} of {a.model!r}" for a in artifacts)
        raise ContractError(f"Inputs come from different models: {names}.")
    return models.pop()
