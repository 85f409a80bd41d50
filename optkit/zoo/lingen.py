"""LinGen (tiny): the Movie Gen–style video transformer with MATE blocks instead of self-attention.

Paper: Wang et al., "LinGen: Towards High-Resolution Minute-Length Text-to-Video Generation
with Linear Computational Complexity" (CVPR 2025). LinGen keeps a DiT/Movie Gen-style backbone
and replaces every self-attention with a MATE block (MA branch: bidirectional Mamba2 over the
Rotary Major Scan order with review tokens; TE branch: TEmporal Swin Attention), so the cost is
linear in the number of video tokens. Cross-attention to text, the MLPs and the flow-matching
objective are unchanged.

This file only swaps the mixer: every class, the conditioning, training and evaluation come
from `optkit.zoo.moviegen` (see its header for the deviations shared with it). Deviations of
the MATE pieces are listed in `optkit.nn.mate` and the files it imports. The paper also
trains progressively (low to high resolution, hybrid with images); the zoo trains the tiny model
on moving digits only.
"""

from __future__ import annotations

from torch import nn

from optkit.errors import ConfigError
from optkit.zoo import moviegen
from optkit.zoo.moviegen import VideoTransformer, VideoTransformerConfig
from optkit.zoo.registry import TrainSettings, ZooModel, register_model

PAPER = (
    "LinGen: Towards High-Resolution Minute-Length Text-to-Video Generation with Linear "
    "Computational Complexity (Wang et al., CVPR 2025)"
)


def lingen_tiny() -> VideoTransformerConfig:
    """The tiny LinGen config: moviegen tiny with MATE mixers."""
    return VideoTransformerConfig.tiny(mixer="mate")


def lingen_small() -> VideoTransformerConfig:
    """The small LinGen config: moviegen small with MATE mixers."""
    return VideoTransformerConfig.small(mixer="mate")


def build(config: VideoTransformerConfig) -> nn.Module:
    """Build a LinGen model; `config.mixer` must be "mate"."""
    if config.mixer != "mate":
        raise ConfigError(f"lingen needs mixer='mate', got {config.mixer!r} (use zoo model 'moviegen')")
    return VideoTransformer(config)


register_model(
    ZooModel(
        name="lingen",
        paper=PAPER,
        task="diffusion-video",
        configs={"tiny": lingen_tiny(), "small": lingen_small()},
        build=build,
        example_inputs=moviegen.example_inputs,
        sampler="flow-euler",
        guidance_scale=moviegen.GUIDANCE_SCALE,
        train=moviegen.train,
        evaluate=moviegen.evaluate,
        train_defaults=TrainSettings(steps=1500, batch_size=16),  # the shipped checkpoint's recipe
        extra={"data": "moving_digits"},
    )
)
