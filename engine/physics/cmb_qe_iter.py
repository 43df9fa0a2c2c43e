r"""One Newton step of the quadratic-estimator lensing reconstruction towards the
maximum-a-posteriori φ, calibrated on simulations: the iterated QE (baseline ``qe_it`` of the
delensing report). Builds on :mod:`engine.physics.cmb_qe` (estimator, normalisation, template).

One Newton step, calibrated on simulations (:func:`qe_iteration_terms`, :func:`calibrate_iteration`)
---------------------------------------------------------------------------------------------------
The maximum-a-posteriori φ (Hirata & Seljak 2003; Carron & Lewis 2017) solves
g(φ) = C_φ^{-1} φ, g the likelihood gradient; the QE is its first Newton step from φ = 0. A second
step from φ̂_WF: B_res = B_obs − T(φ̂_WF) (the template above), the EB estimator g₁ on (E, B_res)
with the *residual* lensing BB in the B filter (:func:`~engine.physics.cmb_theory.
residual_lensing_bb` of C^φφ N_0/(C^φφ + N_0)) and its pytempura normalisation A₁ (lower than the
first A: less lensing B is noise), and

    δ = (g₁ − φ̂_WF / C^φφ) / (1/A₁ + 1/C^φφ),

so that φ̂_WF + δ would be the Wiener-filtered φ with noise A₁ if g₁ responded to φ − φ̂_WF with
1/A₁ and its noise were new. Neither holds: φ̂_WF was built from the same B modes (ℓ ≥ 201) and the
same noise, so g₁'s noise is correlated with φ̂_WF's (measured on a reference sky: the normalised
g₁ correlates with φ − φ̂_WF at 0.33–0.49 of the expected amplitude; with φ̂_WF replaced by the
truth plus *independent* noise of power A, at 0.99–1.04). Taken as it is, φ̂_WF + δ improved
A_res on one nside-512 sky (0.436 → 0.394 cross, 0.507 → 0.475 own noise) but its amplitude is
off (response 0.77 where 0.92 is due) and a second step diverged (0.456, then 0.617). The two
estimates still carry different information, so the delensing φ̂ is their linear combination
with per-L weights

    φ̂ = a_L φ̂_WF + b_L δ,

(a_L, b_L) the least-squares fit to the true φ pooled over simulated skies of the same setting
(bins of ΔL = 20; :func:`calibrate_iteration`; ``python -m engine qe-calibrate``). This is an
empirical, simulation-calibrated estimator, like the Monte-Carlo response corrections of
real lensing pipelines — not the MAP solution. Measured on the 16 nside-512 training skies
(2 µK-arcmin, 5′; ``assets/qe/qe_iterated_nside512_noise2_beam5.json``, 755 s): a_L ≈ 1.06–1.12
and b_L ≈ 0.58–0.64 over 20 ≤ L ≤ 1000; the squared correlation with φ rises from 0.898 to 0.924
(20 ≤ L < 100), 0.770 to 0.825 (100–300), 0.492 to 0.574 (300–600), 0.183 to 0.233
(600–1000). :func:`qe_delens_iterated` builds the template as before from this φ̂; B at
ℓ ≤ 200 stays out of both steps, so no internal-delensing bias enters the A_res band (its
transfer function is measured by the report, method ``qe_it``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import healpy as hp
import numpy as np

from engine.params import ConfigError
from engine.physics.cmb_maps import ARCMIN, _attr, _gauss_beam, _threads
from engine.physics.cmb_qe import (
    B_LMIN,
    _eb,
    _Grid,
    _ivf,
    _reconstruct,
    _setup,
    _template_b,
    _unnormalised,
    qe_norm,
    subtract_template,
)
from engine.runs import REPO_ROOT

#: Folder of the shipped calibrations (:func:`calibrate_iteration`, ``python -m engine
#: qe-calibrate``) under the repository root, one JSON file per nside/noise/beam.
QE_CALIBRATION_DIR = ("assets", "qe")


def _newton_deltas(eb, phi_wf, n0, lmax, noise, beam, spectra, nside, nthreads, b_lmin):
    """The Newton step δ of each sky (module docstring, "One Newton step")."""
    from engine.physics.cmb_theory import residual_lensing_bb

    cpp = spectra.phiphi[: lmax + 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        cres = np.where(cpp + n0 > 0, cpp * n0 / (cpp + n0), 0.0)
        cres[:2] = 0.0
        cbb = residual_lensing_bb(spectra, cres)[: lmax + 1]
        a = qe_norm(noise, beam, lmax, spectra, "eb", b_lmin=b_lmin, cbb=cbb)
        h = np.where((a > 0) & (cpp > 0), 1.0 / (1.0 / a + 1.0 / cpp), 0.0)
        icpp = np.where(cpp > 0, 1.0 / cpp, 0.0)
    grid = _Grid(lmax, lmax, nthreads)
    b = _gauss_beam(beam, lmax)
    nl = (noise * ARCMIN) ** 2
    cee = spectra.lensed["EE"][: lmax + 1]
    out = []
    for (e, bb), p in zip(eb, phi_wf, strict=True):
        b_res = bb - _template_b(e, p, noise, beam, lmax, nside, spectra)
        w_e = hp.almxfl(_ivf(e, b, cee, nl), cee)
        g = _unnormalised(np.zeros_like(e), _ivf(b_res, b, cbb, nl, b_lmin), w_e, grid)
        out.append(hp.almxfl(g - hp.almxfl(p, icpp), h))
    return np.array(out)


def qe_iteration_terms(
    q,
    u,
    attrs: Mapping,
    spectra=None,
    nthreads: int | None = None,
    b_lmin: int = B_LMIN,
) -> dict[str, Any]:
    """The Wiener-filtered QE φ̂ and one Newton step δ towards the maximum-a-posteriori φ of
    observed full-sky Q/U (module docstring, "One Newton step"), the inputs of
    :func:`calibrate_iteration` and of :func:`qe_delens` with a calibration.

    Parameters
    ----------
    q, u : array_like ``(npix,)`` or ``(n_sky, npix)`` float, µK
        Observed maps, RING, full sky.
    attrs : mapping
        As :func:`qe_phi`.
    spectra : CMBSpectra, optional
    nthreads : int, optional
    b_lmin : int
        Lowest B multipole used (module docstring).

    Returns
    -------
    dict: ``phi_wf``, ``delta`` ``(n_sky, n_alm) complex128`` (healpy order, L ≤ lmax,
    dimensionless), ``e_lm`` the observed E a_ℓm (µK), ``lmax``.

    Raises
    ------
    ConfigError
        Bad maps or attrs.
    """
    q, u, nside, lmax, noise, beam, spectra = _setup(q, u, attrs, None, spectra, "qe_iteration")
    nthreads = nthreads or _threads()
    eb = [_eb(q[i], u[i], lmax, nthreads) for i in range(len(q))]
    rec = _reconstruct(eb, lmax, lmax, noise, beam, spectra, "pol", b_lmin, nthreads)
    phi_wf = np.array([hp.almxfl(p, rec["wiener"]) for p in rec["phi_lm"]])
    delta = _newton_deltas(eb, phi_wf, rec["n0"], lmax, noise, beam, spectra, nside, nthreads,
                           b_lmin)  # fmt: skip
    return {"phi_wf": phi_wf, "delta": delta, "e_lm": np.array([e for e, _ in eb]), "lmax": lmax}


def _binned_cl(a1, a2, edges) -> np.ndarray:
    """Σ over skies of the cross spectra, summed over (2L + 1) in the L bins ``edges``."""
    lmax = hp.Alm.getlmax(a1.shape[-1])
    c = sum(hp.alm2cl(x, y, lmax=lmax) for x, y in zip(a1, a2, strict=True))
    c = c * (2 * np.arange(lmax + 1) + 1)
    return np.array([c[lo:hi].sum() for lo, hi in zip(edges[:-1], edges[1:], strict=True)])


def calibrate_iteration(terms: Mapping, phi_true, delta_l: int = 20) -> dict[str, Any]:
    """Weights (a_L, b_L) of φ̂ = a_L φ̂_WF + b_L δ that minimise ⟨|φ̂ − φ|²⟩ per L bin on
    simulations with known φ (least squares pooled over skies; module docstring).

    Parameters
    ----------
    terms : mapping
        :func:`qe_iteration_terms` of the simulated skies (``phi_wf``, ``delta``, ``lmax``).
    phi_true : array_like ``(n_sky, n_alm)`` complex
        The true φ a_ℓm of the same skies (L ≤ lmax).
    delta_l : int
        Bin width in L (bins from L = 2 to lmax).

    Returns
    -------
    dict (JSON-ready lists): ``edges`` (bin edges, L), ``a``, ``b`` (per bin), ``rho2_qe``,
    ``rho2`` (the squared correlation of φ̂_WF and of the calibrated φ̂ with φ per bin),
    ``n_skies``, ``lmax``.

    Raises
    ------
    ConfigError
        Shapes that differ, fewer than 2 skies, delta_l < 1.
    """
    p0, d = np.asarray(terms["phi_wf"]), np.asarray(terms["delta"])
    pt = np.asarray(phi_true)
    if not (p0.shape == d.shape == pt.shape) or p0.ndim != 2:
        raise ConfigError(
            f"calibrate_iteration: phi_wf {p0.shape}, delta {d.shape} and phi_true {pt.shape} "
            "must be equal (n_sky, n_alm)"
        )
    if len(p0) < 2 or delta_l < 1:
        raise ConfigError(
            f"calibrate_iteration needs >= 2 skies and delta_l >= 1 ({len(p0)}, {delta_l})"
        )
    lmax = int(terms["lmax"])
    edges = np.append(np.arange(2, lmax + 1, int(delta_l)), lmax + 1)
    c00, c11, c01 = _binned_cl(p0, p0, edges), _binned_cl(d, d, edges), _binned_cl(p0, d, edges)
    t0, t1, tt = _binned_cl(p0, pt, edges), _binned_cl(d, pt, edges), _binned_cl(pt, pt, edges)
    det = c00 * c11 - c01**2
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.nan_to_num((c11 * t0 - c01 * t1) / det)
        b = np.nan_to_num((c00 * t1 - c01 * t0) / det)
        rho2_qe = np.nan_to_num(t0**2 / (c00 * tt))
        rho2 = np.nan_to_num((a * t0 + b * t1) / tt)
    return {
        "edges": edges.tolist(),
        "a": a.tolist(),
        "b": b.tolist(),
        "rho2_qe": rho2_qe.tolist(),
        "rho2": rho2.tolist(),
        "n_skies": len(p0),
        "lmax": lmax,
    }


def _per_l(calibration: Mapping, key: str, lmax: int) -> np.ndarray:
    edges, w = calibration["edges"], calibration[key]
    out = np.zeros(lmax + 1)
    for lo, hi, v in zip(edges[:-1], edges[1:], w, strict=True):
        out[lo : min(hi, lmax + 1)] = v
    return out


def qe_delens_iterated(
    q,
    u,
    attrs: Mapping,
    calibration: Mapping,
    spectra=None,
    nthreads: int | None = None,
    b_lmin: int = B_LMIN,
) -> tuple[np.ndarray, np.ndarray]:
    """Delens full-sky Q/U with the template of :func:`~engine.physics.cmb_qe.qe_delens` built
    from φ̂ = a_L φ̂_WF + b_L δ (module docstring).

    Parameters
    ----------
    q, u : array_like ``(npix,)`` or ``(n_sky, npix)`` float, µK
        Observed maps, RING, full sky.
    attrs : mapping
        As :func:`~engine.physics.cmb_qe.qe_phi`.
    calibration : mapping
        :func:`calibrate_iteration`'s weights, with the ``nside``, ``noise``, ``beam`` and
        ``lmax`` of the skies they were measured on.
    spectra : CMBSpectra, optional
    nthreads : int, optional
    b_lmin : int
        Lowest B multipole used in both steps.

    Returns
    -------
    (q_d, u_d): float64 arrays of the input shape, µK (E untouched).

    Raises
    ------
    ConfigError
        Bad maps or attrs, a calibration for other settings (:func:`check_calibration`).
    """
    single = np.ndim(q) == 1
    q, u, nside, lmax, noise, beam, spectra = _setup(q, u, attrs, None, spectra, "qe_delens")
    nthreads = nthreads or _threads()
    check_calibration(calibration, nside, noise, beam, lmax)
    t = qe_iteration_terms(q, u, attrs, spectra, nthreads, b_lmin)
    wa, wb = _per_l(calibration, "a", lmax), _per_l(calibration, "b", lmax)
    phi = [
        hp.almxfl(p, wa) + hp.almxfl(d, wb) for p, d in zip(t["phi_wf"], t["delta"], strict=True)
    ]
    qd, ud = subtract_template(q, u, t["e_lm"], phi, noise, beam, lmax, spectra)
    return (qd[0], ud[0]) if single else (qd, ud)


def check_calibration(calibration: Mapping, nside: int, noise: float, beam: float, lmax: int):
    """Refuse (one line) a :func:`calibrate_iteration` result measured at other settings.

    Raises
    ------
    ConfigError
        A missing key, or nside/noise/beam/lmax that differ from the given ones.
    """
    try:
        got = {k: calibration[k] for k in ("nside", "noise", "beam", "lmax", "edges", "a", "b")}
    except (KeyError, TypeError) as exc:
        raise ConfigError(
            f"QE calibration: missing {exc}; make one with calibrate_iteration"
        ) from None
    want = {"nside": nside, "noise": noise, "beam": beam, "lmax": lmax}
    bad = [
        f"{k} {got[k]} (skies: {v})" for k, v in want.items() if not np.isclose(float(got[k]), v)
    ]
    if bad:
        raise ConfigError("QE calibration was measured at other settings: " + ", ".join(bad))


def qe_calibration_for(attrs, lmax: int, root=None) -> dict | None:
    """The calibration in ``root`` (default :data:`QE_CALIBRATION_DIR` under the repository)
    measured at the nside, noise and beam of ``attrs`` (sky attrs, µK-arcmin and arcmin) and this
    lmax, with its ``path`` added, or None (unreadable or other-setting files are skipped)."""
    root = Path(root) if root is not None else REPO_ROOT.joinpath(*QE_CALIBRATION_DIR)
    for path in sorted(root.glob("*.json")) if root.is_dir() else []:
        try:
            cal = json.loads(path.read_text())
            check_calibration(cal, int(_attr(attrs, "nside")), _attr(attrs, "noise"),
                              _attr(attrs, "beam"), lmax)  # fmt: skip
        except (OSError, ValueError, ConfigError):
            continue
        return cal | {"path": str(path)}
    return None
