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
:func:`qe_forecast`. What the cross spectrum does not count: any part of a delenser's output
that follows the noise realisation (it differs between the copies). For a template method that
is the instrument-noise part of its φ̂ error, which a forecast counts: the measured QE
(residual exactly B_lens − T, so its own-noise residual C^BB[obs − n − T − u] can be formed)
scored 0.436 / 0.441 / 0.507 by the cross spectrum and 0.508 / 0.472 / 0.643 with its own
template noise counted, at 2 / 1 / 5 µK-arcmin (one nside-512 sky each; forecasts 0.454 / 0.389 /
0.631). Networks are flattered alike. So every report also gives, per method, the A_res **with
its own noise counted** (``a_res_own``):

    A_res,own(b) = ½ Σ_k C_b^BB[d_k − n_k − u] / C_b^BB[lensed − u],   n_k = obs_k − lensed,

the auto spectrum of what the delenser leaves when the noise it was given is taken as passed
through. For a method that subtracts a template from the observation (``none``, ``template``,
``qe``) d_k − n_k − u is exactly lensed − T_k − u, so this is the quantity a forecast predicts
(noise-driven template error included). For a network it also charges any change the network
made to the noise (removed noise counts as residual): conservative for a network, where the
cross spectrum is generous. Sky-set values are ratios of the sky-mean spectra;
their errors are the standard deviations of the per-sky ratios over √n_sky.

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
slightly optimistic).

*Paired skies* (``engine sky`` with one ``seed`` at r = 0 and at r > 0: the same E, φ and
noise, only the primordial B differs; the second observation's noise is then shared too): the
report adds the bias from the difference of each pair's delensed cross spectra
(:func:`paired_bias`), in which lensing residual and noise cancel, so the bias is measured
with the primordial B's own scatter only and without a separate error from R_b.

A learned delenser's r is fitted with its transfer function on primordial B, measured by
injection (:func:`measure_transfer`, :mod:`engine.evaluation.delensing_rfit`). The likelihood is maximised analytically at fixed variance, iterating the
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
* ``qe`` (:func:`~engine.physics.cmb_qe.qe_delens`; full-sky skies): the *measured*
  quadratic-estimator delensing — φ̂ from the observed Q/U by the polarisation (EB + EE) QE with
  B modes of ℓ ≤ 200 left out (else the internal-delensing bias removes part of every B mode in
  the band, primordial ones too), Wiener-filtered, and the template above built with it. Its
  transfer function on primordial B is measured like a network's.
* ``qe_it`` (given a ``qe_calibration``; full-sky skies): the same template with φ̂ from the QE
  and one Newton step towards the maximum-a-posteriori φ, combined with per-L weights fitted on
  other simulated skies (:mod:`engine.physics.cmb_qe_iter`); transfer measured.
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

import math
from collections.abc import Mapping
from typing import Any

import healpy as hp
import numpy as np

from engine.evaluation.delensing_ares import (  # noqa: F401 - re-exported
    _own_residual,
    _ratio,
    _residual,
    residual_fraction,
)
from engine.evaluation.delensing_baselines import qe_forecast, template_delens
from engine.evaluation.delensing_rfit import (
    R_INJECT,
    TRANSFER_SKIES,
    fit_r,
    measure_transfer,
    paired_bias,
    r_summary,
    tensor_b_maps,
    tensor_template,
)
from engine.evaluation.delensing_spectra import (  # noqa: F401 - re-exported
    APODIZATION_DEG,
    ARCMIN,
    DELTA_ELL,
    ELL_RANGE,
    SKY_KEYS,
    Bins,
    Delenser,
    _attr,
    _attrs,
    _cosmology,
    _gauss_beam,
    _Harmonic,
    _lmax,
    _pair,
    _range_sum,
    _sky_map,
    _sky_mask,
    apodize_mask,
    bin_cl,
    ell_bins,
    mask_moments,
    noise_maps,
    pixel_noise,
    qu_spectra,
    second_observation,
)
from engine.params import ConfigError

#: Version of the report of :func:`delensing_report`.
DELENSING_REPORT_VERSION = 2  # 2: a_res_own
#: Tensor-to-scalar ratios the evaluation simulates.
R_VALUES = (0.0, 0.01, 0.05)

__all__ = [
    "APODIZATION_DEG",
    "DELENSING_REPORT_VERSION",
    "DELTA_ELL",
    "ELL_RANGE",
    "R_INJECT",
    "R_VALUES",
    "TRANSFER_SKIES",
    "Bins",
    "apodize_mask",
    "bin_cl",
    "delensing_report",
    "ell_bins",
    "fit_r",
    "measure_transfer",
    "mask_moments",
    "noise_maps",
    "paired_bias",
    "pixel_noise",
    "qe_forecast",
    "qu_spectra",
    "r_summary",
    "residual_fraction",
    "second_observation",
    "template_delens",
    "tensor_b_maps",
    "tensor_template",
]


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


def _qe(q, u, sky):
    from engine.physics.cmb_qe import qe_delens

    return qe_delens(q, u, _attrs(sky))


def _qe_iterated(calibration: Mapping):
    def delens(q, u, sky):
        from engine.physics.cmb_qe_iter import qe_delens_iterated

        return qe_delens_iterated(q, u, _attrs(sky), calibration)

    return delens


def _full_sky(mask) -> bool:
    return mask is None or bool(np.all(np.asarray(mask) > 0))


def _dataset_seed(attrs: Mapping) -> int | None:
    """The ``seed`` attr the skies were simulated with (``engine sky``), None without one."""
    seed = attrs.get("seed")
    try:
        return None if seed is None or isinstance(seed, bool) else int(seed)
    except (TypeError, ValueError):
        return None


def _observation_seed(seed: int, attrs: Mapping, index: int):
    """Seed of the second observation's noise: (``seed``, the skies' simulation seed), so skies
    simulated with the same seed at two r (identical E, φ and first noise; :mod:`engine.physics.
    cmb`) also get the same second noise and stay paired; ``seed + index`` (index of the r) for
    skies without a simulation seed."""
    s = _dataset_seed(attrs)
    return int(seed) + index if s is None else [int(seed), s]


def _paired(by_r: Mapping[float, Any], r: float) -> bool:
    """Whether the skies at ``r`` and at r = 0 are pairs: same simulation seed, the same other
    sky settings (those of :class:`engine.physics.cmb.CMBParams` but r, seed, count and workers,
    where the attrs give them), same count and (where known) the same file rows."""
    from engine.params import user_settings
    from engine.physics.cmb import CMBParams

    if 0.0 not in by_r:
        return False
    a0, ar = _attrs(by_r[0.0]), _attrs(by_r[r])
    other = set(user_settings(CMBParams)) - {"r", "seed", "count", "workers"}
    if any(a0.get(k) != ar.get(k) for k in other):
        return False
    s0 = _dataset_seed(a0)
    n0, nr = (_sky_map(by_r[x], "Q").shape[0] for x in (0.0, r))
    i0, ir = (by_r[x].get("indices") if isinstance(by_r[x], Mapping) else None for x in (0.0, r))
    same_rows = i0 is None or ir is None or np.array_equal(i0, ir)
    return s0 is not None and s0 == _dataset_seed(ar) and n0 == nr and same_rows


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
    transfer: bool = True,
    measured_qe: bool = True,
    qe_calibration: Mapping | None = None,
) -> dict[str, Any]:
    """Every delensing metric for the given delensers and the baselines, JSON-ready.

    For each true r: the second observation (:func:`second_observation`, noise seeded by
    ``seed`` and the skies' simulation seed, so that paired skies share it),
    each method run on both copies, A_res (:func:`residual_fraction`), the delensed cross BB and
    the noise N_b; then r fits (:func:`fit_r`) with R_b the mean delensed cross BB of the r = 0
    skies of the same method (without r = 0 skies: the mean (d − u) cross BB over all skies), and
    QE forecasts (EB, MV) at the skies' noise, beam and lmax.

    Parameters
    ----------
    skies : mapping true r → sky
        Skies per the module docstring, all of one nside, noise, beam and mask.
    delensers : mapping name → callable ``f(q, u, sky) -> (q_d, u_d)``, optional
        ``q, u`` ``(n_sky, npix) float64`` µK; returns the same shapes. The baselines ``none``,
        ``template`` (needs ``phi``; off with ``template=False``) and ``qe`` (full-sky skies
        only; off with ``measured_qe=False``) are added.
    seed : int
        Seed of the second noise realisations.
    delta_ell, ell_range, apodization_deg
        Binning, range of the means and fit, mask taper (degrees).
    pure_b : bool
        Pure-B spectra on a masked sky (default; the pseudo-C_ℓ BB of whole maps is dominated
        by E→B leakage on a galactic cut).
    template, qe : bool
        Run the true-φ template baseline and the QE forecasts.
    measured_qe : bool
        Run the measured quadratic-estimator delensing
        (:func:`~engine.physics.cmb_qe.qe_delens`, ~16 s per sky at nside 512) on
        full-sky skies; its transfer function is measured like a given delenser's.
    transfer : bool
        Measure each given delenser's transfer function on primordial B by injection
        (:func:`measure_transfer`: two more delenser calls per sky on up to
        :data:`TRANSFER_SKIES` skies of the lowest r) and fit
        r with it; the uncorrected fit is kept beside it.
    qe_calibration : mapping, optional
        A calibration of the iterated QE (:func:`engine.physics.cmb_qe_iter.calibrate_iteration`,
        measured at the skies' nside/noise/beam on other skies): adds the method ``qe_it``
        (~35 s per sky at nside 512; full sky, with ``measured_qe``), transfer measured.

    Returns
    -------
    dict (JSON-ready, NaN as None): ``version``, ``nside``, ``lmax``, ``noise``, ``beam``,
    ``ell_range``, ``delta_ell``, ``apodization_deg``, ``fsky``, ``ell`` (bin centres),
    ``methods`` (names); ``a_res`` {method: {``per_bin``, ``per_bin_err``, ``mean``, ``mean_err``,
    ``by_r`` {r: {``per_bin``, ``per_bin_err``, ``mean``, ``mean_err``}}}} (pooled over r as the
    ratio of summed band powers); ``a_res_own`` {method: the same with the copies' own noise
    counted (module docstring), ``by_r`` holding ``mean`` and ``mean_err`` only}; ``fit_r`` {method: {``residual_model``, ``by_r`` {r:
    :func:`r_summary`}, with ``transfer`` ({``per_bin`` F_b, ``mean`` Σ F_b T_b / Σ T_b over
    ``ell_range``, ``r_injected``, ``n_skies``} for a measured delenser and ``qe``, None for the
    other baselines) and
    ``by_r_uncorrected`` (the fit with F_b = 1), ``paired`` {r: :func:`paired_bias`} for each
    r > 0 whose skies pair with the r = 0 skies (same simulation seed, other settings and count;
    else empty)}};
    ``qe_forecast`` {``eb``, ``mv``, ``pol``:
    {``mean``, ``per_bin``}}; ``spectra``
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
    if measured_qe and _full_sky(mask):
        methods["qe"] = _qe
        if qe_calibration is not None:
            methods["qe_it"] = _qe_iterated(qe_calibration)
    methods.update(delensers or {})
    bins = ell_bins(ell_range[0], lmax, delta_ell)
    h = _Harmonic(npix, mask, lmax, apodization_deg, pure_b)
    fsky = h.moments["fsky"]

    res: dict[str, dict[float, dict]] = {m: {} for m in methods}
    own: dict[str, dict[float, dict]] = {m: {} for m in methods}
    dcross: dict[str, dict[float, np.ndarray]] = {m: {} for m in methods}
    dnoise: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    lensed_bb = unlensed_bb = None
    for i, r in enumerate(rs):
        sky = by_r[r]
        obs1 = _pair(_sky_map(sky, "Q"), _sky_map(sky, "U"), "observed")
        obs2 = second_observation(sky, _observation_seed(seed, _attrs(sky), i))
        au = h.alm(*_pair(_sky_map(sky, "Q_unlensed"), _sky_map(sky, "U_unlensed"), "unlensed"))
        al = h.alm(*_pair(_sky_map(sky, "Q_lensed"), _sky_map(sky, "U_lensed"), "lensed"))
        ao1, ao2 = h.alm(*obs1), h.alm(*obs2)
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
            own[name][r] = _own_residual(h, a1 - ao1, a2 - ao2, au, al, bins, ell_range)
            cross = bin_cl(h.cl(a1, a2), bins)
            auto = 0.5 * (bin_cl(h.cl(a1, a1), bins) + bin_cl(h.cl(a2, a2), bins))
            dcross[name][r] = cross
            dnoise[name].append((auto - cross).mean(0))
            if last and name == "none":
                lensed_bb = cross

    spectra = cmb_spectra(max(lmax, ell_range[1], int(bins.hi[-1])), **_cosmology(attrs0))
    t_b = tensor_template(bins, beam, spectra)
    b2 = _gauss_beam(beam, spectra.lmax) ** 2
    transfers = {
        name: measure_transfer(methods[name], by_r[rs[0]], h, bins, spectra, beam, seed, ell_range)
        for name in [*(delensers or {}), *(m for m in ("qe", "qe_it") if m in methods)]
        if transfer
    }

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
        "a_res_own": {},
        "fit_r": {},
    }
    pairs = {r for r in rs if r > 0 and _paired(by_r, r)}  # skies paired with the r = 0 ones
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
        own_pooled = _ratio(
            np.concatenate([own[name][r]["residual_cl"] for r in rs]),
            np.concatenate([own[name][r]["lensing_cl"] for r in rs]),
            bins,
            ell_range,
            fsky,
        )
        report["a_res_own"][name] = {
            "per_bin": own_pooled["a_res"],
            "per_bin_err": own_pooled["a_res_err"],
            "mean": own_pooled["mean"],
            "mean_err": own_pooled["mean_err"],
            "by_r": {
                _rkey(r): {"mean": own[name][r]["mean"], "mean_err": own[name][r]["mean_err"]}
                for r in rs
            },
        }
        if 0.0 in dcross[name]:
            r_b, model = dcross[name][0.0].mean(0), "mean delensed cross BB of the r = 0 skies"
        else:
            r_b = bin_cl(num, bins).mean(0)
            model = "mean (d - u) cross BB over all skies"
        n_b = np.clip(np.mean(dnoise[name], axis=0), 0.0, None)
        fits, plain, paired = {}, {}, {}
        tr = transfers.get(name)
        for r in rs:
            t_fit = t_b
            fit = fit_r(dcross[name][r], t_b, r_b, n_b, bins, fsky, ell_range)
            plain[_rkey(r)] = r_summary(r, fit)
            if tr is not None and np.any((tr["per_bin"] * t_b)[bins.within(ell_range)] > 0):
                t_fit = tr["per_bin"] * t_b
                fit = fit_r(dcross[name][r], t_fit, r_b, n_b, bins, fsky, ell_range)
            fits[_rkey(r)] = r_summary(r, fit)
            if r in pairs:
                paired[_rkey(r)] = paired_bias(
                    dcross[name][r], dcross[name][0.0], t_fit, r_b, n_b, r,
                    fits[_rkey(r)]["sigma_r"], bins, fsky, ell_range,
                )  # fmt: skip
        report["fit_r"][name] = {
            "residual_model": model,
            "noise_bb": n_b,
            "by_r": fits,
            "transfer": tr,
            "by_r_uncorrected": plain,
            "paired": paired,
        }

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
        for est in ("eb", "mv", "pol"):
            f = qe_forecast(noise, beam, lmax, est, spectra=spectra, ell_range=ell_range)
            rbb = bin_cl(f["residual_bb"], bins)
            report["qe_forecast"][est] = {
                "mean": f["a_res_mean"],
                "per_bin": rbb / bin_cl(f["lensing_bb"], bins),
            }
            spec[f"qe_residual_{est}"] = bin_cl(f["residual_bb"] * b2, bins)
    report["spectra"] = spec
    return _jsonable(report)
