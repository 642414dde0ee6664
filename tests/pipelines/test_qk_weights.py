"""The qk_weights pipeline on tiny local models: folding, write-back, restoring the model, the template and the
phase link; one slow test on the real SmolLM2."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from emotion_circuits import qk_subspace as qs
from emotion_circuits.contracts import SemanticActivations
from emotion_circuits.models import LoadedModel, architecture
from emotion_circuits.pipeline_registry import create_pipelines
from emotion_circuits.pipelines.qk_weights import nodes, template
from emotion_circuits.pipelines.qk_weights.weights import corpus_windows, query_rewrites, read_heads, sequence_nll
from emotion_circuits.study import Study
from tests.conftest import PROJECT_ROOT
from tests.models.test_architecture import KINDS
from tests.models.test_architecture import _tiny as tiny_architecture

PARAMS = yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_qk_weights.yml").read_text())["qk_weights"]
SMALL = {**PARAMS, "corpus": {"seq_len": 24, "n_sequences": 6, "tokens_per_batch": 48}, "n_bootstrap": 200,
         "reconstruction": {**PARAMS["reconstruction"], "n_components": [1, 2, 3, "all"]},
         "clustering": {**PARAMS["clustering"], "k": [2, 4], "n_init": 10}}
CORPUS = {"source": "test corpus", "text": "\n".join(
    " ".join(["The committee met on Tuesday to discuss the new budget for the river park.",
              "Residents asked about parking, the library hours and the bus timetable.",
              "A spokesperson said the plans would be published next month."][i % 3:] * 3) for i in range(9))}


def _tiny(kind: str, tokenizer) -> LoadedModel:
    """A 2-layer grouped-query model with non-trivial norm gains (Gemma: some q/k gains exactly zero)."""
    import transformers as t

    config = {
        "llama": lambda: t.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
        "gemma3_text": lambda: t.Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                                                  head_dim=8, query_pre_attn_scalar=8, sliding_window=16),
    }[kind]()
    torch.manual_seed(0)
    model = t.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.normal_(0.5 if kind == "llama" else 0.0, 0.3)
        if kind == "gemma3_text":  # Gemma's gain is 1 + weight: -1 switches a head dimension off
            model.model.layers[0].self_attn.q_norm.weight[2] = -1.0
            model.model.layers[1].self_attn.k_norm.weight[5] = -1.0
    return LoadedModel(alias=f"tiny-{kind}", hf_model=model, tokenizer=tokenizer, n_layers=2, d_model=32,
                       device=torch.device("cpu"), dtype=torch.float32)


def _state(model: LoadedModel) -> dict:
    return {name: value.clone() for name, value in model.hf_model.state_dict().items()}


def _unchanged(model: LoadedModel, state: dict) -> bool:
    return all(torch.equal(state[name], value) for name, value in model.hf_model.state_dict().items())


def _run(model: LoadedModel, ids: torch.Tensor):
    with torch.inference_mode():
        out = model.hf_model(input_ids=ids, output_attentions=True, use_cache=False)
    return out.logits, out.attentions


def _write(write, heads, weights: np.ndarray) -> None:
    """Writes the rewrite ``weights`` (A) through the ``write`` of an open `query_rewrites`."""
    write(heads.unfold(qs.rewrite_queries(heads.factors, weights)))


# --- model internals: writing W_Q and reading norm gains ----------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_set_query_weights_round_trips_and_touches_only_the_queries(kind):
    model = tiny_architecture(kind)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    heads = architecture.head_weights(model, 1)
    new = np.random.default_rng(0).standard_normal(heads.W_Q.shape).astype(np.float32)
    architecture.set_query_weights(model, 1, new)
    after = architecture.head_weights(model, 1)
    np.testing.assert_array_equal(after.W_Q, new)
    for name in ("W_K", "W_V", "W_O", "b_Q", "b_K", "b_V"):
        np.testing.assert_array_equal(getattr(after, name), getattr(heads, name))
    query = architecture.query_weight_parameter(model, 1)
    changed = [name for name, value in model.state_dict().items() if not torch.equal(before[name], value)]
    assert len(changed) == 1 and model.state_dict()[changed[0]].data_ptr() == query.data_ptr()
    with pytest.raises(ValueError, match="W_Q has shape"):
        architecture.set_query_weights(model, 1, new[:, :-1])


@pytest.mark.parametrize(("kind", "gain"), [("llama", lambda w: w), ("gemma3_text", lambda w: 1 + w),
                                            ("gpt2", lambda w: w)])
def test_norm_gains_are_read_off_the_modules(kind, gain):
    model = tiny_architecture(kind)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name or "ln_" in name:
                parameter.normal_()
    norm = architecture.attention_input_norm(architecture.decoder_layers(model)[0])
    np.testing.assert_allclose(architecture.norm_gain(norm, 32), gain(norm.weight.detach().numpy()), rtol=1e-5)
    gains = architecture.qk_norm_gains(model, 0)
    assert (gains is None) == (kind != "gemma3_text")
    if gains is not None:
        attn = architecture.attention(architecture.decoder_layers(model)[0])
        np.testing.assert_allclose(gains[0], 1 + attn.q_norm.weight.detach().numpy(), rtol=1e-5)


# --- folding and write-back ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["llama", "gemma3_text"])
def test_folded_forms_are_what_the_head_compares_and_unfold_exactly(kind, gpt2_style_tokenizer):
    model = _tiny(kind, gpt2_style_tokenizer)
    heads = read_heads(model, fold_norms=True)
    layer = model.decoder_layers[1]
    resid = torch.randn(5, 32)
    normed = architecture.attention_input_norm(layer)(resid).detach().numpy().astype(np.float64)
    weights = architecture.head_weights(model.hf_model, 1)
    gains = architecture.qk_norm_gains(model.hf_model, 1)
    g_q, g_k = gains if gains is not None else (np.ones(8), np.ones(8))
    rms = np.sqrt((resid.numpy().astype(np.float64) ** 2).mean(1, keepdims=True) + 1e-6)
    unit = resid.numpy() / rms  # the residual at unit RMS
    for h in (4, 7):  # block 1
        raw = weights.W_Q[h % 4] * g_q @ (weights.W_K[h % 4] * g_k).T  # the form at distance 0, gains included
        np.testing.assert_allclose(unit @ heads.factors.form(h) @ unit.T, normed @ raw @ normed.T, rtol=1e-3,
                                   atol=1e-4)
    for block, per_head in enumerate(heads.unfold(heads.factors.queries)):
        np.testing.assert_allclose(per_head, architecture.head_weights(model.hf_model, block).W_Q, rtol=1e-6)
    if kind == "gemma3_text":  # switched-off dimensions are zero in both folded factors
        assert np.abs(heads.factors.queries[heads.layer == 0][:, :, 2]).max() == 0
        assert np.abs(heads.factors.keys[1][:, 5]).max() == 0


@pytest.mark.parametrize("kind", ["llama", "gemma3_text"])
def test_write_back_of_unmodified_forms_reproduces_the_attention_scores(kind, gpt2_style_tokenizer):
    model = _tiny(kind, gpt2_style_tokenizer)
    heads = read_heads(model, fold_norms=True)
    ids = torch.tensor([gpt2_style_tokenizer(CORPUS["text"].splitlines()[0]).input_ids[:20]])
    logits, attentions = _run(model, ids)
    pca = qs.pca_from_gram(qs.gram(heads.factors))
    with query_rewrites(model) as write:
        _write(write, heads, np.eye(heads.factors.n_heads))
        same_logits, same_attentions = _run(model, ids)
        _write(write, heads, qs.projection_weights(pca, 1))  # a real rewrite must change the scores
        _, other_attentions = _run(model, ids)
    for before, after, other in zip(attentions, same_attentions, other_attentions):
        torch.testing.assert_close(after, before, atol=1e-6, rtol=1e-5)
        assert (other - before).abs().max() > 1e-3
    torch.testing.assert_close(same_logits, logits, atol=1e-5, rtol=1e-5)


def test_grouped_query_write_back_keeps_each_key_shared(gpt2_style_tokenizer):
    model = _tiny("llama", gpt2_style_tokenizer)  # 4 query heads share 2 keys per block
    heads = read_heads(model, fold_norms=True)
    before = [architecture.head_weights(model.hf_model, block).W_Q.copy() for block in range(2)]  # not a view
    keys_before = [layer.self_attn.k_proj.weight.clone() for layer in model.decoder_layers]
    weights = np.random.default_rng(1).standard_normal((8, 8))
    target = np.einsum("hg,gij->hij", weights, np.stack([heads.factors.form(h) for h in range(8)]))
    with query_rewrites(model) as write:
        _write(write, heads, weights)
        after_heads = read_heads(model, fold_norms=True)
        for block, layer in enumerate(model.decoder_layers):
            assert torch.equal(layer.self_attn.k_proj.weight, keys_before[block])
            after = architecture.head_weights(model.hf_model, block)
            np.testing.assert_array_equal(after.W_K[0], after.W_K[1])  # heads 0 and 1 still read one key
            assert not np.allclose(after.W_Q, before[block])
        for h in range(8):  # each written form is the least-squares form the shared key can read
            key = heads.factors.keys[heads.factors.kv[h]]
            expected = target[h] @ key @ np.linalg.pinv(key)
            np.testing.assert_allclose(after_heads.factors.form(h), expected, rtol=1e-4, atol=1e-5)


def test_the_model_is_restored_after_rewrites_and_after_an_error(gpt2_style_tokenizer):
    model = _tiny("llama", gpt2_style_tokenizer)
    state = _state(model)
    qk_pca, _, _ = nodes.compute_qk_spectrum(model, SMALL, 0)
    plan, _ = nodes.plan_rewrites(qk_pca, SMALL, 0)
    nodes.evaluate_rewrites(model, CORPUS, qk_pca, plan, SMALL)
    assert _unchanged(model, state)
    heads = read_heads(model, fold_norms=True)
    with pytest.raises(RuntimeError, match="boom"), query_rewrites(model) as write:
        _write(write, heads, np.full((8, 8), 1 / 8))
        assert not _unchanged(model, state)
        raise RuntimeError("boom")
    assert _unchanged(model, state)


@pytest.mark.parametrize("kind", ["llama", "gemma3_text"])
def test_all_components_reproduce_the_forward_pass(kind, gpt2_style_tokenizer):
    model = _tiny(kind, gpt2_style_tokenizer)
    qk_pca, _, _ = nodes.compute_qk_spectrum(model, SMALL, 0)
    plan, _ = nodes.plan_rewrites(qk_pca, {**SMALL, "reconstruction": {"n_components": ["all"], "n_control": 1},
                                           "clustering": {**SMALL["clustering"], "k": []}}, 0)
    assert [v["label"] for v in plan["variants"]] == ["all"]
    heads = read_heads(model, fold_norms=True)
    ids = torch.tensor([gpt2_style_tokenizer(CORPUS["text"].splitlines()[1]).input_ids[:20]])
    logits, _ = _run(model, ids)
    with query_rewrites(model) as write:
        _write(write, heads, nodes._weights(nodes._pca(qk_pca), plan["variants"][0]))
        rewritten, _ = _run(model, ids)
    torch.testing.assert_close(rewritten, logits, atol=1e-5, rtol=1e-5)
    record = nodes.evaluate_rewrites(model, CORPUS, qk_pca, plan, SMALL)
    assert abs(np.exp((record["nll"][0].sum() - record["original_nll"].sum()) / record["n_tokens"].sum()) - 1) < 1e-6


def test_sequence_nll_is_the_models_own_loss(gpt2_style_tokenizer):
    model = _tiny("llama", gpt2_style_tokenizer)
    windows = corpus_windows(model, CORPUS["text"], 24, 3, "test corpus")
    nll = sequence_nll(model, windows, tokens_per_batch=30)  # batches of one window
    with torch.inference_mode():
        loss = model.hf_model(input_ids=torch.as_tensor(windows), labels=torch.as_tensor(windows)).loss
    np.testing.assert_allclose(nll.sum() / (3 * 23), loss.item(), rtol=1e-5)
    with pytest.raises(ValueError, match="test corpus has only 9 documents of at least 24"):
        corpus_windows(model, CORPUS["text"], 24, 10, "test corpus")


# --- the template and the registry --------------------------------------------------------------------------------


def test_the_template_runs_on_a_tiny_model(gpt2_style_tokenizer, tmp_path):
    from kedro_datasets.pickle import PickleDataset

    model = _tiny("gemma3_text", gpt2_style_tokenizer)
    catalog = DataCatalog({"language_model": MemoryDataset(model, copy_mode="assign"),
                           "neutral_corpus": MemoryDataset(CORPUS), "params:qk_weights": MemoryDataset(SMALL),
                           "params:seed": MemoryDataset(0),
                           # files, not memory: the runner releases a memory dataset once its last reader has run
                           **{name: PickleDataset(filepath=str(tmp_path / f"{name}.pkl"))
                              for name in template().all_outputs()}})
    SequentialRunner().run(template(), catalog)
    spectrum, reconstruction, clusters = (catalog[name].load() for name in
                                          ("qk_spectrum", "qk_reconstruction", "qk_clusters"))
    assert {"model", "scope", "layer", "n_components", "cumulative_variance", "null_cumulative_variance"} <= set(
        spectrum.columns)
    assert set(spectrum.scope) == {"all", "all_unit", "layer"}
    assert spectrum[spectrum.scope != "layer"].layer.isna().all()
    assert {"model", "n_components", "perplexity", "perplexity_ratio", "control_perplexity_ratio", "corpus"} <= set(
        reconstruction.columns)
    assert reconstruction.label.tolist() == ["1", "2", "3", "all"]
    assert abs(reconstruction.perplexity_ratio.iloc[-1] - 1) < 1e-4
    assert reconstruction.corpus.str.startswith("test corpus: first 6 documents").all()
    assert clusters.k.tolist() == [2, 4] and clusters.control_perplexity_ratio.notna().all()
    assert clusters.cluster_sizes.map(lambda s: sum(map(int, s.split()))).eq(8).all()
    components = catalog["qk_components"].load()
    assert set(components.threshold) == {0.5, 0.9, 0.95}
    for name in ("qk_spectrum_figure", "qk_reconstruction_figure", "qk_clusters_figure"):
        assert hasattr(catalog[name].load(), "savefig")


def test_registry_runs_the_study_in_semantic_phase_and_on_its_own():
    pipelines = create_pipelines(Study(models=("smollm2-135m", "gemma3-270m"), model_a="smollm2-135m",
                                       model_b="gemma3-270m"))
    own = {n.name for n in pipelines["qk_weights"].nodes}
    phase = {n.name for n in pipelines["semantic_phase"].nodes}
    for key in ("smollm2-135m", "gemma3-270m"):
        assert f"{key}.compute_qk_spectrum" in own and f"{key}.evaluate_qk_rewrites" in own
        assert f"{key}.compute_qk_spectrum" in phase
    assert pipelines["qk_weights"].inputs() == {"smollm2-135m.language_model", "gemma3-270m.language_model",
                                                "neutral_corpus", "params:qk_weights", "params:seed"}
    study = "semantic_phase.smollm2-135m__gemma3-270m"
    link = pipelines["semantic_phase"].only_nodes(f"{study}.link_phase_components")
    assert {f"{study}.phase_fits", "smollm2-135m.qk_pca", "gemma3-270m.semantic_activations"} <= link.inputs()
    assert link.outputs() == {f"{study}.qk_phase_link"} and f"{study}.link_phase_components" not in own


# --- the link to the phase study ----------------------------------------------------------------------------------


def test_phase_link_is_the_components_form_on_each_words_sense_difference(gpt2_style_tokenizer):
    model = _tiny("llama", gpt2_style_tokenizer)
    rng = np.random.default_rng(4)
    words = ["bank"] * 12 + ["bat"] * 12
    prompts = pd.DataFrame({"id": [f"p{i}" for i in range(24)], "word": words, "kind": "clear",
                            "sense": ["A", "B"] * 12})
    resid = rng.standard_normal((24, 3, 32)).astype(np.float32)
    resid[prompts.sense == "A"] += 2 * rng.standard_normal(32).astype(np.float32)
    activations = SemanticActivations(model=model.alias, n_layers=2, ids=prompts.id.tolist(), resid=resid,
                                      sense_log_probs={s: np.zeros((24, 3, 1), np.float32) for s in "AB"})
    fits = pd.DataFrame({"model": model.alias, "directions": "final_layer", "word": ["bank"] * 3 + ["bat"] * 2,
                         "landau_identified": [True, True, False, False, False], "landau_l_c": [0.8, 1.4, 9, 1, 1]})
    qk_pca, _, _ = nodes.compute_qk_spectrum(model, SMALL, 0)
    link = nodes.link_phase_components(prompts, fits, {**SMALL, "phase_link": {**SMALL["phase_link"], "n_null": 50}},
                                       {"directions": "final_layer"}, 0, model, activations, qk_pca)
    assert set(link.word) == {"bank"}  # bat has no identified fit
    assert link.l_c.iloc[0] == pytest.approx(1.1) and sorted(set(link.layer)) == [0, 1]  # window clipped to blocks
    assert link.component.max() == min(SMALL["phase_link"]["n_components"], 7)
    heads, pca = read_heads(model, True), nodes._pca(qk_pca)
    clear = resid[:12, 1].astype(np.float64)
    is_a = (prompts.sense[:12] == "A").to_numpy()
    e_a, e_b = (c.mean(0) / np.linalg.norm(c.mean(0)) for c in (clear[is_a], clear[~is_a]))
    e_diff = (e_a - e_b) / np.linalg.norm(e_a - e_b)
    forms = np.stack([heads.factors.form(h) for h in range(8)])
    component = np.einsum("h,hde->de", pca.coefficients[:, 0], forms - forms.mean(0)) / np.sqrt(pca.eigenvalues[0])
    row = link[(link.layer == 1) & (link.component == 1)].iloc[0]
    assert row.value == pytest.approx(e_diff @ component @ e_diff, rel=1e-8)
    assert 0 < row.p <= 1 and link.q.notna().all()
    none = nodes.link_phase_components(prompts, fits.assign(landau_identified=False), SMALL,
                                       {"directions": "final_layer"}, 0, model, activations, qk_pca)
    assert none.empty and {"model", "word", "layer", "component", "value", "p", "q"} <= set(none.columns)


@pytest.mark.slow
def test_all_components_reproduce_smollm2_perplexity_and_leave_it_untouched(load_real):
    model = load_real("smollm2-135m")
    state = _state(model)
    params = {**PARAMS, "corpus": {"seq_len": 32, "n_sequences": 2, "tokens_per_batch": 64},
              "nulls": {**PARAMS["nulls"], "shuffle": False}}
    qk_pca, _, components = nodes.compute_qk_spectrum(model, params, 0)
    assert len(qk_pca["layer"]) == 270 and components.n_components.notna().all()
    plan, _ = nodes.plan_rewrites(qk_pca, {**params, "reconstruction": {"n_components": [8, "all"], "n_control": 0},
                                           "clustering": {**params["clustering"], "k": []}}, 0)
    from emotion_circuits.datasets import PackageTextDataset

    corpus = PackageTextDataset("gensim", "test/test_data/lee_background.cor").load()
    record = nodes.evaluate_rewrites(model, corpus, qk_pca, copy.deepcopy(plan), params)
    ratios = np.exp((record["nll"].sum(1) - record["original_nll"].sum()) / record["n_tokens"].sum())
    assert abs(ratios[-1] - 1) < 1e-4 and ratios[0] > 1.01
    assert _unchanged(model, state)
