"""The residual lensing fraction A_res of delensed skies (:func:`residual_fraction`): cross
spectrum of two delensed copies with independent noise, and with each copy's own noise counted.
Definitions, sources and limits: the "Residual fraction" section of
:mod:`engine.evaluation.delensing`, which re-exports this module."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from engine.evaluation.delensing_spectra import (
    APODIZATION_DEG,
    ELL_RANGE,
    Bins,
    _Harmonic,
    _pair,
    _range_sum,
    _sky_map,
    bin_cl,
    ell_bins,
)
from engine.params import ConfigError


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


def _own_residual(h: _Harmonic, x1, x2, au, al, bins, ell_range) -> dict[str, Any]:
    """A_res with each copy's own noise counted (module docstring): ``x_k`` = a_ℓm of
    d_k − obs_k, so that x_k + al − au is the a_ℓm of d_k − n_k − u; auto spectra averaged over
    the two copies."""
    r1, r2 = x1 + al - au, x2 + al - au
    num = 0.5 * (h.cl(r1, r1) + h.cl(r2, r2))
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
