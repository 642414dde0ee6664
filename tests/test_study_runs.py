"""`kedro run` over tiny local models: any number of models by parameters only, and one seed for everything."""

import pandas as pd
import pytest
import torch

from emotion_circuits.study import model_key
from tests.conftest import run_project, tiny_model

FAST = {"activations": {"max_prompts_per_emotion": 24},
        "data_engineering": {"neutral_corpus": {"max_words": 300}},
        "alignment": {"n_null": 20, "n_covariance_null": 20, "n_permutations": 19, "n_bootstrap": 10},
        "subspaces": {"k_max": 3, "n_splits": 3}}


@pytest.fixture(scope="module")
def tiny_model_dirs(tmp_path_factory, gpt2_style_tokenizer):
    """Three randomly initialised models saved as local model directories (what a user passes as a path)."""
    root = tmp_path_factory.mktemp("models")
    paths = []
    for i, (kind, n_layers) in enumerate([("llama", 2), ("gpt2", 3), ("llama", 1)]):
        torch.manual_seed(i)
        model = tiny_model(kind, gpt2_style_tokenizer, n_layers=n_layers)
        path = root / f"tiny-{i}"
        model.hf_model.save_pretrained(path)
        gpt2_style_tokenizer.save_pretrained(path)
        paths.append(str(path))
    return paths


def _latest(project, pattern: str) -> pd.DataFrame:
    return pd.read_csv(sorted(project.glob(f"data/{pattern}"))[-1])


def test_a_third_model_is_one_more_entry_in_the_models_parameter(project_copy, tiny_model_dirs):
    a, b, c = tiny_model_dirs
    run_project(project_copy, ["data_engineering", "activations", "subspaces"], device="cpu",
                model_a=a, model_b=b, models=[a, b, c], **FAST)
    for path in tiny_model_dirs:
        key = model_key(path)
        assert "/" not in key and len(list((project_copy / f"data/03_primary/activations/{key}.pkl").iterdir())) == 1
        norms = _latest(project_copy, f"08_reporting/emotion_vector_norms/{key}.csv/*/*.csv")
        assert set(norms.model) == {path}


def test_same_seed_same_tables_and_another_seed_changes_every_random_draw(project_copy, tiny_model_dirs):
    a, b, _ = tiny_model_dirs
    pipelines = ["data_engineering", "activations", "subspaces", "alignment"]
    tables = []
    for seed in (0, 0, 1):
        run_project(project_copy, pipelines, device="cpu", model_a=a, model_b=b, seed=seed, **FAST)
        pair = f"{model_key(a)}__{model_key(b)}"
        tables.append({
            "splits": _latest(project_copy, "02_intermediate/emotion_prompts.csv/*/*.csv"),
            "norms": _latest(project_copy, f"08_reporting/emotion_vector_norms/{model_key(a)}.csv/*/*.csv"),
            "quality": _latest(project_copy, f"07_model_output/alignment/{pair}/map_quality.csv/*/*.csv"),
            "results": _latest(project_copy, f"07_model_output/alignment/{pair}/alignment_results.csv/*/*.csv"),
        })
    for name in tables[0]:
        pd.testing.assert_frame_equal(tables[0][name], tables[1][name], check_exact=True, obj=name)
    assert not tables[0]["splits"].id.equals(tables[2]["splits"].id)  # baseline rows come first: other ids
    assert not tables[0]["norms"].split_half_cosine_mean.equals(tables[2]["norms"].split_half_cosine_mean)
    assert not tables[0]["quality"].heldout_r2.equals(tables[2]["quality"].heldout_r2)
    for null in ("random_mean", "covariance_mean", "p_specific"):
        assert not tables[0]["results"][null].equals(tables[2]["results"][null]), null
