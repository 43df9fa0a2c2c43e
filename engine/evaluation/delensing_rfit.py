"""The tensor-to-scalar ratio fitted on delensed B-mode spectra (:mod:`engine.evaluation.delensing`).

:func:`tensor_template` is the binned tensor BB at r = 1 through the beam, :func:`fit_r` the
Gaussian-likelihood fit of r on a cross spectrum of two delensed observations (residual lensing
BB and noise as fixed templates) and :func:`r_summary` the
bias and scatter of r̂ over skies. Spectra in µK², ℓ bins of
:class:`~engine.evaluation.delensing_spectra.Bins`; the likelihood is written out in the
:mod:`engine.evaluation.delensing` docstring ("Primordial BB").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from engine.evaluation.delensing_spectra import ELL_RANGE, Bins, _gauss_beam, bin_cl
from engine.params import ConfigError

#: Iterations of the fixed-variance maximisation in :func:`fit_r`.
FIT_ITERATIONS = 5


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
    """Fit r to binned BB cross spectra, C_b = r T_b + R_b, per sky (the likelihood of the
    :mod:`engine.evaluation.delensing` docstring, "Primordial BB": Knox variance of a cross
    spectrum, Knox 1995 PRD 52, 4307).

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
