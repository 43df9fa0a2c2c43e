r"""Metrics of CMB delensing on HEALPix skies: E/B spectra, the residual lensing fraction A_res,
primordial-BB recovery (r̂, σ(r)), the baselines (none, a template from the true φ) and the
quadratic-estimator forecast.

Pure numpy/healpy/CAMB/lenspyx/pytempura functions that know nothing of networks: a delenser is
any callable ``f(q, u, sky) -> (q_d, u_d)`` on maps. :func:`delensing_report` runs everything and
returns a JSON-ready dict; :mod:`engine.evaluation.delensing_figures` draws it.

Skies (the data contract)
-------------------------
HEALPix maps in RING ordering, ``(npix,)`` or ``(n_sky, npix)`` float, µK: observed ``Q``, ``U``
(lensed + Gaussian beam + white noise), ``Q_lensed``/``U_lensed`` (beamed lensed, no noise),
``Q_unlensed``/``U_unlensed`` (beamed unlensed, no noise), ``phi`` (lensing potential,
dimensionless), ``mask`` ``(npix,)`` 1/0; attrs ``r``, ``noise`` (µK-arcmin, white, Q and U each),
``beam`` (Gaussian FWHM, arcmin), ``nside``, ``lmax`` = 3·nside − 1, ``cosmology`` (omega_m,
sigma8, omega_b, h, n_s). A sky is any mapping of these names (an ``xarray.Dataset`` works) whose
attrs are ``sky.attrs`` or ``sky["attrs"]``. A delenser returns estimates of the *beamed unlensed*
Q/U. All spectra here are of beamed maps (no beam deconvolution; theory curves are multiplied by
b_ℓ² where they are compared with maps) and C_ℓ, not D_ℓ, in µK².

E/B spectra (:func:`qu_spectra`)
--------------------------------
Pseudo-C_ℓ: the maps are multiplied by an apodised mask w (:func:`apodize_mask`: a C1 or C2 taper
in the angular distance from the nearest masked pixel, NaMaster's definitions, Grain et al. 2009,
PRD 79, 123515), E and B a_ℓm come from ``healpy.map2alm`` (pol, 3 iterations; healpy's E/B
sign convention, which lenspyx shares), and ``healpy.alm2cl`` is divided by w2 = mean(w²) over the
sphere. This is the f_sky-type approximation ⟨C̃_ℓ⟩ ≈ w2 C_ℓ (Hivon et al. 2002, ApJ 567, 2): it
ignores mode coupling (fine where the spectrum varies slowly across the mask kernel, ~ 180°/θ_mask
in ℓ; measured within 2 % for EE at 40 ≤ ℓ ≤ 128 on a 45 % cut with a 10° taper) and **E→B
leakage**: on a cut sky some E modes appear as B ("ambiguous modes"; Lewis, Challinor & Turok
2002, PRD 65, 023505). With C^EE ≫ C^BB the pseudo BB of a galactic cut is dominated by it
(measured: 1.3–3× the lensing BB at 40 ≤ ℓ ≤ 128, nside 64, 10° C2 taper), and more so on small
apertures, where the w2 normalisation also fails at ℓ ≲ 180°/aperture.

``pure_b=True`` replaces the pseudo B by the pure-B estimate (Smith 2006, PRD 74, 083002; Smith &
Zaldarriaga 2007, PRD 76, 043001; Grain et al. 2009 eq. 9), which only counts B modes that are
orthogonal to every E mode on the apodised patch:

    B_ℓm^pure = B_ℓm[wP] + 2/√((ℓ−1)(ℓ+2)) C¹_ℓm[P ð̄w] − N_ℓ a_ℓm[Im(P ð̄²w)],

P = Q + iU, N_ℓ = ((ℓ−1)ℓ(ℓ+1)(ℓ+2))^−½, ðw and ð²w from the window's a_ℓm by healpy's spin-1/2
synthesis, C¹ the curl part of healpy's spin-1 analysis (signs fixed, and checked by the tests,
against a pure-E sky). The taper must go smoothly to 0 (C2, several degrees). Measured on the
same cut: pure-E leakage < 1 % of the lensing BB, lensing BB recovered to ≤ 3 % (the w2
normalisation is only approximate for the pure estimator) at 40 ≤ ℓ ≤ 128. Its variance is a
little larger than the pseudo-C_ℓ's would be without leakage. EE is the pseudo-C_ℓ in both cases
(B→E leakage is negligible). No NaMaster (``pymaster`` has no wheel here); the mode-coupling
matrix is not inverted. A_res is built from *differences* of maps (d − u, lensed − u) whose E
part is tiny, so it is little affected by leakage either way; the BB of whole delensed maps in
:func:`fit_r` is, which is why :func:`delensing_report` uses pure B on a masked sky and measures
the residual model R_b on r = 0 skies with the same estimator. Effective sky fraction for error
bars: f_sky = w2²/w4 (Hivon et al. 2002). HEALPix analysis is accurate to ℓ ≈ 2·nside; near
3·nside − 1 ``map2alm`` loses a few percent of power (4–8 % of EE at 150 < ℓ < 191 for nside
64), so use nside ≥ 128 for ℓ ≤ 200.

Binning (:func:`ell_bins`): flat band powers, the unweighted mean of C_ℓ over Δℓ consecutive
multipoles (default Δℓ = :data:`DELTA_ELL` = 20 from ℓ = 20); only complete bins.

Residual fraction (:func:`residual_fraction`)
---------------------------------------------
The evaluator delenses two copies of each sky with independent noise (obs1 = lensed + n1, the
dataset's Q/U; obs2 = lensed + n2, :func:`second_observation`) and, per sky and ℓ bin,

    A_res(b) = C_b^BB,cross[(d1 − u), (d2 − u)] / C_b^BB[lensed − u],

u the true (beamed) unlensed sky, "lensed" the noiseless beamed lensed sky. Noise is independent
between the copies, so it does not bias the numerator: d = obs gives 1 in expectation, d = u + noise
gives 0, d = u + α(lensed − u) gives α². The mean over ``ell_range`` (20 ≤ ℓ ≤ 200) is the ratio
of the band powers summed over every ℓ in the range (Σ_ℓ numerator / Σ_ℓ denominator, from the
unbinned C_ℓ), not the mean of per-ℓ ratios — the same definition as the forecast of
:func:`qe_forecast`. Sky-set values are ratios of the sky-mean spectra; their errors are the
standard deviations of the per-sky ratios over √n_sky.

Primordial BB (:func:`fit_r`)
-----------------------------
Binned cross-spectrum of the two delensed copies (no noise bias), model C_b = r T_b + R_b with
T_b the binned CAMB tensor BB at r = 1 times b_ℓ² (:func:`tensor_template`) and R_b the residual
(lensing + leakage + whatever the delenser leaves) from the mean delensed cross spectrum of r = 0
skies. Gaussian likelihood per bin with the Knox variance (Knox 1995, PRD 52, 4307) *of a cross
spectrum of two maps with independent noise of power N_b each*:

    Var(C_b) = [C_b² + (C_b + N_b)²] / ν_b,   ν_b = f_sky Σ_{ℓ∈b} (2ℓ + 1),

(the auto-spectrum variance 2(C + N)²/ν would overstate it by up to 2× where N dominates). N_b is
the noise power of one delensed copy, measured as (auto(d1) + auto(d2))/2 − cross(d1, d2).
Bins are treated as independent (on a cut sky neighbours correlate; the curvature σ is then
slightly optimistic). The likelihood is maximised analytically at fixed variance, iterating the
variance at max(r̂, 0) (5 iterations): r̂ = Σ T (Ĉ − R)/V / Σ T²/V, σ(r) = (Σ T²/V)^(−1/2) (the
curvature of −ln L at fixed V; the ln V term is left out, as it biases r̂).

Baselines
---------
* ``none``: d = obs (A_res = 1 in expectation).
* ``template`` (:func:`template_delens`): "the best a φ-based method can do" with this E —
  Wiener-filter the observed E, Ê = E_obs b_ℓ C^EE/(b_ℓ² C^EE + N) (lensed C^EE, white N, an
  estimate of the unbeamed E), lens it with the TRUE φ (lenspyx, Reinecke et al. 2023, A&A 678,
  A165), take its B modes, multiply by b_ℓ and subtract that B (only) from the observed Q/U. The
  lensed E stands in for the unlensed E (second-order error), and only E with ℓ ≤ lmax enters, so
  the B produced by lensing of E above the map's lmax cannot be removed.
* QE forecast (:func:`qe_forecast`): N_0 of the EB or minimum-variance lensing quadratic
  estimator (Hu & Okamoto 2002, ApJ 574, 566) from pytempura (T. Namikawa; python interface by
  M. Madhavacheril), with lensed spectra as response and filter spectra, white noise
  (T noise = P noise/√2 unless given) deconvolved by the beam, 2 ≤ ℓ ≤ lmax; the Wiener-filtered
  φ removes C^φφ,res = C^φφ − (C^φφ)²/(C^φφ + N_0) (L ≤ lmax; above, nothing), and the residual
  BB is :func:`engine.physics.cmb_theory.residual_lensing_bb` (Seljak & Hirata 2004, PRD 69,
  043005; Smith et al. 2012, JCAP 06, 014). This assumes a **perfect E** (noiseless E in the
  template: the residual only from the φ error), so it is a bound for QE delensing with this φ.
  N_0 is computed for L ≤ lmax only. The mean A_res is the same band-power ratio as the maps'
  (Σ_ℓ residual / Σ_ℓ lensing over 20 ≤ ℓ ≤ 200). Against the issue's reference numbers (issue
  author, pytempura + CAMB, perfect E, 2 µK-arcmin): 5′, ℓ ≤ 1535: EB 0.450 (ref. 0.46), MV 0.444
  (ref. 0.43; pytempura.get_norms' default MV, which ignores the covariance between estimators,
  gives 0.427 — ``mv_covariance=False``); 30′, ℓ ≤ 383: EB 0.917, MV 0.915 (ref. 0.92); 1′,
  ℓ ≤ 3000: EB 0.329 (ref. 0.34).

Maps carry no pixel window here (the data contract's skies are synthesised at pixel centres).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import healpy as hp
import numpy as np

from engine.params import ConfigError

__all__ = [
    "APODIZATION_DEG",
    "DELENSING_REPORT_VERSION",
    "DELTA_ELL",
    "ELL_RANGE",
    "R_VALUES",
    "Bins",
    "apodize_mask",
    "bin_cl",
    "delensing_report",
    "ell_bins",
    "fit_r",
    "mask_moments",
    "noise_maps",
    "pixel_noise",
    "qe_forecast",
    "qu_spectra",
    "r_summary",
    "residual_fraction",
    "second_observation",
    "template_delens",
    "tensor_template",
]

#: Version of the report of :func:`delensing_report`.
DELENSING_REPORT_VERSION = 1
#: Multipole range of the mean A_res and of the r fit (inclusive).
ELL_RANGE = (20, 200)
#: Width of the ℓ bins.
DELTA_ELL = 20
#: Default apodisation scale of the mask taper, degrees.
APODIZATION_DEG = 10.0
#: Tensor-to-scalar ratios the evaluation simulates.
R_VALUES = (0.0, 0.01, 0.05)
#: One arcminute in radians.
ARCMIN = math.pi / (180.0 * 60.0)
#: Iterations of the fixed-variance maximisation in :func:`fit_r`.
FIT_ITERATIONS = 5
#: Map keys of a sky (the data contract).
SKY_KEYS = ("Q", "U", "Q_lensed", "U_lensed", "Q_unlensed", "U_unlensed")

Delenser = Callable[[np.ndarray, np.ndarray, Any], tuple[np.ndarray, np.ndarray]]


# ----------------------------------------------------------------------------- inputs


def _maps(x, name: str) -> np.ndarray:
    """``(n, npix) float64`` from ``(npix,)`` or ``(n, npix)``; ConfigError for bad input."""
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{name} must be a float array (npix,) or (n_sky, npix): {e}") from None
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[0] == 0 or not hp.isnpixok(a.shape[1]):
        raise ConfigError(
            f"{name} has shape {np.shape(x)}: expected (npix,) or (n_sky, npix) with npix = "
            "12*nside**2"
        )
    return a


def _pair(q, u, name: str) -> tuple[np.ndarray, np.ndarray]:
    q, u = _maps(q, f"{name} Q"), _maps(u, f"{name} U")
    if q.shape != u.shape:
        raise ConfigError(f"{name}: Q has shape {q.shape} and U {u.shape}; they must match")
    return q, u


def _attrs(sky) -> dict:
    """The attrs of a sky: ``sky.attrs`` or ``sky["attrs"]`` (ConfigError if neither)."""
    attrs = getattr(sky, "attrs", None)
    if attrs is None and isinstance(sky, Mapping):
        attrs = sky.get("attrs")
    if not isinstance(attrs, Mapping):
        raise ConfigError("sky has no attrs (sky.attrs or sky['attrs'] with noise, beam, nside)")
    return dict(attrs)


def _attr(attrs: Mapping, key: str) -> float:
    if key not in attrs:
        raise ConfigError(f"sky attrs lack {key!r}")
    try:
        v = float(attrs[key])
    except (TypeError, ValueError):
        raise ConfigError(f"sky attrs {key}={attrs[key]!r} must be a number") from None
    if not math.isfinite(v) or v < 0:
        raise ConfigError(f"sky attrs {key}={attrs[key]!r} must be a finite number >= 0")
    return v


def _cosmology(attrs: Mapping) -> dict:
    """omega_m, sigma8, omega_b, h, n_s from ``attrs["cosmology"]`` (dict or JSON) or attrs."""
    c = attrs.get("cosmology")
    if isinstance(c, str | bytes):
        try:
            c = json.loads(c)
        except ValueError:
            raise ConfigError("sky attrs cosmology is not a JSON object") from None
    src = c if isinstance(c, Mapping) else attrs
    keys = ("omega_m", "sigma8", "omega_b", "h", "n_s")
    return {k: float(src[k]) for k in keys if k in src}


def _sky_map(sky, key: str) -> np.ndarray:
    try:
        v = sky[key]
    except (KeyError, TypeError):
        raise ConfigError(f"sky lacks the map {key!r}") from None
    return _maps(v, key)


def _sky_mask(sky) -> np.ndarray | None:
    try:
        m = sky["mask"]
    except (KeyError, TypeError):
        return None
    return None if m is None else np.asarray(m, dtype=np.float64)


def _threads() -> int:
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return os.cpu_count() or 1


def _gauss_beam(beam_arcmin: float, lmax: int) -> np.ndarray:
    """b_ℓ of a Gaussian beam of FWHM ``beam_arcmin`` (0: no beam), ``(lmax + 1,)``."""
    if beam_arcmin < 0 or not math.isfinite(beam_arcmin):
        raise ConfigError(f"beam={beam_arcmin} must be a finite FWHM >= 0 arcmin")
    return hp.gauss_beam(beam_arcmin * ARCMIN, lmax=lmax)


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


def _lmax(npix: int, lmax: int | None) -> int:
    nside = hp.npix2nside(npix)
    if lmax is None:
        return 3 * nside - 1
    lmax = int(lmax)
    if not 2 <= lmax <= 4 * nside:
        raise ConfigError(
            f"lmax={lmax} is out of range: allowed 2 <= lmax <= 4*nside = {4 * nside}"
        )
    return lmax


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
    """σ per pixel (µK) of white noise of ``noise`` µK-arcmin: noise/√Ω_pix[arcmin²]."""
    return float(noise) / math.sqrt(hp.nside2pixarea(nside) / ARCMIN**2)


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


# ----------------------------------------------------------------------------- A_res


def residual_fraction(
    delensed1,
    delensed2,
    sky,
    mask=None,
    bins: Bins | None = None,
    ell_range: tuple[int, int] = ELL_RANGE,
    apodization_deg: float = APODIZATION_DEG,
    pure_b: bool = False,
) -> dict[str, Any]:
    """A_res per ℓ bin and over ``ell_range`` from two delensed copies (module docstring).

    Parameters
    ----------
    delensed1, delensed2 : (Q, U) pairs of ``(n_sky, npix)`` float, µK
        The delenser's output on the two observations with independent noise.
    sky : mapping
        With ``Q_lensed``, ``U_lensed``, ``Q_unlensed``, ``U_unlensed`` of the same shape.
    mask : array_like ``(npix,)``, optional
        Binary mask (apodised here); default None (full sky).
    bins : Bins, optional
        Default :func:`ell_bins` (Δℓ = 20 from ℓ = 20 to lmax).
    ell_range : (int, int)
        Inclusive range of the mean.
    apodization_deg : float
    pure_b : bool
        Pure-B spectra (:func:`qu_spectra`).

    Returns
    -------
    dict of numpy float64: ``ell`` (n_bins,) bin centres; ``a_res`` (n_bins,) ratio of the
    sky-mean band powers; ``a_res_err`` (n_bins,) std of per-sky ratios / √n_sky; ``per_sky``
    (n_sky, n_bins); ``mean`` (float) Σ_ℓ∈range numerator / Σ denominator of the sky means;
    ``mean_err``; ``per_sky_mean`` (n_sky,); ``residual_bb`` and ``lensing_bb`` (n_bins,) the
    sky-mean binned numerator and denominator, µK²; ``residual_cl``, ``lensing_cl`` (n_sky, L)
    the unbinned ones; ``fsky``.

    Raises
    ------
    ConfigError
        Shapes that differ, missing maps, a range without multipoles.
    """
    u = _pair(_sky_map(sky, "Q_unlensed"), _sky_map(sky, "U_unlensed"), "unlensed")
    lens = _pair(_sky_map(sky, "Q_lensed"), _sky_map(sky, "U_lensed"), "lensed")
    d1 = _pair(*delensed1, "delensed1")
    d2 = _pair(*delensed2, "delensed2")
    for name, x in (("lensed", lens), ("delensed1", d1), ("delensed2", d2)):
        if x[0].shape != u[0].shape:
            raise ConfigError(f"{name} maps have shape {x[0].shape}, the unlensed {u[0].shape}")
    h = _Harmonic(u[0].shape[1], mask, None, apodization_deg, pure_b)
    au, al = h.alm(*u), h.alm(*lens)
    return _residual(h, h.alm(*d1), h.alm(*d2), au, al, bins, ell_range)


def _residual(h: _Harmonic, a1, a2, au, al, bins, ell_range) -> dict[str, Any]:
    num = h.cl(a1 - au, a2 - au)
    den = h.cl(al - au, al - au)
    return _ratio(num, den, bins, ell_range, h.moments["fsky"])


def _ratio(num: np.ndarray, den: np.ndarray, bins, ell_range, fsky) -> dict[str, Any]:
    lmax = num.shape[-1] - 1
    bins = bins or ell_bins(ell_range[0], lmax)
    nb, db = bin_cl(num, bins), bin_cl(den, bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_sky = nb / db
        ns, ds = _range_sum(num, ell_range), _range_sum(den, ell_range)
        per_sky_mean = ns / ds
        n = len(num)
        err = per_sky.std(0, ddof=1) / math.sqrt(n) if n > 1 else np.full(nb.shape[1], np.nan)
        merr = per_sky_mean.std(ddof=1) / math.sqrt(n) if n > 1 else float("nan")
        return {
            "ell": bins.centres,
            "a_res": nb.mean(0) / db.mean(0),
            "a_res_err": err,
            "per_sky": per_sky,
            "mean": float(ns.mean() / ds.mean()),
            "mean_err": float(merr),
            "per_sky_mean": per_sky_mean,
            "residual_bb": nb.mean(0),
            "lensing_bb": db.mean(0),
            "residual_cl": num,
            "lensing_cl": den,
            "fsky": float(fsky),
            "bins": bins,
        }


# ----------------------------------------------------------------------------- r fit


def tensor_template(bins: Bins, beam: float, spectra=None, lmax: int | None = None) -> np.ndarray:
    """T_b: binned tensor BB at r = 1 times b_ℓ² (beamed maps), µK², ``(n_bins,) float64``.

    Parameters
    ----------
    bins : Bins
    beam : float
        Gaussian FWHM in arcmin.
    spectra : CMBSpectra, optional
        Default :func:`engine.physics.cmb_theory.cmb_spectra` at the fiducial cosmology.
    lmax : int, optional
        lmax of the default spectra (at least the last bin edge).
    """
    from engine.physics.cmb_theory import cmb_spectra

    top = int(bins.hi[-1])
    spectra = spectra or cmb_spectra(max(top, int(lmax or 0)))
    if spectra.lmax < top:
        raise ConfigError(f"spectra lmax={spectra.lmax} < last bin edge {top}")
    b = _gauss_beam(beam, spectra.lmax)
    return bin_cl(spectra.tensor_bb_r1 * b**2, bins)


def fit_r(
    cross_bb,
    tensor_bb,
    residual_bb,
    noise_bb,
    bins: Bins,
    fsky: float,
    ell_range: tuple[int, int] = ELL_RANGE,
) -> dict[str, Any]:
    """Fit r to binned BB cross spectra, C_b = r T_b + R_b, per sky (module docstring).

    Parameters
    ----------
    cross_bb : array_like ``(n_sky, n_bins)`` or ``(n_bins,)`` float, µK²
        Binned BB cross spectrum of the two delensed copies of each sky.
    tensor_bb : array_like ``(n_bins,)``, µK²
        T_b, :func:`tensor_template`.
    residual_bb : array_like ``(n_bins,)``, µK²
        R_b, the residual BB model (mean delensed cross BB of r = 0 skies).
    noise_bb : array_like ``(n_bins,)`` or float, µK²
        N_b, noise power of one delensed copy (≥ 0).
    bins : Bins
    fsky : float
        Effective sky fraction, in (0, 1].
    ell_range : (int, int)
        Bins entirely inside are used.

    Returns
    -------
    dict: ``r_hat``, ``sigma_r`` ``(n_sky,) float64`` (or floats for one spectrum); ``ell``
    centres of the bins used; ``nu`` their mode counts f_sky Σ(2ℓ+1).

    Raises
    ------
    ConfigError
        Shapes that differ, fsky outside (0, 1], no bin in the range, T_b all zero.
    """
    single = np.ndim(cross_bb) == 1
    c = np.atleast_2d(np.asarray(cross_bb, dtype=np.float64))
    nbin = len(bins.lo)
    t = np.asarray(tensor_bb, dtype=np.float64)
    r0 = np.asarray(residual_bb, dtype=np.float64)
    n = np.broadcast_to(np.asarray(noise_bb, dtype=np.float64), (nbin,))
    if c.shape[1] != nbin or t.shape != (nbin,) or r0.shape != (nbin,):
        raise ConfigError(
            f"fit_r: cross_bb {c.shape}, tensor_bb {t.shape}, residual_bb {r0.shape} do not "
            f"match {nbin} bins"
        )
    if not 0 < fsky <= 1:
        raise ConfigError(f"fsky={fsky} must lie in (0, 1]")
    use = bins.within(ell_range)
    if not use.any() or not np.any(t[use] > 0):
        raise ConfigError(f"fit_r: no bin with tensor power inside ell_range={ell_range}")
    c, t, r0, n = c[:, use], t[use], r0[use], n[use]
    nu = fsky * bins.n_modes[use]
    r_hat = np.zeros(len(c))
    for _ in range(FIT_ITERATIONS):
        model = np.clip(np.maximum(r_hat, 0.0)[:, None] * t + r0, 0.0, None)
        var = (model**2 + (model + n) ** 2) / nu
        fisher = np.sum(t**2 / var, axis=1)
        r_hat = np.sum(t * (c - r0) / var, axis=1) / fisher
    sigma = 1.0 / np.sqrt(fisher)
    out = {"r_hat": r_hat, "sigma_r": sigma, "ell": bins.centres[use], "nu": nu}
    if single:
        out["r_hat"], out["sigma_r"] = float(r_hat[0]), float(sigma[0])
    return out


def r_summary(r_true: float, fit: Mapping[str, Any]) -> dict[str, float]:
    """Bias and scatter of the per-sky fits of skies simulated at ``r_true``.

    Returns
    -------
    dict of floats: ``r_true``, ``n_sky``, ``mean_r_hat``, ``bias`` (mean r̂ − r),
    ``bias_err`` (std r̂/√n), ``sigma_r`` (mean per-sky σ), ``scatter`` (std of r̂),
    ``bias_over_sigma`` (bias / sigma_r).
    """
    r = np.atleast_1d(np.asarray(fit["r_hat"], dtype=np.float64))
    s = np.atleast_1d(np.asarray(fit["sigma_r"], dtype=np.float64))
    n = len(r)
    scatter = float(r.std(ddof=1)) if n > 1 else float("nan")
    bias = float(r.mean() - r_true)
    sig = float(s.mean())
    return {
        "r_true": float(r_true),
        "n_sky": n,
        "mean_r_hat": float(r.mean()),
        "bias": bias,
        "bias_err": scatter / math.sqrt(n) if n > 1 else float("nan"),
        "sigma_r": sig,
        "scatter": scatter,
        "bias_over_sigma": bias / sig if sig > 0 else float("nan"),
    }


# ----------------------------------------------------------------------------- baselines


def template_delens(q, u, phi, attrs: Mapping, mask=None, spectra=None):
    """Delens Q/U with a lensing-B template from the Wiener-filtered E lensed by the true φ.

    Ê = E_obs b_ℓ C^EE/(b_ℓ² C^EE + N) (lensed C^EE of the sky's cosmology, N = (noise·arcmin)²
    white), lensed with φ by lenspyx (spin 2, dlm = √(ℓ(ℓ+1)) φ_ℓm), its B modes times b_ℓ are
    subtracted from the observed Q/U; E is untouched. ℓ ≤ the maps' lmax = 3·nside − 1 (or
    ``attrs["lmax"]``).

    Parameters
    ----------
    q, u : array_like ``(npix,)`` or ``(n_sky, npix)`` float, µK
        Observed (beamed, noisy) maps, RING.
    phi : array_like, same shape
        Lensing potential maps (dimensionless).
    attrs : mapping
        ``noise`` (µK-arcmin), ``beam`` (FWHM arcmin), optional ``lmax``, ``cosmology``.
    mask : array_like ``(npix,)``, optional
        Binary mask: E is estimated from the observed pixels only (masked set to 0).
    spectra : CMBSpectra, optional
        For C^EE; default :func:`~engine.physics.cmb_theory.cmb_spectra` at the attrs' cosmology
        (r = 0; to ℓ = max(lmax, 200), the run :func:`delensing_report` caches too).

    Returns
    -------
    (q_d, u_d): float64 arrays of the input shape, µK.

    Raises
    ------
    ConfigError
        Shapes that differ, bad attrs.
    """
    import lenspyx

    from engine.physics.cmb_theory import cmb_spectra

    single = np.ndim(q) == 1
    q, u = _pair(q, u, "template_delens")
    ph = _maps(phi, "phi")
    if ph.shape != q.shape:
        raise ConfigError(f"phi has shape {ph.shape}, Q/U {q.shape}")
    nside = hp.npix2nside(q.shape[1])
    lmax = int(attrs.get("lmax") or 3 * nside - 1)
    lmax = _lmax(q.shape[1], lmax)
    noise, beam = _attr(attrs, "noise"), _attr(attrs, "beam")
    spectra = spectra or cmb_spectra(max(lmax, ELL_RANGE[1]), **_cosmology(attrs))
    if spectra.lmax < lmax:
        raise ConfigError(f"spectra lmax={spectra.lmax} < map lmax={lmax}")
    b = _gauss_beam(beam, lmax)
    cee = spectra.lensed["EE"][: lmax + 1]
    nl = (noise * ARCMIN) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        wf = np.where(b**2 * cee + nl > 0, b * cee / (b**2 * cee + nl), 0.0)
    ell = np.arange(lmax + 1, dtype=np.float64)
    w = np.ones(q.shape[1]) if mask is None else _weight(mask, q.shape[1], 0.0)
    alm_e = _eb_alm(q, u, w, lmax)[:, 0]
    qd, ud = np.empty_like(q), np.empty_like(u)
    geom = ("healpix", {"nside": nside})
    for i in range(len(q)):
        e_hat = hp.almxfl(alm_e[i], wf)
        dlm = hp.almxfl(hp.map2alm(ph[i], lmax=lmax, iter=3), np.sqrt(ell * (ell + 1)))
        lq, lu = lenspyx.alm2lenmap_spin([e_hat, None], dlm, 2, geometry=geom, nthreads=_threads())
        b_t = hp.map2alm([np.zeros_like(lq), lq, lu], lmax=lmax, pol=True, iter=3)[2]
        b_t = hp.almxfl(b_t, b)
        zero = np.zeros_like(b_t)
        _, tq, tu = hp.alm2map([zero, zero, b_t], nside, lmax=lmax, pol=True)
        qd[i], ud[i] = q[i] - tq, u[i] - tu
    return (qd[0], ud[0]) if single else (qd, ud)


@contextlib.contextmanager
def _quiet_stdout():
    """Silence the Fortran prints of pytempura (file descriptor 1)."""
    sys.stdout.flush()
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, fd)
        os.close(saved)


def _import_pytempura():
    """Import pytempura with its Fortran stdout unbuffered, so :func:`_quiet_stdout` silences
    its prints (libgfortran reads the variable once, when pytempura's copy is loaded)."""
    if "pytempura" in sys.modules:
        return sys.modules["pytempura"]
    key = "GFORTRAN_UNBUFFERED_PRECONNECTED"
    old = os.environ.get(key)
    os.environ[key] = "y"
    try:
        import pytempura
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old
    return pytempura


def qe_forecast(
    noise: float,
    beam: float,
    lmax: int,
    estimator: str = "mv",
    spectra=None,
    lmin: int = 2,
    t_noise: float | None = None,
    mv_covariance: bool = True,
    ell_range: tuple[int, int] = ELL_RANGE,
) -> dict[str, Any]:
    """Residual lensing BB after delensing with a quadratic-estimator φ (perfect E; module
    docstring).

    N_0 (the normalisation A_L of pytempura, lensing-potential gradient mode) for L ≤ ``lmax``;
    C^φφ,res = C^φφ − (C^φφ)²/(C^φφ + N_0); residual BB by CAMB
    (:func:`~engine.physics.cmb_theory.residual_lensing_bb`).

    Parameters
    ----------
    noise : float
        White polarisation noise, µK-arcmin (Q and U each).
    beam : float
        Gaussian beam FWHM, arcmin.
    lmax : int
        Highest CMB multipole used in the reconstruction (and highest L reconstructed).
    estimator : {"mv", "eb"}
        EB alone or the minimum-variance combination of TT, TE, EE, TB, EB.
    spectra : CMBSpectra, optional
        Default ``cmb_spectra(max(lmax, ell_range[1]))`` at the fiducial cosmology (r = 0).
    lmin : int
        Lowest CMB multipole used.
    t_noise : float, optional
        Temperature noise, µK-arcmin; default noise/√2.
    mv_covariance : bool
        True: pytempura ``norm_lens.qall`` (the MV combination with the estimators'
        covariances, Hu & Okamoto 2002); False: 1/N_0 = Σ_i 1/N_0,i ignoring them
        (``pytempura.get_norms``' default ``no_corr=True``; optimistic).
    ell_range : (int, int)
        Range of the mean A_res.

    Returns
    -------
    dict: ``estimator``, ``noise``, ``beam``, ``lmax``, ``lmin``, ``t_noise``; numpy
    ``(L + 1,)`` float64 from ℓ = 0: ``n0`` (N_0, dimensionless, 0 above lmax), ``phiphi``,
    ``phiphi_res``, ``lensing_bb`` and ``residual_bb`` (µK², unbeamed), ``a_res`` (per-ℓ ratio);
    ``a_res_mean`` (float) Σ_ℓ residual/Σ_ℓ lensing over ``ell_range``.

    Raises
    ------
    ConfigError
        Negative noise or beam, lmax outside [lmin + 1, 6000], unknown estimator.
    """
    from engine.physics.cmb_theory import cmb_spectra, residual_lensing_bb

    pytempura = _import_pytempura()
    est = str(estimator).lower()
    if est not in ("mv", "eb"):
        raise ConfigError(f"estimator={estimator!r} is not allowed: 'mv' or 'eb'")
    lmax, lmin = int(lmax), int(lmin)
    if not 2 <= lmin < lmax <= 6000:
        raise ConfigError(f"lmin={lmin}, lmax={lmax}: need 2 <= lmin < lmax <= 6000")
    if not (math.isfinite(noise) and noise >= 0):
        raise ConfigError(f"noise={noise} must be a finite number >= 0 muK-arcmin")
    t_noise = noise / math.sqrt(2.0) if t_noise is None else float(t_noise)
    if not (math.isfinite(t_noise) and t_noise >= 0):
        raise ConfigError(f"t_noise={t_noise} must be a finite number >= 0 muK-arcmin")
    spectra = spectra or cmb_spectra(max(lmax, ell_range[1]))
    if spectra.lmax < max(lmax, ell_range[1]):
        raise ConfigError(f"spectra lmax={spectra.lmax} < max(lmax, ell_range[1])")
    n = lmax + 1
    b2 = _gauss_beam(beam, lmax) ** 2
    with np.errstate(divide="ignore", over="ignore"):
        npol = np.where(b2 > 0, (noise * ARCMIN) ** 2 / b2, np.inf)
        ntt = np.where(b2 > 0, (t_noise * ARCMIN) ** 2 / b2, np.inf)
    npol = np.minimum(npol, 1e30)  # beyond the beam: no information, finite for Fortran
    ntt = np.minimum(ntt, 1e30)
    cl = {k: np.ascontiguousarray(v[:n], dtype=np.float64) for k, v in spectra.lensed.items()}
    tot = {"TT": cl["TT"] + ntt, "EE": cl["EE"] + npol, "BB": cl["BB"] + npol, "TE": cl["TE"]}
    with _quiet_stdout():
        if est == "eb":
            ag = pytempura.norm_lens.qeb(
                lmax, lmin, lmax, cl["EE"], cl["EE"], tot["EE"], tot["BB"]
            )[0]
        elif mv_covariance:
            fc = np.array([cl["TT"], cl["EE"], cl["BB"], cl["TE"]])
            oc = np.array([tot["TT"], tot["EE"], tot["BB"], tot["TE"]])
            flags = [True, True, True, True, True, False]
            ag = pytempura.norm_lens.qall(flags, lmax, lmin, lmax, fc, fc, oc)[0][-1]
        else:
            nl = pytempura.norm_lens
            parts = [
                nl.qtt(lmax, lmin, lmax, cl["TT"], cl["TT"], tot["TT"])[0],
                nl.qte(lmax, lmin, lmax, cl["TE"], cl["TE"], tot["TT"], tot["EE"])[0],
                nl.qee(lmax, lmin, lmax, cl["EE"], cl["EE"], tot["EE"])[0],
                nl.qtb(lmax, lmin, lmax, cl["TE"], cl["TE"], tot["TT"], tot["BB"])[0],
                nl.qeb(lmax, lmin, lmax, cl["EE"], cl["EE"], tot["EE"], tot["BB"])[0],
            ]
            with np.errstate(divide="ignore"):
                inv = sum(1.0 / np.asarray(p[2:]) for p in parts)
            ag = np.zeros(n)
            ag[2:] = 1.0 / inv
    n0 = np.zeros(spectra.lmax + 1)
    n0[2:n] = np.asarray(ag, dtype=np.float64)[2:n]
    cpp = np.asarray(spectra.phiphi, dtype=np.float64)
    res = cpp.copy()
    sl = slice(2, n)
    res[sl] = cpp[sl] - cpp[sl] ** 2 / (cpp[sl] + n0[sl])
    rbb = residual_lensing_bb(spectra, res)
    lbb = np.asarray(spectra.lensing_bb, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(lbb > 0, rbb / lbb, np.nan)
    return {
        "estimator": est,
        "noise": float(noise),
        "beam": float(beam),
        "lmax": lmax,
        "lmin": lmin,
        "t_noise": t_noise,
        "mv_covariance": bool(mv_covariance),
        "n0": n0,
        "phiphi": cpp,
        "phiphi_res": res,
        "lensing_bb": lbb,
        "residual_bb": rbb,
        "a_res": ratio,
        "a_res_mean": float(_range_sum(rbb, ell_range) / _range_sum(lbb, ell_range)),
    }


# ----------------------------------------------------------------------------- report


def _jsonable(x):
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, Bins):
        return {"lo": _jsonable(x.lo), "hi": _jsonable(x.hi), "delta_ell": x.delta_ell}
    if isinstance(x, np.ndarray):
        return [_jsonable(v) for v in x.tolist()] if x.ndim else _jsonable(x.item())
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    return x


def _none(q, u, sky):
    return q, u


def _template(mask):
    def delens(q, u, sky):
        return template_delens(q, u, _sky_map(sky, "phi"), _attrs(sky), mask=mask)

    return delens


def _rkey(r: float) -> str:
    return f"{float(r):g}"


def delensing_report(
    skies: Mapping[float, Any],
    delensers: Mapping[str, Delenser] | None = None,
    *,
    seed: int = 1,
    delta_ell: int = DELTA_ELL,
    ell_range: tuple[int, int] = ELL_RANGE,
    apodization_deg: float = APODIZATION_DEG,
    pure_b: bool = True,
    template: bool = True,
    qe: bool = True,
) -> dict[str, Any]:
    """Every delensing metric for the given delensers and the baselines, JSON-ready.

    For each true r: the second observation (:func:`second_observation`, seed ``seed + i``),
    each method run on both copies, A_res (:func:`residual_fraction`), the delensed cross BB and
    the noise N_b; then r fits (:func:`fit_r`) with R_b the mean delensed cross BB of the r = 0
    skies of the same method (without r = 0 skies: the mean (d − u) cross BB over all skies), and
    QE forecasts (EB, MV) at the skies' noise, beam and lmax.

    Parameters
    ----------
    skies : mapping true r → sky
        Skies per the module docstring, all of one nside, noise, beam and mask.
    delensers : mapping name → callable ``f(q, u, sky) -> (q_d, u_d)``, optional
        ``q, u`` ``(n_sky, npix) float64`` µK; returns the same shapes. The baselines ``none``
        and ``template`` (needs ``phi``; off with ``template=False``) are added.
    seed : int
        Seed of the second noise realisations.
    delta_ell, ell_range, apodization_deg
        Binning, range of the means and fit, mask taper (degrees).
    pure_b : bool
        Pure-B spectra on a masked sky (default; the pseudo-C_ℓ BB of whole maps is dominated
        by E→B leakage on a galactic cut).
    template, qe : bool
        Run the true-φ template baseline and the QE forecasts.

    Returns
    -------
    dict (JSON-ready, NaN as None): ``version``, ``nside``, ``lmax``, ``noise``, ``beam``,
    ``ell_range``, ``delta_ell``, ``apodization_deg``, ``fsky``, ``ell`` (bin centres),
    ``methods`` (names); ``a_res`` {method: {``per_bin``, ``per_bin_err``, ``mean``, ``mean_err``,
    ``by_r`` {r: {``per_bin``, ``per_bin_err``, ``mean``, ``mean_err``}}}} (pooled over r as the
    ratio of summed band powers); ``fit_r`` {method: {``residual_model``, ``by_r`` {r:
    :func:`r_summary`}}}; ``qe_forecast`` {``eb``, ``mv``: {``mean``, ``per_bin``}}; ``spectra``
    (binned sky-mean BB, µK², beamed, at the largest r: ``r``, ``lensed`` (cross of the two
    observations), ``unlensed``, ``delensed`` {method},
    ``theory_lensing``, ``qe_residual_mv``, ``primordial`` {r}).

    Raises
    ------
    ConfigError
        No skies, skies of different nside/noise/beam, missing maps or attrs.
    """
    from engine.physics.cmb_theory import cmb_spectra

    if not skies:
        raise ConfigError("delensing_report needs at least one set of skies")
    rs = sorted(float(r) for r in skies)
    by_r = {float(r): s for r, s in skies.items()}
    attrs0 = _attrs(by_r[rs[0]])
    noise, beam = _attr(attrs0, "noise"), _attr(attrs0, "beam")
    npix = _sky_map(by_r[rs[0]], "Q_lensed").shape[1]
    nside = hp.npix2nside(npix)
    lmax = _lmax(npix, attrs0.get("lmax") or None)
    for r in rs:
        a = _attrs(by_r[r])
        if (_attr(a, "noise"), _attr(a, "beam")) != (noise, beam):
            raise ConfigError(f"skies at r={r} have other noise/beam than at r={rs[0]}")
        if _sky_map(by_r[r], "Q_lensed").shape[1] != npix:
            raise ConfigError(f"skies at r={r} have another nside than at r={rs[0]}")
    mask = _sky_mask(by_r[rs[0]])
    methods: dict[str, Delenser] = {"none": _none}
    if template:
        try:
            by_r[rs[0]]["phi"]
            methods["template"] = _template(mask)
        except (KeyError, TypeError):
            pass
    methods.update(delensers or {})
    bins = ell_bins(ell_range[0], lmax, delta_ell)
    h = _Harmonic(npix, mask, lmax, apodization_deg, pure_b)
    fsky = h.moments["fsky"]

    res: dict[str, dict[float, dict]] = {m: {} for m in methods}
    dcross: dict[str, dict[float, np.ndarray]] = {m: {} for m in methods}
    dnoise: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    lensed_bb = unlensed_bb = None
    for i, r in enumerate(rs):
        sky = by_r[r]
        obs1 = _pair(_sky_map(sky, "Q"), _sky_map(sky, "U"), "observed")
        obs2 = second_observation(sky, seed + i)
        au = h.alm(*_pair(_sky_map(sky, "Q_unlensed"), _sky_map(sky, "U_unlensed"), "unlensed"))
        al = h.alm(*_pair(_sky_map(sky, "Q_lensed"), _sky_map(sky, "U_lensed"), "lensed"))
        last = i == len(rs) - 1  # spectra for the figure: the largest r (visible primordial BB)
        if last:
            unlensed_bb = bin_cl(h.cl(au, au), bins)
        for name, f in methods.items():
            d1 = _pair(*f(obs1[0], obs1[1], sky), f"{name} output")
            d2 = _pair(*f(obs2[0], obs2[1], sky), f"{name} output")
            if d1[0].shape != obs1[0].shape or d2[0].shape != obs1[0].shape:
                raise ConfigError(f"delenser {name!r} returned maps of another shape")
            a1, a2 = h.alm(*d1), h.alm(*d2)
            res[name][r] = _residual(h, a1, a2, au, al, bins, ell_range)
            cross = bin_cl(h.cl(a1, a2), bins)
            auto = 0.5 * (bin_cl(h.cl(a1, a1), bins) + bin_cl(h.cl(a2, a2), bins))
            dcross[name][r] = cross
            dnoise[name].append((auto - cross).mean(0))
            if last and name == "none":
                lensed_bb = cross

    spectra = cmb_spectra(max(lmax, ell_range[1], int(bins.hi[-1])), **_cosmology(attrs0))
    t_b = tensor_template(bins, beam, spectra)
    b2 = _gauss_beam(beam, spectra.lmax) ** 2

    report: dict[str, Any] = {
        "version": DELENSING_REPORT_VERSION,
        "nside": nside,
        "lmax": lmax,
        "noise": noise,
        "beam": beam,
        "ell_range": list(ell_range),
        "delta_ell": int(delta_ell),
        "apodization_deg": float(apodization_deg),
        "pure_b": bool(pure_b),
        "fsky": fsky,
        "ell": bins.centres,
        "methods": list(methods),
        "a_res": {},
        "fit_r": {},
    }
    for name in methods:
        per_r = res[name]
        num = np.concatenate([per_r[r]["residual_cl"] for r in rs])
        den = np.concatenate([per_r[r]["lensing_cl"] for r in rs])
        pooled = _ratio(num, den, bins, ell_range, fsky)
        report["a_res"][name] = {
            "per_bin": pooled["a_res"],
            "per_bin_err": pooled["a_res_err"],
            "mean": pooled["mean"],
            "mean_err": pooled["mean_err"],
            "by_r": {
                _rkey(r): {
                    k2: per_r[r][k1]
                    for k1, k2 in (
                        ("a_res", "per_bin"),
                        ("a_res_err", "per_bin_err"),
                        ("mean", "mean"),
                        ("mean_err", "mean_err"),
                    )
                }
                for r in rs
            },
        }
        if 0.0 in dcross[name]:
            r_b, model = dcross[name][0.0].mean(0), "mean delensed cross BB of the r = 0 skies"
        else:
            r_b = bin_cl(num, bins).mean(0)
            model = "mean (d - u) cross BB over all skies"
        n_b = np.clip(np.mean(dnoise[name], axis=0), 0.0, None)
        fits = {}
        for r in rs:
            fit = fit_r(dcross[name][r], t_b, r_b, n_b, bins, fsky, ell_range)
            fits[_rkey(r)] = r_summary(r, fit)
        report["fit_r"][name] = {"residual_model": model, "noise_bb": n_b, "by_r": fits}

    theory_lensing = bin_cl(spectra.lensing_bb * b2, bins)
    spec = {
        "r": rs[-1],
        "lensed": lensed_bb.mean(0),
        "unlensed": unlensed_bb.mean(0),
        "delensed": {m: dcross[m][rs[-1]].mean(0) for m in methods},
        "theory_lensing": theory_lensing,
        "primordial": {_rkey(r): r * t_b for r in R_VALUES if r > 0},
    }
    report["qe_forecast"] = {}
    if qe:
        for est in ("eb", "mv"):
            f = qe_forecast(noise, beam, lmax, est, spectra=spectra, ell_range=ell_range)
            rbb = bin_cl(f["residual_bb"], bins)
            report["qe_forecast"][est] = {
                "mean": f["a_res_mean"],
                "per_bin": rbb / bin_cl(f["lensing_bb"], bins),
            }
            spec[f"qe_residual_{est}"] = bin_cl(f["residual_bb"] * b2, bins)
    report["spectra"] = spec
    return _jsonable(report)
