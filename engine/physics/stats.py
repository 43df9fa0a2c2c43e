r"""Summary statistics of 2D maps and 3D volumes, batched in torch: P(k), cross-spectra, pixel PDF,
peak counts.

Fourier and normalisation conventions (written once, used everywhere)
--------------------------------------------------------------------
A field δ is sampled on a periodic grid of n = N^d pixels (d = 2 or 3) of side L (Mpc/h), pixel
volume v = (L/N)^d, total volume V = L^d. Its discrete Fourier transform is numpy's/torch's
unnormalised forward FFT

    δ_k = Σ_x δ(x) e^{-i k·x},   k = 2π m / L  (m integer; fundamental k_f = 2π/L, h/Mpc),

which approximates the continuous transform as δ(k) ≈ v δ_k. The power spectrum estimator is

    P̂(k) = v² |δ_k|² / V = |δ_k|² V / n²          [(Mpc/h)^d],

so that ⟨P̂(k)⟩ = P(k) for a field with power spectrum P, and the variance per pixel is
σ² = Σ_k P(k) / V (sum over all n modes). The cross-spectrum of a and b is Re(a_k b_k^*) V / n².

Isotropic binning averages P̂ over all modes (the full Fourier plane/volume, i.e. both k and -k)
whose |k| falls in a bin [e_i, e_{i+1}); we store only the half plane of the real FFT and weight
each stored mode by the number of full-plane modes it stands for (1 on the k_x = 0 and Nyquist
planes, 2 elsewhere). ``n_modes`` counts full-plane modes, so the Gaussian variance of a binned
spectrum is Var(P̂) ≈ 2 P² / n_modes (Feldman, Kaiser & Peacock 1994, ApJ 426, 23, eq. 2.4.6, in
the limit of no shot noise). The k of a bin is the mean |k| of its modes.

The mode k = 0 (the mean) is never binned. The default bins are k_f wide and centred on multiples
of k_f, from k_f up to the Nyquist wavenumber k_N = π N / L.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from engine.physics.mesh import wavenumbers


@dataclass(frozen=True)
class PowerSpectrum:
    """A binned isotropic power spectrum.

    Attributes
    ----------
    k : torch.Tensor (K,) float64
        Mean |k| of the modes in each bin, h/Mpc.
    power : torch.Tensor (..., K)
        Mean P̂ per bin, (Mpc/h)^d, float64 (batch dims of the input field kept).
    n_modes : torch.Tensor (K,) float64
        Number of full-plane Fourier modes per bin.
    edges : torch.Tensor (K+1,) float64
        Bin edges in h/Mpc.
    """

    k: torch.Tensor
    power: torch.Tensor
    n_modes: torch.Tensor
    edges: torch.Tensor


def gaussian_sigma(spectrum: PowerSpectrum) -> torch.Tensor:
    """Gaussian (cosmic-variance) 1σ scatter of a binned spectrum, P √(2 / n_modes).

    Feldman, Kaiser & Peacock (1994, ApJ 426, 23, eq. 2.4.6) without shot noise; ``spectrum`` is
    usually an expectation (e.g. :func:`engine.physics.slabs.binned_theory`).

    Returns
    -------
    torch.Tensor, shape of ``spectrum.power`` (..., K), float64, in the units of the power.
    """
    # numpy's correctly rounded sqrt (torch's vectorised one may differ in the last bit)
    factor = torch.from_numpy(np.sqrt(2.0 / spectrum.n_modes.detach().cpu().numpy()))
    return spectrum.power * factor.to(spectrum.power.device)


def default_edges(shape: tuple[int, ...], box_size: float) -> torch.Tensor:
    """Bins k_f wide centred on k_f, 2 k_f, … up to k_N (h/Mpc), float64 (K+1,)."""
    kf = 2 * math.pi / box_size
    n_max = min(shape) // 2
    return kf * (torch.arange(n_max + 1, dtype=torch.float64) + 0.5)


def rfft_weights(shape: tuple[int, ...]) -> torch.Tensor:
    """Full-plane modes per stored real-FFT mode along the last axis: (N//2+1,) float64 of 1 or 2."""
    n = shape[-1]
    w = torch.full((n // 2 + 1,), 2.0, dtype=torch.float64)
    w[0] = 1.0
    if n % 2 == 0:
        w[-1] = 1.0
    return w


@functools.lru_cache(maxsize=32)
def _binning(shape: tuple[int, ...], box_size: float, edges_key: tuple, device: torch.device):
    edges = torch.tensor(edges_key, dtype=torch.float64)
    kmag = wavenumbers(shape, box_size)
    w = rfft_weights(shape).expand_as(kmag)
    idx = torch.bucketize(kmag, edges, right=True) - 1  # bin i holds e_i <= k < e_{i+1}
    nb = len(edges) - 1
    idx = torch.where((idx < 0) | (idx >= nb) | (kmag == 0), nb, idx).reshape(-1)
    w = w.reshape(-1)
    counts = torch.zeros(nb + 1, dtype=torch.float64).index_add_(0, idx, w)
    ksum = torch.zeros(nb + 1, dtype=torch.float64).index_add_(0, idx, w * kmag.reshape(-1))
    n_modes = counts[:nb]
    k_mean = torch.where(n_modes > 0, ksum[:nb] / n_modes.clamp(min=1), torch.nan)
    return (
        idx.to(device),
        w.to(device),
        counts.to(device),
        k_mean,
        n_modes,
        edges,
    )


def bin_isotropic(
    values: torch.Tensor, shape: tuple[int, ...], box_size: float, edges=None
) -> PowerSpectrum:
    """Average a quantity given on the real-FFT modes of a field over isotropic |k| bins.

    Used by :func:`power_spectrum` and to bin theory spectra evaluated on the same modes, so that
    a measurement and its expectation are binned identically.

    Parameters
    ----------
    values : torch.Tensor (..., N, ..., N//2+1), real
        One value per stored mode (e.g. |δ_k|² V/n², or P_theory(|k|)).
    shape : tuple of int
        Real-space shape of the field, (N, N) or (N, N, N).
    box_size : float
        Side L of the periodic box, Mpc/h.
    edges : sequence of float or torch.Tensor, optional
        Bin edges in h/Mpc (increasing); default :func:`default_edges`.

    Returns
    -------
    PowerSpectrum; bins with no mode have k = nan and power = nan.
    """
    if edges is None:
        edges = default_edges(shape, box_size)
    edges_key = tuple(float(e) for e in torch.as_tensor(edges).reshape(-1).tolist())
    if len(edges_key) < 2 or any(b <= a for a, b in zip(edges_key, edges_key[1:], strict=False)):
        raise ValueError("edges must hold at least two strictly increasing values (h/Mpc)")
    d = len(shape)
    idx, w, counts, k_mean, n_modes, edges_t = _binning(
        tuple(shape), float(box_size), edges_key, values.device
    )
    batch = values.shape[: values.ndim - d]
    flat = values.reshape(-1, idx.numel()).to(torch.float64) * w
    out = torch.zeros(flat.shape[0], counts.numel(), dtype=torch.float64, device=values.device)
    out.index_add_(1, idx, flat)
    power = out[:, :-1] / counts[:-1]
    return PowerSpectrum(k_mean, power.reshape(*batch, -1), n_modes, edges_t)


def _check_field(field: torch.Tensor, dim: int | None) -> int:
    if not torch.is_tensor(field):
        raise TypeError("field must be a torch.Tensor; use torch.as_tensor(array)")
    d = dim if dim is not None else (3 if field.ndim >= 4 else 2)
    if d not in (2, 3) or field.ndim < d:
        raise ValueError(f"field of shape {tuple(field.shape)} is not a batch of {d}D fields")
    return d


def power_spectrum(
    field: torch.Tensor,
    box_size: float,
    edges=None,
    field2: torch.Tensor | None = None,
    dim: int | None = None,
) -> PowerSpectrum:
    """Binned isotropic (cross-)power spectrum of 2D maps or 3D volumes.

    Parameters
    ----------
    field : torch.Tensor (..., N, N) or (..., N, N, N), real float
        Density contrast (or any field) on a periodic grid. Batch dimensions are kept.
    box_size : float
        Side L of the periodic box in Mpc/h.
    edges : array_like, optional
        Bin edges in h/Mpc; default bins of width k_f up to k_N (:func:`default_edges`).
    field2 : torch.Tensor, optional
        Second field of the same shape: returns the cross-spectrum Re(a_k b_k^*) V / n².
    dim : {2, 3}, optional
        Spatial dimension; default 3 if ``field.ndim >= 4`` else 2. Pass ``dim=3`` for a single
        unbatched volume.

    Returns
    -------
    PowerSpectrum with ``power`` of shape (..., K), float64, in (Mpc/h)^dim.

    Raises
    ------
    ValueError
        Shapes that are not a batch of square 2D / cubic 3D fields, or ``field2`` of another shape.
    """
    d = _check_field(field, dim)
    shape = tuple(field.shape[-d:])
    if len(set(shape)) != 1:
        raise ValueError(f"fields must be square/cubic, got spatial shape {shape}")
    axes = tuple(range(-d, 0))
    fk = torch.fft.rfftn(field, dim=axes)
    n_pix = math.prod(shape)
    norm = box_size**d / n_pix**2
    if field2 is None:
        p = (fk.real**2 + fk.imag**2) * norm
    else:
        if field2.shape != field.shape:
            raise ValueError(
                f"field2 shape {tuple(field2.shape)} != field shape {tuple(field.shape)}"
            )
        gk = torch.fft.rfftn(field2, dim=axes)
        p = (fk.real * gk.real + fk.imag * gk.imag) * norm
    return bin_isotropic(p, shape, box_size, edges)


def cross_spectrum(a: torch.Tensor, b: torch.Tensor, box_size: float, edges=None, dim=None):
    """Binned cross-power spectrum of ``a`` and ``b``; see :func:`power_spectrum`."""
    return power_spectrum(a, box_size, edges=edges, field2=b, dim=dim)


def pixel_pdf(field, bins: int = 64, value_range: tuple[float, float] | None = None):
    """Histogram estimate of the one-point PDF of pixel values.

    Parameters
    ----------
    field : torch.Tensor or numpy.ndarray, any shape
        Pixel values (all pixels pooled).
    bins : int
        Number of equal-width bins.
    value_range : (float, float), optional
        Range of the histogram; default (min, max) of the data.

    Returns
    -------
    centers : numpy.ndarray (bins,) float64
        Bin centres, in the units of the field.
    density : numpy.ndarray (bins,) float64
        Probability density (integrates to 1 over the range), in 1/units of the field.
    """
    x = torch.as_tensor(field).detach().reshape(-1).to(torch.float64).cpu()
    if value_range is None:
        lo, hi = float(x.min()), float(x.max())
        if hi <= lo:
            hi = lo + 1.0
    else:
        lo, hi = value_range
    hist = torch.histc(x, bins=bins, min=lo, max=hi)
    width = (hi - lo) / bins
    density = hist / max(float(hist.sum()), 1.0) / width
    centers = lo + width * (np.arange(bins) + 0.5)
    return centers, density.numpy()


def peak_counts(maps, thresholds) -> np.ndarray:
    """Number of local maxima above each threshold in each 2D map (periodic, 8 neighbours).

    A peak is a pixel strictly larger than all 8 of its neighbours, the map wrapped periodically
    (the convention of the flat periodic maps of :mod:`engine.physics.slabs` and :mod:`engine.physics.lensing`;
    ties are not peaks). It counts towards threshold t when its value is > t.

    Parameters
    ----------
    maps : torch.Tensor or numpy.ndarray (B, N, M) or (N, M), real
        Maps, y along the second-to-last axis.
    thresholds : array_like (T,)
        Thresholds in the units of the maps (e.g. ν σ for signal-to-noise levels ν).

    Returns
    -------
    numpy.ndarray (B, T) int64 (or (T,) for a single map): peaks per map above each threshold.
    """
    x = torch.as_tensor(maps).detach()
    single = x.ndim == 2
    if single:
        x = x.unsqueeze(0)
    if x.ndim != 3:
        raise ValueError(f"maps must have shape (B, N, M) or (N, M), got {tuple(x.shape)}")
    n, m = x.shape[-2:]
    # pad periodically by one pixel: the 8 neighbours are then shifted slices of the copy
    xp = torch.cat([x[:, -1:], x, x[:, :1]], dim=1)
    xp = torch.cat([xp[:, :, -1:], xp, xp[:, :, :1]], dim=2)
    is_max = torch.ones(x.shape, dtype=torch.bool, device=x.device)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            if (dy, dx) != (1, 1):
                is_max &= x > xp[:, dy : dy + n, dx : dx + m]
    t = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    out = np.zeros((x.shape[0], t.size), dtype=np.int64)
    for b in range(x.shape[0]):
        heights = np.sort(x[b][is_max[b]].to(torch.float64).cpu().numpy())
        out[b] = heights.size - np.searchsorted(heights, t, side="right")
    return out[0] if single else out
