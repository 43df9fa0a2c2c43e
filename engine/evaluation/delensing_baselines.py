"""Baselines of the delensing report: the template from the true φ (:func:`template_delens`) and
the quadratic-estimator forecast (:func:`qe_forecast`); their methods and sources are in the
docstring of :mod:`engine.evaluation.delensing`. No torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import healpy as hp
import numpy as np

from engine.evaluation.delensing_spectra import (
    ARCMIN,
    ELL_RANGE,
    _attr,
    _cosmology,
    _eb_alm,
    _gauss_beam,
    _lmax,
    _maps,
    _pair,
    _range_sum,
    _weight,
)
from engine.params import ConfigError
from engine.physics.cmb_qe import (
    B_LMIN,
    _import_pytempura,
    _quiet_stdout,
    qe_norm,
    subtract_template,
)

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
    w = np.ones(q.shape[1]) if mask is None else _weight(mask, q.shape[1], 0.0)
    alm_e = _eb_alm(q, u, w, lmax)[:, 0]
    phi_lm = [hp.map2alm(ph[i], lmax=lmax, iter=3) for i in range(len(q))]
    qd, ud = subtract_template(q, u, alm_e, phi_lm, noise, beam, lmax, spectra)
    return (qd[0], ud[0]) if single else (qd, ud)


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
    b_lmin: int | None = None,
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
    estimator : {"mv", "eb", "pol"}
        EB alone, the minimum-variance combination of TT, TE, EE, TB, EB, or the polarisation
        estimator EB + EE of :func:`~engine.physics.cmb_qe.qe_phi` (the measured QE
        baseline; its normalisation :func:`~engine.physics.cmb_qe.qe_norm`).
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
    b_lmin : int, optional
        ``"pol"`` only: lowest B multipole in the reconstruction (default
        :data:`~engine.physics.cmb_qe.B_LMIN`, as the measured baseline).

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
    if est not in ("mv", "eb", "pol"):
        raise ConfigError(f"estimator={estimator!r} is not allowed: 'mv', 'eb' or 'pol'")
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
    if est == "pol":
        b_lmin = B_LMIN if b_lmin is None else int(b_lmin)
        ag = qe_norm(noise, beam, lmax, spectra, "pol", lmin=lmin, b_lmin=b_lmin)
    else:
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
        "b_lmin": b_lmin,
        "n0": n0,
        "phiphi": cpp,
        "phiphi_res": res,
        "lensing_bb": lbb,
        "residual_bb": rbb,
        "a_res": ratio,
        "a_res_mean": float(_range_sum(rbb, ell_range) / _range_sum(lbb, ell_range)),
    }
