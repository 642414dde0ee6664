import numpy as np
import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from emotion_circuits.pipeline_registry import for_each_model
from emotion_circuits.pipelines.activations import template
from emotion_circuits.pipelines.activations.nodes import extract_activations
from tests.conftest import tiny_model

PARAMS = {"batch_size": 3, "include_mlp_out": True, "max_prompts_per_emotion": None}


def _prompts():
    rows = [("gra_1", "gratitude", "Thank you so much for the flowers!", "Thank you", "baseline"),
            ("ang_1", "anger", "I am absolutely livid about the delay.", "livid", "baseline"),
            ("ang_2", "anger", "She was furious with the landlord.", "furious", "extended"),
            ("neu_1", "neutral", "The bus stopped at the corner before the library.", "corner", "baseline")]
    df = pd.DataFrame(rows, columns=["id", "emotion", "text", "trigger", "split"])
    start = [t.find(g) for t, g in zip(df.text, df.trigger)]
    return df.assign(trigger_start=start, trigger_end=[s + len(g) for s, g in zip(start, df.trigger)])


def test_template_per_model_writes_each_model_in_the_contract_shape(gpt2_style_tokenizer):
    models = {"tiny-a": tiny_model("llama", gpt2_style_tokenizer, n_layers=2),
              "tiny-b": tiny_model("gpt2", gpt2_style_tokenizer, n_layers=3),
              "tiny-c": tiny_model("llama", gpt2_style_tokenizer, n_layers=1)}
    catalog = DataCatalog({
        **{f"{key}.language_model": MemoryDataset(m, copy_mode="assign") for key, m in models.items()},
        "emotion_prompts": MemoryDataset(_prompts()),
        "neutral_passages": MemoryDataset(pd.DataFrame({"id": ["lee_0"], "text": ["The court heard the case."],
                                                        "source": ["test"]})),
        "params:activations": MemoryDataset(PARAMS),
        **{f"{key}.{name}": MemoryDataset(copy_mode="assign") for key in models
           for name in ("activations", "neutral_tokens")},
    })
    SequentialRunner().run(for_each_model(template(), models), catalog)
    for key, model in models.items():
        result = catalog.load(f"{key}.activations")
        result.validate()
        assert result.ids == ["gra_1", "ang_1", "ang_2", "neu_1"]
        assert result.emotions == ["gratitude", "anger", "anger", "neutral"]
        for kind in ("trigger", "sentence_end"):
            assert result.resid[kind].shape == (4, model.n_layers + 1, 32)
            assert result.resid[kind].dtype == np.float32
            assert result.mlp_out[kind].shape == (4, model.n_layers, 32)
        assert result.hook_names[0] == "blocks.0.hook_resid_pre"
        assert result.hook_names[-1] == f"blocks.{model.n_layers - 1}.hook_resid_post"
        assert result.trigger_tokens[1].strip() and result.trigger_tokens[1].strip() in "livid"
        # the trigger and the sentence end differ, the first prompt's trigger is not at its end
        assert not np.allclose(result.resid["trigger"][0], result.resid["sentence_end"][0])


def test_max_prompts_per_emotion_keeps_the_first_rows(gpt2_style_tokenizer):
    model = tiny_model("gpt2", gpt2_style_tokenizer)
    result = extract_activations(model, _prompts(), {**PARAMS, "max_prompts_per_emotion": 1})
    assert result.ids == ["gra_1", "ang_1", "neu_1"]
    with pytest.raises(ValueError, match="max_prompts_per_emotion"):
        extract_activations(model, _prompts(), {**PARAMS, "max_prompts_per_emotion": 0})
