"""Output heads and the amplitude features fed to them.

Every model ends in ``(B, 2 * n_params)``: the first ``n_params`` columns are posterior means, the
last ``n_params`` log standard deviations, both in normalised parameter units (each parameter
scaled to [0, 1] by its prior box; see ``engine.tasks.regression.Regression``).
:class:`GaussianHead` squashes the log-stds smoothly into ``[LOG_STD_MIN, LOG_STD_MAX]``
(:func:`engine.nn.blocks.soft_clamp`), the range the training task clamps to, so gradients never
vanish there.

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

__all__ = ["GaussianHead", "amplitude_features"]


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
