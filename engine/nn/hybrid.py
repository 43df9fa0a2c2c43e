"""Hybrid networks: a conv branch plus a branch on the binned log power spectrum of the input,
fused by squeeze-and-excitation (Hu et al. 2018, CVPR), and the input transform ln(1 + δ).

:class:`HybridPk` computes the spectrum inside the model (:class:`LogPowerSpectrum`, the
estimator of :mod:`engine.physics.stats` in pixel units), so it is differentiable and travels
with the checkpoint. :func:`hybrid_std` standardises the spectrum branch with the first training
batch and runs the conv branch on 4×4-pixel averages (for CPU training); :func:`hybrid_log` does
the same on the log density.

Input transform: the models receive ``x = δ / s`` (s the training task's fixed map scale).
``HybridPk(input_transform="log1p")`` first maps it back to the log density
``ln(1 + max(s·x, −1 + ε))`` with ``s`` held in the buffer ``input.map_scale``, which
``engine.train.loop.Trainer`` sets from the task's map scale (:func:`set_map_scale`) and which
is saved with the weights, so a checkpoint applies the same transform at inference. For a
lognormal field ln(1 + δ) is a Gaussian field, whose power spectrum holds all of its information
(Neyrinck, Szapudi & Szalay 2009, ApJ 698, L90: the log transform restores the Fisher
information that the power spectrum of δ loses on non-linear scales). The default,
``input_transform="none"``, keeps the models' original behaviour and state-dict keys.

Multi-channel input ``(B, C, N, N)``: the transform is pointwise, so it applies to every channel
alike (one map scale for all channels, as the task has one); the spectrum branch takes the
auto-spectrum of each channel separately (``C·n_k_bins`` numbers, each bin calibrated per
channel; no cross-spectra) and the conv branch mixes the channels from its first convolution.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from engine.nn.backbones import cnn_features
from engine.nn.blocks import SqueezeExcitation, check_model_args
from engine.nn.heads import GaussianHead
from engine.physics import stats

__all__ = [
    "INPUT_TRANSFORMS",
    "HybridPk",
    "InputTransform",
    "LogPowerSpectrum",
    "hybrid_log",
    "hybrid_std",
    "set_map_scale",
]

#: Input transforms of :class:`InputTransform` (model argument ``input_transform``).
INPUT_TRANSFORMS = ("none", "log1p")


class LogPowerSpectrum(nn.Module):
    r"""Binned log power spectrum of each channel of square maps, differentiable, in pixel units.

    ``(B, C, N, N) → (B, C, n_k_bins) float32``, one auto-spectrum per channel (no cross-spectra).
    The estimator is :mod:`engine.physics.stats`'s (same FFT convention, same half-plane mode
    weights, same isotropic binning by :func:`engine.physics.stats.bin_isotropic`), evaluated
    with ``box_size = N``, i.e. lengths in pixels and k in radians per pixel (k_f = 2π/N,
    Nyquist π):

        P_pix(k) = |δ_k|² / N²  =  P̂(k) · (N / L)²   for a map of side L (Mpc/h),

    a constant factor for a fixed map size, so ``log P_pix = log P̂ + 2 log(N/L)``. In these units
    white noise of unit pixel variance has P = 1 at every k, so ``log P_pix`` is already O(1) for
    maps divided by a global scale. The ``n_k_bins`` bins are equally wide in |k| and span the
    default range of :func:`engine.physics.stats.default_edges`, [k_f/2, (N/2 + 1/2) k_f); each
    is at least k_f wide (so none is empty) when ``N >= 2 n_k_bins``.

    The output is ``(log P_pix - shift) / scale`` with per-(channel, bin) float32 buffers
    ``shift`` (zeros) and ``scale`` (ones), shape ``(C, n_k_bins)``, that :meth:`calibrate` can
    set from a batch of training maps; they are saved with the model's state.

    Parameters
    ----------
    in_channels : int
        Channels ``C`` of the maps (the shape of the calibration buffers).
    n_k_bins : int
        Number of |k| bins.
    floor : float
        Lower bound of the binned power before the log (pixel units), so empty maps are finite.

    Raises
    ------
    ValueError
        ``n_k_bins`` not a positive integer.
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
        """Bin edges for maps of ``n`` pixels per side.

        Parameters
        ----------
        n : int
            Map side (pixels).

        Returns
        -------
        tuple of float
            ``n_k_bins + 1`` increasing edges in radians per pixel, from ``k_f/2`` to
            ``(n/2 + 1/2) k_f`` with ``k_f = 2π/n``.
        """
        kf = 2 * math.pi / n
        return tuple(kf * (0.5 + (n / 2) * i / self.n_k_bins) for i in range(self.n_k_bins + 1))

    def log_power(self, x: torch.Tensor) -> torch.Tensor:
        """Log power spectrum of each channel, before normalisation.

        Parameters
        ----------
        x : torch.Tensor
            ``(B, C, N, N)`` maps, any floating dtype (transformed in float32).

        Returns
        -------
        torch.Tensor
            ``(B, C, n_k_bins) float32`` ``log P_pix`` (P in pixel² units).

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
        """``(B, C, N, N)`` maps → ``(B, C, n_k_bins) float32`` normalised log power spectrum.

        Raises ``ValueError`` as :meth:`log_power`."""
        return (self.log_power(x) - self.shift) / self.scale

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> None:
        """Standardise the output on a batch of maps: set ``shift``/``scale`` to the mean/std of
        ``log P_pix`` over the batch, per channel and bin (std floored at 1e-3).

        Parameters
        ----------
        x : torch.Tensor
            ``(B, C, N, N)`` maps with ``B >= 2``.

        Raises
        ------
        ValueError
            As :meth:`log_power`.
        """
        lp = self.log_power(x)
        self.shift.copy_(lp.mean(0))
        self.scale.copy_(lp.std(0).clamp_min(1e-3))


class InputTransform(nn.Module):
    """Pointwise transform of the (globally rescaled) input maps, ``(B, C, H, W) → same shape``.

    The models receive ``x = δ / s`` with ``s`` the fixed map scale of the training task
    (``engine.tasks.regression.Regression``, map units). ``"log1p"`` returns the log
    density ``ln(1 + max(s·x, −1 + eps))`` in float32 (dimensionless; ``eps`` guards empty cells
    of CIC density maps, where δ = −1, giving ln(eps) there); ``"none"`` returns ``x`` unchanged.
    Every channel is transformed alike, with the one scale ``s``.

    ``map_scale`` (scalar float32 buffer, default 1) is ``s``; it is set before training with
    :func:`set_map_scale` and saved in the model's state, so inference applies the same
    transform. Its gradient with respect to ``x`` is ``s / (1 + s·x)`` (0 where clamped).

    Parameters
    ----------
    transform : {"none", "log1p"}
        The transform.
    eps : float
        Floor ε of ``1 + δ``, in (0, 1).

    Raises
    ------
    ValueError
        Unknown ``transform`` or ``eps`` outside (0, 1).
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
        """``(B, C, H, W)`` maps ``δ / s`` → ``(B, C, H, W)`` transformed maps."""
        if self.transform == "none":
            return x
        delta = x.float() * self.map_scale
        return torch.log1p(delta.clamp_min(self.eps - 1.0))


def set_map_scale(model: nn.Module, scale: float) -> int:
    """Set ``map_scale`` of every :class:`InputTransform` in ``model``.

    Parameters
    ----------
    model : torch.nn.Module
        Any model; modified in place.
    scale : float
        The task's map scale ``s`` (map units): the model receives ``δ / s``.

    Returns
    -------
    int
        How many input transforms were set (0 for models without one, which ignore the scale).
    """
    found = 0
    for module in model.modules():
        if isinstance(module, InputTransform):
            module.map_scale.fill_(float(scale))
            found += 1
    return found


class HybridPk(nn.Module):
    """CNN branch + log power-spectrum branch, fused by squeeze-and-excitation.

    ``(B, C, N, N) float32 → (B, 2 * n_params)``:

    - conv branch: the conv stages of ``engine.nn.backbones.CNN`` → global average pool →
      ``(B, F)`` with ``F = width · 2^(stages-1)``;
    - spectrum branch: :class:`LogPowerSpectrum` ``(B, C, n_k_bins)`` (the auto-spectrum of each
      channel) → flatten → MLP ``C·n_k_bins → F → F`` (GELU) → ``(B, F)``;
    - fusion: concatenate ``(B, 2F)`` → SqueezeExcitation (Hu et al. 2018) → ``GaussianHead``.

    Parameters
    ----------
    in_channels, n_params, width, circular_padding
        As for ``engine.nn.backbones.CNN``; any ``in_channels`` works (per-channel spectra).
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

    Raises
    ------
    ValueError
        A non-positive integer argument, unknown ``input_transform``, ``log_eps`` outside (0, 1).

    Notes
    -----
    The spectrum is invariant to any periodic shift; with ``circular_padding`` the whole output
    is invariant to periodic shifts by multiples of :attr:`total_stride` pixels.
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
        check_model_args(in_channels, n_params, width)
        if isinstance(conv_pool, bool) or not isinstance(conv_pool, int) or conv_pool < 1:
            raise ValueError(f"conv_pool={conv_pool!r} must be a positive integer")
        self.conv_pool = conv_pool
        self.n_params = n_params
        #: The input transform, or None for ``"none"`` (no module: the original state dict).
        self.input = InputTransform(input_transform, log_eps) if input_transform != "none" else None
        self.calibrate_spectrum = bool(calibrate_spectrum)
        if self.calibrate_spectrum:
            self.register_buffer("spectrum_calibrated", torch.zeros((), dtype=torch.bool))
        #: Downsampling factor from input to the conv branch's last feature map (pixels).
        self.total_stride = conv_pool * 2**stages
        #: Smallest map side (pixels) the model accepts: the spectrum needs ``2 * n_k_bins``.
        self.min_size = 2 * n_k_bins
        f = width * 2 ** (stages - 1)
        self.features = cnn_features(in_channels, width, stages, circular_padding)
        self.spectrum = LogPowerSpectrum(in_channels, n_k_bins)
        self.spectrum_mlp = nn.Sequential(
            nn.Linear(in_channels * n_k_bins, f), nn.GELU(), nn.Linear(f, f), nn.GELU()
        )
        self.fusion = SqueezeExcitation(2 * f, se_reduction)
        self.head = GaussianHead(2 * f, n_params, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, N, N) float32`` normalised maps → ``(B, 2 * n_params)`` means and log-stds.

        In training mode with ``calibrate_spectrum`` the first batch of at least two maps also
        calibrates the spectrum branch. Raises ``ValueError`` for maps that are not square or
        smaller than :attr:`min_size`."""
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


def hybrid_std(
    in_channels: int = 1,
    n_params: int = 2,
    width: int = 16,
    circular_padding: bool = True,
    n_k_bins: int = 16,
    hidden: int = 128,
    conv_pool: int = 4,
) -> HybridPk:
    """:class:`HybridPk` with a standardised spectrum branch and a pooled conv branch.

    ``calibrate_spectrum=True`` and ``conv_pool=4`` (the conv branch on 4×4-pixel averages,
    ~16× cheaper, for CPU training).

    Parameters
    ----------
    in_channels, n_params, width, circular_padding, n_k_bins, hidden, conv_pool
        As for :class:`HybridPk`.

    Returns
    -------
    HybridPk

    Raises
    ------
    ValueError
        As :class:`HybridPk`.
    """
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
    """:func:`hybrid_std` on the log density ln(1 + δ), for lognormal and 2LPT maps.

    ``input_transform="log1p"`` (:class:`InputTransform`, applied to every channel), otherwise
    as :func:`hybrid_std`.

    Parameters
    ----------
    in_channels, n_params, width, circular_padding, n_k_bins, hidden, log_eps, conv_pool
        As for :class:`HybridPk`.

    Returns
    -------
    HybridPk

    Raises
    ------
    ValueError
        As :class:`HybridPk`.
    """
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
