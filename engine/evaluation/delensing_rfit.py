"""The tensor-to-scalar ratio fitted on delensed B-mode spectra (:mod:`engine.evaluation.delensing`).

:func:`tensor_template` is the binned tensor BB at r = 1 through the beam, :func:`measure_transfer`
a delenser's transfer function on primordial B, :func:`fit_r` the
Gaussian-likelihood fit of r on a cross spectrum of two delensed observations (residual lensing
BB and noise as fixed templates), :func:`r_summary` the
bias and scatter of r̂ over skies and :func:`paired_bias` the bias on paired skies (same seeds
at r and at 0), where lensing residual and noise cancel. Spectra in µK², ℓ bins of
:class:`~engine.evaluation.delensing_spectra.Bins`; the likelihood is written out in the
:mod:`engine.evaluation.delensing` docstring ("Primordial BB").

A delenser that also removes part of the primordial B must have its r fitted with the tensor
template it passes: C_b = r F_b T_b + R_b, F_b its *transfer function* on primordial B, measured
by injection as in every BB analysis (simulated signal through the pipeline, e.g. BICEP2/Keck
2016, PRL 116, 031302, §IV): tensor-only B at r = :data:`R_INJECT` (beamed, a seeded Gaussian
realisation, E = 0) is added to the observed Q/U of up to :data:`TRANSFER_SKIES` skies of the
lowest r, both versions are delensed, and the map-level response g_b = C_b^BB[d(obs + B) −
d(obs), B] / C_b^BB[B, B] (summed over the skies) gives the power transfer F_b = g_b². The
baselines need none (``none`` returns the input; ``template`` subtracts a template built from E
and φ, which injected B does not change): F_b = 1. A delenser that reads anything but the
observed Q/U (a test oracle that uses the true sky) is not measured correctly this way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import healpy as hp
import numpy as np

from engine.evaluation.delensing_spectra import (
    ELL_RANGE,
    Bins,
    Delenser,
    _gauss_beam,
    _Harmonic,
    _pair,
    _sky_map,
    bin_cl,
)
from engine.params import ConfigError

#: Iterations of the fixed-variance maximisation in :func:`fit_r`.
FIT_ITERATIONS = 5
#: r of the tensor-only B modes injected to measure a delenser's transfer function, and at most
#: how many skies (of the lowest r) it is measured on.
R_INJECT = 0.05
TRANSFER_SKIES = 3


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


def _knox_variance(model, noise, nu):
    """Var of a binned cross spectrum of two maps with independent noise of power ``noise``
    each, about ``model`` (clipped at 0), over ``nu`` modes (the :func:`fit_r` likelihood)."""
    model = np.clip(model, 0.0, None)
    return (model**2 + (model + noise) ** 2) / nu


def _in_range(where: str, cross: np.ndarray, tensor_bb, residual_bb, noise_bb, bins: Bins,
              fsky: float, ell_range: tuple[int, int]):  # fmt: skip
    """The bins of ``ell_range`` (boolean mask) and T_b, R_b, N_b and the mode counts ν_b
    there, float64; ConfigError (naming ``where``) if the shapes do not match the bins or no
    bin in the range has tensor power."""
    nbin = len(bins.lo)
    t = np.asarray(tensor_bb, dtype=np.float64)
    r0 = np.asarray(residual_bb, dtype=np.float64)
    n = np.broadcast_to(np.asarray(noise_bb, dtype=np.float64), (nbin,))
    if cross.shape[1] != nbin or t.shape != (nbin,) or r0.shape != (nbin,):
        raise ConfigError(
            f"{where}: cross spectra {cross.shape}, tensor_bb {t.shape}, residual_bb "
            f"{r0.shape} do not match {nbin} bins"
        )
    use = bins.within(ell_range)
    if not use.any() or not np.any(t[use] > 0):
        raise ConfigError(f"{where}: no bin with tensor power inside ell_range={ell_range}")
    return use, t[use], r0[use], n[use], fsky * bins.n_modes[use]


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
    if not 0 < fsky <= 1:
        raise ConfigError(f"fsky={fsky} must lie in (0, 1]")
    use, t, r0, n, nu = _in_range("fit_r", c, tensor_bb, residual_bb, noise_bb, bins, fsky,
                                  ell_range)  # fmt: skip
    c = c[:, use]
    r_hat = np.zeros(len(c))
    for _ in range(FIT_ITERATIONS):
        var = _knox_variance(np.maximum(r_hat, 0.0)[:, None] * t + r0, n, nu)
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
    ``bias_over_sigma`` (bias / sigma_r), ``bias_over_sigma_err`` (bias_err / sigma_r).
    """
    r = np.atleast_1d(np.asarray(fit["r_hat"], dtype=np.float64))
    s = np.atleast_1d(np.asarray(fit["sigma_r"], dtype=np.float64))
    n = len(r)
    scatter = float(r.std(ddof=1)) if n > 1 else float("nan")
    bias = float(r.mean() - r_true)
    sig = float(s.mean())
    err = scatter / math.sqrt(n) if n > 1 else float("nan")
    return {
        "r_true": float(r_true),
        "n_sky": n,
        "mean_r_hat": float(r.mean()),
        "bias": bias,
        "bias_err": err,
        "sigma_r": sig,
        "scatter": scatter,
        "bias_over_sigma": bias / sig if sig > 0 else float("nan"),
        "bias_over_sigma_err": err / sig if sig > 0 else float("nan"),
    }


def paired_bias(
    cross_r,
    cross_0,
    tensor_bb,
    residual_bb,
    noise_bb,
    r_true: float,
    bias_sigma: float,
    bins: Bins,
    fsky: float,
    ell_range: tuple[int, int] = ELL_RANGE,
) -> dict[str, float]:
    """The bias of r̂ measured on *paired* skies: sky i at ``r_true`` and sky i at r = 0 drawn
    from the same seeds (same E, φ and noise; only the primordial B differs), so the lensing
    residual and the noise cancel in the difference of their delensed cross spectra.

    Per pair, r̂_i = Σ_b T_b (C_b^(r),i − C_b^(0),i)/V_b / Σ_b T_b²/V_b with V_b the Knox
    variance of :func:`fit_r` at the model r_true T_b + R_b (weights only: the estimate is
    linear in the spectra, so any weights leave it unbiased); the bias is mean r̂_i − r_true
    and its error the scatter of r̂_i over √n. What is left in the scatter is the primordial
    B realisation and its cross terms with residual and noise; in expectation below the unpaired
    scatter (0.78 of it on 60 Gaussian pairs with residual plus noise 2-3 times the primordial
    BB; on two sets of 10 nside-512 pairs 0.58 and 1.1, each ratio itself uncertain by ~30 %),
    and R_b, taken from the same r = 0 skies, adds no error of its own. The same
    common-random-number pairing gives the derivatives of the Quijote simulations
    (Villaescusa-Navarro et al. 2020, ApJS 250, 2, §3).

    Parameters
    ----------
    cross_r, cross_0 : array_like ``(n_sky, n_bins)`` float, µK²
        Delensed cross BB of the skies at ``r_true`` and of their r = 0 partners, in pair order.
    tensor_bb, residual_bb, noise_bb, bins, fsky, ell_range
        As :func:`fit_r` (``tensor_bb`` with the delenser's transfer function applied).
    r_true : float
        The r of the skies, > 0.
    bias_sigma : float
        σ(r) the bias is compared with (the unpaired fit's mean per-sky σ), > 0.

    Returns
    -------
    dict of floats: ``n_sky``, ``mean_r_hat``, ``bias``, ``bias_err``, ``bias_over_sigma``,
    ``bias_over_sigma_err`` (bias and its error over ``bias_sigma``).

    Raises
    ------
    ConfigError
        Shapes that differ or fewer than two pairs, r_true or bias_sigma not > 0, no bin in
        the range.
    """
    cr = np.atleast_2d(np.asarray(cross_r, dtype=np.float64))
    c0 = np.atleast_2d(np.asarray(cross_0, dtype=np.float64))
    if cr.shape != c0.shape or cr.shape[0] < 2:
        raise ConfigError(
            f"paired_bias: cross spectra {cr.shape} and {c0.shape} must be the same n_sky >= 2 pairs"
        )
    if not (r_true > 0 and bias_sigma > 0):
        raise ConfigError(f"paired_bias: r_true={r_true} and bias_sigma={bias_sigma} must be > 0")
    use, t, r0, n, nu = _in_range("paired_bias", cr, tensor_bb, residual_bb, noise_bb, bins,
                                  fsky, ell_range)  # fmt: skip
    w = t / _knox_variance(r_true * t + r0, n, nu)
    r_hat = ((cr - c0)[:, use] * w).sum(1) / np.sum(w * t)
    bias = float(r_hat.mean() - r_true)
    err = float(r_hat.std(ddof=1) / math.sqrt(len(r_hat)))
    return {
        "n_sky": len(r_hat),
        "mean_r_hat": float(r_hat.mean()),
        "bias": bias,
        "bias_err": err,
        "bias_over_sigma": bias / bias_sigma,
        "bias_over_sigma_err": err / bias_sigma,
    }


def _first_skies(sky: Mapping[str, Any], n: int) -> dict[str, Any]:
    """The first ``n`` skies of a sky mapping (arrays with one row per sky cut; the rest kept,
    the attrs too)."""
    count = _sky_map(sky, "Q").shape[0]
    out = {
        k: v[:n] if isinstance(v, np.ndarray) and v.ndim == 2 and len(v) == count else v
        for k, v in sky.items()
    }
    attrs = getattr(sky, "attrs", None)
    if isinstance(attrs, Mapping):
        out.setdefault("attrs", dict(attrs))
    return out


def tensor_b_maps(
    n_sky: int, nside: int, lmax: int, beam: float, spectra, r: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Q, U of tensor-only B modes (E = 0): Gaussian a_ℓm of r · C_ℓ^BB,tensor(r = 1) · b_ℓ².

    Parameters
    ----------
    n_sky, nside, lmax : int
        Number of maps, HEALPix nside, highest multipole (≤ ``spectra.lmax``).
    beam : float
        Gaussian FWHM, arcmin.
    spectra : CMBSpectra
        With ``tensor_bb_r1`` (µK², unbeamed).
    r : float
        Tensor-to-scalar ratio, ≥ 0.
    seed : int
        Seeds the realisations (``numpy.random.default_rng((seed, 2))``).

    Returns
    -------
    (Q, U) ``(n_sky, 12 nside²) float64``, µK, RING.

    Raises
    ------
    ConfigError
        r < 0, or lmax above the spectra's.
    """
    from engine.physics.sky import synthesize_alm

    if not (r >= 0 and math.isfinite(r)):
        raise ConfigError(f"r={r} must be a finite number >= 0")
    if lmax > spectra.lmax:
        raise ConfigError(f"lmax={lmax} above the spectra's lmax={spectra.lmax}")
    rng = np.random.default_rng((int(seed), 2))
    cl = r * spectra.tensor_bb_r1[: lmax + 1] * _gauss_beam(beam, lmax) ** 2
    q, u = [], []
    for _ in range(n_sky):
        b = synthesize_alm(cl, rng)
        z = np.zeros_like(b)
        _, qi, ui = hp.alm2map([z, z, b], nside, lmax=lmax, pol=True)
        q.append(qi)
        u.append(ui)
    return np.array(q), np.array(u)


def measure_transfer(
    delenser: Delenser,
    sky: Mapping[str, Any],
    h: _Harmonic,
    bins: Bins,
    spectra,
    beam: float,
    seed: int,
    ell_range: tuple[int, int] = ELL_RANGE,
) -> dict[str, Any]:
    """A delenser's transfer function on primordial B, by injection (module docstring).

    Parameters
    ----------
    delenser : callable ``f(q, u, sky) -> (q_d, u_d)``
        ``(n_sky, npix) float64`` µK in and out.
    sky : mapping
        Skies of the data contract (the observed ``Q``, ``U`` are used, up to
        :data:`TRANSFER_SKIES` of them).
    h : _Harmonic
        The report's pure-B harmonic analysis (mask, lmax).
    bins : Bins
    spectra : CMBSpectra
        With ``tensor_bb_r1``.
    beam : float
        Gaussian FWHM, arcmin.
    seed : int
        Seed of the injected B (:func:`tensor_b_maps`).
    ell_range : (int, int)
        Range of the template-weighted mean.

    Returns
    -------
    dict: ``per_bin`` F_b ``(n_bins,) float64`` (power transfer, dimensionless), ``mean``
    Σ F_b T_b / Σ T_b over ``ell_range``, ``r_injected``, ``n_skies``.

    Raises
    ------
    ConfigError
        Maps of another shape from the delenser (via the pair checks).
    """
    sky0 = _first_skies(sky, TRANSFER_SKIES)
    obs = _pair(_sky_map(sky0, "Q"), _sky_map(sky0, "U"), "observed")
    nside = hp.npix2nside(obs[0].shape[1])
    qi, ui = tensor_b_maps(len(obs[0]), nside, h.lmax, beam, spectra, R_INJECT, seed)
    b_in = h.alm(qi, ui)
    b_auto = bin_cl(h.cl(b_in, b_in), bins).sum(0)
    d0 = h.alm(*_pair(*delenser(obs[0], obs[1], sky0), "delenser output"))
    dj = h.alm(*_pair(*delenser(obs[0] + qi, obs[1] + ui, sky0), "delenser output"))
    f_b = (bin_cl(h.cl(dj - d0, b_in), bins).sum(0) / b_auto) ** 2
    t_b = tensor_template(bins, beam, spectra)
    use = bins.within(ell_range)
    return {
        "per_bin": f_b,
        "mean": float(np.sum(f_b[use] * t_b[use]) / np.sum(t_b[use])),
        "r_injected": R_INJECT,
        "n_skies": len(obs[0]),
    }
