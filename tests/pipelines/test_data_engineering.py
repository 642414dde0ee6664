import re

import pandas as pd
import pytest
import yaml

from emotion_circuits.pipelines.data_engineering import nodes
from emotion_circuits.validation import PromptFileError
from tests.conftest import PROJECT_ROOT

PARAMS = yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_data_engineering.yml").read_text())["data_engineering"]
PARAMS.update(emotion_prompts_file="prompts.csv", real_world_prompts_file="real.csv")


def _prompts(n_per_emotion=3):
    rows = []
    for emotion, phrase in [("gratitude", "thank you"), ("anger", "furious"), ("apology", "sorry"),
                            ("neutral", "station")]:
        for i in range(n_per_emotion):
            rows.append({"id": f"{emotion[:3]}_{i}", "emotion": emotion, "trigger": phrase,
                         "text": f"Person {i} said {phrase} at the door today.", "source": "test"})
    return pd.DataFrame(rows)


def _params(**overrides):
    return {**PARAMS, "min_prompts_per_emotion": 3, "baseline_per_emotion": 2, **overrides}


def test_valid_prompts_get_trigger_spans():
    prompts = nodes.validate_emotion_prompts(_prompts(), _params())
    row = prompts.iloc[0]
    assert row.text[row.trigger_start:row.trigger_end] == row.trigger


@pytest.mark.parametrize("mutate, message", [
    (lambda df: df.assign(trigger=df.trigger.where(df.index != 4, "livid")),
     r"line 6 \(id ang_1\): trigger 'livid' does not occur"),
    (lambda df: df.assign(text=df.text.where(df.index != 2, "")), r"line 4 \(id gra_2\): empty text"),
    (lambda df: df.assign(emotion=df.emotion.where(df.index != 0, "joy")), r"line 2 \(id gra_0\): emotion 'joy'"),
    (lambda df: df.assign(text=df.text.where(df.index != 1, df.text[0])), r"line 3 \(id gra_1\): duplicate of line 2"),
    (lambda df: df.assign(id=df.id.where(df.index != 1, "gra_0")), r"line 3 \(id gra_0\): id repeats line 2"),
    (lambda df: df.assign(text=df.text.where(df.index != 0, "thank you " * 40)),
     r"line 2 \(id gra_0\): text has 80 words"),
    (lambda df: df.drop(columns="trigger"), r"missing column\(s\) \['trigger'\]"),
    (lambda df: df[df.emotion != "apology"], r"only 0 rows with emotion 'apology'"),
])
def test_bad_prompt_files_name_the_file_and_line(mutate, message):
    with pytest.raises(PromptFileError, match=r"prompts\.csv has \d+ problem") as error:
        nodes.validate_emotion_prompts(mutate(_prompts()).reset_index(drop=True), _params())
    assert re.search(message, str(error.value)), str(error.value)


def test_splits_are_balanced_seeded_and_baseline_first():
    validated = nodes.validate_emotion_prompts(_prompts(5), _params())
    first = nodes.assign_splits(validated, _params(), seed=0)
    assert (first.groupby("emotion").split.apply(lambda s: (s == "baseline").sum()) == 2).all()
    assert first.groupby("emotion").split.apply(lambda s: list(s[:2]) == ["baseline"] * 2).all()
    assert first.equals(nodes.assign_splits(validated, _params(), seed=0))
    assert not first.id.equals(nodes.assign_splits(validated, _params(), seed=1).id)
    assert list(first.columns[:6]) == ["id", "emotion", "text", "trigger", "split", "source"]


def test_authored_files_pass_and_meet_the_targets():
    raw = pd.read_csv(PROJECT_ROOT / "data/01_raw/emotion_prompts.csv", dtype=str, keep_default_na=False)
    prompts = nodes.assign_splits(nodes.validate_emotion_prompts(raw, PARAMS), PARAMS, seed=0)
    counts = prompts.groupby(["emotion", "split"]).size().unstack()
    assert (counts["baseline"] == 70).all() and (counts.sum(axis=1) >= 250).all()
    real = pd.read_csv(PROJECT_ROOT / "data/01_raw/real_world_prompts.csv", dtype=str, keep_default_na=False)
    real = nodes.validate_real_world_prompts(real, PARAMS)
    assert len(real) >= 35 and set(real.emotion) == set(PARAMS["emotions"])
    summary = nodes.summarise_prompts(prompts, real)
    assert summary.loc[summary.prompt_set == "emotion_prompts", "n"].sum() == len(prompts)


def test_real_world_genre_is_checked():
    real = pd.read_csv(PROJECT_ROOT / "data/01_raw/real_world_prompts.csv", dtype=str, keep_default_na=False)
    real.loc[3, "genre"] = "poem"
    with pytest.raises(PromptFileError, match=r"(?s)real\.csv has 1 problem.*line 5 .*genre 'poem'"):
        nodes.validate_real_world_prompts(real, PARAMS)
