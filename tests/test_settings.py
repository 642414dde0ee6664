from kedro.config import OmegaConfigLoader

from emotion_circuits.settings import CONFIG_LOADER_ARGS
from tests.conftest import PROJECT_ROOT


def test_gpu_environment_overrides_single_parameters_not_whole_groups():
    loader = OmegaConfigLoader(str(PROJECT_ROOT / "conf"), **{**CONFIG_LOADER_ARGS, "default_run_env": "gpu"})
    params = loader["parameters"]
    assert params["alignment"]["n_null"] == 1000 and params["alignment"]["k_max"] == 10
    assert params["activations"]["batch_size"] == 256 and params["activations"]["include_mlp_out"] is False
