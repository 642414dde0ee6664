"""Weight-space study of attention: do the heads' W_QK bilinear forms share a small subspace?"""

from emotion_circuits.pipelines.qk_weights.pipeline import phase_link_pipeline, template

__all__ = ["phase_link_pipeline", "template"]
