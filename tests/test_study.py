import pytest

from emotion_circuits.study import PAIR_SEPARATOR, Study, alias_from_key, model_key


@pytest.mark.parametrize("alias", ["smollm2-135m", "EleutherAI/pythia-160m", "EleutherAI/gpt-neo-1.3B",
                                   "/tmp/dc/models/SmolLM2.Q4_1.gguf", "../../../../outside/evil", "modèle_ü"])
def test_model_key_is_reversible_and_safe(alias):
    key = model_key(alias)
    assert alias_from_key(key) == alias
    assert "/" not in key and "." not in key and ".." not in key and PAIR_SEPARATOR not in key
    assert key.isascii()


def test_registry_aliases_are_their_own_keys():
    assert model_key("smollm2-135m") == "smollm2-135m" and model_key("gemma3-270m") == "gemma3-270m"


def test_a_string_that_is_no_key_is_refused():
    with pytest.raises(ValueError, match="not a model key"):
        alias_from_key("a_zz.b")


def test_study_defaults_to_the_pair_and_always_contains_it():
    assert Study.from_params({"model_a": "a", "model_b": "b", "models": None}).models == ("a", "b")
    study = Study.from_params({"model_a": "a", "model_b": "b", "models": ["c", "a"]})
    assert study.models == ("c", "a", "b") and study.pair_key == f"a{PAIR_SEPARATOR}b"
    assert study.study_key == PAIR_SEPARATOR.join(["c", "a", "b"])


@pytest.mark.parametrize(("params", "message"), [
    ({"model_a": "a", "model_b": "a"}, "model_a and model_b are both 'a'"),
    ({"model_a": "", "model_b": "b"}, "Parameter 'model_a'"),
    ({"model_a": "a", "model_b": "b", "models": "c"}, "Parameter 'models' must be a list"),
    ({"model_a": "a", "model_b": "b", "models": ["c", "c"]}, r"names \['c'\] more than once"),
])
def test_bad_study_parameters_are_named(params, message):
    with pytest.raises(ValueError, match=message):
        Study.from_params(params)
