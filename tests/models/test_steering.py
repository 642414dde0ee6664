import numpy as np
import pytest
import torch

from emotion_circuits.models.perplexity import continuation_perplexity
from emotion_circuits.models.steering import Steering, resid_index, steered_generate
from tests.conftest import tiny_model

PROMPTS = ["Thank you so much for the flowers!", "The bus stopped.",
           "We apologise for the inconvenience.", "She was furious with the landlord."]


def _record(module, pre: bool, store: list):
    """Keeps a copy of ``module``'s input (pre) or output at every forward call."""
    if pre:
        return module.register_forward_pre_hook(
            lambda _m, args, kwargs: store.append((args[0] if args else kwargs["hidden_states"]).clone()),
            with_kwargs=True)
    return module.register_forward_hook(
        lambda _m, _i, out: store.append((out[0] if isinstance(out, tuple) else out).clone()))


def _ids(model, texts=PROMPTS):
    return model.tokenizer(list(texts)).input_ids


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
@pytest.mark.parametrize("hook_kind", ["post", "pre"])
def test_hook_adds_exactly_alpha_v_at_window_positions_only(architecture, hook_kind, gpt2_style_tokenizer):
    model = tiny_model(architecture, gpt2_style_tokenizer, n_layers=3)
    blocks = model.decoder_layers
    # `before` sees the residual just before the steering hook acts, `after` just after, in the same run
    before, after = [], []
    if hook_kind == "post":
        handles = [_record(blocks[1], False, before), _record(blocks[2], True, after)]
    else:
        first_norm = next(m for m in blocks[1].children() if "norm" in type(m).__name__.lower())
        handles = [_record(blocks[0], False, before), _record(first_norm, True, after)]
    prompts = _ids(model)[:2]  # different lengths: the shorter one is left-padded
    vectors = np.random.default_rng(0).standard_normal((2, model.d_model)).astype(np.float32)
    alphas = np.array([0.7, -1.3], np.float32)
    steering = Steering(f"blocks.1.hook_resid_{hook_kind}", prompt_tokens=2, generated_tokens=3,
                        schedule="exp_decay", decay_rate=0.5)
    try:
        out = steered_generate(model, prompts, steering, vectors, alphas, max_new_tokens=6, min_new_tokens=6,
                               show_progress=False, return_norms=True)
    finally:
        for handle in handles:
            handle.remove()
    assert len(before) == len(after) == 6  # prefill + 5 decoding steps for 6 new tokens
    per_row = torch.from_numpy(alphas[:, None] * vectors)[:, None, :]
    sums = np.zeros((3, 2))  # per row: Σ‖h‖ and Σ‖change‖ over the steered positions, and their count
    for step, (plain, steered) in enumerate(zip(before, after)):
        delta = steered - plain
        n_window = 2 if step == 0 else (1 if step <= 3 else 0)
        expected = torch.zeros_like(delta)
        if n_window:
            expected[:, -n_window:] = per_row * np.exp(-0.5 * step)
            sums += [plain[:, -n_window:].norm(dim=-1).sum(1).numpy(), delta[:, -n_window:].norm(dim=-1).sum(1).numpy(),
                     [n_window] * 2]
        torch.testing.assert_close(delta, expected, rtol=0, atol=1e-5)
        untouched = delta[:, :delta.shape[1] - n_window]
        assert torch.count_nonzero(untouched) == 0  # exactly nothing elsewhere
    # the recorded norms are those of the residuals the hook modified, before the change, and of the change
    np.testing.assert_allclose(out.resid_norm, sums[0] / sums[2], rtol=1e-5)
    np.testing.assert_allclose(out.steer_norm, sums[1] / sums[2], rtol=1e-4)
    decays = np.exp(-0.5 * np.array([0, 0, 1, 2, 3]))  # 2 prompt positions at step 0, then steps 1–3
    np.testing.assert_allclose(out.steer_norm, np.abs(alphas) * np.linalg.norm(vectors, axis=1) * decays.mean(),
                               rtol=1e-4)


def test_norms_are_nan_where_nothing_is_steered_and_swap_records_the_replacement(gpt2_style_tokenizer):
    model = tiny_model("llama", gpt2_style_tokenizer)
    prompts = _ids(model)
    vectors = np.random.default_rng(3).standard_normal((len(prompts), model.d_model)).astype(np.float32)
    alphas = np.array([0.0, 1.0, 0.5, 2.0], np.float32)
    out = steered_generate(model, prompts, Steering("blocks.0.hook_resid_post", prompt_tokens=1, generated_tokens=0,
                                                    mode="swap"), vectors, alphas, max_new_tokens=3,
                           show_progress=False, return_norms=True)
    assert np.isnan(out.resid_norm[0]) and np.isnan(out.steer_norm[0])  # α = 0 changes nothing
    assert np.isfinite(out.resid_norm[1:]).all() and (out.steer_norm[1:] > 0).all()
    plain = steered_generate(model, prompts, max_new_tokens=3, show_progress=False, return_norms=True)
    assert np.isnan(plain.resid_norm).all() and plain.ids == steered_generate(model, prompts, max_new_tokens=3,
                                                                               show_progress=False)


def test_alpha_zero_reproduces_unsteered_generation_token_for_token(gpt2_style_tokenizer):
    model = tiny_model("llama", gpt2_style_tokenizer)
    prompts = _ids(model)
    vectors = np.random.default_rng(1).standard_normal((len(prompts), model.d_model)) * 100
    plain = steered_generate(model, prompts, max_new_tokens=8, show_progress=False)
    for mode in ("add", "swap"):
        steering = Steering("blocks.0.hook_resid_post", mode=mode)
        zero = steered_generate(model, prompts, steering, vectors, np.zeros(len(prompts)), max_new_tokens=8,
                                show_progress=False)
        assert zero == plain
    loud = steered_generate(model, prompts, Steering("blocks.0.hook_resid_post"), vectors,
                            np.ones(len(prompts)), max_new_tokens=8, show_progress=False)
    assert loud != plain  # and the hook does act


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
@pytest.mark.parametrize("prompt_tokens", [None, 0, 2])
def test_shared_prompt_prefix_gives_the_same_tokens(architecture, prompt_tokens, gpt2_style_tokenizer):
    model = tiny_model(architecture, gpt2_style_tokenizer, n_layers=3)
    prompts = [p for p in _ids(model) for _ in range(3)]  # a sweep: each prompt steered 3 ways
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((len(prompts), model.d_model)).astype(np.float32)
    alphas = np.tile([0.0, 2.0, -3.0], 4).astype(np.float32)
    steering = Steering("blocks.1.hook_resid_post", prompt_tokens=prompt_tokens, generated_tokens=2)
    kwargs = {"max_new_tokens": 8, "batch_size": 5, "show_progress": False}
    padded = steered_generate(model, prompts, steering, vectors, alphas, **kwargs)
    shared = steered_generate(model, prompts, steering, vectors, alphas, share_prompt_prefix=True, **kwargs)
    assert shared == padded
    assert steered_generate(model, prompts, **kwargs) == steered_generate(model, prompts, share_prompt_prefix=True,
                                                                          **kwargs)


@pytest.mark.slow
def test_batched_steering_equals_one_prompt_at_a_time_on_smollm2(load_real):
    model = load_real("smollm2-135m")
    prompts = _ids(model)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((len(prompts), model.d_model)).astype(np.float32) * 3
    alphas = np.array([0.0, 1.0, -1.0, 2.0], np.float32)
    steering = Steering("blocks.10.hook_resid_post", prompt_tokens=3, schedule="exp_decay", decay_rate=0.2)
    batched = steered_generate(model, prompts, steering, vectors, alphas, max_new_tokens=12, batch_size=4,
                               show_progress=False)
    single = [steered_generate(model, [p], steering, vectors[i:i + 1], alphas[i:i + 1], max_new_tokens=12,
                               show_progress=False)[0] for i, p in enumerate(prompts)]
    assert batched == single
    sweep = [p for p in prompts for _ in range(4)]
    shared = steered_generate(model, sweep, steering, np.repeat(vectors, 4, 0), np.repeat(alphas, 4),
                              max_new_tokens=12, batch_size=8, share_prompt_prefix=True, show_progress=False)
    assert shared[::4] == single
    assert batched[0] == steered_generate(model, [prompts[0]], max_new_tokens=12, show_progress=False)[0]


def test_schedules():
    steering = Steering("blocks.0.hook_resid_pre", schedule="exp_decay", decay_rate=0.5)
    assert steering.alpha_multiplier(0) == 1.0
    assert steering.alpha_multiplier(2) == pytest.approx(np.exp(-1.0))
    ramp = Steering("blocks.0.hook_resid_pre", schedule="linear_ramp", ramp_steps=4)
    assert [ramp.alpha_multiplier(s) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert Steering("blocks.0.hook_resid_pre").alpha_multiplier(7) == 1.0


def test_hook_names_map_to_residual_indices():
    assert resid_index("blocks.0.hook_resid_pre") == 0
    assert resid_index("blocks.0.hook_resid_post") == 1
    assert resid_index("blocks.5.hook_resid_pre") == 5
    assert resid_index("blocks.5.hook_resid_post") == 6


def test_bad_steering_is_refused_with_the_parameter_named(gpt2_style_tokenizer):
    model = tiny_model("llama", gpt2_style_tokenizer)
    with pytest.raises(ValueError, match="hook_resid_pre or _post"):
        Steering("blocks.0.attn.hook_z")
    with pytest.raises(ValueError, match="schedule"):
        Steering("blocks.0.hook_resid_pre", schedule="cosine")
    with pytest.raises(ValueError, match="prompt_tokens"):
        Steering("blocks.0.hook_resid_pre", prompt_tokens=-1)
    prompts = _ids(model)
    with pytest.raises(ValueError, match="beyond"):
        steered_generate(model, prompts, Steering("blocks.9.hook_resid_pre"), np.zeros((4, 32)), np.zeros(4))
    with pytest.raises(ValueError, match=r"vectors \[4, 32\]"):
        steered_generate(model, prompts, Steering("blocks.0.hook_resid_pre"), np.zeros((3, 32)), np.zeros(4))
    with pytest.raises(ValueError, match="No prompts"):
        steered_generate(model, [], None)


def test_perplexity_matches_one_prompt_at_a_time_reference(gpt2_style_tokenizer):
    model = tiny_model("llama", gpt2_style_tokenizer)
    prompts = _ids(model)
    continuations = [[5, 6, 7], [8], [9, 10, 11, 12, 13], []]
    batched = continuation_perplexity(model, prompts, continuations, batch_size=3)
    assert np.isnan(batched[3])
    # a sweep: the same prompt with several continuations goes through the shared-prompt path
    swept = continuation_perplexity(model, [prompts[0]] * 3 + [prompts[2]],
                                    [[9, 10], [5, 6, 7], [8], [9, 10, 11, 12, 13]], batch_size=2)
    np.testing.assert_allclose(swept[[1, 3]], batched[[0, 2]], rtol=1e-4)
    for i in range(3):
        ids = torch.tensor([prompts[i] + continuations[i]])
        with torch.inference_mode():
            log_probs = torch.log_softmax(model.hf_model(ids).logits[0].float(), -1)
        n = len(continuations[i])
        targets = torch.tensor(continuations[i])
        picked = log_probs[len(prompts[i]) - 1:len(prompts[i]) - 1 + n].gather(1, targets[:, None])
        assert batched[i] == pytest.approx(float(torch.exp(-picked.mean())), rel=1e-4)
