"""Known answers for per-head probes and edits (`emotion_circuits.models.heads`) on tiny local models."""

import numpy as np
import pytest
import torch
import transformers as t

from emotion_circuits.models import LoadedModel
from emotion_circuits.models.architecture import attention_output_projection, decoder_layers, head_weights
from emotion_circuits.models.heads import HeadEdit, forward_readout, head_hooks, probe_heads

CONFIGS = {
    "llama": lambda: t.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2),
    "gemma3_text": lambda: t.Gemma3TextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                              num_attention_heads=4, num_key_value_heads=1, head_dim=8,
                                              query_pre_attn_scalar=8, sliding_window=4),
    "gpt2": lambda: t.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0),
}
PROMPTS = [[5, 9, 11, 3, 7, 8, 2], [4, 6, 1, 9, 10], [3, 3, 12, 13, 14, 15, 16, 17, 18]]
QUERY = np.array([6, 4, 8])
KEYS = [np.array([2, 3]), np.array([1]), np.array([3, 4, 5])]


class _Tokenizer:
    pad_token_id = 0


def _model(kind: str, implementation: str = "sdpa") -> LoadedModel:
    torch.manual_seed(0)
    hf = t.AutoModelForCausalLM.from_config(CONFIGS[kind](), attn_implementation=implementation).eval()
    return LoadedModel(f"tiny-{kind}", hf, _Tokenizer(), 2, 32, torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("kind", list(CONFIGS))
@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_probe_reads_the_attention_weights_and_output_of_every_head(kind, implementation):
    model = _model(kind, implementation)
    readings = probe_heads(model, PROMPTS, QUERY, KEYS, batch_size=3)
    eager = _model(kind, "eager")
    for row, ids in enumerate(PROMPTS):  # one at a time, no padding, the model's own attention weights
        weights = eager.hf_model(torch.tensor([ids]), output_attentions=True).attentions
        expected = np.stack([w[0, :, QUERY[row], KEYS[row]].sum(-1).detach().numpy() for w in weights])
        np.testing.assert_allclose(readings["attn"][row], expected, atol=1e-5)
    attn = readings["attn"][..., None]
    np.testing.assert_allclose(attn * readings["v_keys"] + (1 - attn) * readings["v_other"], readings["z"], atol=1e-5)
    assert readings["attn"].shape == (3, 2, 4)  # grouped K/V heads still give one reading per query head


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_head_outputs_through_w_o_sum_to_the_attention_output(kind):
    model = _model(kind)
    readings = probe_heads(model, PROMPTS[:1], QUERY[:1], KEYS[:1])
    captured = {}
    hook = attention_output_projection(decoder_layers(model.hf_model)[1]).register_forward_hook(
        lambda _m, _i, output: captured.setdefault("out", output.detach()))
    with torch.no_grad():
        model.hf_model(torch.tensor(PROMPTS[:1]))
    hook.remove()
    weights = head_weights(model.hf_model, 1)
    summed = np.einsum("hd,hdm->m", readings["z"][0, 1], weights.W_O) + weights.b_O
    np.testing.assert_allclose(summed, captured["out"][0, QUERY[0]].numpy(), atol=1e-5)


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_zero_ablating_a_head_equals_removing_its_slice_of_w_o(kind):
    model = _model(kind)
    heads = torch.zeros((1, 2, 4), dtype=torch.bool)
    heads[0, 1, 2] = True
    edit = HeadEdit(heads, "replace", values=torch.zeros(2, 4, model.hf_model.config.hidden_size // 4
                                                         if kind != "gemma3_text" else 8))
    ids = torch.tensor(PROMPTS[:1])
    with torch.no_grad(), head_hooks(model, ids.shape[1], edit=edit):
        ablated = model.hf_model(ids).logits
    projection = attention_output_projection(decoder_layers(model.hf_model)[1])
    d_head = edit.values.shape[-1]
    with torch.no_grad():
        if kind == "gpt2":  # Conv1D: rows are the heads' inputs
            projection.weight[2 * d_head:3 * d_head] = 0
        else:
            projection.weight[:, 2 * d_head:3 * d_head] = 0
        removed = model.hf_model(ids).logits
    torch.testing.assert_close(ablated, removed, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", list(CONFIGS))
@pytest.mark.parametrize("mode", ["whole", "pattern", "value"])
def test_patching_heads_with_their_own_activations_changes_nothing(kind, mode):
    model = _model(kind)
    source = probe_heads(model, PROMPTS, QUERY, KEYS)
    plain = forward_readout(model, PROMPTS, QUERY, layer=1)

    def patch(rows, shape):
        from emotion_circuits.models.heads import key_mask
        return HeadEdit(torch.ones((len(rows), 2, 4), dtype=torch.bool), mode,
                        query_positions=torch.as_tensor(QUERY[rows]),
                        key_mask=key_mask(shape, [KEYS[r] for r in rows], "cpu"),
                        source={k: torch.as_tensor(source[k][rows]) for k in ("attn", "z", "v_keys")})

    patched = forward_readout(model, PROMPTS, QUERY, layer=1, make_edit=patch)
    np.testing.assert_allclose(patched, plain, atol=1e-5)


def test_patching_another_prompts_output_changes_the_residual():
    model = _model("llama")
    source = probe_heads(model, PROMPTS, QUERY, KEYS)
    swapped = {k: v[[1, 0, 2]] for k, v in source.items()}  # rows 0 and 1 get each other's head outputs

    def patch(rows, shape):
        return HeadEdit(torch.ones((len(rows), 2, 4), dtype=torch.bool), "whole",
                        query_positions=torch.as_tensor(QUERY[rows]), key_mask=None,
                        source={k: torch.as_tensor(swapped[k][rows]) for k in ("attn", "z", "v_keys")})

    plain = forward_readout(model, PROMPTS, QUERY, layer=1)
    patched = forward_readout(model, PROMPTS, QUERY, layer=1, make_edit=patch)
    assert np.abs(patched[:2] - plain[:2]).max() > 1e-3
    np.testing.assert_allclose(patched[2], plain[2], atol=1e-5)


def test_projecting_out_a_direction_equals_projecting_it_out_of_the_heads_w_o():
    model = _model("gpt2")
    layer, head, d_head = 1, 3, 8
    direction = np.random.default_rng(0).standard_normal(32).astype(np.float32)
    w = head_weights(model.hf_model, layer).W_O[head] @ direction
    unit = torch.as_tensor(w / np.linalg.norm(w))
    values = torch.zeros(2, 4, d_head)
    values[layer, head] = unit
    chosen = torch.zeros((1, 2, 4), dtype=torch.bool)
    chosen[:, layer, head] = True
    ids = torch.tensor(PROMPTS[:1])
    with torch.no_grad(), head_hooks(model, ids.shape[1], edit=HeadEdit(chosen, "project_out", values=values)):
        edited = model.hf_model(ids).logits
    assert model.hf_model.config._attn_implementation == "sdpa"  # leaving the block restores the model's own
    rows = slice(head * d_head, (head + 1) * d_head)  # GPT-2's Conv1D W_O: the head's rows
    projection = attention_output_projection(decoder_layers(model.hf_model)[layer])
    with torch.no_grad():
        block = projection.weight[rows]
        projection.weight[rows] = block - unit[:, None] * (unit @ block)[None, :]
        rebuilt = model.hf_model(ids).logits
        assert abs(float((unit @ projection.weight[rows]) @ torch.as_tensor(direction))) < 1e-4
    torch.testing.assert_close(edited, rebuilt, atol=1e-5, rtol=1e-5)
