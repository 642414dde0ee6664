"""Memory estimates, placement across devices and extraction at relative depths, on tiny local models."""

import numpy as np
import pytest
import torch

from emotion_circuits.models import load_model, resolve_model
from emotion_circuits.models.depth_extraction import depth_indices, extract_at_depths, group_geometry, hook_name
from emotion_circuits.models.extraction import extract_residuals
from emotion_circuits.models.memory import (
    ModelDoesNotFitError,
    Placement,
    estimate_memory,
    load_placed,
    measured_weight_bytes,
    meta_model,
    model_config,
    plan_placement,
)
from emotion_circuits.models.positions import tokenize_with_positions
from emotion_circuits.subspaces import difference_basis, mean_difference, subspace_overlap


def _tiny_dir(root, tokenizer, kind="llama", width=32, n_layers=3):
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    torch.manual_seed(0)
    if kind == "gpt2":
        config = GPT2Config(vocab_size=len(tokenizer), n_embd=width, n_layer=n_layers, n_head=4, n_positions=256)
    else:
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width,
                             num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=256, tie_word_embeddings=False)
    path = root / f"{kind}-{width}-{n_layers}"
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, gpt2_style_tokenizer):
    return _tiny_dir(tmp_path_factory.mktemp("memory"), gpt2_style_tokenizer)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_memory_estimate_is_within_ten_percent_of_the_measured_weights(tiny_dir, dtype):
    estimate = estimate_memory(model_config(resolve_model(tiny_dir)), dtype)
    measured = measured_weight_bytes(load_model(tiny_dir, device="cpu", dtype=dtype).hf_model)
    assert abs(estimate.weight_bytes - measured) <= 0.10 * measured
    if dtype == "float32":  # and against the bytes on disk (safetensors: float32 tensors plus a small header)
        from pathlib import Path

        on_disk = sum(f.stat().st_size for f in Path(tiny_dir).glob("*.safetensors"))
        assert abs(estimate.weight_bytes - on_disk) <= 0.10 * on_disk


def test_the_written_out_configs_give_the_published_parameter_counts():
    counts = {alias: estimate_memory(model_config(resolve_model(alias)), "bfloat16") for alias in
              ("llama3-8b", "smollm2-135m")}
    assert counts["llama3-8b"].n_params == 8_030_261_248  # Llama 3.1 8B; 14.96 GiB in bf16
    assert abs(counts["llama3-8b"].weight_gib - 14.96) < 0.01
    assert counts["smollm2-135m"].n_params == 134_515_008  # tied embeddings counted once


def test_relative_depths_are_exact_at_both_ends_and_pair_models_of_any_depth():
    for n_layers in (1, 2, 12, 18, 30, 32, 48):
        assert depth_indices(n_layers, [0.0, 1.0]) == [0, n_layers]
        indices = depth_indices(n_layers, np.linspace(0, 1, 9))
        assert indices == sorted(indices) and all(0 <= i <= n_layers for i in indices)
    # halves go up (Python's round would give 15 -> 14 at 0.5 x 29 and 7.5 -> 8 but 2.5 -> 2)
    assert depth_indices(30, [0.25, 0.5, 0.75, 1.0]) == [8, 15, 23, 30]
    assert depth_indices(5, [0.5]) == [3]
    assert hook_name(0) == "blocks.0.hook_resid_pre" and hook_name(30) == "blocks.29.hook_resid_post"
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        depth_indices(12, [1.5])


def test_a_model_that_fits_one_device_stays_whole_and_one_that_fits_nowhere_is_refused(tiny_dir):
    config = model_config(resolve_model(tiny_dir))
    weights = estimate_memory(config, "float32").weight_bytes
    placed = plan_placement(tiny_dir, config, "float32", {"cpu": 10 * weights})
    assert placed.device_map == {"": "cpu"} and not placed.split
    with pytest.raises(ModelDoesNotFitError, match=r"needs about .* GiB .* the devices offer cpu: 0\.00 GiB"):
        plan_placement(tiny_dir, config, "float32", {"cpu": weights // 4})


def test_a_forced_max_memory_split_puts_whole_blocks_in_order_within_each_budget(tiny_dir):
    config = model_config(resolve_model(tiny_dir))
    model = meta_model(config)
    sizes = {name: sum(p.numel() * 4 for p in module.parameters()) for name, module in model.named_modules()}
    block = sizes["model.layers.0"]
    budget = {"cuda:0": int(sizes["model.embed_tokens"] + 1.5 * block), "cuda:1": int(1.5 * block),
              "cpu": 100 * sizes[""]}
    placed = plan_placement(tiny_dir, config, "float32", budget)
    assert placed.split and placed.device == "cuda:0"
    devices = [placed.device_map[name] for name in placed.device_map]
    order = {"cuda:0": 0, "cuda:1": 1, "cpu": 2}
    assert [order[d] for d in devices] == sorted(order[d] for d in devices)  # embeddings first, then blocks in order
    assert {"cuda:0", "cuda:1"} <= set(devices)
    blocks = [n for n in placed.device_map if n.startswith("model.layers.")]
    assert all(n.count(".") == 2 for n in blocks)  # no block is split between devices
    for device in ("cuda:0", "cuda:1"):
        used = sum(sizes[n] for n, d in placed.device_map.items() if d == device)
        assert used <= budget[device]
    assert Placement.from_dict(placed.to_dict()).device_map == placed.device_map  # JSON round trip


def test_a_per_module_device_map_loads_and_reads_the_same_residuals(tiny_dir, gpt2_style_tokenizer):
    config = model_config(resolve_model(tiny_dir))
    weights = estimate_memory(config, "float32").weight_bytes
    placed = plan_placement(tiny_dir, config, "float32", {"cuda:0": weights // 2, "cpu": 10 * weights})
    assert placed.split
    # no GPU here: the same per-module map with every module on the CPU goes through accelerate's dispatch
    on_cpu = Placement.from_dict({**placed.to_dict(), "device": "cpu",
                                  "device_map": {n: "cpu" for n in placed.device_map}})
    split = load_model(tiny_dir, device="cpu", dtype="float32", device_map=on_cpu.device_map)
    whole = load_placed(plan_placement(tiny_dir, config, "float32", {"cpu": 10 * weights}))
    texts = ["Thank you so much for the flowers!", "The bus stopped at the corner before the library."]
    tokenized = tokenize_with_positions(whole.tokenizer, texts, [(0, 5), (4, 7)])
    positions = {"trigger": tokenized.span_end_positions, "sentence_end": tokenized.sentence_end_positions}
    expected = extract_residuals(whole, tokenized, positions, batch_size=2, show_progress=False)["resid"]
    for model in (whole, split):
        picked = extract_at_depths(model, tokenized.input_ids, list(zip(*positions.values())), [3, 0, 2],
                                   batch_size=1, show_progress=False).reshape(2, 2, 3, -1).numpy()
        for p, kind in enumerate(positions):
            np.testing.assert_allclose(picked[:, p], expected[kind][:, [3, 0, 2]], rtol=1e-5, atol=1e-6)


def test_group_geometry_on_the_device_equals_the_numpy_subspaces():
    rng = np.random.default_rng(0)
    resid = rng.standard_normal((60, 2, 16)) * np.linspace(3, 0.1, 16)
    resid[:20] += 4.0 * np.eye(16)[0]
    groups = {"joy": np.arange(20), "small": np.arange(20, 23)}
    geometry = group_geometry(torch.from_numpy(resid).float(), groups, np.arange(30, 60), k=4)
    neutral = resid[30:60]
    basis, explained = difference_basis(resid[:20], neutral.mean(0), 4)
    np.testing.assert_allclose(geometry["joy"]["vector"], mean_difference(resid[:20], neutral), atol=1e-5)
    np.testing.assert_allclose(geometry["joy"]["explained"], explained, atol=1e-5)
    for depth in range(2):
        for k in range(1, 5):
            assert subspace_overlap(geometry["joy"]["basis"][depth][:, :k], basis[depth][:, :k]) > 1 - 1e-5
    assert geometry["small"]["basis"].shape == (2, 16, 4)  # 3 prompts: 3 directions and a zero column
    assert np.all(geometry["small"]["basis"][..., 3] == 0)
