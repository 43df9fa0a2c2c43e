"""Convolutional networks on maps: the small :class:`CNN` baseline and ResNet-18 with and without
CBAM attention.

``CNN`` is conv → GroupNorm → GELU stages with stride-2 downsampling and an MLP head.
:class:`ResNet` follows He et al. 2016 (CVPR, "Deep residual learning for image recognition"),
adapted to small maps: 3×3 stem without max-pool, BasicBlocks with ``width·(1, 2, 4, 8)``
channels, GroupNorm, global average pooling, :class:`~engine.nn.heads.GaussianHead`.
``resnet_cbam`` adds a CBAM block (Woo et al. 2018, ECCV) to the residual branch of every
BasicBlock.

Multi-channel input: every network here takes ``in_channels`` = C and maps ``(B, C, H, W)``; the
channels are mixed from the first convolution on, and :func:`~engine.nn.heads.amplitude_features`
adds ``2C`` features (mean and log-std of each channel) to the head.

Outputs: ``head="gaussian"`` (default) gives ``(B, 2 * n_params)`` means and log-stds
(regression); ``head="logits"`` gives ``(B, n_params)`` class logits (classification,
``n_params`` = number of classes; :func:`engine.nn.heads.make_head`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from engine.nn.blocks import (
    CBAM,
    ConvBlock,
    MaxPool3x3,
    check_model_args,
    conv2d,
    norm_layer,
)
from engine.nn.heads import amplitude_features, head_outputs, make_head

__all__ = ["CNN", "BasicBlock", "ResNet", "cnn_features", "resnet18", "resnet_cbam"]


def cnn_features(in_channels: int, width: int, stages: int, circular: bool) -> nn.Sequential:
    """Conv stages of :class:`CNN` (also the conv branch of ``engine.nn.hybrid.HybridPk``).

    A :class:`~engine.nn.blocks.ConvBlock` ``in_channels → width``, then per stage ``i`` a
    stride-2 ConvBlock to ``width·2^i`` channels and a stride-1 one.

    Parameters
    ----------
    in_channels : int
        Channels ``C`` of the input maps.
    width : int
        Channels of the first stage.
    stages : int
        Number of stride-2 stages ``s``.
    circular : bool
        Periodic padding in every convolution.

    Returns
    -------
    torch.nn.Sequential
        ``(B, C, H, W) → (B, width·2^(s-1), ⌈H/2^s⌉, ⌈W/2^s⌉)``, same dtype.
    """
    layers: list[nn.Module] = [ConvBlock(in_channels, width, circular=circular)]
    c = width
    for i in range(stages):
        c_out = width * 2**i
        layers += [
            ConvBlock(c, c_out, stride=2, circular=circular),
            ConvBlock(c_out, c_out, circular=circular),
        ]
        c = c_out
    return nn.Sequential(*layers)


class CNN(nn.Module):
    """Small convolutional baseline: conv stages with stride-2 downsampling, global average
    pooling, MLP head. ``(B, C, H, W) float32 → (B, 2 * n_params)``.

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
    amplitude_features : bool
        Feed :func:`~engine.nn.heads.amplitude_features` of the input to the head. Off by default
        (the original baseline), in which case the output is blind to the overall amplitude of
        the maps.
    head : {"gaussian", "logits"}
        Output ``(B, 2 * n_params)`` means and log-stds, or ``(B, n_params)`` class logits.

    Raises
    ------
    ValueError
        ``in_channels``, ``n_params`` or ``width`` not a positive integer; unknown ``head``.

    Notes
    -----
    With the defaults the network has about 80k parameters; the output log-stds are not clamped
    (a plain linear head, unlike the other models).
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_params: int = 2,
        width: int = 16,
        stages: int = 3,
        hidden: int = 64,
        circular_padding: bool = True,
        amplitude_features: bool = False,
        head: str = "gaussian",
    ):
        super().__init__()
        check_model_args(in_channels, n_params, width)
        n_out = head_outputs(head, n_params)
        self.n_params = n_params
        self.amplitude_features = amplitude_features
        #: Downsampling factor from input to the last feature map (pixels).
        self.total_stride = 2**stages
        #: Smallest map side (pixels) the model accepts.
        self.min_size = 1
        self.features = cnn_features(in_channels, width, stages, circular_padding)
        c = width * 2 ** (stages - 1) + (2 * in_channels if amplitude_features else 0)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(c, hidden), nn.GELU(), nn.Linear(hidden, n_out)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) float32`` normalised maps → ``(B, 2 * n_params)`` means and log-stds
        (``head="logits"``: ``(B, n_params)`` logits)."""
        h = self.features(x).mean(dim=(-2, -1), keepdim=True)
        if self.amplitude_features:
            h = torch.cat([h.flatten(1), amplitude_features(x).to(h.dtype)], dim=1)
        return self.head(h)


class BasicBlock(nn.Module):
    """ResNet BasicBlock (He et al. 2016, fig. 2): two 3×3 conv-norm layers plus a shortcut.

    ``relu(norm(conv(relu(norm(conv(x))))) → attention → + shortcut(x))``; the shortcut is the
    identity, or a strided 1×1 conv + norm when the shape changes (option B of the paper). With
    ``cbam`` the attention module sits on the residual branch before the addition, as in Woo et
    al. 2018, fig. 3. ``(B, c_in, H, W) → (B, c_out, ⌈H/stride⌉, ⌈W/stride⌉)``, same dtype.

    Parameters
    ----------
    c_in, c_out : int
        Input and output channels.
    stride : int
        Stride of the first convolution and of the shortcut.
    circular : bool
        Periodic padding; zeros otherwise.
    norm : {"group", "batch"}
        Normalisation layers (:func:`~engine.nn.blocks.norm_layer`).
    cbam : bool
        Put a :class:`~engine.nn.blocks.CBAM` module on the residual branch.
    cbam_reduction : int
        Reduction ratio of CBAM's channel MLP.

    Raises
    ------
    ValueError
        Unknown ``norm``.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        stride: int = 1,
        circular: bool = True,
        norm: str = "group",
        cbam: bool = False,
        cbam_reduction: int = 16,
    ):
        super().__init__()
        self.conv1 = conv2d(c_in, c_out, 3, stride, circular)
        self.norm1 = norm_layer(norm, c_out)
        self.conv2 = conv2d(c_out, c_out, 3, 1, circular)
        self.norm2 = norm_layer(norm, c_out)
        self.attention = CBAM(c_out, cbam_reduction, circular) if cbam else nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                conv2d(c_in, c_out, 1, stride, circular), norm_layer(norm, c_out)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, c_in, H, W) → (B, c_out, ⌈H/stride⌉, ⌈W/stride⌉)``."""
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.attention(self.norm2(self.conv2(out)))
        return F.relu(out + self.shortcut(x))


def _stem(
    kind: str, in_channels: int, width: int, norm: str, circular: bool
) -> tuple[nn.Sequential, int]:
    """The ResNet stem ``(B, C, H, W) → (B, width, H/s, W/s)`` and its stride ``s``."""
    if kind == "small":
        layers = [conv2d(in_channels, width, 3, 1, circular), norm_layer(norm, width), nn.ReLU()]
        return nn.Sequential(*layers), 1
    if kind == "large":
        layers = [
            conv2d(in_channels, width, 7, 2, circular),
            norm_layer(norm, width),
            nn.ReLU(),
            MaxPool3x3(circular),
        ]
        return nn.Sequential(*layers), 4
    raise ValueError(f"stem={kind!r} must be 'small' or 'large'")


class ResNet(nn.Module):
    """ResNet of BasicBlocks (He et al. 2016, CVPR) for maps, with optional CBAM attention.

    ``(B, C, H, W) float32 → (B, 2 * n_params)``: stem → stages of :class:`BasicBlock` with
    ``width·(1, 2, 4, 8, …)`` channels (stride 2 at the start of every stage but the first) →
    global average pooling → [pooled features, amplitude features] → ``GaussianHead``.

    Parameters
    ----------
    in_channels : int
        Channels ``C`` of the input maps.
    n_params : int
        Number of inferred parameters; the output is ``(B, 2 * n_params)`` (means, log-stds).
    width : int
        Channels of the first stage; stage ``i`` has ``width * 2**i``.
    circular_padding : bool
        Periodic padding in every convolution and pooling (maps of a periodic box); zeros
        otherwise. With it, the output is invariant to periodic shifts by multiples of
        :attr:`total_stride` pixels.
    blocks : sequence of int
        BasicBlocks per stage; ``(2, 2, 2, 2)`` is ResNet-18.
    stem : {"small", "large"}
        ``"small"``: 3×3 conv, stride 1, no max-pool (maps up to ~128²; total stride 8 with
        four stages). ``"large"``: the ImageNet stem, 7×7 conv stride 2 + 3×3 max-pool stride 2
        (large maps; total stride 32).
    norm : {"group", "batch"}
        GroupNorm (default; per map, batch-independent, DDP-safe) or BatchNorm (needs
        ``nn.SyncBatchNorm.convert_sync_batchnorm`` under DDP and batches of more than a few maps).
    cbam : bool
        Put a CBAM module (Woo et al. 2018) in every BasicBlock.
    cbam_reduction : int
        Reduction ratio of CBAM's channel MLP (16 in the paper).
    hidden : int
        Width of the head's hidden layer.
    amplitude_features : bool
        Concatenate per-channel mean and log-std of the input maps (``2C`` features) to the
        pooled features (the normalisation layers otherwise remove the map amplitude).
    head : {"gaussian", "logits"}
        :class:`~engine.nn.heads.GaussianHead`, output ``(B, 2 * n_params)`` means and log-stds
        (regression), or :class:`~engine.nn.heads.LogitsHead`, output ``(B, n_params)`` class
        logits (classification: ``n_params`` is the number of classes).

    Raises
    ------
    ValueError
        Non-positive ``in_channels``/``n_params``/``width``, bad ``blocks``, unknown ``stem``,
        ``norm`` or ``head``.

    Notes
    -----
    Maps need at least ``total_stride`` pixels per side (fewer work but lose resolution).
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_params: int = 2,
        width: int = 16,
        circular_padding: bool = True,
        blocks: Sequence[int] = (2, 2, 2, 2),
        stem: str = "small",
        norm: str = "group",
        cbam: bool = False,
        cbam_reduction: int = 16,
        hidden: int = 128,
        amplitude_features: bool = True,
        head: str = "gaussian",
    ):
        super().__init__()
        check_model_args(in_channels, n_params, width)
        head_outputs(head, n_params)  # refuse an unknown head before building anything
        blocks = list(blocks)
        if not blocks or any(not isinstance(b, int) or b < 1 for b in blocks):
            raise ValueError(f"blocks={blocks!r} must be a non-empty list of positive integers")
        c = circular_padding
        self.stem, stem_stride = _stem(stem, in_channels, width, norm, c)
        self.n_params = n_params
        self.amplitude_features = amplitude_features
        #: Downsampling factor from input to the last feature map (pixels).
        self.total_stride = stem_stride * 2 ** (len(blocks) - 1)
        #: Smallest map side (pixels) the model accepts.
        self.min_size = 1
        layers: list[nn.Module] = []
        c_in = width
        for i, n_blocks in enumerate(blocks):
            c_out = width * 2**i
            for j in range(n_blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(BasicBlock(c_in, c_out, stride, c, norm, cbam, cbam_reduction))
                c_in = c_out
        self.layers = nn.Sequential(*layers)
        n_features = c_in + (2 * in_channels if amplitude_features else 0)
        self.head = make_head(head, n_features, n_params, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) float32`` normalised maps → ``(B, 2 * n_params)`` means and log-stds
        (``head="logits"``: ``(B, n_params)`` logits)."""
        h = self.layers(self.stem(x)).mean(dim=(-2, -1))
        if self.amplitude_features:
            h = torch.cat([h, amplitude_features(x).to(h.dtype)], dim=1)
        return self.head(h)


def resnet18(
    in_channels: int = 1,
    n_params: int = 2,
    width: int = 16,
    circular_padding: bool = True,
    stem: str = "small",
    norm: str = "group",
    hidden: int = 128,
    amplitude_features: bool = True,
    head: str = "gaussian",
) -> ResNet:
    """ResNet-18 (He et al. 2016): BasicBlocks [2, 2, 2, 2], channels ``width·(1, 2, 4, 8)``.

    Parameters
    ----------
    in_channels, n_params, width, circular_padding, stem, norm, hidden, amplitude_features, head
        As for :class:`ResNet` (``head="logits"``: ``(B, n_params)`` class logits).

    Returns
    -------
    ResNet
        About 0.70 M parameters at width 16 and 2.8 M at width 32 (11.2 M at the ImageNet width
        64, as torchvision's ``resnet18`` without its stem and 1000-class head).

    Raises
    ------
    ValueError
        As :class:`ResNet`.
    """
    return ResNet(
        in_channels=in_channels,
        n_params=n_params,
        width=width,
        circular_padding=circular_padding,
        blocks=(2, 2, 2, 2),
        stem=stem,
        norm=norm,
        cbam=False,
        hidden=hidden,
        amplitude_features=amplitude_features,
        head=head,
    )


def resnet_cbam(
    in_channels: int = 1,
    n_params: int = 2,
    width: int = 16,
    circular_padding: bool = True,
    stem: str = "small",
    norm: str = "group",
    cbam_reduction: int = 16,
    hidden: int = 128,
    amplitude_features: bool = True,
    head: str = "gaussian",
) -> ResNet:
    """ResNet-18 with a CBAM module (Woo et al. 2018, ECCV) in each of its eight BasicBlocks.

    Parameters
    ----------
    in_channels, n_params, width, circular_padding, stem, norm
        As for :class:`ResNet`.
    cbam_reduction, hidden, amplitude_features, head
        As for :class:`ResNet`.

    Returns
    -------
    ResNet
        About 2 % more parameters than :func:`resnet18`.

    Raises
    ------
    ValueError
        As :class:`ResNet`.
    """
    return ResNet(
        in_channels=in_channels,
        n_params=n_params,
        width=width,
        circular_padding=circular_padding,
        blocks=(2, 2, 2, 2),
        stem=stem,
        norm=norm,
        cbam=True,
        cbam_reduction=cbam_reduction,
        hidden=hidden,
        amplitude_features=amplitude_features,
        head=head,
    )
