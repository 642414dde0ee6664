import copy
import json

import numpy as np
import pytest
import torch
import yaml

from emotion_circuits.contracts import SemanticActivations
from emotion_circuits.models.logit_lens import token_log_probs
from emotion_circuits.pipelines.semantic_phase import nodes
from emotion_circuits.validation import PromptFileError
from tests.conftest import PROJECT_ROOT

STIMULI = json.loads((PROJECT_ROOT / "data/01_raw/semantic_stimuli.json").read_text())
PARAMS = yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_semantic_phase.yml").read_text())["semantic_phase"]
PARAMS["stimuli_file"] = "semantic_stimuli.json"


def test_expand_stimuli_builds_every_kind_with_target_spans():
    prompts = nodes.expand_stimuli(STIMULI, {**PARAMS, "words": ["bank"]})
    counts = prompts.kind.value_counts()
    assert counts["clear"] == 16 and counts["graded"] == 18 and counts["hint"] == 2 * 8
    assert all(t[s:e] == "bank" for t, s, e in zip(prompts.text, prompts.target_start, prompts.target_end))
    gradient = prompts[(prompts.kind == "gradient") & (prompts.sense == "A")]
    assert gradient.step.tolist() == list(range(1, len(gradient) + 1))
    assert gradient.text.iloc[0] == "grassy bank" and gradient.text.iloc[-1].endswith("the grassy bank")
    hint = prompts[prompts.kind == "hint"].iloc[0]
    assert hint.base_id in set(prompts.id) and hint.text.startswith("River. ")


def test_a_missing_or_repeated_target_word_names_the_prompt():
    broken = copy.deepcopy(STIMULI)
    broken["words"][0]["clear"]["A"][2] = "We sat by the river all afternoon."
    broken["words"][0]["graded"][4]["text"] = "The bank by the bank."
    with pytest.raises(PromptFileError,
                       match=r"(?s)semantic_stimuli\.json has 2 problem.*bank_clear_A2.*bank_graded_4"):
        nodes.expand_stimuli(broken, PARAMS)


@pytest.mark.slow
def test_logit_lens_at_the_last_layer_is_the_models_own_prediction(load_real):
    model = load_real("smollm2-135m")
    ids = model.tokenizer("We sat on the grassy bank").input_ids
    with torch.inference_mode():
        out = model.hf_model(torch.tensor([ids]), output_hidden_states=True)
    captured = {}
    handle = model.decoder_layers[-1].register_forward_hook(lambda m, i, o: captured.setdefault("raw", o))
    with torch.inference_mode():
        model.hf_model(torch.tensor([ids]))
    handle.remove()
    raw = captured["raw"][0] if isinstance(captured["raw"], tuple) else captured["raw"]
    resid = np.stack([raw[0, -1].numpy()])[None]  # [1 prompt, 1 layer, d]
    targets = np.array([[model.tokenizer(" river").input_ids[0], model.tokenizer(" account").input_ids[0]]])
    lens = token_log_probs(model, resid, targets)[0, 0]
    expected = torch.log_softmax(out.logits[0, -1], -1)[targets[0]].numpy()
    np.testing.assert_allclose(lens, expected, atol=1e-4)


# --- the analysis on synthetic activations ---------------------------------------------------------------------


def _synthetic_activations(prompts, model: str, n_layers: int = 6, d: int = 24, sense_amplitude: float = 1.0,
                           seed: int = 0) -> SemanticActivations:
    """Residuals with a strongly anisotropic shared direction and, if ``sense_amplitude`` > 0, a sense axis per
    word growing with depth (clear contexts ±1, graded ones sign(h)·|h|); layer 0 is the word's embedding."""
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal(d)
    axes = {w: rng.standard_normal(d) for w in prompts.word.unique()}
    embeddings = {w: rng.standard_normal(d) for w in prompts.word.unique()}
    depth = np.arange(n_layers + 1) / n_layers
    resid = np.empty((len(prompts), n_layers + 1, d), np.float32)
    for i, row in enumerate(prompts.itertuples()):
        sense = {"A": 1.0, "B": -1.0}.get(row.sense, 0.0) * (abs(row.h) if row.kind == "graded" else 1.0)
        noise = 10 * rng.standard_normal((n_layers + 1, 1)) * shared + rng.standard_normal((n_layers + 1, d))
        resid[i] = embeddings[row.word] + depth[:, None] * (noise + 3 * sense_amplitude * sense * axes[row.word])
    log_probs = {s: rng.standard_normal((len(prompts), n_layers + 1, 2)).astype(np.float32) for s in "AB"}
    return SemanticActivations(model=model, n_layers=n_layers, ids=prompts.id.tolist(), resid=resid,
                               sense_log_probs=log_probs)


SMALL = {**PARAMS, "words": ["bank", "bat", "crane"], "criteria": {**PARAMS["criteria"], "n_bootstrap": 50},
         "sense_null": {**PARAMS["sense_null"], "n_permutations": 50},
         "universality": {**PARAMS["universality"], "n_permutations": 20}}


def test_order_parameters_come_for_both_direction_kinds_side_by_side():
    prompts = nodes.expand_stimuli(STIMULI, SMALL)
    activations = _synthetic_activations(prompts, "m")
    table = nodes.compute_order_parameters(prompts, SMALL, activations)
    assert set(table.directions) == {"final_layer", "per_layer"}
    assert len(table) == 2 * len(prompts) * (activations.n_layers + 1)
    # per-layer directions coincide at layer 0 (one embedding per word): σ = 0 there
    per_layer = table[table.directions == "per_layer"]
    assert np.abs(per_layer[per_layer.layer == 0].sigma).max() < 1e-6
    # final-layer directions: recompute one prompt by hand
    bank = prompts[prompts.word == "bank"]
    clear = {s: activations.resid[bank.index[(bank.kind == "clear") & (bank.sense == s)], -1] for s in "AB"}
    e_a, e_b = (c.mean(0) / np.linalg.norm(c.mean(0)) for c in (clear["A"], clear["B"]))
    phi = activations.resid[bank.index[0]]
    expected = phi @ e_a / np.linalg.norm(phi, axis=1) - phi @ e_b / np.linalg.norm(phi, axis=1)
    got = table[(table.directions == "final_layer") & (table.id == bank.id.iloc[0])].sigma.to_numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    with pytest.raises(ValueError, match="semantic_phase.directions"):
        nodes.compute_order_parameters(prompts, {**SMALL, "directions": "middle"}, activations)


@pytest.mark.parametrize(("amplitude", "separates"), [(1.0, True), (0.0, False)])
def test_shuffled_sense_null_detects_planted_senses_only(amplitude, separates):
    # anisotropic residuals (one direction with 10x the variance) and no sense axis must not pass
    prompts = nodes.expand_stimuli(STIMULI, SMALL)
    activations = _synthetic_activations(prompts, "m", sense_amplitude=amplitude, seed=3)
    null = nodes.sense_separation_null(prompts, SMALL, 0, activations)
    assert set(null.word) == {"bank", "bat", "crane", "all"} and set(null.directions) == {"final_layer", "per_layer"}
    pooled = null[null.word == "all"]
    if separates:
        assert (pooled.p < 0.05).all() and (pooled.ci_low > pooled.null_critical).all()
    else:
        assert (pooled.p > 0.05).all() and (pooled.ci_low <= pooled.null_critical).all()


@pytest.mark.parametrize("n_models", [1, 3])
def test_analysis_runs_for_any_number_of_models(n_models, tmp_path):
    from kedro.io import DataCatalog, MemoryDataset
    from kedro.runner import SequentialRunner
    from kedro_datasets.pickle import PickleDataset

    from emotion_circuits.pipelines.semantic_phase.pipeline import create_pipeline

    prompts = nodes.expand_stimuli(STIMULI, SMALL)
    keys = [f"m{i}" for i in range(n_models)]
    namespace = f"semantic_phase.{'__'.join(keys)}"
    kept = ["phase_criteria", "phase_verdict", "critical_exponents"]
    catalog = DataCatalog({
        # files, not memory: the runner releases a memory dataset once its last reader has run
        **{f"{namespace}.{name}": PickleDataset(filepath=str(tmp_path / f"{name}.pkl")) for name in kept},
        "semantic_prompts": MemoryDataset(prompts), "params:semantic_phase": MemoryDataset(SMALL),
        "params:seed": MemoryDataset(0),
        **{f"{k}.semantic_activations": MemoryDataset(_synthetic_activations(prompts, k, n_layers=5 + i, seed=i),
                                                      copy_mode="assign") for i, k in enumerate(keys)},
    })
    SequentialRunner().run(create_pipeline(keys), catalog)
    criteria = catalog.load(f"{namespace}.phase_criteria")
    pairs = criteria[criteria.model.str.contains(" vs ")]
    # per direction kind: l_c/L for two Landau forms and g shared, one row per pair of models
    assert len(pairs) == 2 * 3 * n_models * (n_models - 1) // 2
    assert set(criteria.model) >= {*keys, "all"}
    verdict = catalog.load(f"{namespace}.phase_verdict")
    assert set(verdict["models"]) == set(keys)
    exponents = catalog.load(f"{namespace}.critical_exponents")
    assert len(exponents) == n_models * 2 * 2  # models × direction kinds × Landau forms
    if n_models == 1:
        assert set(criteria[criteria.model == "all"].verdict) == {"undetermined"}


def test_sense_lens_reads_each_shared_embedding_once_and_equals_the_full_lens(gpt2_style_tokenizer, monkeypatch):
    from tests.conftest import tiny_model

    model = tiny_model("llama", gpt2_style_tokenizer, n_layers=2)
    rng = np.random.default_rng(0)
    resid = rng.standard_normal((6, 3, 32)).astype(np.float32)
    resid[:3, 0], resid[3:, 0] = resid[0, 0], resid[3, 0]  # two words, one embedding each
    ids = np.array([[5, 7]] * 3 + [[9, 11]] * 3)
    expected = token_log_probs(model, resid, ids)
    rows_read = []
    original = nodes.token_log_probs

    def counting(m, r, i, n):
        rows_read.append(r.shape[:2])
        return original(m, r, i, n)

    monkeypatch.setattr(nodes, "token_log_probs", counting)
    np.testing.assert_allclose(nodes._sense_lens(model, resid, ids, 4), expected, atol=1e-5)
    assert rows_read == [(2, 1), (6, 2)]  # 2 distinct embeddings, then layers 1..2 of every prompt
