"""Known answers for the model-internals module on tiny local models of every supported architecture."""

import numpy as np
import pytest
import torch

from emotion_circuits.models import architecture

D_MODEL, N_HEADS = 32, 4


def _tiny(kind: str):
    import transformers as t

    common = {"vocab_size": 64}
    configs = {
        "llama": lambda: t.LlamaConfig(hidden_size=D_MODEL, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=N_HEADS, num_key_value_heads=2, **common),
        "gemma3_text": lambda: t.Gemma3TextConfig(hidden_size=D_MODEL, intermediate_size=64, num_hidden_layers=2,
                                                  num_attention_heads=N_HEADS, num_key_value_heads=1, head_dim=8,
                                                  query_pre_attn_scalar=8, sliding_window=16, **common),
        "qwen3": lambda: t.Qwen3Config(hidden_size=D_MODEL, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=N_HEADS, num_key_value_heads=2, head_dim=8, **common),
        "gpt2": lambda: t.GPT2Config(n_embd=D_MODEL, n_layer=2, n_head=N_HEADS, n_positions=32, **common),
        "gpt_neox": lambda: t.GPTNeoXConfig(hidden_size=D_MODEL, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=N_HEADS, **common),
        "gpt_neo": lambda: t.GPTNeoConfig(hidden_size=D_MODEL, num_layers=2, num_heads=N_HEADS,
                                          attention_types=[[["global"], 2]], max_position_embeddings=32, **common),
    }
    torch.manual_seed(0)
    model = t.AutoModelForCausalLM.from_config(configs[kind](), attn_implementation="eager").eval()
    with torch.no_grad():  # random biases so that bias slicing is tested too
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_()
    return model


KINDS = ["llama", "gemma3_text", "qwen3", "gpt2", "gpt_neox", "gpt_neo"]


def _capture(module, pre=False):
    store = {}
    if pre:
        def hook(_m, args, kwargs):
            store["value"] = (args[0] if args else kwargs["hidden_states"]).detach()
        return store, module.register_forward_pre_hook(hook, with_kwargs=True)

    def hook(_m, _inputs, output):
        store["value"] = (output[0] if isinstance(output, tuple) else output).detach()
    return store, module.register_forward_hook(hook)


@pytest.mark.parametrize("kind", KINDS)
def test_blocks_and_final_norm_reproduce_the_hidden_states(kind):
    model = _tiny(kind)
    layers = architecture.decoder_layers(model)
    assert len(layers) == 2
    out, handle = _capture(layers[-1])
    with torch.no_grad():
        hidden = model(torch.tensor([[3, 5, 7]]), output_hidden_states=True).hidden_states
    handle.remove()
    # HF's last hidden state is the final norm applied to the last block's raw output
    torch.testing.assert_close(architecture.final_norm(model)(out["value"]), hidden[-1])
    assert architecture.unembedding(model).weight.shape == (64, D_MODEL)
    assert architecture.resid_hook_names(2) == ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post",
                                                "blocks.1.hook_resid_post"]


@pytest.mark.parametrize("kind", KINDS)
def test_per_head_weights_reproduce_the_attention_module(kind):
    """One token attends only to itself, so attn_out = sum_h (x W_V[h] + b_V[h]) W_O[h] + b_O exactly;
    and each head's query and key are the projections' own slices."""
    model = _tiny(kind)
    layer = architecture.decoder_layers(model)[1]
    attn = architecture.attention(layer)
    heads = architecture.head_weights(model, 1)
    n_heads, n_kv, d_head = architecture.head_counts(model)
    assert heads.W_Q.shape == (n_heads, D_MODEL, d_head) and heads.W_O.shape == (n_heads, d_head, D_MODEL)
    assert heads.qk_norm == (kind in ("gemma3_text", "qwen3")) and heads.rotary == (kind != "gpt2")
    assert (heads.kv_head == np.arange(n_heads) // (n_heads // n_kv)).all()
    x_in, h1 = _capture(attn, pre=True)
    out, h2 = _capture(attn)
    with torch.no_grad():
        model(torch.tensor([[11]]))
    h1.remove(), h2.remove()
    x = x_in["value"][0, 0].float().numpy()
    z = np.einsum("d,hde->he", x, heads.W_V) + heads.b_V
    np.testing.assert_allclose(np.einsum("he,hed->d", z, heads.W_O) + heads.b_O, out["value"][0, 0].numpy(),
                               rtol=1e-4, atol=1e-5)
    q = np.einsum("d,hde->he", x, heads.W_Q) + heads.b_Q
    k = np.einsum("d,hde->he", x, heads.W_K) + heads.b_K
    q_ref, k_ref = _projected_qk(kind, attn, torch.from_numpy(x), n_heads, n_kv, d_head)
    np.testing.assert_allclose(q, q_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(k, k_ref[heads.kv_head], rtol=1e-4, atol=1e-5)


def _projected_qk(kind, attn, x, n_heads, n_kv, d_head):
    """The module's own query ``[n_heads, d_head]`` and key ``[n_kv, d_head]`` projections of x (before norms)."""
    with torch.no_grad():
        if kind == "gpt2":
            q, k, _ = attn.c_attn(x[None]).split(D_MODEL, dim=-1)
            return q.reshape(n_heads, d_head).numpy(), k.reshape(n_kv, d_head).numpy()
        if kind == "gpt_neox":
            qkv = attn.query_key_value(x[None]).reshape(n_heads, 3 * d_head)
            return qkv[:, :d_head].numpy(), qkv[:, d_head:2 * d_head].numpy()
        return (attn.q_proj(x).reshape(n_heads, d_head).numpy(), attn.k_proj(x).reshape(n_kv, d_head).numpy())


def test_unsupported_architecture_is_named():
    class Config:
        model_type = "mamba"

    class Fake(torch.nn.Module):
        config = Config()

    with pytest.raises(NotImplementedError, match="'mamba' is not supported"):
        architecture.decoder_layers(Fake())
