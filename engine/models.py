"""Networks that infer cosmological parameters from maps, and a registry of them by name.

Every model maps a batch of maps ``(B, C, H, W) float32`` (already divided by a fixed global
scale) to ``(B, 2 * n_params) float32``: the first ``n_params`` columns are the posterior means,
the last ``n_params`` the log standard deviations, both in normalised parameter units (each
parameter scaled to [0, 1] by its prior box; see ``engine.training.ParameterRegression``).

Models are built by name with :func:`build_model` from plain keyword arguments, so a checkpoint
that stores ``(model_name, model_kwargs, model_state)`` rebuilds its model without code.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from engine.params import ConfigError


def _group_norm(channels: int, max_groups: int = 8) -> nn.GroupNorm:
    """GroupNorm with the largest number of groups <= ``max_groups`` dividing ``channels``."""
    return nn.GroupNorm(math.gcd(channels, max_groups), channels)


class ConvBlock(nn.Sequential):
    """3×3 convolution → GroupNorm → GELU, ``(B, c_in, H, W) → (B, c_out, ⌈H/s⌉, ⌈W/s⌉)``.

    ``circular`` pads periodically (for maps of a periodic box), else with zeros. GroupNorm rather
    than BatchNorm: statistics per map, so results do not depend on the batch (or DDP split).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, circular: bool = True):
        super().__init__(
            nn.Conv2d(
                c_in,
                c_out,
                kernel_size=3,
                stride=stride,
                padding=1,
                padding_mode="circular" if circular else "zeros",
                bias=False,
            ),
            _group_norm(c_out),
            nn.GELU(),
        )


class CNN(nn.Module):
    """Small convolutional baseline: conv stages with stride-2 downsampling, global average
    pooling, MLP head.

    Parameters
    ----------
    in_channels : int
        Channels ``C`` of the input maps ``(B, C, H, W)``.
    n_params : int
        Number of inferred parameters; the output is ``(B, 2 * n_params)`` (means, log-stds).
    width : int
        Channels of the first stage; stage ``i`` has ``width * 2**i``.
    stages : int
        Number of stages; each halves H and W (stride-2 conv) then applies one more conv.
    hidden : int
        Width of the MLP head's hidden layer.
    circular_padding : bool
        Periodic padding in every convolution (maps of a periodic box); zeros otherwise.

    With the defaults the network has about 80k parameters.
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_params: int = 2,
        width: int = 16,
        stages: int = 3,
        hidden: int = 64,
        circular_padding: bool = True,
    ):
        super().__init__()
        self.n_params = n_params
        layers: list[nn.Module] = [ConvBlock(in_channels, width, circular=circular_padding)]
        c = width
        for i in range(stages):
            c_out = width * 2**i
            layers += [
                ConvBlock(c, c_out, stride=2, circular=circular_padding),
                ConvBlock(c_out, c_out, circular=circular_padding),
            ]
            c = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(c, hidden), nn.GELU(), nn.Linear(hidden, 2 * n_params)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) float32`` normalised maps → ``(B, 2 * n_params)`` means and log-stds."""
        h = self.features(x).mean(dim=(-2, -1), keepdim=True)
        return self.head(h)


#: Model constructors by name; each takes keyword arguments only and returns an ``nn.Module``
#: mapping ``(B, C, H, W)`` to ``(B, 2 * n_params)``.
MODELS: dict[str, Callable[..., nn.Module]] = {"cnn": CNN}


def build_model(name: str, **kwargs) -> nn.Module:
    """Build the model registered as ``name`` with keyword arguments ``kwargs``.

    Raises
    ------
    ConfigError
        Unknown ``name`` (the message lists the known ones) or keyword arguments the model does
        not take.
    """
    if name not in MODELS:
        raise ConfigError(
            f"model={name!r} is not allowed: model must be one of {', '.join(map(repr, MODELS))}"
        )
    try:
        return MODELS[name](**kwargs)
    except TypeError as exc:
        raise ConfigError(f"model={name!r} cannot be built with {kwargs}: {exc}") from None


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of scalar parameters of ``model`` (only those with ``requires_grad`` by default)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
