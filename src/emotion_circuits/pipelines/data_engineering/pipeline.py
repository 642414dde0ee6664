"""The data_engineering pipeline."""

from kedro.pipeline import Pipeline, node

from emotion_circuits.pipelines.data_engineering import nodes


def create_pipeline(**kwargs) -> Pipeline:
    """Authored prompts validated and split; an offline corpus cut into neutral passages."""
    return Pipeline([
        node(nodes.validate_emotion_prompts, ["raw_emotion_prompts", "params:data_engineering"],
             "validated_emotion_prompts", name="validate_emotion_prompts"),
        node(nodes.assign_splits, ["validated_emotion_prompts", "params:data_engineering", "params:seed"],
             "emotion_prompts", name="assign_splits"),
        node(nodes.validate_real_world_prompts, ["raw_real_world_prompts", "params:data_engineering"],
             "real_world_prompts", name="validate_real_world_prompts"),
        node(nodes.split_neutral_passages, ["neutral_corpus", "params:data_engineering"], "neutral_passages",
             name="split_neutral_passages"),
        node(nodes.summarise_prompts, ["emotion_prompts", "real_world_prompts"], "prompt_summary",
             name="summarise_prompts"),
        node(nodes.plot_prompt_lengths, "emotion_prompts", "prompt_length_figure",
             name="plot_prompt_lengths"),
    ], tags=["emotion"])
