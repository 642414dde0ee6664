"""Shared fixtures: locally built tokenizers and tiny models, and the real embedded models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
os.environ["HF_HUB_OFFLINE"] = "1"  # tests never call the hub

PROJECT_ROOT = Path(__file__).resolve().parents[1]

_CORPUS = [
    "Thank you so much for the flowers!", "I am absolutely livid about the delay.",
    "We apologise for the inconvenience.", "The bus stopped at the corner before the library.",
    "Many thanks to the nurses on ward seven.", "She was furious with the landlord.",
] * 3


@pytest.fixture(scope="session")
def gpt2_style_tokenizer():
    """A byte-level BPE (GPT-2 style, leading-space tokens) trained here on a few sentences."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(_CORPUS, vocab_size=300, min_frequency=1, show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def tiny_model(architecture: str, tokenizer, n_layers: int = 2):
    """A randomly initialised 2-layer causal LM wrapped as a `LoadedModel` (plumbing tests)."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    from emotion_circuits.models import LoadedModel

    torch.manual_seed(0)
    vocab = len(tokenizer)
    if architecture == "gpt2":
        config = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=n_layers, n_head=4, n_positions=1024)
    else:
        config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    model = AutoModelForCausalLM.from_config(config).eval()
    return LoadedModel(alias=f"tiny-{architecture}", hf_model=model, tokenizer=tokenizer,
                       n_layers=n_layers, d_model=32, device=torch.device("cpu"), dtype=torch.float32)


@pytest.fixture
def tiny_model_dirs(tmp_path, gpt2_style_tokenizer) -> list[str]:
    """Two randomly initialised 2-layer Llama models saved as local model directories."""
    paths = []
    for i in range(2):
        torch.manual_seed(i)
        path = tmp_path / "models" / f"tiny-{i}"
        tiny_model("llama", gpt2_style_tokenizer).hf_model.save_pretrained(path)
        gpt2_style_tokenizer.save_pretrained(path)
        paths.append(str(path))
    return paths


_LOADED: dict = {}


@pytest.fixture(scope="session")
def load_real():
    """Loads an embedded model once per test session (first load dequantises and caches)."""
    from emotion_circuits.models import load_model

    def _load(alias: str):
        if alias not in _LOADED:
            _LOADED[alias] = load_model(alias, device="cpu", dtype="float32")
        return _LOADED[alias]

    return _load


@pytest.fixture
def project_copy(tmp_path):
    """conf, pyproject and the raw data in a temporary root, so runs never touch ./data."""
    import shutil

    from kedro.framework.startup import bootstrap_project

    shutil.copytree(PROJECT_ROOT / "conf", tmp_path / "conf", ignore=shutil.ignore_patterns("credentials*"))
    shutil.copy(PROJECT_ROOT / "pyproject.toml", tmp_path)
    shutil.copytree(PROJECT_ROOT / "data/01_raw", tmp_path / "data/01_raw")
    (tmp_path / "src").mkdir()  # bootstrap_project wants a source dir; the package is installed
    bootstrap_project(tmp_path)
    return tmp_path


def run_project(project, pipelines, **runtime_params):
    """One `kedro run` of ``pipelines`` through a KedroSession; returns the run's free outputs."""
    from kedro.framework.session import KedroSession

    with KedroSession.create(project_path=project, runtime_params=runtime_params) as session:
        return session.run(pipeline_names=pipelines)
