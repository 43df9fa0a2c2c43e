"""Networks that infer cosmological parameters from maps, and a registry of them by name.

Every model maps a batch of maps ``(B, C, H, W) float32`` (already divided by a fixed global
scale) to ``(B, 2 * n_params) float32``: the first ``n_params`` columns are the posterior means,
the last ``n_params`` the log standard deviations, both in normalised parameter units (each
parameter scaled to [0, 1] by its prior box; see ``engine.train.training.ParameterRegression``).

Models are built by name with :func:`build_model` from plain keyword arguments, so a checkpoint
that stores ``(model_name, model_kwargs, model_state)`` rebuilds its model without code. Every
registered constructor takes the same four keyword arguments (``in_channels``, ``n_params``,
``width``, ``circular_padding``) plus model-specific extras that all have defaults:

``cnn``
    Small conv baseline (:class:`CNN`), about 80k parameters at width 16.
``resnet18``
    ResNet-18 (He et al. 2016, CVPR, "Deep residual learning for image recognition") adapted to
    small maps: 3×3 stem without max-pool, BasicBlocks [2, 2, 2, 2] with ``width·(1, 2, 4, 8)``
    channels, GroupNorm, global average pooling, MLP head (:func:`resnet18`).
``resnet_cbam``
    The same ResNet with a CBAM block (Woo et al. 2018, ECCV, "CBAM: Convolutional Block
    Attention Module") on the residual branch of every BasicBlock (:func:`resnet_cbam`).
``hybrid``
    A conv branch and a branch on the binned log power spectrum of the input, computed inside
    the model with the estimator of :mod:`engine.physics.stats`, fused by squeeze-and-excitation (Hu et
    al. 2018, CVPR, "Squeeze-and-excitation networks") (:class:`HybridPk`).
``hybrid_std``
    ``hybrid`` whose spectrum branch standardises its input with statistics of the first
    training batch (``calibrate_spectrum=True``) and whose conv branch sees 4×4-pixel averages
    (``conv_pool=4``, for training on a CPU) (:func:`hybrid_std`).
``hybrid_log``
    ``hybrid_std`` on the log density ln(1 + δ) instead of δ (``input_transform="log1p"``,
    :class:`InputTransform`; :func:`hybrid_log`), for lognormal and N-body-like maps.

Input transform: the models receive ``x = δ / s`` (s the training task's fixed map scale).
``HybridPk(input_transform="log1p")`` first maps it back to the log density
``ln(1 + max(s·x, −1 + ε))`` with ``s`` held in the buffer ``input.map_scale``, which
``engine.train.training.Trainer`` sets from the task's map scale (:func:`set_map_scale`) and which is
saved with the weights, so a checkpoint applies the same transform at inference. For a
lognormal field ln(1 + δ) is a Gaussian field, whose power spectrum holds all of its
information (Neyrinck, Szapudi & Szalay 2009, ApJ 698, L90: the log transform restores the
Fisher information that the power spectrum of δ loses on non-linear scales). The default,
``input_transform="none"``, keeps the models' original behaviour and state-dict keys.

Normalisation: GroupNorm, not BatchNorm, by default. Its statistics are per map, so a model gives
the same output for a map whatever the batch it sits in, train and eval modes agree, small
batches are fine, and DDP needs no SyncBatchNorm. The ResNets take ``norm="batch"`` as an option.

Amplitude: a normalisation layer right after the first (linear, bias-free) convolution divides
out the map's overall amplitude, so a network built only of conv → norm blocks is blind to it
(``CNN()(a * x) == CNN()(x)`` to float precision) although the amplitude is the main carrier of
σ8. The ResNets therefore feed the per-channel mean and log standard deviation of each input map
to the head (``amplitude_features=True``, :func:`amplitude_features`); the hybrid sees the
amplitude through its power spectrum. ``cnn`` keeps its original behaviour unless asked.

Log-stds of the new models are squashed smoothly into ``[LOG_STD_MIN, LOG_STD_MAX]``
(:func:`soft_clamp`), the range the training task clamps to, so gradients never vanish there.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from engine.params import ConfigError
from engine.physics import stats

#: Range of the predicted log standard deviations (normalised units); the same as the clamp of
#: ``engine.train.training.ParameterRegression``.
LOG_STD_MIN, LOG_STD_MAX = -7.0, 3.0


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


def _group_norm(channels: int, max_groups: int = 8) -> nn.GroupNorm:
    """GroupNorm with the largest number of groups <= ``max_groups`` dividing ``channels``."""
    return nn.GroupNorm(math.gcd(channels, max_groups), channels)


def _norm(kind: str, channels: int) -> nn.Module:
    """``"group"``: :func:`_group_norm`; ``"batch"``: ``nn.BatchNorm2d``."""
    if kind == "group":
        return _group_norm(channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    raise ValueError(f"norm={kind!r} must be 'group' or 'batch'")


def _conv(c_in: int, c_out: int, kernel: int, stride: int, circular: bool) -> nn.Conv2d:
    """Bias-free ``kernel``×``kernel`` convolution with 'same' padding (periodic if ``circular``).

    ``(B, c_in, H, W) → (B, c_out, ⌈H/stride⌉, ⌈W/stride⌉)``; output pixel ``i`` is centred on
    input pixel ``stride·i``, so a periodic shift of the input by ``stride·s`` pixels shifts the
    output by ``s`` pixels when ``circular``.
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


def _pad(x: torch.Tensor, p: int, circular: bool, value: float = 0.0) -> torch.Tensor:
    """Pad the last two axes of ``x`` by ``p`` pixels: periodically (any ``p``, wrapping as often
    as needed, unlike ``F.pad``) or with the constant ``value``."""
    if p == 0:
        return x
    if not circular:
        return F.pad(x, (p, p, p, p), value=value)
    h, w = x.shape[-2:]
    iy = torch.arange(-p, h + p, device=x.device) % h
    ix = torch.arange(-p, w + p, device=x.device) % w
    return x[..., iy, :][..., ix]


def soft_clamp(x: torch.Tensor, low: float = LOG_STD_MIN, high: float = LOG_STD_MAX):
    """Smooth, monotone map of ℝ onto ``(low, high)``, ≈ identity well inside the interval.

    ``low + softplus(x - low) - softplus(x - high)``; unlike ``clamp`` its gradient never vanishes.
    Same shape and dtype as ``x``.
    """
    return low + F.softplus(x - low) - F.softplus(x - high)


def amplitude_features(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-map, per-channel mean and log standard deviation of the input.

    ``(B, C, H, W) → (B, 2C) float32``: ``[mean_1..mean_C, log(std_1 + eps)..log(std_C + eps)]``
    in the units of the (globally rescaled) input. Invariant to periodic shifts.
    """
    x = x.float()
    return torch.cat([x.mean(dim=(-2, -1)), torch.log(x.std(dim=(-2, -1)) + eps)], dim=1)


class GaussianHead(nn.Module):
    """MLP head ``(B, F) → (B, 2 * n_params)``: means, then log-stds squashed by :func:`soft_clamp`.

    The output bias starts at the prior's moments in normalised units (mean 1/2, std 1/√12), so
    an untrained model starts near the prior rather than far from it.
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
        """``(B, F)`` features → ``(B, 2 * n_params)`` means and log-stds (float32 or AMP dtype)."""
        out = self.mlp(features)
        mean, log_std = out[:, : self.n_params], out[:, self.n_params :]
        return torch.cat([mean, soft_clamp(log_std)], dim=1)


def _check_common(in_channels: int, n_params: int, width: int) -> None:
    for name, value in (("in_channels", in_channels), ("n_params", n_params), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")


# ---------------------------------------------------------------------------------------------
# CNN baseline
# ---------------------------------------------------------------------------------------------


class ConvBlock(nn.Sequential):
    """3×3 convolution → GroupNorm → GELU, ``(B, c_in, H, W) → (B, c_out, ⌈H/s⌉, ⌈W/s⌉)``.

    ``circular`` pads periodically (for maps of a periodic box), else with zeros. GroupNorm rather
    than BatchNorm: statistics per map, so results do not depend on the batch (or DDP split).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, circular: bool = True):
        super().__init__(_conv(c_in, c_out, 3, stride, circular), _group_norm(c_out), nn.GELU())


def _cnn_features(in_channels: int, width: int, stages: int, circular: bool) -> nn.Sequential:
    """Conv stages of :class:`CNN`: ``(B, C, H, W) → (B, width·2^(stages-1), H/2^s, W/2^s)``."""
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
    amplitude_features : bool
        Feed :func:`amplitude_features` of the input to the head. Off by default (the original
        baseline), in which case the output is blind to the overall amplitude of the maps.

    With the defaults the network has about 80k parameters; the output log-stds are not clamped.
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
    ):
        super().__init__()
        _check_common(in_channels, n_params, width)
        self.n_params = n_params
        self.amplitude_features = amplitude_features
        self.total_stride = 2**stages
        #: Smallest map side (pixels) the model accepts.
        self.min_size = 1
        self.features = _cnn_features(in_channels, width, stages, circular_padding)
        c = width * 2 ** (stages - 1) + (2 * in_channels if amplitude_features else 0)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(c, hidden), nn.GELU(), nn.Linear(hidden, 2 * n_params)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) float32`` normalised maps → ``(B, 2 * n_params)`` means and log-stds."""
        h = self.features(x).mean(dim=(-2, -1), keepdim=True)
        if self.amplitude_features:
            h = torch.cat([h.flatten(1), amplitude_features(x).to(h.dtype)], dim=1)
        return self.head(h)


# ---------------------------------------------------------------------------------------------
# ResNet-18 and CBAM
# ---------------------------------------------------------------------------------------------


class ChannelAttention(nn.Module):
    """CBAM channel attention (Woo et al. 2018, eq. 2): ``x · σ(MLP(avgpool x) + MLP(maxpool x))``.

    A shared two-layer MLP (``channels → max(channels // reduction, 4) → channels``, ReLU) on the
    spatially average- and max-pooled features. ``(B, C, H, W) → (B, C, H, W)``.
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.mlp(x.mean(dim=(-2, -1))) + self.mlp(x.amax(dim=(-2, -1)))
        return x * torch.sigmoid(a)[:, :, None, None]


class SpatialAttention(nn.Module):
    """CBAM spatial attention (Woo et al. 2018, eq. 3): ``x · σ(conv7×7([mean_c x, max_c x]))``.

    The 7×7 convolution (2 → 1 channels, with bias, no normalisation) pads periodically when
    ``circular`` (wrapping as often as needed, so maps smaller than 7 pixels work).
    ``(B, C, H, W) → (B, C, H, W)``.
    """

    def __init__(self, kernel_size: int = 7, circular: bool = True):
        super().__init__()
        self.circular = circular
        self.pad = kernel_size // 2
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(_pad(s, self.pad, self.circular)))


class CBAM(nn.Sequential):
    """Convolutional Block Attention Module (Woo et al. 2018, ECCV): channel attention, then
    spatial attention, applied in sequence. ``(B, C, H, W) → (B, C, H, W)``."""

    def __init__(self, channels: int, reduction: int = 16, circular: bool = True):
        super().__init__(
            ChannelAttention(channels, reduction), SpatialAttention(7, circular=circular)
        )


class BasicBlock(nn.Module):
    """ResNet BasicBlock (He et al. 2016, fig. 2): two 3×3 conv-norm layers plus a shortcut.

    ``relu(norm(conv(relu(norm(conv(x))))) → attention → + shortcut(x))``; the shortcut is the
    identity, or a strided 1×1 conv + norm when the shape changes (option B of the paper). With
    ``cbam`` the attention module sits on the residual branch before the addition, as in Woo et
    al. 2018, fig. 3. ``(B, c_in, H, W) → (B, c_out, ⌈H/stride⌉, ⌈W/stride⌉)``.
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
        self.conv1 = _conv(c_in, c_out, 3, stride, circular)
        self.norm1 = _norm(norm, c_out)
        self.conv2 = _conv(c_out, c_out, 3, 1, circular)
        self.norm2 = _norm(norm, c_out)
        self.attention = CBAM(c_out, cbam_reduction, circular) if cbam else nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                _conv(c_in, c_out, 1, stride, circular), _norm(norm, c_out)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.attention(self.norm2(self.conv2(out)))
        return F.relu(out + self.shortcut(x))


class _MaxPool3x3(nn.Module):
    """3×3 max-pool with stride 2 and 'same' padding, periodic when ``circular``."""

    def __init__(self, circular: bool):
        super().__init__()
        self.circular = circular

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(_pad(x, 1, self.circular, value=-math.inf), 3, stride=2)


class ResNet(nn.Module):
    """ResNet of BasicBlocks (He et al. 2016, CVPR) for maps, with optional CBAM attention.

    ``(B, C, H, W) float32 → (B, 2 * n_params)``: stem → stages of BasicBlocks with
    ``width·(1, 2, 4, 8, …)`` channels (stride 2 at the start of every stage but the first) →
    global average pooling → [pooled features, :func:`amplitude_features`] → :class:`GaussianHead`.

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
        Put a :class:`CBAM` module in every BasicBlock.
    cbam_reduction : int
        Reduction ratio of CBAM's channel MLP (16 in the paper).
    hidden : int
        Width of the head's hidden layer.
    amplitude_features : bool
        Concatenate per-channel mean and log-std of the input maps to the pooled features (the
        normalisation layers otherwise remove the map amplitude; see the module docstring).

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
    ):
        super().__init__()
        _check_common(in_channels, n_params, width)
        blocks = list(blocks)
        if not blocks or any(not isinstance(b, int) or b < 1 for b in blocks):
            raise ValueError(f"blocks={blocks!r} must be a non-empty list of positive integers")
        c = circular_padding
        if stem == "small":
            self.stem = nn.Sequential(
                _conv(in_channels, width, 3, 1, c), _norm(norm, width), nn.ReLU()
            )
            stem_stride = 1
        elif stem == "large":
            self.stem = nn.Sequential(
                _conv(in_channels, width, 7, 2, c), _norm(norm, width), nn.ReLU(), _MaxPool3x3(c)
            )
            stem_stride = 4
        else:
            raise ValueError(f"stem={stem!r} must be 'small' or 'large'")
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
        self.head = GaussianHead(n_features, n_params, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) float32`` normalised maps → ``(B, 2 * n_params)`` means and log-stds."""
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
) -> ResNet:
    """ResNet-18 (He et al. 2016): BasicBlocks [2, 2, 2, 2], channels ``width·(1, 2, 4, 8)``.

    See :class:`ResNet` for the arguments. About 0.70 M parameters at width 16 and 2.8 M at
    width 32 (11.2 M at the ImageNet width 64, as torchvision's ``resnet18`` without its stem
    and 1000-class head).
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
) -> ResNet:
    """ResNet-18 with a CBAM module (Woo et al. 2018) in each of its eight BasicBlocks.

    See :class:`ResNet` for the arguments; CBAM adds about 2 % parameters to :func:`resnet18`.
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
    )


# ---------------------------------------------------------------------------------------------
# Hybrid: CNN + power spectrum, squeeze-and-excitation fusion
# ---------------------------------------------------------------------------------------------


class LogPowerSpectrum(nn.Module):
    r"""Binned log power spectrum of each channel of square maps, differentiable, in pixel units.

    ``(B, C, N, N) → (B, C, n_k_bins) float32``. The estimator is :mod:`engine.physics.stats`'s (same FFT
    convention, same half-plane mode weights, same isotropic binning by
    :func:`engine.physics.stats.bin_isotropic`), evaluated with ``box_size = N``, i.e. lengths in pixels
    and k in radians per pixel (k_f = 2π/N, Nyquist π):

        P_pix(k) = |δ_k|² / N²  =  P̂(k) · (N / L)²   for a map of side L (Mpc/h),

    a constant factor for a fixed map size, so ``log P_pix = log P̂ + 2 log(N/L)``. In these units
    white noise of unit pixel variance has P = 1 at every k, so ``log P_pix`` is already O(1) for
    maps divided by a global scale. The ``n_k_bins`` bins are equally wide in |k| and span the
    default range of :func:`engine.physics.stats.default_edges`, [k_f/2, (N/2 + 1/2) k_f); each is at
    least k_f wide (so none is empty) when ``N >= 2 n_k_bins``.

    The output is ``(log P_pix - shift) / scale`` with per-(channel, bin) buffers ``shift``
    (zeros) and ``scale`` (ones) that :meth:`calibrate` can set from a batch of training maps;
    they are saved with the model's state.
    """

    def __init__(self, in_channels: int = 1, n_k_bins: int = 16, floor: float = 1e-30):
        super().__init__()
        if not isinstance(n_k_bins, int) or n_k_bins < 1:
            raise ValueError(f"n_k_bins={n_k_bins!r} must be a positive integer")
        self.n_k_bins = n_k_bins
        self.floor = floor
        self.register_buffer("shift", torch.zeros(in_channels, n_k_bins))
        self.register_buffer("scale", torch.ones(in_channels, n_k_bins))

    def edges(self, n: int) -> tuple[float, ...]:
        """Bin edges (``n_k_bins + 1`` floats) in radians per pixel for maps of ``n`` pixels."""
        kf = 2 * math.pi / n
        return tuple(kf * (0.5 + (n / 2) * i / self.n_k_bins) for i in range(self.n_k_bins + 1))

    def log_power(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, N, N)`` maps → ``(B, C, n_k_bins) float32`` log P_pix, before normalisation.

        Raises
        ------
        ValueError
            Non-square maps, or fewer than ``2 * n_k_bins`` pixels per side.
        """
        n = x.shape[-1]
        if x.shape[-2] != n:
            raise ValueError(f"the power spectrum needs square maps, got {tuple(x.shape[-2:])}")
        if n < 2 * self.n_k_bins:
            raise ValueError(
                f"n_k_bins={self.n_k_bins} needs maps of at least {2 * self.n_k_bins} pixels "
                f"per side, got {n}"
            )
        fk = torch.fft.rfft2(x.float())
        p = (fk.real.square() + fk.imag.square()) / n**2
        binned = stats.bin_isotropic(p, (n, n), float(n), self.edges(n)).power
        return binned.clamp_min(self.floor).log().float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, N, N)`` maps → ``(B, C, n_k_bins) float32`` normalised log power spectrum."""
        return (self.log_power(x) - self.shift) / self.scale

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> None:
        """Set ``shift``/``scale`` to the mean/std over the batch ``x`` ``(B, C, N, N)`` (B ≥ 2)
        of ``log P_pix``, so the branch sees standardised inputs."""
        lp = self.log_power(x)
        self.shift.copy_(lp.mean(0))
        self.scale.copy_(lp.std(0).clamp_min(1e-3))


#: Input transforms of :class:`InputTransform` (model argument ``input_transform``).
INPUT_TRANSFORMS = ("none", "log1p")


class InputTransform(nn.Module):
    """Pointwise transform of the (globally rescaled) input maps, ``(B, C, H, W) → same``.

    The models receive ``x = δ / s`` with ``s`` the fixed map scale of the training task
    (``engine.train.training.ParameterRegression.scale``, map units). ``"log1p"`` returns the log
    density ``ln(1 + max(s·x, −1 + eps))`` (dimensionless; ``eps`` guards empty cells of CIC
    density maps, where δ = −1, giving ln(eps) there); ``"none"`` returns ``x`` unchanged.

    ``map_scale`` (scalar float32 buffer, default 1) is ``s``; it is set before training with
    :func:`set_map_scale` and saved in the model's state, so inference applies the same
    transform. Its gradient with respect to ``x`` is ``s / (1 + s·x)`` (0 where clamped).
    """

    def __init__(self, transform: str = "log1p", eps: float = 1e-3):
        super().__init__()
        if transform not in INPUT_TRANSFORMS:
            raise ValueError(
                f"input_transform={transform!r} must be one of "
                + ", ".join(map(repr, INPUT_TRANSFORMS))
            )
        if not 0.0 < eps < 1.0:
            raise ValueError(f"log_eps={eps!r} must be in (0, 1)")
        self.transform = transform
        self.eps = float(eps)
        self.register_buffer("map_scale", torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transform == "none":
            return x
        delta = x.float() * self.map_scale
        return torch.log1p(delta.clamp_min(self.eps - 1.0))


def set_map_scale(model: nn.Module, scale: float) -> int:
    """Set ``map_scale`` (map units) of every :class:`InputTransform` in ``model``; returns how
    many there were (0 for models without an input transform, which ignore the scale)."""
    found = 0
    for module in model.modules():
        if isinstance(module, InputTransform):
            module.map_scale.fill_(float(scale))
            found += 1
    return found


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation gate (Hu et al. 2018, CVPR, eq. 3) on a feature vector.

    ``z → z · σ(W₂ ReLU(W₁ z))`` with ``W₁: F → max(F // reduction, 4)``, ``W₂`` back to F.
    The features here are already pooled vectors, so the "squeeze" is the identity.
    ``(B, F) → (B, F)``.
    """

    def __init__(self, features: int, reduction: int = 4):
        super().__init__()
        hidden = max(features // reduction, 4)
        self.gate = nn.Sequential(
            nn.Linear(features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, features)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * torch.sigmoid(self.gate(z))


class HybridPk(nn.Module):
    """CNN branch + log power-spectrum branch, fused by squeeze-and-excitation.

    ``(B, C, N, N) float32 → (B, 2 * n_params)``:

    - conv branch: the conv stages of :class:`CNN` → global average pool → ``(B, F)`` with
      ``F = width · 2^(stages-1)``;
    - spectrum branch: :class:`LogPowerSpectrum` ``(B, C, n_k_bins)`` → flatten → MLP
      ``C·n_k_bins → F → F`` (GELU) → ``(B, F)``;
    - fusion: concatenate ``(B, 2F)`` → :class:`SqueezeExcitation` → :class:`GaussianHead`.

    Parameters
    ----------
    in_channels, n_params, width, circular_padding
        As for :class:`CNN`.
    stages : int
        Stride-2 stages of the conv branch.
    n_k_bins : int
        Bins of the spectrum (maps need ``N >= 2 * n_k_bins``).
    se_reduction : int
        Reduction ratio of the SE gate.
    hidden : int
        Width of the head's hidden layer.
    input_transform : {"none", "log1p"}
        Applied to the input before both branches (:class:`InputTransform`); ``"log1p"`` adds
        the module ``input`` (buffer ``input.map_scale``) to the model.
    log_eps : float
        Floor ε of ``1 + δ`` for ``"log1p"`` (dimensionless).
    calibrate_spectrum : bool
        Standardise the spectrum branch's input (:meth:`LogPowerSpectrum.calibrate`) with the
        first batch seen in training mode (a data-dependent initialisation, as ActNorm in
        Kingma & Dhariwal 2018); the buffer ``spectrum_calibrated`` records that it happened,
        so a resumed or loaded model does not recalibrate. Off: shift 0 and scale 1, unless
        calibrated by hand.
    conv_pool : int
        The conv branch sees the (transformed) map averaged over ``conv_pool × conv_pool``
        pixel blocks (``F.avg_pool2d``; 1: full resolution), ``conv_pool²`` times cheaper; the
        spectrum branch always sees the full map. Maps need a side divisible by it.

    The spectrum is invariant to any periodic shift; with ``circular_padding`` the whole output is
    invariant to periodic shifts by multiples of :attr:`total_stride` pixels.
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_params: int = 2,
        width: int = 16,
        circular_padding: bool = True,
        stages: int = 3,
        n_k_bins: int = 16,
        se_reduction: int = 4,
        hidden: int = 128,
        input_transform: str = "none",
        log_eps: float = 1e-3,
        calibrate_spectrum: bool = False,
        conv_pool: int = 1,
    ):
        super().__init__()
        _check_common(in_channels, n_params, width)
        if isinstance(conv_pool, bool) or not isinstance(conv_pool, int) or conv_pool < 1:
            raise ValueError(f"conv_pool={conv_pool!r} must be a positive integer")
        self.conv_pool = conv_pool
        self.n_params = n_params
        if input_transform not in INPUT_TRANSFORMS:
            raise ValueError(
                f"input_transform={input_transform!r} must be one of "
                + ", ".join(map(repr, INPUT_TRANSFORMS))
            )
        #: The input transform, or None for ``"none"`` (no module: the original state dict).
        self.input = InputTransform(input_transform, log_eps) if input_transform != "none" else None
        self.calibrate_spectrum = bool(calibrate_spectrum)
        if self.calibrate_spectrum:
            self.register_buffer("spectrum_calibrated", torch.zeros((), dtype=torch.bool))
        self.total_stride = conv_pool * 2**stages
        #: Smallest map side (pixels) the model accepts: the spectrum needs ``2 * n_k_bins``.
        self.min_size = 2 * n_k_bins
        f = width * 2 ** (stages - 1)
        self.features = _cnn_features(in_channels, width, stages, circular_padding)
        self.spectrum = LogPowerSpectrum(in_channels, n_k_bins)
        self.spectrum_mlp = nn.Sequential(
            nn.Linear(in_channels * n_k_bins, f), nn.GELU(), nn.Linear(f, f), nn.GELU()
        )
        self.fusion = SqueezeExcitation(2 * f, se_reduction)
        self.head = GaussianHead(2 * f, n_params, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, N, N) float32`` normalised maps → ``(B, 2 * n_params)`` means and log-stds."""
        if self.input is not None:
            x = self.input(x)
        if self.calibrate_spectrum and self.training and not bool(self.spectrum_calibrated):
            if x.shape[0] >= 2:
                self.spectrum.calibrate(x)
                self.spectrum_calibrated.fill_(True)
        pooled = F.avg_pool2d(x, self.conv_pool) if self.conv_pool > 1 else x
        h_conv = self.features(pooled).mean(dim=(-2, -1))
        h_pk = self.spectrum_mlp(self.spectrum(x).flatten(1).to(h_conv.dtype))
        return self.head(self.fusion(torch.cat([h_conv, h_pk], dim=1)))


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


def hybrid_std(
    in_channels: int = 1,
    n_params: int = 2,
    width: int = 16,
    circular_padding: bool = True,
    n_k_bins: int = 16,
    hidden: int = 128,
    conv_pool: int = 4,
) -> HybridPk:
    """:class:`HybridPk` with ``calibrate_spectrum=True`` (standardised spectrum branch) and a
    conv branch on 4×4-pixel averages (``conv_pool=4``: ~16× cheaper, for CPU training)."""
    return HybridPk(
        in_channels=in_channels,
        n_params=n_params,
        width=width,
        circular_padding=circular_padding,
        n_k_bins=n_k_bins,
        hidden=hidden,
        calibrate_spectrum=True,
        conv_pool=conv_pool,
    )


def hybrid_log(
    in_channels: int = 1,
    n_params: int = 2,
    width: int = 16,
    circular_padding: bool = True,
    n_k_bins: int = 16,
    hidden: int = 128,
    log_eps: float = 1e-3,
    conv_pool: int = 4,
) -> HybridPk:
    """:class:`HybridPk` on the log density ln(1 + δ) (``input_transform="log1p"``, see
    :class:`InputTransform`), otherwise as :func:`hybrid_std`; for lognormal and 2LPT maps."""
    return HybridPk(
        in_channels=in_channels,
        n_params=n_params,
        width=width,
        circular_padding=circular_padding,
        n_k_bins=n_k_bins,
        hidden=hidden,
        input_transform="log1p",
        log_eps=log_eps,
        calibrate_spectrum=True,
        conv_pool=conv_pool,
    )


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
}


def _check_name(name: str) -> None:
    if name not in MODELS:
        raise ConfigError(
            f"model={name!r} is not allowed: model must be one of {', '.join(map(repr, MODELS))}"
        )


def build_model(name: str, **kwargs) -> nn.Module:
    """Build the model registered as ``name`` with keyword arguments ``kwargs``.

    Raises
    ------
    ConfigError
        Unknown ``name`` (the message lists the known ones), keyword arguments the model does
        not take, or values it rejects (one line).
    """
    _check_name(name)
    try:
        return MODELS[name](**kwargs)
    except (TypeError, ValueError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"model={name!r} cannot be built with {kwargs}: {msg}") from None


def model_options(name: str) -> dict[str, object]:
    """Keyword arguments of the model ``name`` and their defaults (for CLIs and forms).

    Raises
    ------
    ConfigError
        Unknown ``name``.
    """
    _check_name(name)
    sig = inspect.signature(MODELS[name])
    return {k: p.default for k, p in sig.parameters.items() if p.default is not p.empty}


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of scalar parameters of ``model`` (only those with ``requires_grad`` by default)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def format_count(n: int) -> str:
    """``2_795_010 → "2.8 M"``, ``80_390 → "80.4 k"``, ``950 → "950"`` (three significant digits)."""
    if n >= 1_000_000:
        return f"{n / 1e6:.3g} M"
    if n >= 1_000:
        return f"{n / 1e3:.3g} k"
    return str(n)


def summary(model_name: str, **kwargs) -> str:
    """One line such as ``"resnet18: 2.8 M parameters"`` for the model built with ``kwargs``.

    Raises
    ------
    ConfigError
        As :func:`build_model`.
    """
    n = count_parameters(build_model(model_name, **kwargs))
    return f"{model_name}: {format_count(n)} parameters"
