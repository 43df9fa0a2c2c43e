"""Output heads and the amplitude features fed to them.

Every model ends, by default (``head="gaussian"``), in ``(B, 2 * n_params)``: the first
``n_params`` columns are posterior means, the last ``n_params`` log standard deviations, both in
normalised parameter units (each parameter scaled to [0, 1] by its prior box; see
``engine.tasks.regression.Regression``). :class:`GaussianHead` squashes the log-stds smoothly
into ``[LOG_STD_MIN, LOG_STD_MAX]`` (:func:`engine.nn.blocks.soft_clamp`), the range the training
task clamps to, so gradients never vanish there. With ``head="logits"`` a model ends in
:class:`LogitsHead`, ``(B, n_params)`` unnormalised class scores (``n_params`` = the number of
classes; ``engine.tasks.classification``). :func:`make_head` builds either.

Amplitude: a normalisation layer right after the first (linear, bias-free) convolution divides
out the map's overall amplitude, so a network built only of conv → norm blocks is blind to it
(``CNN()(a * x) == CNN()(x)`` to float precision) although the amplitude is the main carrier of
σ8. The ResNets therefore feed :func:`amplitude_features` (per-channel mean and log standard
deviation of each input map) to the head; the hybrid sees the amplitude through its power
spectrum.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from engine.nn.blocks import soft_clamp

__all__ = [
    "HEADS",
    "GaussianHead",
    "LogitsHead",
    "amplitude_features",
    "head_outputs",
    "make_head",
]

#: Output heads by name (the ``head`` keyword of the models of :mod:`engine.nn.registry`).
HEADS = ("gaussian", "logits")


def amplitude_features(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-map, per-channel mean and log standard deviation of the input.

    Parameters
    ----------
    x : torch.Tensor
        ``(B, C, H, W)`` maps, any floating dtype (computed in float32).
    eps : float
        Added to the standard deviation before the log (input units), so constant maps are finite.

    Returns
    -------
    torch.Tensor
        ``(B, 2C) float32``: ``[mean_1..mean_C, log(std_1 + eps)..log(std_C + eps)]`` in the
        units of the (globally rescaled) input. Invariant to periodic shifts.
    """
    x = x.float()
    return torch.cat([x.mean(dim=(-2, -1)), torch.log(x.std(dim=(-2, -1)) + eps)], dim=1)


class GaussianHead(nn.Module):
    """MLP head ``(B, F) → (B, 2 * n_params)``: means, then log-stds squashed by ``soft_clamp``.

    ``Linear(F, hidden) → GELU → Linear(hidden, 2 * n_params)``. The output bias starts at the
    prior's moments in normalised units (mean 1/2, std 1/√12), so an untrained model starts near
    the prior rather than far from it.

    Parameters
    ----------
    in_features : int
        Length ``F`` of the feature vectors.
    n_params : int
        Number of inferred parameters.
    hidden : int
        Width of the hidden layer.
    """

    def __init__(self, in_features: int, n_params: int, hidden: int):
        super().__init__()
        self.n_params = n_params
        self.mlp = nn.Sequential(
            nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, 2 * n_params)
        )
        with torch.no_grad():
            self.mlp[-1].bias[:n_params] = 0.5
            self.mlp[-1].bias[n_params:] = -0.5 * math.log(12.0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, F)`` features → ``(B, 2 * n_params)`` means and log-stds (float32 or AMP dtype),
        normalised parameter units; log-stds in ``(LOG_STD_MIN, LOG_STD_MAX)``."""
        out = self.mlp(features)
        mean, log_std = out[:, : self.n_params], out[:, self.n_params :]
        return torch.cat([mean, soft_clamp(log_std)], dim=1)


class LogitsHead(nn.Module):
    """MLP head ``(B, F) → (B, n_classes)`` of class logits (unnormalised log-probabilities).

    ``Linear(F, hidden) → GELU → Linear(hidden, n_classes)``; the output bias starts at zero, so
    an untrained model starts near uniform class probabilities. Softmax and cross-entropy are the
    task's (``engine.tasks.classification``).

    Parameters
    ----------
    in_features : int
        Length ``F`` of the feature vectors.
    n_classes : int
        Number of classes K >= 1.
    hidden : int
        Width of the hidden layer.
    """

    def __init__(self, in_features: int, n_classes: int, hidden: int):
        super().__init__()
        self.n_params = n_classes
        self.mlp = nn.Sequential(
            nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, n_classes)
        )
        with torch.no_grad():
            self.mlp[-1].bias.zero_()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, F)`` features → ``(B, n_classes)`` logits (float32 or AMP dtype)."""
        return self.mlp(features)


def make_head(head: str, in_features: int, n_params: int, hidden: int) -> nn.Module:
    """The output head called ``head``: :class:`GaussianHead` (``"gaussian"``, output
    ``(B, 2 * n_params)``) or :class:`LogitsHead` (``"logits"``, output ``(B, n_params)``).

    Raises
    ------
    ValueError
        Unknown ``head`` (one line naming :data:`HEADS`).
    """
    if head == "gaussian":
        return GaussianHead(in_features, n_params, hidden)
    if head == "logits":
        return LogitsHead(in_features, n_params, hidden)
    raise ValueError(f"head={head!r} must be one of {', '.join(HEADS)}")


def head_outputs(head: str, n_params: int) -> int:
    """Output columns of a model with output head ``head``: ``2 * n_params`` (gaussian) or
    ``n_params`` (logits).

    Raises
    ------
    ValueError
        Unknown ``head``.
    """
    if head not in HEADS:
        raise ValueError(f"head={head!r} must be one of {', '.join(HEADS)}")
    return 2 * n_params if head == "gaussian" else n_params
