import copy
import json

import numpy as np
import pytest
import torch
import yaml

from emotion_circuits.models.logit_lens import token_log_probs
from emotion_circuits.pipelines.semantic_phase import nodes
from emotion_circuits.validation import PromptFileError
from tests.conftest import PROJECT_ROOT

STIMULI = json.loads((PROJECT_ROOT / "data/01_raw/semantic_stimuli.json").read_text())
PARAMS = yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_semantic_phase.yml").read_text())["semantic_phase"]
PARAMS["stimuli_file"] = "semantic_stimuli.json"


def test_expand_stimuli_builds_every_kind_with_target_spans():
    prompts = nodes.expand_stimuli(STIMULI, {**PARAMS, "words": ["bank"]})
    counts = prompts.kind.value_counts()
    assert counts["clear"] == 16 and counts["graded"] == 18 and counts["hint"] == 2 * 8
    assert all(t[s:e] == "bank" for t, s, e in zip(prompts.text, prompts.target_start, prompts.target_end))
    gradient = prompts[(prompts.kind == "gradient") & (prompts.sense == "A")]
    assert gradient.step.tolist() == list(range(1, len(gradient) + 1))
    assert gradient.text.iloc[0] == "grassy bank" and gradient.text.iloc[-1].endswith("the grassy bank")
    hint = prompts[prompts.kind == "hint"].iloc[0]
    assert hint.base_id in set(prompts.id) and hint.text.startswith("River. ")


def test_a_missing_or_repeated_target_word_names_the_prompt():
    broken = copy.deepcopy(STIMULI)
    broken["words"][0]["clear"]["A"][2] = "We sat by the river all afternoon."
    broken["words"][0]["graded"][4]["text"] = "The bank by the bank."
    with pytest.raises(PromptFileError,
                       match=r"(?s)semantic_stimuli\.json has 2 problem.*bank_clear_A2.*bank_graded_4"):
        nodes.expand_stimuli(broken, PARAMS)


@pytest.mark.slow
def test_logit_lens_at_the_last_layer_is_the_models_own_prediction(load_real):
    model = load_real("smollm2-135m")
    ids = model.tokenizer("We sat on the grassy bank").input_ids
    with torch.inference_mode():
        out = model.hf_model(torch.tensor([ids]), output_hidden_states=True)
    captured = {}
    handle = model.decoder_layers[-1].register_forward_hook(lambda m, i, o: captured.setdefault("raw", o))
    with torch.inference_mode():
        model.hf_model(torch.tensor([ids]))
    handle.remove()
    raw = captured["raw"][0] if isinstance(captured["raw"], tuple) else captured["raw"]
    resid = np.stack([raw[0, -1].numpy()])[None]  # [1 prompt, 1 layer, d]
    targets = np.array([[model.tokenizer(" river").input_ids[0], model.tokenizer(" account").input_ids[0]]])
    lens = token_log_probs(model, resid, targets)[0, 0]
    expected = torch.log_softmax(out.logits[0, -1], -1)[targets[0]].numpy()
    np.testing.assert_allclose(lens, expected, atol=1e-4)
