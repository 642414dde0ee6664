"""Known answers for the alignment nodes on synthetic residual streams built like real ones.

Residual streams are anisotropic (a few directions carry most of the variance) and emotion
structure lives in those high-variance directions; maps are fitted on many more neutral words than
dimensions. Each control must pass what it should and fail what it should.
"""

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.stats import ortho_group

from emotion_circuits.contracts import TokenActivations
from emotion_circuits.models.architecture import resid_hook_names
from emotion_circuits.pipelines.alignment import nodes, reports
from tests.conftest import PROJECT_ROOT
from tests.factories import EMOTIONS
from tests.factories import activations as make_activations

PARAMS = {**yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_alignment.yml").read_text())["alignment"],
          "layer_stride": 1, "n_null": 50, "n_covariance_null": 99, "n_permutations": 199, "n_bootstrap": 50,
          "k_max": 4, "reduced_rank": 16, "cca": {"n_components": 4, "dim": 8}}
D_A, D_B, N_LAYERS = 20, 24, 1
PER_EMOTION, N_NEUTRAL, N_CORPUS_WORDS = 60, 120, 1200


def _covariance(rng, d):
    """An anisotropic covariance: power-law spectrum in a random basis."""
    basis = ortho_group.rvs(d, random_state=rng)
    return basis @ np.diag(10.0 * np.arange(1, d + 1) ** -1.5) @ basis.T


def _emotion_structure(rng, covariance, n_prompts):
    """Per emotion a mean shift and a 2-dim spread, both drawn from the covariance (high-variance directions)."""
    chol = np.linalg.cholesky(covariance)
    out = {}
    for emotion in EMOTIONS:
        shift, spread = chol @ rng.standard_normal(len(covariance)), chol @ rng.standard_normal((len(covariance), 2))
        out[emotion] = 1.5 * shift + rng.standard_normal((n_prompts, 2)) @ spread.T
    return out


def _synthetic_pair(seed, shared: str):
    """Two models whose neutral text is linearly related; emotion structure shared ("all"), only its
    emotional-vs-neutral part shared ("emotionality"), or not at all ("none")."""
    rng = np.random.default_rng(seed)
    cov_a = _covariance(rng, D_A)
    embed = ortho_group.rvs(D_B, random_state=rng)[:D_A]  # A -> B, orthonormal rows
    chol = np.linalg.cholesky(cov_a)
    labels = [e for e in EMOTIONS for _ in range(PER_EMOTION)] + ["neutral"] * N_NEUTRAL
    n = len(labels)
    resid_a = (rng.standard_normal((n, N_LAYERS + 1, D_A)) @ chol.T)
    structure_a = _emotion_structure(rng, cov_a, PER_EMOTION)
    for emotion in EMOTIONS:
        resid_a[np.array(labels) == emotion] += structure_a[emotion][:, None]
    resid_b = resid_a @ embed + 0.05 * rng.standard_normal((n, N_LAYERS + 1, D_B))
    if shared != "all":
        resid_b = (resid_a - _planted(structure_a, labels, D_A)) @ embed  # B keeps A's neutral-like part only
        structure_b = _emotion_structure(rng, embed.T @ cov_a @ embed + 1e-6 * np.eye(D_B), PER_EMOTION)
        if shared == "emotionality":  # B's emotions share A's common emotional shift, nothing specific
            common = np.mean([structure_a[e].mean(0) for e in EMOTIONS], axis=0) @ embed
            structure_b = {e: common + s - s.mean(0) for e, s in structure_b.items()}
        resid_b = resid_b + _planted(structure_b, labels, D_B) + 0.05 * rng.standard_normal(resid_b.shape)
    acts_a = make_activations(resid_a, labels, model="a")
    acts_b = make_activations(resid_b, labels, model="b")
    tokens_a, tokens_b = _tokens(rng, acts_a, chol, embed)
    return tokens_a, tokens_b, acts_a, acts_b


def _planted(structure, labels, d):
    planted = np.zeros((len(labels), N_LAYERS + 1, d))
    for emotion, values in structure.items():
        planted[np.array(labels) == emotion] = values[:, None]
    return planted


def _tokens(rng, acts_a, chol, embed):
    """Neutral words: the neutral prompts' two positions and a corpus of independent words."""
    neutral = np.flatnonzero(np.array(acts_a.emotions) == "neutral")
    prompt_words = np.concatenate([acts_a.resid["trigger"][neutral], acts_a.resid["sentence_end"][neutral]])
    corpus = rng.standard_normal((N_CORPUS_WORDS, N_LAYERS + 1, D_A)) @ chol.T
    resid_a = np.concatenate([prompt_words, corpus])
    text_ids = [acts_a.ids[i] for i in neutral] * 2 + [f"corpus_{i // 10:03d}" for i in range(N_CORPUS_WORDS)]
    word_index = np.concatenate([np.zeros(len(neutral)), np.ones(len(neutral)), np.arange(N_CORPUS_WORDS) % 10])
    resid_b = resid_a @ embed + 0.05 * rng.standard_normal((len(resid_a), N_LAYERS + 1, D_B))
    made = []
    for model, resid in (("a", resid_a), ("b", resid_b)):
        made.append(TokenActivations(model=model, n_layers=N_LAYERS, d_model=resid.shape[-1],
                                     hook_names=resid_hook_names(N_LAYERS), text_ids=text_ids,
                                     word_index=word_index.astype(int), resid=resid.astype(np.float16)))
    return made


def _run(tokens_a, tokens_b, acts_a, acts_b, params=PARAMS):
    maps, quality = nodes.fit_linear_maps(tokens_a, tokens_b, acts_a, acts_b, params, 0)
    results, directions = nodes.compare_alignment(maps, quality, acts_a, acts_b, params, 0)
    return maps, quality, results, directions


@pytest.fixture(scope="module")
def shared_run():
    return _run(*_synthetic_pair(0, shared="all"))


def test_maps_fitted_on_many_neutral_words_beat_shuffled_pairs(shared_run):
    _, quality, _, _ = shared_run
    assert quality.beats_shuffled.all()
    linear = quality[quality.method != "cca"]
    assert linear.heldout_r2.min() > 0.95 and linear.heldout_r2_trigger.min() > 0.9
    assert quality.shuffled_r2.max() < 0.05


def test_shared_emotion_structure_is_recovered_and_called_aligned(shared_run):
    _, _, results, directions = shared_run
    procrustes = results[(results.method == "procrustes") & (results.k <= 2)]
    assert procrustes.overlap_after.min() > 0.95
    assert (procrustes.q_covariance < 0.05).all() and (procrustes.q_specific < 0.05).all()
    assert procrustes.aligned.all()
    assert directions[directions.method == "procrustes"].cosine_after.min() > 0.95
    assert results.primary.sum() == len(EMOTIONS) * 2 * 2  # emotions x positions x layer pairs at (method, k)


def test_covariance_shaped_emotions_with_nothing_shared_fool_only_the_isotropic_null():
    _, _, results, directions = _run(*_synthetic_pair(1, shared="none"))
    primary = results[results.primary]
    # the trap: high overlap, far above isotropic random subspaces ...
    assert (primary.q_random < 0.05).mean() > 0.5
    assert primary.overlap_after.median() > 3 * primary.random_mean.median()
    # ... which the covariance-matched and emotion-specific tests do not mistake for shared structure
    assert (primary.q_specific < 0.05).sum() == 0
    assert not primary.aligned.any() and not directions[directions.primary].aligned.any()


def test_shared_emotionality_without_emotion_specific_structure_is_not_aligned():
    _, _, results, _ = _run(*_synthetic_pair(2, shared="emotionality"))
    primary = results[results.primary]
    assert (primary.q_specific < 0.05).sum() == 0
    assert not primary.aligned.any()


def test_observed_and_every_null_use_the_same_prompt_rows():
    tokens_a, tokens_b, acts_a, acts_b = _synthetic_pair(3, shared="all")
    acts_b.token_positions["trigger"][:5] = 0  # five gratitude triggers are B's first token: dropped for both
    _, _, results, _ = _run(tokens_a, tokens_b, acts_a, acts_b)
    n_prompts = results.groupby(["position", "emotion"]).n_prompts.first()
    assert n_prompts[("trigger", "gratitude")] == PER_EMOTION - 5
    assert n_prompts[("sentence_end", "gratitude")] == PER_EMOTION


def test_a_map_that_fits_no_better_than_shuffled_pairs_reports_no_overlap(shared_run):
    maps, quality, _, _ = shared_run
    tokens_a, tokens_b, acts_a, acts_b = _synthetic_pair(0, shared="all")
    broken = quality.assign(beats_shuffled=quality.method == "ridge")
    results, _ = nodes.compare_alignment(maps, broken, acts_a, acts_b, PARAMS, 0)
    assert results[results.method != "ridge"].overlap_after.isna().all()
    assert not results[results.method != "ridge"].aligned.any()


def test_claims_are_three_valued_and_decided_by_their_interval(shared_run):
    maps, _, results, directions = shared_run
    _, _, acts_a, acts_b = _synthetic_pair(0, shared="all")
    boot = nodes.bootstrap_alignment(maps, results, acts_a, acts_b, PARAMS, 0)
    claims = reports.check_seed_claims(results, directions, boot, PARAMS)
    assert set(claims.verdict) <= {"holds", "does not hold", "undetermined", "not applicable"}
    lift = claims[claims.claim.str.contains("lifts overlap")].iloc[0]
    assert lift.verdict == "holds" and lift.ci_low >= 0.9
    assert (claims[claims.claim.str.contains("before mapping|unrelated")].verdict == "not applicable").all()
    assert claims[claims.claim.str.contains("emotion-specific")].verdict.iloc[0] == "holds"
    for _, row in claims.dropna(subset=["ci_low"]).iterrows():
        assert row.ci_low <= row.ci_high


def test_too_few_shared_words_is_a_clear_error():
    tokens_a, tokens_b, acts_a, acts_b = _synthetic_pair(4, shared="all")
    few = TokenActivations(**{**tokens_b.__dict__, "text_ids": [f"other{i}" for i in range(len(tokens_b.text_ids))]})
    with pytest.raises(ValueError, match="Only 0 words of neutral text are shared"):
        nodes.fit_linear_maps(tokens_a, few, acts_a, acts_b, PARAMS, 0)


def test_results_keep_one_row_per_cell_and_the_promised_columns(shared_run):
    _, _, results, _ = shared_run
    keys = ["layer_a", "layer_b", "emotion", "position", "method", "k"]
    assert not results.duplicated(keys).any()
    assert len(results) == 2 * len(EMOTIONS) * 2 * len(PARAMS["methods"]) * PARAMS["k_max"]
    assert {"p_random", "p_covariance", "p_specific", "q_specific", "aligned", "heldout_r2",
            "shuffled_r2"} <= set(results.columns)
    assert isinstance(results, pd.DataFrame)
