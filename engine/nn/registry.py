"""The models by name: :data:`MODELS`, :func:`build_model`, their options and sizes.

Every model maps a batch of maps ``(B, C, H, W) float32`` (already divided by a fixed global
scale) to ``(B, 2 * n_params) float32``: the first ``n_params`` columns are the posterior means,
the last ``n_params`` the log standard deviations, both in normalised parameter units (each
parameter scaled to [0, 1] by its prior box; see ``engine.tasks.regression.Regression``).
The models of :data:`CLASSIFIERS` also take ``head="logits"``: then the output is ``(B,
n_params)`` class logits, ``n_params`` being the number of classes
(``engine.tasks.classification``).

Models are built by name with :func:`build_model` from plain keyword arguments, so a checkpoint
that stores ``(model_name, model_kwargs, model_state)`` rebuilds its model without code. Every
registered constructor takes the same four keyword arguments (``in_channels``, ``n_params``,
``width``, ``circular_padding``) plus model-specific extras that all have defaults:

``cnn``
    Small conv baseline (:class:`engine.nn.backbones.CNN`), about 80k parameters at width 16.
``resnet18``
    ResNet-18 (He et al. 2016, CVPR, "Deep residual learning for image recognition") adapted to
    small maps: 3×3 stem without max-pool, BasicBlocks [2, 2, 2, 2] with ``width·(1, 2, 4, 8)``
    channels, GroupNorm, global average pooling, MLP head (:func:`engine.nn.backbones.resnet18`).
``resnet_cbam``
    The same ResNet with a CBAM block (Woo et al. 2018, ECCV, "CBAM: Convolutional Block
    Attention Module") on the residual branch of every BasicBlock
    (:func:`engine.nn.backbones.resnet_cbam`).
``hybrid``
    A conv branch and a branch on the binned log power spectrum of each input channel, computed
    inside the model with the estimator of :mod:`engine.physics.stats`, fused by
    squeeze-and-excitation (Hu et al. 2018, CVPR, "Squeeze-and-excitation networks")
    (:class:`engine.nn.hybrid.HybridPk`).
``hybrid_std``
    ``hybrid`` whose spectrum branch standardises its input with statistics of the first
    training batch and whose conv branch sees 4×4-pixel averages (for training on a CPU)
    (:func:`engine.nn.hybrid.hybrid_std`).
``hybrid_log``
    ``hybrid_std`` on the log density ln(1 + δ) instead of δ (:func:`engine.nn.hybrid.hybrid_log`),
    for lognormal and N-body-like maps.
``vit_small``
    A small Vision Transformer (Dosovitskiy et al. 2021, ICLR, arXiv:2010.11929): ``patch_size``
    × ``patch_size`` patches (default 8) embedded to ``4·width`` dimensions, a class token, fixed
    2-D sine-cosine position embeddings, ``depth`` (default 6) pre-norm transformer blocks, MLP
    head on the class token (:func:`engine.nn.vit.vit_small`). Map sides must be multiples of
    ``patch_size``; ``circular_padding`` changes nothing (no padding).

Every model takes any number of input channels ``C >= 1``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from engine.nn.backbones import CNN, resnet18, resnet_cbam
from engine.nn.hybrid import HybridPk, hybrid_log, hybrid_std
from engine.nn.vit import vit_small
from engine.params import ConfigError

__all__ = [
    "CLASSIFIERS",
    "MODELS",
    "NETWORKS",
    "build_model",
    "check_model_name",
    "count_parameters",
    "format_count",
    "model_options",
    "summary",
]

#: Model constructors by name; each takes keyword arguments only (at least ``in_channels``,
#: ``n_params``, ``width``, ``circular_padding``) and returns an ``nn.Module`` mapping
#: ``(B, C, H, W)`` to ``(B, 2 * n_params)``.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "cnn": CNN,
    "resnet18": resnet18,
    "resnet_cbam": resnet_cbam,
    "hybrid": HybridPk,
    "hybrid_std": hybrid_std,
    "hybrid_log": hybrid_log,
    "vit_small": vit_small,
}

#: Models of :data:`MODELS` that take ``head="logits"`` (class logits ``(B, n_params)``): the
#: networks of the classification task.
CLASSIFIERS: tuple[str, ...] = ("resnet18", "resnet_cbam", "cnn", "vit_small")

#: Networks of the other tasks (generators, discriminators, U-Nets), ``name → "module:attr"``,
#: imported when built. They are not regression models (not choices of ``model``), but
#: checkpoints rebuild them by name with :func:`build_model` all the same.
NETWORKS: dict[str, str] = {
    "gan_generator": "engine.nn.gan:Generator",
    "gan_discriminator": "engine.nn.gan:Discriminator",
    "diffusion_unet": "engine.nn.unet:ConditionalUNet",
    "healpix_unet": "engine.nn.healpix_unet:HealpixUNet",
}


def _constructor(name: str) -> Callable[..., nn.Module]:
    if name in MODELS:
        return MODELS[name]
    import importlib

    module, _, attr = NETWORKS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def check_model_name(name: str) -> None:
    """Check that ``name`` is registered in :data:`MODELS`.

    Parameters
    ----------
    name : str
        Model name.

    Raises
    ------
    ConfigError
        Unknown ``name``; the one-line message lists the known ones.
    """
    if name not in MODELS and name not in NETWORKS:
        raise ConfigError(
            f"model={name!r} is not allowed: model must be one of {', '.join(map(repr, MODELS))}"
        )


def build_model(name: str, **kwargs) -> nn.Module:
    """Build the model registered as ``name``.

    Parameters
    ----------
    name : str
        A key of :data:`MODELS`.
    **kwargs
        Keyword arguments of the model (see :func:`model_options`).

    Returns
    -------
    torch.nn.Module
        Freshly initialised (float32, CPU, training mode), mapping ``(B, C, H, W)`` maps to
        ``(B, 2 * n_params)`` means and log-stds.

    Raises
    ------
    ConfigError
        Unknown ``name`` (the message lists the known ones), keyword arguments the model does
        not take, or values it rejects (one line).
    """
    check_model_name(name)
    try:
        return _constructor(name)(**kwargs)
    except (TypeError, ValueError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"model={name!r} cannot be built with {kwargs}: {msg}") from None


def model_options(name: str) -> dict[str, object]:
    """Keyword arguments of the model ``name`` and their defaults (for CLIs and forms).

    Parameters
    ----------
    name : str
        A key of :data:`MODELS`.

    Returns
    -------
    dict
        Argument name → default value, in signature order.

    Raises
    ------
    ConfigError
        Unknown ``name``.
    """
    check_model_name(name)
    sig = inspect.signature(_constructor(name))
    return {k: p.default for k, p in sig.parameters.items() if p.default is not p.empty}


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of scalar parameters of ``model``.

    Parameters
    ----------
    model : torch.nn.Module
    trainable_only : bool
        Count only parameters with ``requires_grad`` (buffers are never counted).

    Returns
    -------
    int
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def format_count(n: int) -> str:
    """A count with three significant digits and a k/M suffix.

    Parameters
    ----------
    n : int
        Non-negative count.

    Returns
    -------
    str
        ``2_795_010 → "2.8 M"``, ``80_390 → "80.4 k"``, ``950 → "950"``.
    """
    if n >= 1_000_000:
        return f"{n / 1e6:.3g} M"
    if n >= 1_000:
        return f"{n / 1e3:.3g} k"
    return str(n)


def summary(model_name: str, **kwargs) -> str:
    """One line such as ``"resnet18: 2.8 M parameters"`` for the model built with ``kwargs``.

    Parameters
    ----------
    model_name : str
        A key of :data:`MODELS`.
    **kwargs
        As for :func:`build_model`.

    Returns
    -------
    str

    Raises
    ------
    ConfigError
        As :func:`build_model`.
    """
    n = count_parameters(build_model(model_name, **kwargs))
    return f"{model_name}: {format_count(n)} parameters"
