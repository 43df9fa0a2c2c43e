"""Layers the networks are built of: norms, 'same' convolutions with periodic padding, ConvBlock,
the attention blocks CBAM and squeeze-and-excitation, and the smooth clamp of the log-stds.

Normalisation: GroupNorm, not BatchNorm, by default. Its statistics are per map, so a model gives
the same output for a map whatever the batch it sits in, train and eval modes agree, small
batches are fine, and DDP needs no SyncBatchNorm. The ResNets take ``norm="batch"`` as an option.

Padding: maps of a periodic box are padded periodically (``circular=True``) in every convolution
and pooling, so a network built of these layers commutes with periodic shifts by multiples of its
total stride. :func:`pad2d` wraps as often as needed, so maps smaller than a kernel work too.

Attention: :class:`CBAM` (Woo et al. 2018, ECCV, "CBAM: Convolutional Block Attention Module")
on feature maps, :class:`SqueezeExcitation` (Hu et al. 2018, CVPR, "Squeeze-and-excitation
networks") on pooled feature vectors.

The attribute names of the modules here are state-dict keys of the shipped checkpoints: do not
rename them.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CBAM",
    "LOG_STD_MAX",
    "LOG_STD_MIN",
    "ChannelAttention",
    "ConvBlock",
    "MaxPool3x3",
    "SpatialAttention",
    "SqueezeExcitation",
    "check_model_args",
    "conv2d",
    "group_norm",
    "norm_layer",
    "pad2d",
    "soft_clamp",
]

#: Range of the predicted log standard deviations (normalised units); the same as the clamp of
#: ``engine.tasks.regression.Regression``.
LOG_STD_MIN, LOG_STD_MAX = -7.0, 3.0


def check_model_args(in_channels: int, n_params: int, width: int) -> None:
    """Check the three integer arguments every registered model takes.

    Parameters
    ----------
    in_channels, n_params, width : int
        Input channels ``C``, number of inferred parameters, channels of the first stage.

    Raises
    ------
    ValueError
        One of them is not a positive integer (``bool`` is refused); one line naming it.
    """
    for name, value in (("in_channels", in_channels), ("n_params", n_params), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")


def soft_clamp(
    x: torch.Tensor, low: float = LOG_STD_MIN, high: float = LOG_STD_MAX
) -> torch.Tensor:
    """Smooth, monotone map of ℝ onto ``(low, high)``, ≈ identity well inside the interval.

    ``low + softplus(x - low) - softplus(x - high)``; unlike ``clamp`` its gradient never
    vanishes.

    Parameters
    ----------
    x : torch.Tensor
        Any shape and floating dtype (here: log standard deviations, normalised units).
    low, high : float
        The open interval the output lies in, same units as ``x``.

    Returns
    -------
    torch.Tensor
        Same shape and dtype as ``x``.
    """
    return low + F.softplus(x - low) - F.softplus(x - high)


def group_norm(channels: int, max_groups: int = 8) -> nn.GroupNorm:
    """GroupNorm with the largest number of groups ``<= max_groups`` that divides ``channels``.

    Parameters
    ----------
    channels : int
        Channels of the ``(B, channels, H, W)`` feature maps it normalises.
    max_groups : int
        Upper bound on the number of groups.

    Returns
    -------
    torch.nn.GroupNorm
        With ``gcd(channels, max_groups)`` groups and affine parameters (``weight``, ``bias``).
    """
    return nn.GroupNorm(math.gcd(channels, max_groups), channels)


def norm_layer(kind: str, channels: int) -> nn.Module:
    """Normalisation layer for ``(B, channels, H, W)`` feature maps, by name.

    Parameters
    ----------
    kind : {"group", "batch"}
        ``"group"``: :func:`group_norm` (per map); ``"batch"``: ``nn.BatchNorm2d`` (per batch).
    channels : int
        Channels of the feature maps.

    Returns
    -------
    torch.nn.Module

    Raises
    ------
    ValueError
        Unknown ``kind``.
    """
    if kind == "group":
        return group_norm(channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    raise ValueError(f"norm={kind!r} must be 'group' or 'batch'")


def conv2d(c_in: int, c_out: int, kernel: int, stride: int, circular: bool) -> nn.Conv2d:
    """Bias-free ``kernel``×``kernel`` convolution with 'same' padding (periodic if ``circular``).

    Parameters
    ----------
    c_in, c_out : int
        Input and output channels.
    kernel : int
        Odd kernel size (pixels).
    stride : int
        Stride (pixels).
    circular : bool
        Periodic padding (maps of a periodic box); zeros otherwise.

    Returns
    -------
    torch.nn.Conv2d
        ``(B, c_in, H, W) → (B, c_out, ⌈H/stride⌉, ⌈W/stride⌉)``, same dtype. Output pixel ``i``
        is centred on input pixel ``stride·i``, so with ``circular`` a periodic shift of the input
        by ``stride·s`` pixels shifts the output by ``s`` pixels.
    """
    return nn.Conv2d(
        c_in,
        c_out,
        kernel_size=kernel,
        stride=stride,
        padding=kernel // 2,
        padding_mode="circular" if circular else "zeros",
        bias=False,
    )


def pad2d(x: torch.Tensor, p: int, circular: bool, value: float = 0.0) -> torch.Tensor:
    """Pad the last two axes of ``x`` by ``p`` pixels on each side.

    Parameters
    ----------
    x : torch.Tensor
        ``(..., H, W)``, any dtype.
    p : int
        Padding (pixels); may exceed ``H`` or ``W`` when ``circular``.
    circular : bool
        Pad periodically, wrapping as often as needed (unlike ``F.pad``); else with ``value``.
    value : float
        Constant of the non-periodic padding.

    Returns
    -------
    torch.Tensor
        ``(..., H + 2p, W + 2p)``, same dtype and device as ``x``.
    """
    if p == 0:
        return x
    if not circular:
        return F.pad(x, (p, p, p, p), value=value)
    h, w = x.shape[-2:]
    iy = torch.arange(-p, h + p, device=x.device) % h
    ix = torch.arange(-p, w + p, device=x.device) % w
    return x[..., iy, :][..., ix]


class MaxPool3x3(nn.Module):
    """3×3 max-pool with stride 2 and 'same' padding, periodic when ``circular``.

    ``(B, C, H, W) → (B, C, ⌈H/2⌉, ⌈W/2⌉)``, same dtype; no parameters. The non-periodic padding
    is ``-inf``, so padded pixels never win.

    Parameters
    ----------
    circular : bool
        Periodic padding; ``-inf`` otherwise.
    """

    def __init__(self, circular: bool):
        super().__init__()
        self.circular = circular

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) → (B, C, ⌈H/2⌉, ⌈W/2⌉)``."""
        return F.max_pool2d(pad2d(x, 1, self.circular, value=-math.inf), 3, stride=2)


class ConvBlock(nn.Sequential):
    """3×3 convolution → GroupNorm → GELU, ``(B, c_in, H, W) → (B, c_out, ⌈H/s⌉, ⌈W/s⌉)``.

    GroupNorm rather than BatchNorm: statistics per map, so results do not depend on the batch
    (or the DDP split).

    Parameters
    ----------
    c_in, c_out : int
        Input and output channels.
    stride : int
        Stride ``s`` of the convolution (pixels).
    circular : bool
        Periodic padding (maps of a periodic box); zeros otherwise.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, circular: bool = True):
        super().__init__(conv2d(c_in, c_out, 3, stride, circular), group_norm(c_out), nn.GELU())


class ChannelAttention(nn.Module):
    """CBAM channel attention (Woo et al. 2018, eq. 2): ``x · σ(MLP(avgpool x) + MLP(maxpool x))``.

    A shared two-layer MLP (``channels → max(channels // reduction, 4) → channels``, ReLU) on the
    spatially average- and max-pooled features. ``(B, C, H, W) → (B, C, H, W)``, same dtype.

    Parameters
    ----------
    channels : int
        Channels ``C`` of the feature maps.
    reduction : int
        Reduction ratio of the MLP (16 in the paper).
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) → (B, C, H, W)``: ``x`` reweighted per channel."""
        a = self.mlp(x.mean(dim=(-2, -1))) + self.mlp(x.amax(dim=(-2, -1)))
        return x * torch.sigmoid(a)[:, :, None, None]


class SpatialAttention(nn.Module):
    """CBAM spatial attention (Woo et al. 2018, eq. 3): ``x · σ(conv7×7([mean_c x, max_c x]))``.

    The convolution (2 → 1 channels, with bias, no normalisation) pads periodically when
    ``circular`` (wrapping as often as needed, so maps smaller than the kernel work).
    ``(B, C, H, W) → (B, C, H, W)``, same dtype.

    Parameters
    ----------
    kernel_size : int
        Odd kernel size (7 in the paper).
    circular : bool
        Periodic padding; zeros otherwise.
    """

    def __init__(self, kernel_size: int = 7, circular: bool = True):
        super().__init__()
        self.circular = circular
        self.pad = kernel_size // 2
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) → (B, C, H, W)``: ``x`` reweighted per pixel."""
        s = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pad2d(s, self.pad, self.circular)))


class CBAM(nn.Sequential):
    """Convolutional Block Attention Module (Woo et al. 2018, ECCV, fig. 1).

    :class:`ChannelAttention`, then :class:`SpatialAttention` (7×7), applied in sequence.
    ``(B, C, H, W) → (B, C, H, W)``, same dtype.

    Parameters
    ----------
    channels : int
        Channels ``C`` of the feature maps.
    reduction : int
        Reduction ratio of the channel MLP.
    circular : bool
        Periodic padding of the spatial attention's convolution.
    """

    def __init__(self, channels: int, reduction: int = 16, circular: bool = True):
        super().__init__(
            ChannelAttention(channels, reduction), SpatialAttention(7, circular=circular)
        )


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation gate (Hu et al. 2018, CVPR, eq. 3) on a feature vector.

    ``z → z · σ(W₂ ReLU(W₁ z))`` with ``W₁: F → max(F // reduction, 4)`` and ``W₂`` back to F.
    The features here are already pooled vectors, so the "squeeze" is the identity.
    ``(B, F) → (B, F)``, same dtype.

    Parameters
    ----------
    features : int
        Length ``F`` of the feature vectors.
    reduction : int
        Reduction ratio of the gate.
    """

    def __init__(self, features: int, reduction: int = 4):
        super().__init__()
        hidden = max(features // reduction, 4)
        self.gate = nn.Sequential(
            nn.Linear(features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, features)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, F) → (B, F)``: ``z`` reweighted per feature."""
        return z * torch.sigmoid(self.gate(z))
