"""The scaling pipeline end to end on three tiny local models of different widths and depths, and its checks."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from emotion_circuits.models.positions import find_span
from emotion_circuits.parameter_checks import ParameterError
from emotion_circuits.pipelines.scaling import nodes
from emotion_circuits.study import model_key
from tests.conftest import PROJECT_ROOT, run_project

PER_EMOTION = 24
VERSION = "2026-01-01T00.00.00.000Z"
MODELS = [("llama", 32, 2), ("gpt2", 48, 3), ("llama", 24, 4)]  # (architecture, width, blocks); first: reference
FAST = {"max_prompts_per_emotion": PER_EMOTION, "max_words": None, "depths": [0.0, 0.5, 1.0],
        "batch_size": 16, "alignment": {"n_null": 10, "n_covariance_null": 10, "n_permutations": 19,
                                        "reduced_rank": 8, "k_max": 3}}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, gpt2_style_tokenizer):
    """Three randomly initialised causal LMs saved as local model directories; their parameter counts."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    root = tmp_path_factory.mktemp("scaling_models")
    made = {}
    for i, (kind, width, n_layers) in enumerate(MODELS):
        torch.manual_seed(i)
        vocab = len(gpt2_style_tokenizer)
        config = (GPT2Config(vocab_size=vocab, n_embd=width, n_layer=n_layers, n_head=4, n_positions=256)
                  if kind == "gpt2" else
                  LlamaConfig(vocab_size=vocab, hidden_size=width, intermediate_size=2 * width,
                              num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
                              max_position_embeddings=256))
        model = AutoModelForCausalLM.from_config(config)
        path = root / f"tiny-{kind}-{width}"
        model.save_pretrained(path)
        gpt2_style_tokenizer.save_pretrained(path)
        made[str(path)] = sum(p.numel() for p in model.parameters())
    return made


def _write_inputs(project):
    """A small emotion_prompts and neutral_passages as data_engineering would write them (no run needed)."""
    raw = pd.read_csv(PROJECT_ROOT / "data/01_raw/emotion_prompts.csv", keep_default_na=False)
    prompts = raw.groupby("emotion", sort=False).head(PER_EMOTION).reset_index(drop=True)
    spans = [find_span(text, trigger) for text, trigger in zip(prompts.text, prompts.trigger)]
    prompts = prompts.assign(split="baseline", trigger_start=[s for s, _ in spans], trigger_end=[e for _, e in spans],
                             n_words=prompts.text.str.split().str.len())
    passages = pd.DataFrame({"id": [f"corpus_{i:03d}" for i in range(12)], "source": "test",
                             "text": ["The committee met on Tuesday to review the budget for the new library "
                                      f"wing and the bus routes near block {i}." for i in range(12)]})
    for name, table in (("emotion_prompts", prompts), ("neutral_passages", passages)):
        folder = project / f"data/02_intermediate/{name}.csv/{VERSION}"
        folder.mkdir(parents=True)
        table.to_csv(folder / f"{name}.csv", index=False)


def _latest(project, pattern):
    return sorted(project.glob(f"data/{pattern}"))[-1]


def test_three_tiny_models_of_different_widths_give_one_row_each(project_copy, tiny_models):
    _write_inputs(project_copy)
    paths = list(tiny_models)
    run_project(project_copy, ["scaling"], device="cpu", scaling={"reference": paths[0], "models": paths, **FAST})
    study = "__".join(model_key(p) for p in paths)
    summary = pd.read_csv(_latest(project_copy, f"08_reporting/scaling/{study}/scaling_summary.csv/*/*.csv"))
    assert list(summary.model) == sorted(paths, key=tiny_models.get)  # one row per model, smallest first
    assert dict(zip(summary.model, summary.n_params)) == tiny_models  # counted on the meta device, exact
    assert dict(zip(summary.model, summary.d_model)) == {p: w for p, (_, w, _) in zip(paths, MODELS)}
    assert dict(zip(summary.model, summary.n_layers)) == {p: n for p, (_, _, n) in zip(paths, MODELS)}
    assert summary.set_index("model").reference.to_dict() == {p: p == paths[0] for p in paths}
    aligned = summary[~summary.reference]
    for column in ("best_layer_reference", "best_layer", "overlap_procrustes", "covariance_null_procrustes",
                   "random_null_procrustes", "heldout_r2_procrustes", "direction_cosine_procrustes", "extraction_s",
                   "tokens_per_s", "peak_gib", "weight_gib"):
        assert aligned[column].notna().all(), column
    assert np.allclose(summary.weight_gib, summary.weight_gib_estimated, rtol=0.1)
    by_depth = pd.read_csv(_latest(project_copy, f"08_reporting/scaling/{study}/scaling_by_depth.csv/*/*.csv"))
    ends = by_depth[by_depth.depth.isin([0.0, 1.0])]
    n_layers = {p: n for p, (_, _, n) in zip(paths, MODELS)}
    for _, row in ends.iterrows():  # paired by relative depth: embeddings with embeddings, last block with last
        assert row.layer == row.depth * n_layers[row.model]
        assert row.layer_reference == row.depth * n_layers[paths[0]]
    assert set(by_depth.model) == set(paths[1:]) and len(by_depth) == 2 * 3 * 2  # models x depths x methods
    for pattern in ("scaling_vs_size.png", "overlap_by_depth.png", "scaling_plan.csv/*/*.csv"):
        assert _latest(project_copy, f"08_reporting/scaling/{study}/{pattern}").stat().st_size > 0
    stats = json.loads(_latest(project_copy, f"07_model_output/scaling/extraction_stats/{model_key(paths[1])}.json"
                                             "/*/*.json").read_text())
    assert stats["indices"] == [0, 2, 3] and stats["devices"] == ["cpu"]  # 0.5 x 3 blocks rounds half up
    for path in paths:
        assert _latest(project_copy, f"04_feature/scaling/depth_subspaces/{model_key(path)}.pkl/*/*.pkl")


def test_models_that_cannot_run_are_named_by_parameter_before_anything_loads(tiny_models):
    paths = list(tiny_models)
    params = {"reference": paths[0], "models": [paths[0], "nobody/does-not-exist-here"], "batch_size": 8,
              "memory_headroom": 0.9, "max_memory": None, **FAST}
    with pytest.raises(ParameterError, match=r"Parameter 'scaling.models\[1\]' = 'nobody/does-not-exist-here': "
                                             r"Model .* is not available offline"):
        nodes.plan_models(params, "cpu", "float32")
    too_small = {**params, "models": [paths[0]], "max_memory": {"cpu": "1KB"}}
    with pytest.raises(ParameterError, match=r"Parameter 'scaling.reference' = .*does not fit: it needs about "
                                             r".* GiB .* the devices offer cpu: 0.00 GiB"):
        nodes.plan_models(too_small, "cpu", "float32")


def test_the_neutral_texts_are_the_same_whole_texts_for_every_model():
    prompts = pd.DataFrame({"id": ["n1", "n2", "g1"], "emotion": ["neutral", "neutral", "gratitude"],
                            "text": ["one two three", "four five", "thanks a lot"]})
    passages = pd.DataFrame({"id": ["c1", "c2"], "text": ["six seven eight nine", "ten"], "source": "corpus"})
    assert nodes._neutral_texts(prompts, passages, 6).id.tolist() == ["n1", "n2", "c1"]  # c1 starts below 6 words
    assert nodes._neutral_texts(prompts, passages, None).id.tolist() == ["n1", "n2", "c1", "c2"]


def test_the_ladder_is_its_own_model_list_and_every_namespace_is_one_connected_group():
    import warnings

    from emotion_circuits.pipeline_registry import create_pipelines
    from emotion_circuits.study import Study

    params = {"model_a": "smollm2-135m", "model_b": "gemma3-270m",
              "scaling": {"reference": "gpt2", "models": ["llama3-8b", "gpt2", "qwen3-8b"]}}
    study = Study.from_params(params)
    assert study.models == ("smollm2-135m", "gemma3-270m") and study.scaling_keys == ("gpt2", "llama3-8b", "qwen3-8b")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scaling = create_pipelines(study)["scaling"]
    assert not [w for w in caught if "interrupted" in str(w.message)]  # kedro-viz groups need connected namespaces
    namespaces = {n.namespace for n in scaling.nodes}
    ladder = "gpt2__llama3-8b__qwen3-8b"
    assert {"scaling.gpt2", "scaling.gpt2__llama3-8b", "scaling.gpt2__qwen3-8b", f"scaling.plan.{ladder}",
            f"scaling.ladder.{ladder}"} <= namespaces
    assert not {n.name for n in scaling.nodes} & {n.name for n in create_pipelines(study)["alignment"].nodes}
