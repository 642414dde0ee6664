"""The heads pipeline on a tiny GPT-2 with a planted head, and its statistics on tables with known answers."""

import io

import numpy as np
import pandas as pd
import pytest
import torch

from emotion_circuits.contracts import EmotionVectors
from emotion_circuits.pipelines.heads import interventions, nodes
from tests.conftest import tiny_model

PARAMS = {
    "emotions": ["gratitude"], "twins": {"gratitude": {"emotion": "gra_", "neutral": "neu_g"}},
    "max_prompts_per_emotion": None, "batch_size": 4, "n_bootstrap": 200, "n_permutations": 999, "ci_level": 0.95,
    "alpha_level": 0.05, "top_n": 2, "readout_layer": -1,
    "interventions": {"n_pairs": 1, "n_random_sets": 3, "ablation_modes": ["zero", "mean"],
                      "ablation_prompts": ["emotion", "neutral"],
                      "patch_modes": ["whole", "pattern", "value"], "patch_positions": ["sentence_end"],
                      "patch_directions": ["emotion_to_neutral"], "max_new_tokens": 3, "batch_size": 8},
    "report_metrics": ["projection"],
}
_EMOTIONAL = ["Many thanks to the nurses on ward seven.", "Thanks for the flowers, they are lovely.",
              "We send our thanks to the bus driver.", "Thanks again for the corner table.",
              "Many thanks for the library books.", "Thanks so much for the delay notice.",
              "She said thanks before the landlord left.", "Our thanks to the ward for the flowers.",
              "Thanks to the driver at the corner.", "Warm thanks from the library staff."]


def _prompts() -> pd.DataFrame:
    rows = []
    for i, text in enumerate(_EMOTIONAL, 1):
        rows.append((f"gra_{i:03d}", "gratitude", text, "thanks" if "thanks" in text else "Thanks"))
        twin = text.replace("thanks", "notes").replace("Thanks", "Notes")
        rows.append((f"neu_g{i:03d}", "neutral", twin, "notes" if "notes" in twin else "Notes"))
    table = pd.DataFrame(rows, columns=["id", "emotion", "text", "trigger"])
    start = [t.index(w) for t, w in zip(table.text, table.trigger)]
    return table.assign(trigger_start=start, trigger_end=[s + len(w) for s, w in zip(start, table.trigger)])


def _marker_ids(tokenizer) -> set[int]:
    """Token ids that occur inside the emotion prompts' triggers and nowhere else in any prompt."""
    from emotion_circuits.models.positions import span_token_positions

    table = _prompts()
    spans = list(zip(table.trigger_start, table.trigger_end))
    inside = span_token_positions(tokenizer, table.text.tolist(), spans)
    ids = tokenizer(table.text.tolist())["input_ids"]
    trigger = {ids[r][p] for r in range(len(table)) if table.emotion[r] != "neutral" for p in inside[r]}
    elsewhere = {t for r in range(len(table)) for p, t in enumerate(ids[r])
                 if table.emotion[r] == "neutral" or p not in set(inside[r])}
    return trigger - elsewhere


def _planted(tokenizer, layer: int = 0, head: int = 2):
    """Tiny GPT-2 whose ``layer``.``head`` attends to the tokens of 'thanks'/'Thanks' and little else."""
    model = tiny_model("gpt2", tokenizer)
    marker_ids = _marker_ids(tokenizer)
    assert marker_ids
    transformer, d_head = model.hf_model.transformer, 8
    with torch.no_grad():
        transformer.wte.weight[:, 0] = 0
        transformer.wte.weight[sorted(marker_ids), 0] = 1.0
        transformer.wpe.weight[:, 0] = 0
        attn = transformer.h[layer].attn.c_attn  # Conv1D [d, 3 d]: q | k | v, head-major columns
        q, k = slice(head * d_head, (head + 1) * d_head), slice(32 + head * d_head, 32 + (head + 1) * d_head)
        attn.weight[:, q] = 0
        attn.bias[q] = 0
        attn.bias[q.start] = 30.0
        attn.weight[:, k] = 0
        attn.bias[k] = 0
        attn.weight[0, k.start] = 1.0
    return model


def _vectors(model) -> EmotionVectors:
    vectors = np.random.default_rng(0).standard_normal((model.n_layers + 1, model.d_model)).astype(np.float32)
    return EmotionVectors(model=model.alias, hook_names=[f"h{i}" for i in range(model.n_layers + 1)],
                          vectors={"sentence_end": {"gratitude": vectors}})


@pytest.fixture(scope="module")
def screened(gpt2_style_tokenizer):
    """The planted model, its prompts, the held-out pairs and the screening readings (computed once)."""
    model, prompts = _planted(gpt2_style_tokenizer), _prompts()
    pairs = nodes.intervention_pairs(prompts, PARAMS, seed=0)
    return model, prompts, pairs, nodes.screen_heads(model, prompts, pairs, _vectors(model), PARAMS)


def test_screening_ranks_a_planted_head_first_and_only_it_passes(screened):
    model, prompts, pairs, attention = screened
    assert attention["attention"].shape == (18, 2, 4)  # 9 emotion prompts + 9 twins (one pair held out)
    assert set(pairs.emotion_id).isdisjoint(attention["ids"]) and set(pairs.neutral_id).isdisjoint(attention["ids"])
    table = nodes.screening_table(attention, PARAMS, seed=0)
    assert len(table) == 2 * 4
    best = table.sort_values("delta_attn", ascending=False).iloc[0]
    assert (best.layer, best["head"]) == (0, 2) and best.attn_emotion > 0.5 and best.p_bh < 0.01
    assert best.ci_low > 0
    others = table[(table.layer == 0) & (table["head"] != 2)]
    assert (others.p_bh > 0.05).all() or (others.delta_attn.abs() < best.delta_attn / 5).all()
    top = nodes.select_top_heads(table, PARAMS)
    assert list(top["rank"]) == [1, 2] and bool(top.passes_bh.iloc[0]) and bool(top.passes_position_control.iloc[0])


def test_a_head_that_attends_to_the_first_token_fails_the_position_control(gpt2_style_tokenizer):
    """Emotion triggers open the sentence, the twins' words do not: a first-token head fools delta_attn only."""
    model = tiny_model("gpt2", gpt2_style_tokenizer)
    transformer, head, d_head = model.hf_model.transformer, 2, 8
    with torch.no_grad():  # head 0.2 attends to position 0 whatever the token
        transformer.wte.weight[:, 0] = 0
        transformer.wpe.weight[:, 0] = 0
        transformer.wpe.weight[0, 0] = 1.0
        attn = transformer.h[0].attn.c_attn
        q, k = slice(head * d_head, (head + 1) * d_head), slice(32 + head * d_head, 32 + (head + 1) * d_head)
        attn.weight[:, q], attn.bias[q], attn.weight[:, k], attn.bias[k] = 0, 0, 0, 0
        attn.bias[q.start] = 30.0
        attn.weight[0, k.start] = 1.0
    rows = []
    for i, text in enumerate(_EMOTIONAL, 1):
        opening = text.split()[0]
        twin = "The " + " ".join(text.split()[1:]).replace("thanks", "notes") + " today"
        word = twin.split()[2]
        rows += [(f"gra_{i:03d}", "gratitude", text, opening, 0, len(opening)),
                 (f"neu_g{i:03d}", "neutral", twin, word, twin.index(word), twin.index(word) + len(word))]
    prompts = pd.DataFrame(rows, columns=["id", "emotion", "text", "trigger", "trigger_start", "trigger_end"])
    pairs = nodes.intervention_pairs(prompts, PARAMS, seed=0)
    table = nodes.screening_table(nodes.screen_heads(model, prompts, pairs, _vectors(model), PARAMS), PARAMS, seed=0)
    decoy = table[(table.layer == 0) & (table["head"] == head)].iloc[0]
    assert decoy.delta_attn > 0.5 and decoy.p_bh < 0.01  # the uncontrolled screening is fooled
    assert abs(decoy.delta_same_positions) < 0.05 and decoy.p_bh_same_positions > 0.05
    assert not nodes.select_top_heads(table, PARAMS).passes_position_control.iloc[0]


def test_same_seed_same_screening_and_another_seed_other_resamples(screened):
    attention = screened[3]
    first, again = (nodes.screening_table(attention, PARAMS, seed=0) for _ in range(2))
    pd.testing.assert_frame_equal(first, again)
    assert not np.allclose(first.ci_low, nodes.screening_table(attention, PARAMS, seed=1).ci_low)


def test_twins_that_do_not_exist_are_named():
    with pytest.raises(ValueError, match="heads.twins"):
        nodes.intervention_pairs(_prompts(), {**PARAMS, "twins": {"gratitude": {"emotion": "x_", "neutral": "y_"}}},
                                 seed=0)


def test_random_sets_match_size_and_layers_and_avoid_the_top_heads():
    top = [(3, 1), (3, 4), (7, 0)]
    sets = interventions._random_sets(top, n_heads=9, n_sets=20, generator=np.random.default_rng(0))
    assert len(sets) == 20 and len({tuple(s) for s in sets}) == 20
    for drawn in sets:
        assert sorted(layer for layer, _ in drawn) == [3, 3, 7]
        assert not set(drawn) & set(top) and len(set(drawn)) == 3
    with pytest.raises(ValueError, match="top_n"):
        interventions._random_sets([(0, 0), (0, 1)], n_heads=2, n_sets=3, generator=np.random.default_rng(0))


def test_interventions_run_and_a_set_beyond_every_random_set_gets_the_smallest_p(screened):
    model, prompts, pairs, attention = screened
    top = nodes.select_top_heads(nodes.screening_table(attention, PARAMS, seed=0), PARAMS)
    plan = interventions.plan_interventions(pairs, top, attention, PARAMS, seed=0)
    # per prompt: 1 baseline + 2 modes x (2 singles + top set + 3 random); patching the neutral twin: 3 modes x 6 sets
    assert len(plan) == 2 * (1 + 2 * 6) + 3 * 6
    plan = pd.read_csv(io.StringIO(plan.to_csv(index=False)))  # as the catalog stores it (empty sets read as NaN)
    generations = interventions.run_interventions(model, prompts, plan, attention, _vectors(model), PARAMS)
    assert generations.projection.notna().all() and generations.generated_ids.map(len).gt(0).all()
    # the unedited generation equals a plain greedy forward of the same prompt
    baseline = generations[generations.family == "baseline"].iloc[0]
    ids = torch.tensor([baseline.prompt_ids])
    with torch.no_grad():
        first = int(model.hf_model(ids).logits[0, -1].argmax())
    assert baseline.generated_ids[0] == first
    # known answer for the comparison with random sets: the top set moves the score by 10, random sets by ~0
    results = generations.assign(contrast_gratitude=0.0)
    results.loc[(results.family == "ablation") & (results.set_kind == "top_set"), "contrast_gratitude"] = 10.0
    ablation, patching = interventions.intervention_effects(results.assign(model=model.alias), PARAMS)
    target = ablation[(ablation.metric == "target") & (ablation.set_kind == "top_set")]
    assert (target.effect == 10).all() and np.allclose(target.p_vs_random, 2 / 4)  # 3 random sets: p >= 2/(n+1)
    assert set(patching.set_kind) == {"single", "top_set"} and (patching.n_random == 3).all()
