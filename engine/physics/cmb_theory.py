r"""CMB angular power spectra from CAMB: unlensed (with tensors), lensed, lensing potential, and the
lensing B-modes left after partial delensing.

Everything comes from CAMB (Lewis, Challinor & Lasenby 2000, ApJ 538, 473; lensed spectra by the
curved-sky correlation-function method of Challinor & Lewis 2005, PRD 71, 103010, eqs. 9.12 and
9.16–9.18 of Lewis & Challinor 2006, Phys. Rep. 429, 1). Conventions:

* C_ℓ, not D_ℓ = ℓ(ℓ+1)C_ℓ/2π; CMB spectra in µK² (``CMB_unit="muK"``, T_CMB = 2.7255 K), the
  lensing-potential spectrum C_ℓ^φφ dimensionless (φ in radians²·sr⁻¹… i.e. the deflection is
  ∇φ on the unit sphere, in radians). Arrays are indexed by ℓ from 0 to ``lmax`` (C_0 = C_1 = 0).
* Flat ΛCDM with the project's parameters (:class:`engine.params.CosmologyParams`): Ω_m, σ8,
  Ω_b, h, n_s, plus the optical depth τ and the tensor-to-scalar ratio r at the pivot
  k = 0.05 Mpc⁻¹ (CAMB's default), tensor tilt n_t = −r/8 (inflation consistency). Ω_c h² =
  (Ω_m − Ω_b) h² (no massive neutrinos, as in :mod:`engine.physics.cosmology`). σ8 is matched by
  scaling A_s: σ8 ∝ √A_s at fixed other parameters (linear theory), from one CAMB transfer run at
  A_s = 2.1 × 10⁻⁹.
* Unlensed spectra are scalar + tensor; lensed spectra are lensed scalar + unlensed tensor (CAMB's
  ``get_total_cls``); the *lensing* B-mode spectrum is the lensed scalar BB (scalar perturbations
  make no primordial B). The tensor BB of r = 1 is :attr:`CMBSpectra.tensor_bb_r1`, so the
  primordial BB at any r is ``r * tensor_bb_r1`` (to first order; n_t = −r/8 changes it by
  < 1 % at ℓ < 200 for r ≤ 0.1).

Partial delensing (:func:`residual_lensing_bb`): the lensed BB when the lensing potential left in
the map has spectrum C_ℓ^φφ,res (e.g. C^φφ − (C^φφ)²/(C^φφ + N_0) after a quadratic-estimator
Wiener-filtered φ is removed), by CAMB's ``get_lensed_cls_with_spectrum`` (the same
correlation-function method). With C^φφ,res = C^φφ it returns the lensing BB itself.

CAMB runs take ~1–3 s; results are cached per parameter set in this process.
"""

from __future__ import annotations

import dataclasses
import functools
import threading

import numpy as np

from engine.params import ConfigError

#: Optical depth to reionisation (Planck 2018, TT,TE,EE+lowE+lensing: τ = 0.054).
TAU = 0.054
#: A_s of the transfer run from which σ8 is matched.
AS_REFERENCE = 2.1e-9
#: Highest multipole of the tensor computation: primordial BB is negligible above ℓ ~ 600.
LMAX_TENSOR = 1500
#: Allowed range of the tensor-to-scalar ratio.
R_BOUNDS = (0.0, 1.0)

_LOCK = threading.RLock()


@dataclasses.dataclass(frozen=True)
class CMBSpectra:
    """CMB spectra of one parameter set, C_ℓ for ℓ = 0 … ``lmax`` (``(lmax + 1,) float64``).

    Attributes
    ----------
    lmax : int
    params : dict
        The parameters they were computed for (omega_m, sigma8, omega_b, h, n_s, tau, r, A_s).
    unlensed : dict[str, numpy.ndarray]
        ``"TT"``, ``"EE"``, ``"BB"``, ``"TE"``: scalar + tensor at r, µK².
    lensed : dict[str, numpy.ndarray]
        Lensed scalar + tensor at r, µK².
    lensing_bb : numpy.ndarray
        Lensed scalar BB alone (the lensing B-modes), µK².
    tensor_bb_r1 : numpy.ndarray
        Unlensed tensor BB for r = 1, µK² (primordial BB at r is ``r * tensor_bb_r1``).
    phiphi : numpy.ndarray
        Lensing-potential spectrum C_ℓ^φφ, dimensionless.
    """

    lmax: int
    params: dict
    unlensed: dict
    lensed: dict
    lensing_bb: np.ndarray
    tensor_bb_r1: np.ndarray
    phiphi: np.ndarray
    #: the CAMB results object (for :func:`residual_lensing_bb`); not part of equality
    results: object = dataclasses.field(compare=False, repr=False, default=None)

    @property
    def ell(self) -> np.ndarray:
        """ℓ = 0 … lmax, ``(lmax + 1,) int64``."""
        return np.arange(self.lmax + 1)


def _camb_params(omega_m, omega_b, h, n_s, tau, r, a_s, lmax, tensors=True):
    import camb

    if not 0 < omega_b < omega_m:
        raise ConfigError(f"omega_b={omega_b} must lie in (0, omega_m={omega_m})")
    p = camb.CAMBparams()
    p.set_cosmology(
        H0=100.0 * h,
        ombh2=omega_b * h**2,
        omch2=(omega_m - omega_b) * h**2,
        tau=tau,
        mnu=0.0,
        num_massive_neutrinos=0,
    )
    p.InitPower.set_params(As=a_s, ns=n_s, r=r, nt=-r / 8.0 if r > 0 else 0.0)
    p.WantTensors = tensors
    p.set_for_lmax(lmax + 300, lens_potential_accuracy=1 if lmax <= 2000 else 2)
    if tensors:
        p.max_l_tensor = min(LMAX_TENSOR, lmax + 300)
        p.max_eta_k_tensor = 3.0 * p.max_l_tensor
    return p


@functools.lru_cache(maxsize=8)
def _sigma8_at_reference(omega_m, omega_b, h, n_s, tau) -> float:
    import camb

    p = _camb_params(omega_m, omega_b, h, n_s, tau, 0.0, AS_REFERENCE, 100, tensors=False)
    p.set_matter_power(redshifts=[0.0], kmax=10.0)
    return float(camb.get_results(p).get_sigma8_0())


@functools.lru_cache(maxsize=16)
def _spectra(omega_m, sigma8, omega_b, h, n_s, tau, r, lmax) -> CMBSpectra:
    import camb

    s8_ref = _sigma8_at_reference(omega_m, omega_b, h, n_s, tau)
    a_s = AS_REFERENCE * (sigma8 / s8_ref) ** 2
    p = _camb_params(omega_m, omega_b, h, n_s, tau, 1.0, a_s, lmax)
    # Tensors are computed once for r = 1 (primordial BB ∝ r); scalars do not depend on r.
    res = camb.get_results(p)
    kw = dict(lmax=lmax, CMB_unit="muK", raw_cl=True)
    scalar = res.get_unlensed_scalar_cls(**kw)
    lensed_scalar = res.get_lensed_scalar_cls(**kw)
    tensor1 = res.get_tensor_cls(**kw)
    pp = res.get_lens_potential_cls(lmax=lmax, raw_cl=True)[:, 0]
    names = ("TT", "EE", "BB", "TE")
    unlensed = {n: scalar[:, i] + r * tensor1[:, i] for i, n in enumerate(names)}
    lensed = {n: lensed_scalar[:, i] + r * tensor1[:, i] for i, n in enumerate(names)}
    for d in (unlensed, lensed):
        for v in d.values():
            v[:2] = 0.0
            v.setflags(write=False)
    extra = {"lensing_bb": lensed_scalar[:, 2].copy(), "tensor_bb_r1": tensor1[:, 2].copy()}
    extra["phiphi"] = pp.copy()
    for v in extra.values():
        v[:2] = 0.0
        v.setflags(write=False)
    params = dict(
        omega_m=omega_m, sigma8=sigma8, omega_b=omega_b, h=h, n_s=n_s, tau=tau, r=r, A_s=a_s
    )
    return CMBSpectra(lmax, params, unlensed, lensed, results=res, **extra)


def cmb_spectra(
    lmax: int,
    r: float = 0.0,
    omega_m: float = 0.3175,
    sigma8: float = 0.834,
    omega_b: float = 0.049,
    h: float = 0.6711,
    n_s: float = 0.9624,
    tau: float = TAU,
) -> CMBSpectra:
    """CAMB spectra up to ``lmax`` for a flat ΛCDM cosmology with tensors at ``r`` (module docstring
    for conventions). Cached per argument set.

    Parameters
    ----------
    lmax : int
        Highest multipole returned, 2 ≤ lmax ≤ 6000. CAMB computes 300 beyond it.
    r : float
        Tensor-to-scalar ratio at k = 0.05 Mpc⁻¹, in [0, 1].
    omega_m, sigma8, omega_b, h, n_s : float
        Cosmology (defaults: the project's fiducial, Quijote's).
    tau : float
        Optical depth to reionisation.

    Returns
    -------
    CMBSpectra

    Raises
    ------
    ConfigError
        lmax or r out of range, or omega_b ≥ omega_m.
    """
    lmax = int(lmax)
    if not 2 <= lmax <= 6000:
        raise ConfigError(f"lmax={lmax} is out of range: allowed 2 <= lmax <= 6000")
    if not R_BOUNDS[0] <= r <= R_BOUNDS[1]:
        raise ConfigError(f"r={r} is out of range: allowed {R_BOUNDS[0]} <= r <= {R_BOUNDS[1]}")
    key = tuple(float(v) for v in (omega_m, sigma8, omega_b, h, n_s, tau, r))
    with _LOCK:
        return _spectra(*key, lmax)


def residual_lensing_bb(spectra: CMBSpectra, phiphi_residual: np.ndarray) -> np.ndarray:
    """Lensing B-mode spectrum left when the lensing potential in the map has spectrum
    ``phiphi_residual`` (CAMB ``get_lensed_cls_with_spectrum``; module docstring). Above
    ``spectra.lmax`` the full C^φφ is used (nothing delensed there).

    Parameters
    ----------
    spectra : CMBSpectra
        From :func:`cmb_spectra` (its CAMB results hold the unlensed spectra).
    phiphi_residual : numpy.ndarray
        ``(n,) float`` C_ℓ^φφ,res from ℓ = 0, dimensionless; zero-padded or cut to ``spectra.lmax``.

    Returns
    -------
    numpy.ndarray
        ``(lmax + 1,) float64`` residual lensing C_ℓ^BB in µK².

    Raises
    ------
    ConfigError
        ``phiphi_residual`` not one-dimensional, negative or non-finite.
    """
    cpp = np.asarray(phiphi_residual, dtype=float)
    if cpp.ndim != 1 or not np.all(np.isfinite(cpp)) or np.any(cpp < 0):
        raise ConfigError("phiphi_residual must be a 1-D array of finite, non-negative C_ell")
    n = spectra.lmax + 1
    cpp = np.pad(cpp[:n], (0, max(0, n - cpp.size)))
    with _LOCK:
        # CAMB wants the lensing spectrum to its own max_l (lmax + 300): above lmax, nothing is
        # delensed (the full C^phiphi), which changes BB below lmax negligibly.
        max_l = spectra.results.Params.max_l
        full = spectra.results.get_lens_potential_cls(lmax=max_l, raw_cl=True)[:, 0]
        full[:n] = cpp
        ell = np.arange(max_l + 1, dtype=float)
        clpp = (ell * (ell + 1)) ** 2 * full / (2 * np.pi)
        out = spectra.results.get_lensed_cls_with_spectrum(
            clpp, lmax=spectra.lmax, CMB_unit="muK", raw_cl=True
        )
    bb = np.array(out[:, 2], dtype=float)
    bb[:2] = 0.0
    return bb
