"""Ablating and patching the top heads while the model writes, against random head sets of the same size.

Every condition is one row of ``head_plan``: a target prompt, a set of heads (``"layer.head;…"``), a
family (``ablation`` / ``patching``) and a mode. Random sets draw, for each top head, another head of
the same layer, so they match the top set's size and depth. Each generation also yields a cheap
forward readout: the residual ``blocks.{readout}.hook_resid_post`` at the prompt's sentence end,
projected on the unit emotion vector there (``projection``), computed in the pass over the prompt.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import pandas as pd
import torch

from emotion_circuits.contracts import EmotionVectors
from emotion_circuits.evaluators.panel import score_panel
from emotion_circuits.models.heads import HeadEdit, ResidualReadout, head_hooks, key_mask, probe_heads
from emotion_circuits.models.loading import LoadedModel
from emotion_circuits.models.positions import span_token_positions, tokenize_with_positions
from emotion_circuits.models.steering import steered_generate
from emotion_circuits.statistics import bh, rank_p_value, rng

PLAN_COLUMNS = ["family", "emotion", "prompt_kind", "prompt_id", "source_id", "direction", "position", "mode",
                "set_kind", "set_id", "heads"]


def plan_interventions(head_pairs: pd.DataFrame, top_heads: pd.DataFrame, head_attention: dict[str, Any],
                       params: dict[str, Any], seed: int) -> pd.DataFrame:
    """``head_plan``: one row per generation (baseline, ablations, patches), columns `PLAN_COLUMNS`."""
    n_heads = int(head_attention["n_heads"])
    settings, rows = params["interventions"], []
    for emotion, top in top_heads.groupby("emotion", sort=False):
        top_set = list(zip(top.layer.astype(int), top["head"].astype(int)))
        randoms = _random_sets(top_set, n_heads, settings["n_random_sets"], rng(seed, f"heads.sets.{emotion}"))
        sets = ([("single", f"top{rank}", [head]) for rank, head in enumerate(top_set, 1)]
                + [("top_set", "top", top_set)] + [("random", f"random{i:02d}", s) for i, s in enumerate(randoms)])
        for pair in head_pairs[head_pairs.emotion == emotion].itertuples():
            prompts = {"emotion": pair.emotion_id, "neutral": pair.neutral_id}
            targets = {kind for direction in settings["patch_directions"] for kind in direction.split("_to_")[1:]}
            for kind, prompt in prompts.items():
                if kind in targets or kind in settings["ablation_prompts"]:
                    rows.append(("baseline", emotion, kind, prompt, None, None, None, "none", "baseline", "baseline",
                                 ""))
                if kind in settings["ablation_prompts"]:
                    rows += [("ablation", emotion, kind, prompt, None, None, None, mode, set_kind, set_id,
                              _spell(heads)) for mode in settings["ablation_modes"] for set_kind, set_id, heads in sets]
            for direction in settings["patch_directions"]:
                target, source = direction.split("_to_")[::-1]
                rows += [("patching", emotion, target, prompts[target], prompts[source], direction, position, mode,
                          set_kind, set_id, _spell(heads))
                         for position in settings["patch_positions"] for mode in settings["patch_modes"]
                         for set_kind, set_id, heads in sets]
    return pd.DataFrame(rows, columns=PLAN_COLUMNS)


def run_interventions(model: LoadedModel, emotion_prompts: pd.DataFrame, head_plan: pd.DataFrame,
                      head_attention: dict[str, Any], emotion_vectors: EmotionVectors,
                      params: dict[str, Any]) -> pd.DataFrame:
    """Generates every row of ``head_plan`` (greedy), batched, with its heads ablated or patched.

    Returns:
        ``head_generations``: the plan plus ``prompt_ids``, ``generated_ids``, ``text`` and ``projection``
        (readout residual at the sentence end · unit emotion vector, in residual units).
    """
    prompts = _Prompts(model, emotion_prompts, sorted(set(head_plan.prompt_id) | set(head_plan.source_id.dropna())))
    readout = _readout_layer(params, model.n_layers)
    units = {e: _unit(emotion_vectors.vectors["sentence_end"][e][readout + 1]) for e in head_plan.emotion.unique()}
    sources = {position: prompts.probe(position, params["batch_size"])
               for position in head_plan.position.dropna().unique()}
    settings = params["interventions"]
    z_mean = torch.as_tensor(head_attention["z_mean"], device=model.device)
    generated, projection = [None] * len(head_plan), np.full(len(head_plan), np.nan)
    for _, group in head_plan.groupby(["family", "mode", "position"], dropna=False, sort=False):
        factory = _Interventions(model, prompts, group, sources, z_mean, readout)
        ids = steered_generate(model, [prompts.input_ids[prompts.row[p]] for p in group.prompt_id],
                               max_new_tokens=settings["max_new_tokens"], batch_size=settings["batch_size"],
                               show_progress=False, intervention=factory)
        for i, (index, emotion) in enumerate(zip(group.index, group.emotion)):
            generated[index] = ids[i]
            projection[index] = float(factory.readouts[i] @ units[emotion])
    texts = model.tokenizer.batch_decode(generated, skip_special_tokens=True)
    return head_plan.assign(prompt_ids=[prompts.input_ids[prompts.row[p]] for p in head_plan.prompt_id],
                            generated_ids=generated, text=texts, projection=projection)


def score_interventions(model: LoadedModel, head_generations: pd.DataFrame, evaluator_prototypes: dict,
                        evaluator_lexicons: dict, panel: dict[str, Any]) -> pd.DataFrame:
    """``head_results``: every generation scored with the evaluator panel declared in ``patching``."""
    generations = head_generations.reset_index(drop=True)
    scores = score_panel(model, generations.prompt_ids, generations.generated_ids, generations.text.tolist(),
                         evaluator_prototypes, evaluator_lexicons, panel)
    return pd.concat([generations.drop(columns=["prompt_ids", "generated_ids"]).assign(model=model.alias), scores],
                     axis=1)


def intervention_effects(head_results: pd.DataFrame, params: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``head_ablation`` and ``head_patching``: each set's mean change from the unedited generation, vs random sets.

    ``effect`` is the mean over target prompts of (score with the edit − score of the same prompt
    unedited); ``target`` is the emotion's contrastive score. Each top set and single head is compared
    with the random sets of the same cell (same emotion, mode, position, direction, prompt kind):
    ``p_vs_random`` is a two-sided rank p over the random sets' effects, ``p_bh`` BH within the family ×
    metric, ``z_vs_random`` the distance in random-set standard deviations.
    """
    baseline = head_results[head_results.family == "baseline"].set_index("prompt_id")
    metrics = {"target": None, **{m: m for m in params["report_metrics"]}}
    tables = {}
    for family in ("ablation", "patching"):
        edited = head_results[head_results.family == family]
        reference = baseline.loc[edited.prompt_id].reset_index()
        long = pd.concat([edited.assign(metric=name, effect=_column(edited, column) - _column(reference, column))
                          for name, column in metrics.items()], ignore_index=True)
        keys = ["model", "emotion", "prompt_kind", "direction", "position", "mode", "metric"]
        tables[family] = _versus_random(long, keys)
    return tables["ablation"], tables["patching"]


def _versus_random(long: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    means = (long.groupby([*keys, "set_kind", "set_id", "heads"], dropna=False, sort=False)
             .agg(effect=("effect", "mean"), n_prompts=("effect", "size")).reset_index())
    rows = []
    for _, cell in means.groupby(keys, dropna=False, sort=False):
        null = cell.loc[cell.set_kind == "random", "effect"].to_numpy()
        for row in cell[cell.set_kind != "random"].to_dict("records"):
            spread = null.std(ddof=1) if len(null) > 1 else np.nan
            rows.append({**row, "random_mean": null.mean(), "random_sd": spread,
                         "random_low": np.percentile(null, 2.5), "random_high": np.percentile(null, 97.5),
                         "z_vs_random": (row["effect"] - null.mean()) / spread if spread else np.nan,
                         "p_vs_random": rank_p_value(row["effect"], null, "two-sided"), "n_random": len(null)})
    table = pd.DataFrame(rows)
    table["p_bh"] = table.groupby("metric")["p_vs_random"].transform(bh)
    return table


def _column(table: pd.DataFrame, column: str | None) -> np.ndarray:
    """A metric per row; ``None`` = the row's own emotion's contrastive score."""
    if column is not None:
        return table[column].to_numpy(dtype=float)
    values = np.full(len(table), np.nan)
    for emotion in table.emotion.unique():
        rows = (table.emotion == emotion).to_numpy()
        values[rows] = table.loc[rows, f"contrast_{emotion}"].to_numpy(dtype=float)
    return values


class _Prompts:
    """The prompts an intervention touches, tokenised once, with their positions."""

    def __init__(self, model: LoadedModel, emotion_prompts: pd.DataFrame, ids: list[str]):
        table = emotion_prompts.set_index("id").loc[ids]
        texts, spans = table.text.tolist(), list(zip(table.trigger_start.astype(int), table.trigger_end.astype(int)))
        tokenized = tokenize_with_positions(model.tokenizer, texts, spans, ids)
        self.model, self.row = model, {p: i for i, p in enumerate(ids)}
        self.input_ids = tokenized.input_ids
        self.positions = {"sentence_end": tokenized.sentence_end_positions, "trigger": tokenized.span_end_positions}
        self.trigger_tokens = span_token_positions(model.tokenizer, texts, spans, ids)

    def probe(self, position: str, batch_size: int) -> dict[str, np.ndarray]:
        """Per prompt, what each head reads and writes at ``position`` (the source of a patch)."""
        return probe_heads(self.model, self.input_ids, self.positions[position], self.trigger_tokens, batch_size)


class _Interventions:
    """Factory of the per-batch context for `steered_generate`: the rows' head edits and the readout."""

    def __init__(self, model, prompts: _Prompts, group: pd.DataFrame, sources: dict, z_mean: torch.Tensor,
                 readout_layer: int):
        self.model, self.prompts, self.group, self.sources = model, prompts, group.reset_index(drop=True), sources
        self.z_mean, self.readout_layer = z_mean, readout_layer
        self.readouts = np.zeros((len(group), model.d_model), np.float32)

    @contextlib.contextmanager
    def __call__(self, rows: np.ndarray, padded_length: int):
        plan = self.group.iloc[rows]
        targets = np.array([self.prompts.row[p] for p in plan.prompt_id])
        offsets = padded_length - np.array([len(self.prompts.input_ids[t]) for t in targets])
        device = self.model.device
        sentence_end = torch.as_tensor(offsets + self.prompts.positions["sentence_end"][targets], device=device)
        edit = self._edit(plan, targets, offsets, padded_length)
        with head_hooks(self.model, padded_length, edit=edit), \
                ResidualReadout(self.model, self.readout_layer, sentence_end, padded_length) as readout:
            yield
        self.readouts[rows] = readout.values.cpu().numpy()

    def _edit(self, plan: pd.DataFrame, targets: np.ndarray, offsets: np.ndarray, padded_length: int) -> HeadEdit:
        model, device = self.model, self.model.device
        heads = torch.zeros((len(plan), model.n_layers, self.z_mean.shape[1]), dtype=torch.bool, device=device)
        for i, spelled in enumerate(plan.heads):
            for layer, head in _parse(spelled):
                heads[i, layer, head] = True
        mode, position = plan["mode"].iloc[0], plan["position"].iloc[0]
        if plan.family.iloc[0] != "patching":
            values = self.z_mean if mode == "mean" else torch.zeros_like(self.z_mean)
            return HeadEdit(heads, "replace", values=values)
        sources = np.array([self.prompts.row[p] for p in plan.source_id])
        query = torch.as_tensor(offsets + self.prompts.positions[position][targets], device=device)
        return HeadEdit(heads, mode, query_positions=query,
                        key_mask=key_mask((len(plan), padded_length),
                                          [self.prompts.trigger_tokens[t] for t in targets], device, offsets),
                        source={name: torch.as_tensor(self.sources[position][name][sources], device=device)
                                for name in ("attn", "z", "v_keys")})


def _random_sets(top_set: list[tuple[int, int]], n_heads: int, n_sets: int, generator: np.random.Generator
                 ) -> list[list[tuple[int, int]]]:
    """``n_sets`` distinct head sets, each head replaced by another head of its layer outside the top set."""
    chosen = set(top_set)
    pools = {layer: [h for h in range(n_heads) if (layer, h) not in chosen] for layer, _ in top_set}
    for layer, pool in pools.items():
        needed = sum(1 for l_, _ in top_set if l_ == layer)
        if len(pool) < needed:
            raise ValueError(f"heads: layer {layer} has {n_heads} heads; a random set cannot match the top set "
                             f"there ({needed} top heads). Lower heads.top_n.")
    sets, seen = [], set()
    for _ in range(100 * n_sets):
        drawn = []
        for layer in dict.fromkeys(layer for layer, _ in top_set):
            needed = sum(1 for l_, _ in top_set if l_ == layer)
            drawn += [(layer, int(h)) for h in generator.choice(pools[layer], needed, replace=False)]
        key = tuple(sorted(drawn))
        if key not in seen:
            seen.add(key)
            sets.append(sorted(drawn))
        if len(sets) == n_sets:
            break
    return sets


def _spell(heads: list[tuple[int, int]]) -> str:
    return ";".join(f"{layer}.{head}" for layer, head in heads)


def _parse(spelled: str | float) -> list[tuple[int, int]]:
    """``"3.1;7.0"`` → ``[(3, 1), (7, 0)]``; the baseline's empty set reads back from CSV as NaN."""
    if not isinstance(spelled, str):
        return []
    return [tuple(int(x) for x in item.split(".")) for item in spelled.split(";") if item]


def _readout_layer(params: dict[str, Any], n_layers: int) -> int:
    """The block whose output is read: ``heads.readout_layer`` (negative counts from the end)."""
    layer = params["readout_layer"]
    if not -n_layers <= layer < n_layers:
        raise ValueError(f"Parameter heads.readout_layer = {layer} is outside the model's {n_layers} blocks.")
    return layer % n_layers


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(vector)
    return vector / norm if norm else vector
