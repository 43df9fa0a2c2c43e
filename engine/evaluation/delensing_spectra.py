"""E/B spectra of HEALPix Q/U skies for the delensing metrics: apodised masks, pseudo-C_ℓ
and pure-B spectra, ℓ bins, white noise realisations, and the checks of the sky mappings (the
data contract of :mod:`engine.evaluation.delensing`, whose docstring states the estimators and
their sources). No torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import healpy as hp
import numpy as np

from engine.params import ConfigError
from engine.physics.cmb_maps import (  # noqa: F401 - re-exported for the delensing modules
    ARCMIN,
    _attr,
    _attrs,
    _cosmology,
    _gauss_beam,
    _lmax,
    _maps,
    _pair,
    _sky_map,
    _sky_mask,
    _threads,
)

#: Multipole range of the mean A_res and of the r fit (inclusive).
ELL_RANGE = (20, 200)
#: Width of the ℓ bins.
DELTA_ELL = 20
#: Default apodisation scale of the mask taper, degrees.
APODIZATION_DEG = 10.0
#: Map keys of a sky (the data contract).
SKY_KEYS = ("Q", "U", "Q_lensed", "U_lensed", "Q_unlensed", "U_unlensed")

Delenser = Callable[[np.ndarray, np.ndarray, Any], tuple[np.ndarray, np.ndarray]]


# ----------------------------------------------------------------------------- inputs


# ----------------------------------------------------------------------------- masks & spectra


def apodize_mask(mask, apodization_deg: float = APODIZATION_DEG, kind: str = "C2") -> np.ndarray:
    """Apodised weight of a binary HEALPix mask, tapered inside the observed region.

    x = θ/θ_apo with θ the angular distance of an observed pixel centre from the nearest masked
    pixel centre; w = ½(1 − cos πx) ("C2") or x − sin(2πx)/(2π) ("C1") for x < 1, 1 beyond
    (NaMaster's C1/C2 definitions in θ rather than its √(1 − cos θ)/… variable). Masked pixels
    stay 0.

    Parameters
    ----------
    mask : array_like ``(npix,)``, RING
        Observed (> 0.5) and masked (≤ 0.5) pixels.
    apodization_deg : float
        θ_apo in degrees; 0 returns the binary mask.
    kind : {"C2", "C1"}

    Returns
    -------
    numpy.ndarray ``(npix,) float64`` in [0, 1].

    Raises
    ------
    ConfigError
        Not a HEALPix map, no observed pixel, negative or non-finite apodisation, unknown kind.
    """
    m = _maps(mask, "mask")
    if m.shape[0] != 1:
        raise ConfigError(f"mask has shape {np.shape(mask)}: expected (npix,)")
    if kind not in ("C1", "C2"):
        raise ConfigError(f"kind={kind!r} is not allowed: 'C1' or 'C2'")
    if not (math.isfinite(apodization_deg) and apodization_deg >= 0):
        raise ConfigError(f"apodization_deg={apodization_deg} must be a finite number >= 0")
    seen = np.nan_to_num(m[0]) > 0.5
    if not seen.any():
        raise ConfigError("mask has no observed pixel (values > 0.5)")
    w = seen.astype(np.float64)
    if apodization_deg == 0 or seen.all():
        return w
    from scipy.spatial import cKDTree

    nside = hp.npix2nside(m.shape[1])
    vec = np.stack(hp.pix2vec(nside, np.arange(m.shape[1])), axis=-1)
    theta_apo = math.radians(apodization_deg)
    chord_max = 2.0 * math.sin(min(theta_apo, math.pi) / 2.0)
    dist, _ = cKDTree(vec[~seen]).query(vec[seen], distance_upper_bound=chord_max * 1.0001)
    theta = 2.0 * np.arcsin(np.clip(np.where(np.isfinite(dist), dist, 2.0) / 2.0, 0.0, 1.0))
    x = np.clip(theta / theta_apo, 0.0, 1.0)
    taper = (
        0.5 * (1.0 - np.cos(np.pi * x)) if kind == "C2" else x - np.sin(2 * np.pi * x) / (2 * np.pi)
    )
    w[seen] = taper
    return w


def mask_moments(weight) -> dict[str, float]:
    """w2 = mean(w²), w4 = mean(w⁴) over the sphere and f_sky = w2²/w4 (Hivon et al. 2002).

    Parameters
    ----------
    weight : array_like ``(npix,)`` float, the (apodised) mask.

    Returns
    -------
    dict: ``w2``, ``w4``, ``fsky`` (floats).
    """
    w = np.asarray(weight, dtype=np.float64)
    w2, w4 = float(np.mean(w**2)), float(np.mean(w**4))
    if not w2 > 0:
        raise ConfigError("mask weight is zero everywhere")
    return {"w2": w2, "w4": w4, "fsky": w2**2 / w4}


def _weight(mask, npix: int, apodization_deg: float) -> np.ndarray:
    if mask is None:
        return np.ones(npix)
    m = np.asarray(mask, dtype=np.float64)
    if m.shape != (npix,):
        raise ConfigError(f"mask has shape {m.shape}, the maps have npix={npix}")
    return apodize_mask(m, apodization_deg)


def _window_spin(weight: np.ndarray, lmax: int) -> tuple[np.ndarray, ...]:
    """Real and imaginary parts of ðW (spin 1) and ð²W (spin 2) of the window, healpy's
    spin convention (ðW from ₁a_ℓm = √(ℓ(ℓ+1)) w_ℓm, i.e. G = −√(ℓ(ℓ+1)) w_ℓm)."""
    nside = hp.npix2nside(len(weight))
    ell = np.arange(lmax + 1, dtype=np.float64)
    w = hp.map2alm(weight, lmax=lmax, iter=3)
    zero = np.zeros_like(w)
    f1 = np.sqrt(ell * (ell + 1))
    f2 = np.sqrt(np.clip((ell - 1) * ell * (ell + 1) * (ell + 2), 0.0, None))
    a, b = hp.alm2map_spin([hp.almxfl(w, -f1), zero], nside, 1, lmax)
    c, d = hp.alm2map_spin([hp.almxfl(w, -f2), zero], nside, 2, lmax)
    return a, b, c, d


def _pure_b_terms(q, u, spin_w, lmax: int) -> np.ndarray:
    """The window-derivative terms of the pure B a_ℓm (Smith 2006; Grain et al. 2009, eq. 9):
    B_pure = B[WP] + 2/√((ℓ−1)(ℓ+2)) C¹[P ð̄W] − N_ℓ a⁰[Im(P ð̄²W)], N_ℓ = ((ℓ−1)ℓ(ℓ+1)(ℓ+2))^−½,
    P = Q + iU, C¹ the curl part of a spin-1 transform."""
    a, b, c, d = spin_w
    ell = np.arange(lmax + 1, dtype=np.float64)
    k1, k2 = np.zeros(lmax + 1), np.zeros(lmax + 1)
    k1[2:] = 2.0 / np.sqrt((ell[2:] - 1) * (ell[2:] + 2))
    k2[2:] = 1.0 / np.sqrt((ell[2:] - 1) * ell[2:] * (ell[2:] + 1) * (ell[2:] + 2))
    curl1 = hp.map2alm_spin([q * a + u * b, u * a - q * b], 1, lmax=lmax)[1]
    scal = hp.map2alm(u * c - q * d, lmax=lmax, iter=3)
    return hp.almxfl(curl1, k1) - hp.almxfl(scal, k2)


def _eb_alm(q, u, weight: np.ndarray, lmax: int, spin_w=None) -> np.ndarray:
    """E and B a_ℓm ``(n, 2, nalm) complex128`` of w·Q, w·U (healpy convention); with the
    window's spin maps ``spin_w`` (:func:`_window_spin`) B is the pure-B estimate."""
    seen = weight > 0
    out = []
    for qi, ui in zip(q, u, strict=True):
        if not (np.all(np.isfinite(qi[seen])) and np.all(np.isfinite(ui[seen]))):
            raise ConfigError("Q/U maps hold non-finite values in observed pixels")
        q0, u0 = np.where(seen, qi, 0.0), np.where(seen, ui, 0.0)
        alm = hp.map2alm([np.zeros_like(q0), q0 * weight, u0 * weight], lmax=lmax, pol=True, iter=3)
        e, b = alm[1], alm[2]
        if spin_w is not None:
            b = b + _pure_b_terms(q0, u0, spin_w, lmax)
        out.append(np.stack([e, b]))
    return np.stack(out)


class _Harmonic:
    """One window (apodised mask) and estimator: E/B a_ℓm of maps and their spectra over w2,
    so that the a_ℓm of a map are computed once for all the spectra it enters."""

    def __init__(self, npix: int, mask, lmax, apodization_deg: float, pure_b: bool):
        self.npix = npix
        self.lmax = _lmax(npix, lmax)
        self.weight = _weight(mask, npix, apodization_deg)
        self.moments = mask_moments(self.weight)
        full = bool(np.all(self.weight == 1))
        self.spin_w = _window_spin(self.weight, self.lmax) if pure_b and not full else None

    def alm(self, q, u) -> np.ndarray:
        if q.shape[1] != self.npix:
            raise ConfigError(f"maps have npix={q.shape[1]}, the mask {self.npix}")
        return _eb_alm(q, u, self.weight, self.lmax, self.spin_w)

    def cl(self, a1: np.ndarray, a2: np.ndarray, i: int = 1, j: int = 1) -> np.ndarray:
        """``(n, lmax + 1)`` spectra of component i of a1 with j of a2 (0 = E, 1 = B), µK²."""
        rows = [hp.alm2cl(x[i], y[j], lmax=self.lmax) for x, y in zip(a1, a2, strict=True)]
        return np.stack(rows) / self.moments["w2"]


def qu_spectra(
    q,
    u,
    mask=None,
    lmax: int | None = None,
    apodization_deg: float = APODIZATION_DEG,
    q2=None,
    u2=None,
    pure_b: bool = False,
) -> dict[str, Any]:
    """EE, BB and EB pseudo-C_ℓ of Q/U maps, or the cross spectra of two pairs, over w2, µK².

    The module docstring gives the method and its limits (w2 normalisation, E→B leakage).

    Parameters
    ----------
    q, u : array_like ``(npix,)`` or ``(n_sky, npix)`` float, µK, RING
        Masked pixels may hold anything (UNSEEN, NaN): they get weight 0.
    mask : array_like ``(npix,)``, optional
        Binary mask (1 observed), apodised by :func:`apodize_mask`; None: full sky.
    lmax : int, optional
        Highest multipole, default 3·nside − 1.
    apodization_deg : float
        Taper scale of the mask, degrees (0: the binary mask).
    q2, u2 : array_like, optional
        A second pair of the same shape: cross spectra ⟨X1 Y2⟩; EB is then ½(E1B2 + B1E2).
    pure_b : bool
        B from the pure-B estimator (module docstring) instead of the pseudo B; no effect on
        the full sky.

    Returns
    -------
    dict: ``ell`` ``(lmax + 1,) int64``; ``EE``, ``BB``, ``EB`` ``(lmax + 1,)`` for one map or
    ``(n_sky, lmax + 1)`` float64, µK²; ``w2``, ``fsky`` (floats).

    Raises
    ------
    ConfigError
        Bad shapes, npix not HEALPix, mask of another npix, non-finite observed pixels.
    """
    single = np.ndim(q) == 1
    q, u = _pair(q, u, "qu_spectra")
    h = _Harmonic(q.shape[1], mask, lmax, apodization_deg, pure_b)
    a1 = h.alm(q, u)
    if q2 is None and u2 is None:
        a2 = a1
    else:
        q2, u2 = _pair(q2, u2, "qu_spectra second")
        if q2.shape != q.shape:
            raise ConfigError(f"second pair has shape {q2.shape}, the first {q.shape}")
        a2 = h.alm(q2, u2)
    spectra = {
        "EE": h.cl(a1, a2, 0, 0),
        "BB": h.cl(a1, a2, 1, 1),
        "EB": 0.5 * (h.cl(a1, a2, 0, 1) + h.cl(a1, a2, 1, 0)),
    }
    out: dict[str, Any] = {"ell": np.arange(h.lmax + 1)}
    for name, v in spectra.items():
        out[name] = v[0] if single else v
    out["w2"], out["fsky"] = h.moments["w2"], h.moments["fsky"]
    return out


@dataclass(frozen=True)
class Bins:
    """ℓ bins: bin b holds ``lo[b] ≤ ℓ ≤ hi[b]`` (inclusive), all of width ``delta_ell``."""

    lo: np.ndarray
    hi: np.ndarray
    delta_ell: int

    @property
    def centres(self) -> np.ndarray:
        """Mean ℓ of each bin, ``(n_bins,) float64``."""
        return 0.5 * (self.lo + self.hi)

    @property
    def n_modes(self) -> np.ndarray:
        """Σ_{ℓ∈b} (2ℓ + 1), the full-sky number of modes per bin, ``(n_bins,) float64``."""
        return np.array(
            [np.sum(2 * np.arange(a, b + 1) + 1.0) for a, b in zip(self.lo, self.hi, strict=True)]
        )

    def within(self, ell_range: tuple[int, int]) -> np.ndarray:
        """Bins entirely inside ``ell_range`` (inclusive), ``(n_bins,) bool``."""
        return (self.lo >= ell_range[0]) & (self.hi <= ell_range[1])


def ell_bins(lmin: int = ELL_RANGE[0], lmax: int = 383, delta_ell: int = DELTA_ELL) -> Bins:
    """Complete bins of ``delta_ell`` multipoles from ``lmin`` up to at most ``lmax``.

    Raises
    ------
    ConfigError
        ``lmin`` < 0, ``delta_ell`` < 1, or no complete bin fits.
    """
    lmin, lmax, delta_ell = int(lmin), int(lmax), int(delta_ell)
    if lmin < 0 or delta_ell < 1 or lmin + delta_ell - 1 > lmax:
        raise ConfigError(
            f"ell bins: lmin={lmin}, delta_ell={delta_ell}, lmax={lmax} leave no complete bin"
        )
    lo = np.arange(lmin, lmax - delta_ell + 2, delta_ell)
    return Bins(lo=lo, hi=lo + delta_ell - 1, delta_ell=delta_ell)


def bin_cl(cl, bins: Bins) -> np.ndarray:
    """Flat band powers: mean of C_ℓ over each bin, ``(..., n_bins) float64`` from ``(..., L)``.

    Raises
    ------
    ConfigError
        The spectrum stops before the last bin.
    """
    c = np.asarray(cl, dtype=np.float64)
    if c.shape[-1] <= bins.hi[-1]:
        raise ConfigError(f"spectrum has lmax={c.shape[-1] - 1} < last bin edge {bins.hi[-1]}")
    return np.stack(
        [c[..., a : b + 1].mean(-1) for a, b in zip(bins.lo, bins.hi, strict=True)], axis=-1
    )


def _range_sum(cl: np.ndarray, ell_range: tuple[int, int]) -> np.ndarray:
    lo, hi = ell_range
    if cl.shape[-1] <= lo:
        raise ConfigError(
            f"ell_range={ell_range} starts above the spectra's lmax={cl.shape[-1] - 1}"
        )
    return cl[..., lo : hi + 1].sum(-1)


# ----------------------------------------------------------------------------- noise


def pixel_noise(noise: float, nside: int) -> float:
    """σ per pixel (µK) of white noise of ``noise`` µK-arcmin: noise/√Ω_pix[arcmin²]
    (:func:`engine.physics.cmb.noise_sigma`)."""
    from engine.physics.cmb import noise_sigma

    return noise_sigma(noise, nside)


def noise_maps(attrs: Mapping, n_sky: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """White Q and U noise of the sky attrs (``noise`` µK-arcmin per component, ``nside``).

    σ_pix = noise/√Ω_pix[arcmin²], independent Gaussians per pixel, from
    ``numpy.random.default_rng(seed)`` (same seed ⇒ same maps).

    Returns
    -------
    (q, u): two ``(n_sky, npix) float64`` arrays, µK.

    Raises
    ------
    ConfigError
        Missing or bad ``noise``/``nside``, n_sky < 1.
    """
    noise = _attr(attrs, "noise")
    nside = int(_attr(attrs, "nside"))
    if not hp.isnsideok(nside) or n_sky < 1:
        raise ConfigError(f"noise_maps: nside={nside} must be a power of 2, n_sky={n_sky} >= 1")
    rng = np.random.default_rng(seed)
    sigma = pixel_noise(noise, nside)
    shape = (int(n_sky), hp.nside2npix(nside))
    return sigma * rng.standard_normal(shape), sigma * rng.standard_normal(shape)


def second_observation(sky, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A second observation of the same skies: ``Q_lensed + n2``, ``U_lensed + n2`` (µK).

    ``(n_sky, npix) float64`` each; the noise is :func:`noise_maps` of the sky's attrs.
    """
    ql, ul = _pair(_sky_map(sky, "Q_lensed"), _sky_map(sky, "U_lensed"), "lensed")
    attrs = _attrs(sky)
    if hp.nside2npix(int(_attr(attrs, "nside"))) != ql.shape[1]:
        raise ConfigError(f"sky attrs nside={attrs['nside']} does not match npix={ql.shape[1]}")
    nq, nu = noise_maps(attrs, ql.shape[0], seed)
    return ql + nq, ul + nu
