"""The alignment controls on real SmolLM2 activations (not only on synthetic data with n >= d).

Model B is built from model A's real residual streams: an exact random rotation plus 1 % noise
(every sound map must recover it and call it aligned), and the same rotation with B's emotion labels
shuffled among the emotional prompts (shared emotionality, no emotion-specific structure).
"""

from dataclasses import replace

import numpy as np
import pytest
import yaml
from scipy.stats import ortho_group

from emotion_circuits.datasets import PackageTextDataset
from emotion_circuits.pipelines.activations.nodes import extract_activations, extract_neutral_tokens
from emotion_circuits.pipelines.alignment import nodes
from emotion_circuits.pipelines.data_engineering import nodes as data_nodes
from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow

PARAMS = {**yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_alignment.yml").read_text())["alignment"],
          "methods": ["procrustes"], "layer_stride": 15, "n_null": 50, "n_covariance_null": 99,
          "n_permutations": 199, "n_bootstrap": 20}


def _load(name):
    params = yaml.safe_load((PROJECT_ROOT / f"conf/base/parameters_{name}.yml").read_text())[name]
    return {k: v for k, v in params.items() if not isinstance(v, str) or "${" not in v}


@pytest.fixture(scope="module")
def real_a(load_real):
    import pandas as pd

    model = load_real("smollm2-135m")
    de_params = {**_load("data_engineering"), "emotion_prompts_file": "emotion_prompts.csv"}
    raw = pd.read_csv(PROJECT_ROOT / "data/01_raw/emotion_prompts.csv", keep_default_na=False, dtype=str)
    prompts = data_nodes.assign_splits(data_nodes.validate_emotion_prompts(raw, de_params), de_params, 0)
    corpus = PackageTextDataset(package="gensim", resource="test/test_data/lee_background.cor").load()
    passages = data_nodes.split_neutral_passages(corpus, {"neutral_corpus": {"passage_words": 40, "max_words": 2000}})
    act_params = {"batch_size": 32, "include_mlp_out": False, "max_prompts_per_emotion": 40}
    return (extract_activations(model, prompts, act_params),
            extract_neutral_tokens(model, prompts.groupby("emotion").head(40), passages, act_params))


def _rotated(activations, tokens, seed=0):
    """B = A's residuals rotated, plus noise of 1 % of each residual's norm (isotropic)."""
    rng = np.random.default_rng(seed)
    rotation = ortho_group.rvs(activations.d_model, random_state=seed)

    def turn(x):
        x64 = x.astype(np.float64)
        scale = 0.01 * np.linalg.norm(x64, axis=-1, keepdims=True) / np.sqrt(x.shape[-1])
        return (x64 @ rotation + scale * rng.standard_normal(x.shape)).astype(x.dtype)

    return (replace(activations, model="rotated", resid={k: turn(v) for k, v in activations.resid.items()}),
            replace(tokens, model="rotated", resid=turn(tokens.resid)))


def _run(acts_a, tokens_a, acts_b, tokens_b):
    maps, quality = nodes.fit_linear_maps(tokens_a, tokens_b, acts_a, acts_b, PARAMS, 0)
    results, _ = nodes.compare_alignment(maps, quality, acts_a, acts_b, PARAMS, 0)
    return quality, results


def test_a_rotated_copy_of_real_activations_is_recovered_everywhere_and_called_aligned(real_a):
    acts_a, tokens_a = real_a
    quality, results = _run(acts_a, tokens_a, *_rotated(acts_a, tokens_a))
    assert quality.beats_shuffled.all() and quality.heldout_r2.min() > 0.99
    positions = quality[["heldout_r2_trigger", "heldout_r2_sentence_end"]]
    assert positions.min().min() > 0.99
    # the only undefined R²: sentence ends at the embedding layer, where every prompt ends in the same token
    assert positions.isna().sum().sum() <= 1 and not positions.heldout_r2_sentence_end.iloc[1:].isna().any()
    small_k = results[results.k <= 3]
    assert small_k.overlap_after.min() >= 0.95, small_k.groupby(["layer_a", "position"]).overlap_after.min()
    # undefined only where a group has fewer than k distinct directions: sentence ends at the embedding layer
    undefined = small_k[small_k.overlap_after.isna()]
    assert set(zip(undefined.layer_a, undefined.position)) <= {(0, "sentence_end")}
    assert (undefined.k > undefined.subspace_rank).all() and len(undefined) < len(small_k) / 10
    primary = results[results.primary]
    assert (primary.q_covariance < 0.05).all()
    assert primary[primary.position == "trigger"].aligned.all()
    # a cell of the copy is not aligned only where model A itself does not tell its emotions apart:
    # the same cells fail for A against an exact, noise-free copy of itself
    _, itself = _run(acts_a, tokens_a, replace(acts_a, model="copy"), replace(tokens_a, model="copy"))
    not_aligned = set(primary[~primary.aligned].set_index(["layer_a", "position", "emotion"]).index)
    copy = itself[itself.primary]
    assert not_aligned <= set(copy[~copy.aligned].set_index(["layer_a", "position", "emotion"]).index)
    assert primary.aligned.mean() >= 0.75


def test_real_activations_whose_emotional_rows_are_shuffled_in_b_are_not_aligned(real_a):
    """B keeps which prompts are emotional (emotional vs neutral is shared) but not which emotion: each
    emotional prompt's residuals in B are another emotional prompt's."""
    acts_a, tokens_a = real_a
    acts_b, tokens_b = _rotated(acts_a, tokens_a)
    emotional = np.flatnonzero(np.array(acts_b.emotions) != "neutral")
    shuffled = np.arange(len(acts_b.ids))
    shuffled[emotional] = np.random.default_rng(1).permutation(emotional)
    acts_b = replace(acts_b, resid={k: v[shuffled] for k, v in acts_b.resid.items()},
                     token_positions={k: v[shuffled] for k, v in acts_b.token_positions.items()})
    _, results = _run(acts_a, tokens_a, acts_b, tokens_b)
    primary = results[results.primary]
    assert (primary.q_specific < 0.05).sum() == 0
    assert not primary.aligned.any()
