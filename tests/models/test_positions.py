import numpy as np
import pandas as pd
import pytest

from emotion_circuits.models.positions import find_span, tokenize_with_positions
from tests.conftest import PROJECT_ROOT

TEXTS = ["Thank you so much for the flowers!", "I am absolutely livid about the delay.",
         "We apologise for the inconvenience.", "Honestly, thanks."]
TRIGGERS = ["Thank you", "livid", "apologise", "thanks"]


def _assert_positions_end_the_trigger(tokenizer, texts, triggers):
    spans = [find_span(t, g) for t, g in zip(texts, triggers)]
    tokenized = tokenize_with_positions(tokenizer, texts, spans)
    for ids, pos, end, trigger in zip(tokenized.input_ids, tokenized.span_end_positions,
                                      tokenized.sentence_end_positions, triggers):
        # the trigger is complete exactly at its last token, not one token earlier
        assert trigger in tokenizer.decode(ids[: pos + 1], skip_special_tokens=True)
        assert trigger not in tokenizer.decode(ids[:pos], skip_special_tokens=True)
        assert end == len(ids) - 1 - sum(i in tokenizer.all_special_ids for i in ids[end + 1:])
    return tokenized


def test_gpt2_style_bpe_multi_token_trigger_and_leading_space(gpt2_style_tokenizer):
    tokenized = _assert_positions_end_the_trigger(gpt2_style_tokenizer, TEXTS, TRIGGERS)
    # "absolutely" and "livid" are split into several pieces by this small vocabulary
    assert len(tokenized.input_ids[1]) > len(TEXTS[1].split())


@pytest.mark.slow
@pytest.mark.parametrize("alias", ["smollm2-135m", "gemma3-270m"])
def test_embedded_tokenizers_on_the_authored_prompts(alias, load_real):
    tokenizer = load_real(alias).tokenizer
    prompts = pd.read_csv(PROJECT_ROOT / "data/01_raw/emotion_prompts.csv", keep_default_na=False)
    sample = prompts.sample(120, random_state=0)
    _assert_positions_end_the_trigger(tokenizer, sample.text.tolist(), sample.trigger.tolist())


@pytest.mark.slow
def test_gemma_prompts_start_with_bos(load_real):
    tokenizer = load_real("gemma3-270m").tokenizer
    tokenized = tokenize_with_positions(tokenizer, ["Sorry"], [(0, 5)])
    assert tokenized.input_ids[0][0] == tokenizer.bos_token_id
    assert tokenized.span_end_positions[0] == 1 == tokenized.sentence_end_positions[0]


def test_span_outside_text_names_the_prompt(gpt2_style_tokenizer):
    with pytest.raises(ValueError, match="Prompt gra_007: no token covers"):
        tokenize_with_positions(gpt2_style_tokenizer, ["Thanks."], [(40, 45)], ["gra_007"])


def test_mismatched_lengths_and_missing_phrase(gpt2_style_tokenizer):
    with pytest.raises(ValueError, match="2 texts but 1 spans"):
        tokenize_with_positions(gpt2_style_tokenizer, ["a b", "c d"], [(0, 1)])
    with pytest.raises(ValueError, match="does not occur verbatim"):
        find_span("Thanks a lot", "thank you")
    assert find_span("Oh, thanks, thanks", "thanks") == (4, 10)
    assert isinstance(tokenize_with_positions(gpt2_style_tokenizer, ["a"], [(0, 1)]).span_end_positions, np.ndarray)
