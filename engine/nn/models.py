"""Compatibility module: the public names of the networks, from their new homes.

The networks used to live here (and before that in ``engine.models``). New code imports from the
module that holds a name: :mod:`engine.nn.registry` (``MODELS``, ``build_model``,
``count_parameters``, ``summary``...), :mod:`engine.nn.hybrid` (``set_map_scale``,
``HybridPk``...), :mod:`engine.nn.backbones`, :mod:`engine.nn.heads`, :mod:`engine.nn.blocks`.
"""

from __future__ import annotations

from engine.nn.backbones import CNN, BasicBlock, ResNet, resnet18, resnet_cbam
from engine.nn.blocks import (
    CBAM,
    LOG_STD_MAX,
    LOG_STD_MIN,
    ChannelAttention,
    ConvBlock,
    SpatialAttention,
    SqueezeExcitation,
    soft_clamp,
)
from engine.nn.heads import GaussianHead, amplitude_features
from engine.nn.hybrid import (
    INPUT_TRANSFORMS,
    HybridPk,
    InputTransform,
    LogPowerSpectrum,
    hybrid_log,
    hybrid_std,
    set_map_scale,
)
from engine.nn.registry import (
    MODELS,
    build_model,
    count_parameters,
    format_count,
    model_options,
    summary,
)

__all__ = [
    "CBAM",
    "CNN",
    "INPUT_TRANSFORMS",
    "LOG_STD_MAX",
    "LOG_STD_MIN",
    "MODELS",
    "BasicBlock",
    "ChannelAttention",
    "ConvBlock",
    "GaussianHead",
    "HybridPk",
    "InputTransform",
    "LogPowerSpectrum",
    "ResNet",
    "SpatialAttention",
    "SqueezeExcitation",
    "amplitude_features",
    "build_model",
    "count_parameters",
    "format_count",
    "hybrid_log",
    "hybrid_std",
    "model_options",
    "resnet18",
    "resnet_cbam",
    "set_map_scale",
    "soft_clamp",
    "summary",
]
