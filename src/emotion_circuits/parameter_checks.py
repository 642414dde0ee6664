"""Checks of every parameter group before a run does any work, with errors that name parameter and value.

`check_parameters` runs in `StudyHooks.after_context_created`, before the pipelines are built and
before any dataset is loaded, whatever pipeline is run. It checks

- the models: ``model_a``, ``model_b`` and each of ``models`` must be a registry alias, a hub id
  ``owner/name`` or an existing model directory / ``.gguf`` file (never a path into ``data/``:
  artifacts are keyed by `emotion_circuits.study.model_key`), and ``model_a`` ≠ ``model_b``;
- types and ranges of every known parameter (`_schema`; keys it does not know are left to their
  pipeline, so a new group needs no change here), and choices that must agree across keys;
- block indices against each model's layer count (``patching.layers``);
- keys given with ``--params`` that are no parameter of the project (a typo would be ignored).

Every problem is collected, then one `ParameterError` lists them all.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from emotion_circuits.models.registry import ModelNotAvailableError, resolve_model

Check = Callable[[Any], "str | None"]


class ParameterError(ValueError):
    """One or more parameters are invalid; the message names each parameter, its value and the problem."""


# --- checks of one value ------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def integer(low: int | None = None, high: int | None = None) -> Check:
    """A whole number in ``[low, high]``."""
    def check(value):
        if not _is_int(value):
            return "is not a whole number"
        if low is not None and value < low:
            return f"must be at least {low}"
        if high is not None and value > high:
            return f"must be at most {high}"
        return None
    return check


def number(low: float | None = None, high: float | None = None, *, open_low: bool = False,
           open_high: bool = False) -> Check:
    """A finite number in the interval (bounds open where asked)."""
    def check(value):
        if not _is_number(value):
            return "is not a number"
        if low is not None and (value <= low if open_low else value < low):
            return f"must be {'above' if open_low else 'at least'} {low}"
        if high is not None and (value >= high if open_high else value > high):
            return f"must be {'below' if open_high else 'at most'} {high}"
        return None
    return check


def boolean() -> Check:
    return lambda value: None if isinstance(value, bool) else "is not true or false"


def text() -> Check:
    return lambda value: None if isinstance(value, str) and value.strip() else "is not a non-empty string"


def choice(*options: str) -> Check:
    return lambda value: None if value in options else f"is not one of {list(options)}"


def optional(check: Check) -> Check:
    """``null`` or what ``check`` accepts."""
    return lambda value: None if value is None else check(value)


def list_of(item: Check, min_length: int = 0, unique: bool = False) -> Check:
    """A list whose every item passes ``item``; at least ``min_length`` items."""
    def check(value):
        if not isinstance(value, (list, tuple)):
            return "is not a list (write [a] or, for several items, see the README on --params)"
        if len(value) < min_length:
            return f"needs at least {min_length} item(s)"
        for i, element in enumerate(value):
            problem = item(element)
            if problem:
                return f"item {i} ({element!r}) {problem}"
        if unique and len(set(map(repr, value))) < len(value):
            return "repeats an item"
        return None
    return check


def mapping_of(value_check: Check) -> Check:
    """A mapping from names to values that pass ``value_check``."""
    def check(value):
        if not isinstance(value, Mapping):
            return "is not a mapping"
        for key, element in value.items():
            problem = value_check(element)
            if problem:
                return f"entry {key!r} ({element!r}) {problem}"
        return None
    return check


# --- the schema ------------------------------------------------------------------------------------------

_POSITIONS = ("trigger", "sentence_end")
_SPLITS = ("baseline", "extended")
_SHARE = number(0.0, 1.0, open_low=True, open_high=True)
_COUNT = integer(0)
_POSITIVE = integer(1)


def _schema() -> dict[str, Any]:
    """Nested like the YAML; built on first use (it imports the pipelines' vocabularies)."""
    from emotion_circuits.alignment_maps import METHODS
    from emotion_circuits.effect_sizes import ONE_SAMPLE_TESTS, TWO_SAMPLE_TESTS
    from emotion_circuits.evaluators import HF_CLASSIFIERS, OFFLINE_EVALUATORS
    from emotion_circuits.models.heads import PATCH_MODES
    from emotion_circuits.models.loading import _DTYPES
    from emotion_circuits.models.steering import SCHEDULES
    from emotion_circuits.phase_fits import MODEL_NAMES
    from emotion_circuits.pipelines.patching.nodes import EMOTION_KINDS, METRIC_TESTS, RANDOM_KINDS
    from emotion_circuits.pipelines.semantic_phase.nodes import DIRECTION_KINDS

    emotions = list_of(text(), min_length=1, unique=True)
    schema = {
        "seed": integer(0),
        "dtype": choice("auto", *_DTYPES),
        "device": _device,
        "activations": {"batch_size": _POSITIVE, "include_mlp_out": boolean(),
                        "max_prompts_per_emotion": optional(_POSITIVE)},
        "data_engineering": {
            "emotions": emotions, "min_prompts_per_emotion": _POSITIVE, "min_real_world_prompts": _COUNT,
            "baseline_per_emotion": _POSITIVE, "min_words": _POSITIVE, "max_words": _POSITIVE,
            "max_chars": _POSITIVE, "real_world_max_words": _POSITIVE, "genres": list_of(text()),
            "neutral_corpus": {"passage_words": _POSITIVE, "max_words": _POSITIVE},
        },
        "subspaces": {
            "emotions": emotions, "reference": text(), "positions": list_of(choice(*_POSITIONS), 1, unique=True),
            "splits": list_of(choice(*_SPLITS), 1, unique=True), "k_max": _POSITIVE, "n_splits": _POSITIVE,
            "skip_first_token": boolean(),
        },
        "alignment": {
            "emotions": emotions, "reference": text(), "positions": list_of(choice(*_POSITIONS), 1, unique=True),
            "splits": list_of(choice(*_SPLITS), 1, unique=True), "skip_first_token": boolean(),
            "methods": list_of(choice(*METHODS), 1, unique=True),
            "ridge": {"alphas": optional(list_of(number(0.0, open_low=True), 1)), "cv": optional(integer(2))},
            "procrustes": {"dim": optional(_POSITIVE)},
            "cca": {"n_components": _POSITIVE, "dim": optional(_POSITIVE)},
            "heldout": {"prompts": _SHARE, "passages": number(0.0, 1.0, open_high=True)},
            "layer_stride": _POSITIVE, "all_layer_pairs": boolean(),
            "primary": {"method": choice(*METHODS), "k": _POSITIVE},
            "k_max": _POSITIVE, "reduced_rank": _POSITIVE, "n_null": _POSITIVE, "n_covariance_null": _POSITIVE,
            "n_permutations": _POSITIVE, "n_bootstrap": _POSITIVE, "alpha": _SHARE,
            "heatmap_method": choice(*METHODS),
        },
        "patching": {
            "prompts": {"n_neutral": _COUNT, "n_real_world": _COUNT},
            "emotions": emotions, "vector_kinds": list_of(choice(*EMOTION_KINDS), 1, unique=True),
            "subspace_position": choice(*_POSITIONS), "subspace_component": _COUNT,
            "n_random": _COUNT, "n_random_cov": _COUNT,
            "layers": optional(list_of(integer(0), 1, unique=True)),
            "layer_fractions": list_of(number(0.0, 1.0), 1),
            "hook": choice("resid_post", "resid_pre"),
            "alphas": list_of(number(), 1),
            "window": {"prompt_tokens": optional(_COUNT), "generated_tokens": optional(_COUNT)},
            "schedule": {"kind": choice(*SCHEDULES), "decay_rate": number(0.0), "ramp_steps": _POSITIVE},
            "swap": {"enabled": boolean(), "alpha": number(), "n_sources": _POSITIVE},
            "generation": {"max_new_tokens": _POSITIVE, "batch_size": _POSITIVE, "do_sample": boolean(),
                           "temperature": number(0.0, open_low=True), "top_p": number(0.0, 1.0, open_low=True)},
            "evaluators": list_of(choice(*OFFLINE_EVALUATORS, *HF_CLASSIFIERS), 1, unique=True),
            "fluency_batch_size": _POSITIVE,
            "target_metrics": mapping_of(text()),
            "metric_tests": mapping_of(choice(*METRIC_TESTS)),
            "primary": {"kind": choice(*EMOTION_KINDS), "metric": choice("target", "raw"),
                        "control": choice(*RANDOM_KINDS), "test": choice("prediction_t", "rank")},
            "min_effect": number(0.0),
            "fluency": {"controls": list_of(choice(*RANDOM_KINDS), unique=True), "band": number(1.0),
                        "min_comparable": _POSITIVE},
            "alpha_level": _SHARE,
            "report_metrics": list_of(text()),
            "heatmap_kind": choice(*EMOTION_KINDS, *RANDOM_KINDS),
        },
        "heads": {
            "emotions": emotions, "twins": mapping_of(mapping_of(text())),
            "max_prompts_per_emotion": optional(integer(2)), "batch_size": _POSITIVE,
            "n_bootstrap": _POSITIVE, "n_permutations": _POSITIVE, "ci_level": _SHARE, "alpha_level": _SHARE,
            "top_n": _POSITIVE, "readout_layer": integer(),
            "interventions": {
                "n_pairs": _POSITIVE, "n_random_sets": integer(2),
                "ablation_modes": list_of(choice("zero", "mean"), 1, unique=True),
                "ablation_prompts": list_of(choice("emotion", "neutral"), unique=True),
                "patch_modes": list_of(choice(*PATCH_MODES), 1, unique=True),
                "patch_positions": list_of(choice(*_POSITIONS), 1, unique=True),
                "patch_directions": list_of(choice("emotion_to_neutral", "neutral_to_emotion"), 1, unique=True),
                "max_new_tokens": _POSITIVE, "batch_size": _POSITIVE,
            },
            "report_metrics": list_of(text(), unique=True),
            "circuits": {"top_k": _POSITIVE, "n_prompts": _POSITIVE, "emotion_words": mapping_of(list_of(text(), 1))},
        },
        "semantic_phase": {
            "words": list_of(text(), unique=True), "batch_size": _POSITIVE, "lens_rows_per_batch": _POSITIVE,
            "directions": choice(*DIRECTION_KINDS), "sigma_column": choice("sigma", "sigma_diff"),
            "primary_fit": choice("landau", "landau_extended"),
            "alternatives": list_of(choice(*MODEL_NAMES), 1, unique=True), "min_delta_bic": number(),
            "compared_models": list_of(choice(*MODEL_NAMES), 1, unique=True),
            "fit_kinds": list_of(text(), 1, unique=True), "grid_points": integer(2),
            "criteria": {"confidence": _SHARE, "n_bootstrap": _POSITIVE, "excess_jump_min": number(),
                         "r2_min": number(high=1.0), "transition_share_min": number(0.0, 1.0),
                         "beta_cv_max": number(0.0), "min_identified": _POSITIVE, "chi_distance_max": number(0.0),
                         "l_c_ratio_margin": number(0.0), "two_stage_share_min": number(0.0, 1.0),
                         "g_excess_max": number(0.0)},
            "sense_null": {"n_permutations": _POSITIVE, "alpha": _SHARE},
            "universality": {"n_permutations": _POSITIVE, "min_words": integer(2)},
        },
        "statistics": {
            "n_bootstrap": _POSITIVE, "n_permutations": _POSITIVE, "confidence": _SHARE, "alpha": _SHARE,
            "projection": {"positions": list_of(choice(*_POSITIONS), 1, unique=True), "emotions": emotions,
                           "reference": text(), "fit_share": _SHARE,
                           "skip_first_token": boolean(), "layer_stride": _POSITIVE,
                           "test": choice(*TWO_SAMPLE_TESTS)},
            "steering": {"metrics": list_of(text(), 1, unique=True), "control": choice(*RANDOM_KINDS),
                         "test": choice(*ONE_SAMPLE_TESTS)},
            "power": {"effect_sizes": list_of(number(0.0, open_low=True), 1), "power_target": _SHARE},
            "k_selection": {"statistics": list_of(text(), 1, unique=True), "primary_statistic": text(),
                            "claimed_k": _POSITIVE, "compare": list_of(_POSITIVE, 1, unique=True)},
            "claims": {"small_d": number(0.0, open_low=True),
                       "small_effects": {"pipeline": text(), "metric": text(), "kind": choice(*EMOTION_KINDS),
                                         "comparison": text()}},
        },
    }
    schema["scaling"] = _scaling_schema(schema["alignment"])
    return schema


def _device(value: Any) -> str | None:
    if isinstance(value, str) and re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?|xpu(:\d+)?", value):
        return None
    return "is not a device (auto, cpu, cuda, cuda:N, mps)"


# Mappings whose keys users choose (new metrics, evaluator families): unknown keys there are fine.
_FREE_KEYS = {"patching.target_metrics", "patching.metric_tests", "patching.contrast", "heads.twins",
              "heads.circuits.emotion_words"}


# --- the checks ------------------------------------------------------------------------------------------


def check_parameters(params: Mapping[str, Any], runtime_params: Mapping[str, Any] | None = None,
                     configured: Mapping[str, Any] | None = None) -> None:
    """Raises `ParameterError` listing every invalid parameter of a run; returns None when all are fine.

    Args:
        params: the run's parameters (configuration files and ``--params`` merged).
        runtime_params: what ``--params`` gave (checked for keys the project does not have).
        configured: the parameters of the configuration files alone (the keys that exist).
    """
    problems = _model_problems(params)
    typed = _walk(params, _schema(), "")
    problems += [_problem(name, value, what) for name, value, what in typed]
    bad_groups = {name.split(".")[0] for name, _, _ in typed}  # cross-checks assume right types
    problems += _cross_problems(params, bad_groups)
    problems += _layer_problems(params, {name for name, _, _ in typed})
    if runtime_params and configured is not None:
        problems += _unknown_keys(runtime_params, configured, "")
    if problems:
        listed = "\n  - ".join(problems)
        raise ParameterError(f"{len(problems)} invalid parameter(s); nothing was run:\n  - {listed}")


def _problem(name: str, value: Any, what: str) -> str:
    return f"Parameter '{name}' = {value!r}: {what}"


def _walk(params: Mapping[str, Any], schema: Mapping[str, Any], prefix: str) -> list[tuple[str, Any, str]]:
    """``(name, value, problem)`` for every parameter ``schema`` knows that breaks its rule."""
    problems = []
    for key, rule in schema.items():
        if key not in params:
            continue  # not this project's configuration (an older conf, or a key another pipeline dropped)
        name, value = f"{prefix}{key}", params[key]
        if isinstance(rule, Mapping):
            if not isinstance(value, Mapping):
                problems.append((name, value, "must be a group of parameters (a mapping)"))
            else:
                problems += _walk(value, rule, f"{name}.")
            continue
        what = rule(value)
        if what:
            problems.append((name, value, what))
    return problems


def _model_problems(params: Mapping[str, Any]) -> list[str]:
    """Model names (alias, hub id or existing path) and model_a ≠ model_b."""
    problems, named = [], []
    for name in ("model_a", "model_b"):
        named.append((name, params.get(name)))
    listed = params.get("models")
    if listed is not None:
        if isinstance(listed, str) or not isinstance(listed, (list, tuple)):
            problems.append(_problem("models", listed, "is not a list of model names (or null for [model_a, model_b])"))
        else:
            named += [(f"models[{i}]", m) for i, m in enumerate(listed)]
            repeated = sorted({m for m in listed if isinstance(m, str) and list(listed).count(m) > 1})
            if repeated:
                problems.append(_problem("models", listed, f"names {repeated} more than once"))
    named += _scaling_models(params.get("scaling"))
    for name, value in named:
        if not isinstance(value, str) or not value.strip():
            problems.append(_problem(name, value, "must name a model (a registry alias, hub id owner/name or path)"))
            continue
        try:
            resolve_model(value)
        except ModelNotAvailableError as error:
            problems.append(_problem(name, value, str(error)))
    if params.get("model_a") is not None and params.get("model_a") == params.get("model_b"):
        problems.append(f"Parameters 'model_a' and 'model_b' are both {params['model_a']!r}: alignment maps one "
                        "model onto another, so choose a different model_b (whatever pipeline runs).")
    return problems


def _cross_problems(params: Mapping[str, Any], bad_groups: set[str]) -> list[str]:
    """Choices that must agree between keys (only for groups whose types are right)."""
    problems = []
    alignment = params.get("alignment")
    if isinstance(alignment, Mapping) and "alignment" not in bad_groups:
        methods = alignment.get("methods", [])
        for key in ("heatmap_method",):
            if key in alignment and alignment[key] not in methods:
                problems.append(_problem(f"alignment.{key}", alignment[key], f"is not in alignment.methods {methods}"))
        problems += _primary_problems(alignment, "alignment")
    patching = params.get("patching")
    if isinstance(patching, Mapping) and "patching" not in bad_groups:
        problems += _patching_problems(patching, params.get("subspaces"))
    if isinstance(params.get("scaling"), Mapping) and "scaling" not in bad_groups:
        problems += _scaling_problems(params["scaling"])
    statistics = params.get("statistics")
    if isinstance(statistics, Mapping) and "statistics" not in bad_groups:
        problems += _statistics_problems(statistics, alignment if isinstance(alignment, Mapping) else {})
    data = params.get("data_engineering")
    if (isinstance(data, Mapping) and "data_engineering" not in bad_groups
            and {"min_words", "max_words"} <= data.keys() and data["min_words"] > data["max_words"]):
        problems.append(_problem("data_engineering.min_words", data["min_words"],
                                 f"is above data_engineering.max_words ({data['max_words']})"))
    return problems


def _statistics_problems(statistics: Mapping[str, Any], alignment: Mapping[str, Any]) -> list[str]:
    """k selection reads statistics and k values the alignment pipeline computes."""
    problems = []
    k_selection = statistics.get("k_selection") or {}
    if k_selection.get("primary_statistic") not in k_selection.get("statistics", []):
        problems.append(_problem("statistics.k_selection.primary_statistic", k_selection.get("primary_statistic"),
                                 f"is not in statistics.k_selection.statistics {k_selection.get('statistics')}"))
    k_max = alignment.get("k_max")
    for k in [k_selection.get("claimed_k"), *k_selection.get("compare", [])]:
        if _is_int(k) and _is_int(k_max) and k > k_max:
            problems.append(_problem("statistics.k_selection", k, f"is above alignment.k_max ({k_max})"))
    return problems


def _patching_problems(patching: Mapping[str, Any], subspaces: Any) -> list[str]:
    from emotion_circuits.pipelines.patching.nodes import check_declared_tests

    problems = []
    needed = {"primary", "n_random", "vector_kinds", "metric_tests", "fluency"}
    if needed <= patching.keys():
        try:
            check_declared_tests(dict(patching))
        except (ValueError, KeyError, TypeError) as error:
            problems.append(str(error).removesuffix("."))
    k_max = subspaces.get("k_max") if isinstance(subspaces, Mapping) else None
    component = patching.get("subspace_component")
    if _is_int(k_max) and _is_int(component) and component >= k_max:
        problems.append(_problem("patching.subspace_component", component,
                                 f"must be below subspaces.k_max ({k_max}): components are 0..{k_max - 1}"))
    prompts = patching.get("prompts") or {}
    if prompts.get("n_neutral") == 0 and prompts.get("n_real_world") == 0:
        problems.append(_problem("patching.prompts", dict(prompts), "selects no prompt to steer"))
    return problems


def _layer_problems(params: Mapping[str, Any], bad_names: set[str]) -> list[str]:
    """Block indices against every model of the run (layer counts known without loading)."""
    patching = params.get("patching")
    if not isinstance(patching, Mapping) or {"patching", "patching.layers"} & bad_names or not patching.get("layers"):
        return []
    from emotion_circuits.models.availability import layer_count

    problems = []
    for alias in _study_models(params):
        try:
            n_layers = layer_count(resolve_model(alias))
        except ModelNotAvailableError:
            continue  # named by _model_problems
        outside = [layer for layer in patching["layers"] if n_layers is not None and layer >= n_layers]
        if outside:
            problems.append(_problem("patching.layers", list(patching["layers"]),
                                     f"block(s) {outside} are outside 0..{n_layers - 1} of {alias} "
                                     f"({n_layers} blocks)"))
    return problems


def _study_models(params: Mapping[str, Any]) -> list[str]:
    listed = params.get("models") or []
    names = [m for m in [*listed, params.get("model_a"), params.get("model_b")] if isinstance(m, str) and m.strip()]
    return list(dict.fromkeys(names))


def _unknown_keys(given: Mapping[str, Any], known: Mapping[str, Any], prefix: str) -> list[str]:
    """``--params`` keys the configuration does not have (a typo would otherwise be ignored silently)."""
    problems = []
    for key, value in given.items():
        name = f"{prefix}{key}"
        if key not in known:
            close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            problems.append(_problem(name, value, f"is not a parameter of this project{hint}"))
        elif (isinstance(value, Mapping) and isinstance(known[key], Mapping) and name not in _FREE_KEYS):
            problems += _unknown_keys(value, known[key], f"{name}.")
    return problems


# --- the scaling group ------------------------------------------------------------------------------------------


def _scaling_schema(alignment: Mapping[str, Any]) -> dict[str, Any]:
    """``scaling``: the ladder, depths, sizes, memory, and the alignment analysis it runs (alignment's rules)."""
    return {"reference": text(), "models": list_of(text(), 1, unique=True),
            "depths": list_of(number(0.0, 1.0), 1, unique=True), "max_prompts_per_emotion": optional(integer(10)),
            "max_words": optional(_POSITIVE), "batch_size": _POSITIVE, "memory_headroom": _SHARE,
            "max_memory": optional(mapping_of(lambda v: None if _is_int(v) or isinstance(v, str) and v.strip()
                                              else "is not a size such as 70GiB or a number of bytes")),
            "alignment": alignment}


def _scaling_models(scaling: Any) -> list[tuple[str, Any]]:
    """``(parameter name, model name)`` of the scaling ladder, for the model-name checks."""
    if not isinstance(scaling, Mapping):
        return []
    listed = scaling.get("models")
    named = [("scaling.reference", scaling.get("reference"))] if "reference" in scaling else []
    return named + ([(f"scaling.models[{i}]", m) for i, m in enumerate(listed)] if isinstance(listed, list) else [])


def _scaling_problems(scaling: Mapping[str, Any]) -> list[str]:
    """The alignment it runs must pair depths one to one, and its primary must be one of its methods."""
    problems = []
    alignment = scaling.get("alignment")
    if not isinstance(alignment, Mapping):
        return problems
    if alignment.get("layer_stride", 1) != 1 or alignment.get("all_layer_pairs", False):
        problems.append(_problem("scaling.alignment.layer_stride", alignment.get("layer_stride"),
                                 "must be 1 with all_layer_pairs false: scaling.depths chooses the layers, "
                                 "and each depth is paired with the same depth of the other model"))
    return problems + _primary_problems(alignment, "scaling.alignment")


def _primary_problems(alignment: Mapping[str, Any], prefix: str) -> list[str]:
    """The declared primary method must be among the methods run, and its k within k_max."""
    problems, methods = [], alignment.get("methods", [])
    primary = alignment.get("primary") or {}
    if "method" in primary and primary["method"] not in methods:
        problems.append(_problem(f"{prefix}.primary.method", primary["method"],
                                 f"is not in {prefix}.methods {methods}"))
    if "k" in primary and "k_max" in alignment and primary["k"] > alignment["k_max"]:
        problems.append(_problem(f"{prefix}.primary.k", primary["k"],
                                 f"is above {prefix}.k_max ({alignment['k_max']})"))
    return problems
