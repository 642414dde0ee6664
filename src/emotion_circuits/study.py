"""Which models a run covers, and the names their artifacts go by.

A study covers a list of models (parameter ``models``; null means ``[model_a, model_b]``) and one
ordered pair for alignment (``model_a`` → ``model_b``, always part of the study). Every model gets
one Kedro namespace, its *model key*: the alias itself for registry aliases (``smollm2-135m``), a
reversible, path-safe spelling of anything else (``EleutherAI/pythia-160m`` →
``EleutherAI_2fpythia-160m``). Dataset factories in the catalog put the key in file paths
(``data/03_primary/activations/{model}.pkl``), so a model's files are found whichever slot it
filled, and a name like ``../../x`` can never point outside ``data/``.

The pipelines are composed from the study in ``pipeline_registry.py``; ``StudyHooks`` (settings)
activates the study of each run from its parameters, runtime ones included, before Kedro reads
the pipelines.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SAFE_CHARACTER = re.compile(r"[A-Za-z0-9-]")
_ESCAPE = re.compile(r"_([0-9a-f]{2})")
PAIR_SEPARATOR = "__"  # never inside a key: every "_" in a key starts a two-digit escape


def model_key(alias: str) -> str:
    """Path- and namespace-safe name of a model alias; `alias_from_key` inverts it.

    Letters, digits and ``-`` stay; every other byte of the UTF-8 spelling becomes ``_xx`` (hex).
    """
    if not isinstance(alias, str) or not alias.strip():
        raise ValueError(f"A model alias must be a non-empty string; got {alias!r}.")
    return "".join(c if _SAFE_CHARACTER.fullmatch(c) else "".join(f"_{b:02x}" for b in c.encode())
                   for c in alias)


def alias_from_key(key: str) -> str:
    """The alias a `model_key` was made from."""
    raw = bytearray()
    position = 0
    for match in _ESCAPE.finditer(key):
        raw += key[position:match.start()].encode()
        raw.append(int(match.group(1), 16))
        position = match.end()
    raw += key[position:].encode()
    alias = raw.decode()
    if model_key(alias) != key:
        raise ValueError(f"{key!r} is not a model key (see emotion_circuits.study.model_key).")
    return alias


@dataclass(frozen=True)
class Study:
    """The models of one run.

    Attributes:
        models: aliases in study order; ``model_a`` and ``model_b`` are always among them.
        model_a: the reference model of the alignment pair.
        model_b: the model it is aligned to.
        scaling_models: the scaling pipeline's ladder (``scaling.reference`` first, then
            ``scaling.models``); its own list, so a ladder of 8B models adds nothing to the other pipelines.
    """

    models: tuple[str, ...]
    model_a: str
    model_b: str
    scaling_models: tuple[str, ...] = ()

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Study:
        """Builds the study from the run's parameters (``models``, ``model_a``, ``model_b``).

        Raises:
            ValueError: naming the parameter that is missing, empty or repeated.
        """
        pair = []
        for name in ("model_a", "model_b"):
            value = params.get(name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"Parameter '{name}' must name a model (an alias, hub id or path); got {value!r}.")
            pair.append(value)
        if pair[0] == pair[1]:
            raise ValueError(f"Parameters model_a and model_b are both '{pair[0]}'. Alignment needs two different "
                             "models: choose another model_b.")
        listed = params.get("models") or pair
        if isinstance(listed, str) or not all(isinstance(m, str) and m.strip() for m in listed):
            raise ValueError(f"Parameter 'models' must be a list of model names; got {listed!r}.")
        repeated = sorted({m for m in listed if list(listed).count(m) > 1})
        if repeated:
            raise ValueError(f"Parameter 'models' names {repeated} more than once.")
        return cls(models=tuple(dict.fromkeys([*listed, *pair])), model_a=pair[0], model_b=pair[1],
                   scaling_models=_scaling_models(params.get("scaling")))

    @property
    def keys(self) -> tuple[str, ...]:
        """The model keys (namespaces), in study order."""
        return tuple(model_key(m) for m in self.models)

    @property
    def pair_keys(self) -> tuple[str, str]:
        return model_key(self.model_a), model_key(self.model_b)

    @property
    def pair_key(self) -> str:
        """Folder and namespace of the alignment pair, ``<key_a>__<key_b>``."""
        return PAIR_SEPARATOR.join(self.pair_keys)

    @property
    def scaling_keys(self) -> tuple[str, ...]:
        """Model keys of the scaling ladder, the reference first."""
        return tuple(model_key(m) for m in self.scaling_models)

    @property
    def study_key(self) -> str:
        """Folder and namespace of analyses over all models, ``<key_1>__<key_2>__…``."""
        return PAIR_SEPARATOR.join(self.keys)


def _scaling_models(scaling: Any) -> tuple[str, ...]:
    """``[scaling.reference, *scaling.models]`` without repeats; () without a scaling group."""
    if not isinstance(scaling, Mapping) or not scaling.get("reference"):
        return ()
    listed = scaling.get("models") or []
    if isinstance(listed, str) or not all(isinstance(m, str) and m.strip() for m in [scaling["reference"], *listed]):
        raise ValueError(f"Parameter 'scaling.models' must be a list of model names; got {listed!r}.")
    return tuple(dict.fromkeys([scaling["reference"], *listed]))


_ACTIVE: Study | None = None


def activate(study: Study) -> bool:
    """Makes ``study`` the one the pipeline registry composes; returns whether it changed."""
    global _ACTIVE  # noqa: PLW0603 - Kedro reads the pipelines through a module-level registry too
    changed = study != _ACTIVE
    _ACTIVE = study
    return changed


def active_study() -> Study:
    """The study of the current run; without a run, the defaults in ``conf/`` of the working directory."""
    return _ACTIVE if _ACTIVE is not None else default_study()


def default_study(conf_source: str | Path = "conf") -> Study:
    """The study the project's configuration files describe (no runtime parameters)."""
    from kedro.config import OmegaConfigLoader

    from emotion_circuits.settings import CONFIG_LOADER_ARGS

    if not Path(conf_source).is_dir():
        return Study(("smollm2-135m", "gemma3-270m"), "smollm2-135m", "gemma3-270m")
    return Study.from_params(OmegaConfigLoader(str(conf_source), **CONFIG_LOADER_ARGS)["parameters"])
