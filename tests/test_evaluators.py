import json

import pandas as pd
import pytest

from emotion_circuits.evaluators import EvaluatorNotAvailableError, build_evaluators, score_texts
from tests.conftest import PROJECT_ROOT

PROTOTYPES = json.loads((PROJECT_ROOT / "data/01_raw/evaluator_prototypes.json").read_text())["classes"]
LEXICONS = json.loads((PROJECT_ROOT / "data/01_raw/evaluator_lexicons.json").read_text())
SANITY = pd.read_csv(PROJECT_ROOT / "data/01_raw/evaluator_sanity.csv")

GRATEFUL = "Thank you so much, this is wonderful and I really appreciate it!"
NEUTRAL = "The meeting has been moved to room four on Tuesday."
ANGRY = "This is outrageous, I am furious and sick of your useless excuses!"


def _build(*names):
    return build_evaluators(list(names), PROTOTYPES, LEXICONS)


def test_vader_orders_positive_neutral_negative():
    scores = score_texts(_build("vader"), [GRATEFUL, NEUTRAL, ANGRY])
    assert scores.vader_compound[0] > scores.vader_compound[1] > scores.vader_compound[2]


def test_nrc_and_keywords_count_the_right_affect():
    scores = score_texts(_build("nrc", "keywords"), [GRATEFUL, NEUTRAL, ANGRY])
    assert scores.nrc_anger[2] > 0 and scores.nrc_anger[1] == 0
    assert scores.keywords_gratitude[0] > 0 == scores.keywords_gratitude[1]
    assert scores.keywords_anger[2] > scores.keywords_anger[0]


def test_politeness_lexicon_orders_polite_over_rude():
    polite = "Could you please send the file when you have a moment? Thank you."
    rude = "Shut up and send the stupid file now, you idiot."
    scores = score_texts(_build("politeness_lexicon"), [polite, NEUTRAL, rude]).politeness_score
    assert scores[0] > scores[1] > scores[2]


def test_prototype_scores_classify_the_authored_sanity_set():
    evaluator = _build("prototype")[0]
    predicted = evaluator.classify(SANITY.text.tolist())
    accuracy = (pd.Series(predicted) == SANITY.label).mean()
    assert accuracy >= 0.7, accuracy
    scores = evaluator.score(SANITY.text.tolist()).assign(label=SANITY.label)
    means = scores.groupby("label").mean()
    for label in means.index:  # on average every class is closest to its own prototype
        assert means.loc[label].idxmax() == f"proto_{label}"


def test_missing_hf_classifier_and_unknown_names_are_clear():
    # conftest sets HF_HUB_OFFLINE, so nothing touches the network
    with pytest.raises(EvaluatorNotAvailableError,
                       match=r"'goemotions'.*bhadresh-savani/roberta-base-go-emotions.*not available"):
        _build("goemotions")
    with pytest.raises(EvaluatorNotAvailableError, match=r"Unknown evaluator\(s\) \['sarcasm'\]"):
        _build("vader", "sarcasm")
