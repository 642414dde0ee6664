import numpy as np
import pytest
import torch

from emotion_circuits.models.architecture import resid_hook_names
from emotion_circuits.models.extraction import extract_residuals
from emotion_circuits.models.positions import find_span, tokenize_with_positions
from tests.conftest import tiny_model

TEXTS = ["Thank you so much for the flowers!", "I am absolutely livid about the delay.",
         "We apologise.", "The bus stopped at the corner before the library on Tuesday."]
TRIGGERS = ["Thank you", "livid", "apologise", "corner"]


def _extract(model, **kwargs):
    spans = [find_span(t, g) for t, g in zip(TEXTS, TRIGGERS)]
    tokenized = tokenize_with_positions(model.tokenizer, TEXTS, spans)
    positions = {"trigger": tokenized.span_end_positions, "sentence_end": tokenized.sentence_end_positions}
    return tokenized, positions, extract_residuals(model, tokenized, positions, **kwargs)


def _reference(model, ids, position):
    """Plain HF, one prompt at a time: hidden states at ``position`` and the final norm's input."""
    with torch.inference_mode():
        hidden = model.hf_model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    return np.stack([h[0, position].numpy() for h in hidden])


def _final_norm(model):
    base = model.hf_model.base_model
    return base.norm if hasattr(base, "norm") else base.ln_f


def _assert_matches_plain_hf(model, tokenized, positions, result, atol):
    for kind, pos in positions.items():
        stored = result["resid"][kind]
        assert stored.shape == (len(TEXTS), model.n_layers + 1, model.d_model)
        for i, ids in enumerate(tokenized.input_ids):
            reference = _reference(model, ids, pos[i])
            scale = np.abs(reference).max()
            np.testing.assert_allclose(stored[i, :-1], reference[:-1], atol=atol * scale)
            # HF's last hidden state has the final norm applied; we store the block's raw output
            with torch.inference_mode():
                normed = _final_norm(model)(torch.from_numpy(stored[i, -1])).numpy()
            np.testing.assert_allclose(normed, reference[-1], atol=atol * np.abs(reference[-1]).max())
            assert not np.allclose(stored[i, -1], reference[-1], atol=1e-3)


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_tiny_models_match_plain_hf_batched_with_padding(architecture, gpt2_style_tokenizer):
    model = tiny_model(architecture, gpt2_style_tokenizer)
    tokenized, positions, result = _extract(model, batch_size=3)
    _assert_matches_plain_hf(model, tokenized, positions, result, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("alias", ["smollm2-135m", "gemma3-270m"])
def test_embedded_models_match_plain_hf(alias, load_real):
    model = load_real(alias)
    tokenized, positions, result = _extract(model, batch_size=4)
    _assert_matches_plain_hf(model, tokenized, positions, result, atol=1e-4)


@pytest.mark.slow
def test_matches_transformer_lens_hook_names(load_real):
    model = load_real("smollm2-135m")
    tokenized, positions, result = _extract(model, batch_size=4, include_mlp_out=True)
    names = set(resid_hook_names(model.n_layers)) | {f"blocks.{layer}.hook_mlp_out" for layer in range(model.n_layers)}
    ids = tokenized.input_ids[1]
    with torch.inference_mode():
        _, cache = model.bridge.run_with_cache(torch.tensor([ids]), names_filter=lambda n: n in names)
    p = positions["trigger"][1]
    for index, name in enumerate(resid_hook_names(model.n_layers)):
        np.testing.assert_allclose(result["resid"]["trigger"][1, index], cache[name][0, p].numpy(),
                                   rtol=1e-4, atol=1e-3)
    for layer in range(model.n_layers):
        np.testing.assert_allclose(result["mlp_out"]["trigger"][1, layer],
                                   cache[f"blocks.{layer}.hook_mlp_out"][0, p].numpy(), rtol=1e-4, atol=1e-3)


def test_bad_arguments(gpt2_style_tokenizer):
    model = tiny_model("gpt2", gpt2_style_tokenizer)
    tokenized = tokenize_with_positions(model.tokenizer, TEXTS[:2], [(0, 1), (0, 1)])
    with pytest.raises(ValueError, match=r"positions\['trigger'\] has 1 entries for 2 prompts"):
        extract_residuals(model, tokenized, {"trigger": np.array([0])})
    with pytest.raises(ValueError, match="batch_size"):
        extract_residuals(model, tokenized, {"trigger": np.array([0, 0])}, batch_size=0)
