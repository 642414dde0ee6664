import pickle

import numpy as np
import pytest
from kedro.io.core import DatasetError

from emotion_circuits.contracts import Activations, ContractError, check_same_model
from emotion_circuits.datasets import ContractDataset
from tests import factories


@pytest.mark.parametrize("build", [factories.emotion_vectors, factories.emotion_subspaces,
                                   factories.steering_directions, factories.linear_maps,
                                   factories.semantic_activations, factories.token_activations])
def test_every_factory_instance_is_valid_and_survives_its_stored_form(build):
    instance = build()
    instance.validate()
    restored = type(instance).from_stored(pickle.loads(pickle.dumps(instance.to_dict())))
    assert restored.to_dict().keys() == instance.to_dict().keys()


def test_validation_names_the_offending_field():
    acts = factories.planted_activations(np.random.default_rng(0))
    acts.resid["trigger"] = acts.resid["trigger"][:, :-1]
    with pytest.raises(ContractError,
                       match=r"Activations.resid\['trigger'\]: shape \[80, 4, 16\], expected \[80, 5, 16\]"):
        acts.validate()
    acts = factories.planted_activations(np.random.default_rng(0))
    acts.emotions = acts.emotions[:-1]
    with pytest.raises(ContractError, match="Activations.emotions: has 79 entries for 80 rows"):
        acts.validate()
    acts = factories.planted_activations(np.random.default_rng(0))
    acts.resid["sentence_end"][0, 0, 0] = np.nan
    with pytest.raises(ContractError, match="NaN"):
        acts.validate()


def test_a_pickle_from_before_the_contracts_loads_and_a_broken_one_says_to_rerun(tmp_path):
    acts = factories.planted_activations(np.random.default_rng(0))
    legacy = {k: v for k, v in acts.to_dict().items() if k != "contract"}  # the old dict layout
    assert Activations.from_stored(legacy).ids == acts.ids
    del legacy["resid"]
    with pytest.raises(ContractError, match=r"lacks field\(s\) \['resid'\].*kedro run --pipelines=activations"):
        Activations.from_stored(legacy, source="x.pkl")


def test_contract_dataset_round_trip_and_refusals(tmp_path):
    dataset = ContractDataset(contract="Activations", filepath=str(tmp_path / "a.pkl"))
    acts = factories.planted_activations(np.random.default_rng(0))
    dataset.save(acts)
    loaded = dataset.load()
    assert isinstance(loaded, Activations) and np.array_equal(loaded.resid["trigger"], acts.resid["trigger"])
    with open(tmp_path / "a.pkl", "rb") as handle:
        assert isinstance(pickle.load(handle), dict)  # readable without this package
    with pytest.raises(DatasetError, match="expected a Activations"):
        dataset.save({"model": "x"})
    acts.ids = acts.ids[:3]
    with pytest.raises(DatasetError, match="Refusing to save"):
        dataset.save(acts)
    with pytest.raises(DatasetError, match="Unknown contract"):
        ContractDataset(contract="Nope", filepath=str(tmp_path / "b.pkl"))


def test_artifacts_of_different_models_are_refused():
    with pytest.raises(ContractError, match="different models"):
        check_same_model(factories.emotion_vectors(model="a"), factories.emotion_subspaces(model="b"))
