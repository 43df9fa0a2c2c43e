r"""Lensed CMB polarisation skies on HEALPix with primordial B-modes (kind ``cmb``).

Each sky is a full-sky HEALPix map set (RING ordering, equatorial frame: lon = RA, lat = Dec,
as :mod:`engine.physics.sky`) of the Stokes Q and U polarisation in µK (thermodynamic CMB
units), lensed, beam-smoothed and with white instrumental noise, together with its noiseless
and unlensed versions and the lensing potential φ, so that delensing networks and estimators
can be trained and checked against the truth.

Spectra
-------
C_ℓ come from CAMB through :func:`engine.physics.cmb_theory.cmb_spectra` (Lewis, Challinor &
Lasenby 2000, ApJ 538, 473), for flat ΛCDM with the cosmology of :class:`CMBParams`
(Ω_m, σ8, Ω_b, h, n_s; τ = :data:`engine.physics.cmb_theory.TAU`) and tensor-to-scalar ratio
``r`` (pivot 0.05 Mpc⁻¹, n_t = −r/8). C_ℓ, not D_ℓ; µK² for E and B, dimensionless for φ.

Simulation (:func:`simulate`), sky ``i`` of a run with ``seed``
--------------------------------------------------------------
1. Unlensed Gaussian harmonic coefficients up to ℓ_unl = :func:`unlensed_lmax`, drawn like
   :func:`engine.physics.sky.synthesize_alm` (a_ℓ0 real N(0, C_ℓ), a_ℓm = (x + iy)√(C_ℓ/2) for
   m > 0) from numpy generators seeded by ``SeedSequence([seed, 4311, i, stream])``: stream 0
   the unit normals of E, stream 1 of B, stream 2 of the part of φ not correlated with E,
   stream 3 the noise. E_ℓm has the unlensed scalar + tensor C_ℓ^EE at ``r``; B_ℓm the tensor
   C_ℓ^BB = r · ``tensor_bb_r1`` (scalar perturbations make no primordial B); φ_ℓm has C_ℓ^φφ
   **and** the cross-spectrum C_ℓ^Eφ (CAMB's lens-potential × E), by a 2 × 2 Cholesky factor
   per ℓ: φ = (C^Eφ/C^EE) E + √(C^φφ − (C^Eφ)²/C^EE) g. The correlation coefficient
   C^Eφ/√(C^EE C^φφ) is 0.31 at ℓ < 10 (reionisation bump), 0.15 at 10 ≤ ℓ < 30 and < 0.016
   above ℓ = 30, so it matters only for E × φ on the largest scales; it does not change any
   auto-spectrum and CAMB's lensed spectra neglect it. T is not simulated (nor TE, Tφ).
   Each field has its own stream: the noise of (seed, i) is the same for any settings of the
   same nside, a change of ``r`` scales B by √r and changes E and φ only through the tensor EE,
   and sky i does not depend on ``count``, chunks or workers.
2. Lensing on the sphere with lenspyx (Reinecke, Belkner & Carron 2023, A&A 678, A165; ducc0
   non-uniform spherical-harmonic transforms): the spin-1 deflection d_ℓm = √(ℓ(ℓ+1)) φ_ℓm
   (gradient only, ℓ ≤ ℓ_unl) remaps the spin-2 field of (E, B) to the deflected positions
   of a Gauss–Legendre grid of band limit max(ℓ_unl, ℓ_max), including the polarisation-basis
   rotation, and the exact quadrature of that grid gives the lensed E and B harmonic
   coefficients up to ℓ_max = 3·nside − 1 directly (``deflection.lensgclm``). This avoids
   analysing a HEALPix map of the lensed field, which is not band-limited: at nside 128 with
   ℓ_unl = 1500 a HEALPix ``map2alm`` of lenspyx's lensed HEALPix map aliases E into B by a
   factor ~400 in C_ℓ^BB. A grid band limit below ℓ_unl aliases too (measured at nside 64,
   ℓ_unl = 2500: 10 % of the lensed B power for a grid of 1400, 0.4 % for 2000, 3 × 10⁻⁵ for
   2500). The interpolation accuracy is ``EPSILON`` = 10⁻⁵ (lenspyx's single precision), far
   below the float32 maps.
3. The beam, a Gaussian of FWHM ``beam`` arcmin, multiplies the lensed and the unlensed E, B
   coefficients by B_ℓ = ``healpy.gauss_beam(fwhm, pol=True)[:, 1]`` (the spin-2 Gaussian beam,
   exp(−(ℓ(ℓ+1) − 4)σ²/2)); it acts on the observed (lensed) sky, so the fields are lensed first,
   then beamed. No pixel window is applied: the maps are the band-limited (ℓ ≤ 3·nside − 1)
   fields evaluated at the pixel centres (ducc0 synthesis, as ``healpy.alm2map_spin``).
4. White noise in Q and U, independent, σ_pix = ``noise`` / √Ω_pix[arcmin²] per pixel, i.e.
   N_ℓ^EE = N_ℓ^BB = (``noise`` · π/10800)² µK² sr, not beam-smoothed (instrumental).

HEALPix conventions (Górski et al. 2005, ApJ 622, 759): healpy's alm layout and Q/U sign
convention (polarisation angle from north through east seen from inside, COSMO convention as
``healpy.alm2map_spin``), RING ordering.

ℓ_unl: the rule and its accuracy
--------------------------------
Lensed B-modes at a multipole ℓ are made by lensing E-modes at ℓ' up to ≈ ℓ + 2000, so the
unlensed fields must reach beyond the map band. ``lmax_unlensed = 0`` (automatic) takes
ℓ_unl = min(6000, ℓ_max + 2000) = min(6000, 3·nside + 1999) (:func:`unlensed_lmax`). Its
accuracy, measured with CAMB's own curved-sky lensing (``camb.correlations.lensed_cls``,
``theta_max=None``) of the unlensed E, B, φ spectra cut at ℓ_unl as the simulation does, as
the fraction of CAMB's lensed BB (same method, inputs to ℓ = 6000) that the maps hold in the
map band 2 ≤ ℓ ≤ ℓ_max (mean over ℓ; lowest single-ℓ ratio and where in brackets):

=======  ======  ======  ==========================  =================
nside    ℓ_max   ℓ_unl   lensed BB fraction          lensed EE
=======  ======  ======  ==========================  =================
16       47      2047    0.9963 (0.9963)             within 1.2 × 10⁻⁴
32       95      2095    0.9967 (0.9967, ℓ = 95)     within 1.0 × 10⁻⁴
64       191     2191    0.9974 (0.9974)             within 0.8 × 10⁻⁴
128      383     2383    0.9987 (0.9981, ℓ = 383)    within 0.6 × 10⁻⁴
256      767     2767    0.9994 (0.9985, ℓ = 767)    within 1.6 × 10⁻⁴
512      1535    3535    0.9998 (0.9983, ℓ = 1535)   within 3.5 × 10⁻⁴
1024     3071    5071    0.9995 (0.9946, ℓ = 3071)   within 2.1 × 10⁻⁴
2048     6143    6000    not measured (CAMB stops at ℓ = 6000; C_ℓ above it are 0 here)
=======  ======  ======  ==========================  =================

For comparison, ℓ_unl = 1500 gives 0.977 at ℓ ≤ 100 (the ≈ 97 % of issue 14), 0.975 over
ℓ ≤ 383, 0.959 over ℓ ≤ 767 (0.91 at ℓ = 767) and 0.48 at ℓ = 1535; ℓ_unl = 3000 gives 0.9999
over ℓ ≤ 383 and 0.9983 over ℓ ≤ 1535 (0.991 at ℓ = 1535). The unlensed outputs are exact
(their C_ℓ is zero above ℓ_unl when ℓ_unl < ℓ_max). Simulated skies agree: the mean lensed BB
of 10 noiseless, unbeamed skies at nside 128 with r = 0 (ℓ_unl = 2383) over CAMB's is 0.9995 ±
0.0040 at 100 ≤ ℓ < 150, 0.9955 ± 0.0034 at 150 ≤ ℓ < 200 and 0.9969 ± 0.0028 at 200 ≤ ℓ < 256
(± the cosmic variance of the mean); tests/test_cmb.py checks the spectra of every output
against CAMB statistically. Cost grows as ℓ_unl²: the lensing grid has ≈ 1.4 ℓ_unl²
points.

Masks
-----
``mask`` does not change the maps: it gives the ``mask`` variable (pixel,) float32, 1 observed
and 0 masked, no apodisation. ``galactic``: the pixels with galactic latitude |b| ≥ 20° (a
Galactic-plane cut, f_sky = 0.658), the map frame being equatorial (J2000; healpy's
``Rotator(coord=["C", "G"])``); ``small_aperture``: a disc of radius 20° (f_sky = 0.030,
1,240 deg²) centred on RA 0°, Dec −57.5°, the centre of the low-foreground BICEP/Keck field
that small-aperture B-mode telescopes observe (BICEP2 Collaboration 2014, PRL 112, 241101).

Output
------
:mod:`engine.physics.cmb_io` makes many skies into ``xarray`` Datasets and files
(``generate``, ``generate_chunks``, ``save``, ``settings_from_attrs``) and
documents the variables and attrs; :func:`theory` gives the expected spectra of every variable.
"""

from __future__ import annotations

import math
import os

import numpy as np
import param
import xarray as xr

from engine.params import ConfigError, CosmologyParams, check_value, user_settings
from engine.physics.cmb_theory import R_BOUNDS, cmb_spectra

__all__ = [
    "CMBParams",
    "EPSILON",
    "SMALL_APERTURE",
    "VARIABLES",
    "check_settings",
    "map_lmax",
    "sample_bytes",
    "simulate",
    "sky_mask",
    "theory",
    "unlensed_lmax",
    "work_bytes",
]

#: Radians per arcmin.
ARCMIN = math.pi / 180.0 / 60.0
#: lenspyx interpolation accuracy (> 1e-6: single-precision remapping, ample for float32 maps).
EPSILON = 1e-5
#: Entropy word that separates the CMB streams from other SeedSequence users.
_STREAM = 4311
#: Highest ℓ_unl (CAMB spectra of engine.physics.cmb_theory stop at 6000).
LMAX_UNLENSED_MAX = 6000
#: Galactic cut of ``mask="galactic"``: pixels with |b| below this (degrees) are masked.
GALACTIC_CUT = 20.0
#: ``mask="small_aperture"``: (RA, Dec, radius) in degrees of the observed disc.
SMALL_APERTURE = (0.0, -57.5, 20.0)
#: Output variables with a sample dimension: name -> (units, long name).
VARIABLES = {
    "Q": ("uK", "observed Stokes Q: beamed lensed CMB + white noise"),
    "U": ("uK", "observed Stokes U: beamed lensed CMB + white noise"),
    "Q_lensed": ("uK", "beamed lensed Stokes Q, noiseless"),
    "U_lensed": ("uK", "beamed lensed Stokes U, noiseless"),
    "Q_unlensed": ("uK", "beamed unlensed Stokes Q, noiseless"),
    "U_unlensed": ("uK", "beamed unlensed Stokes U, noiseless"),
    "phi": ("1", "lensing potential phi (dimensionless), band-limited to lmax, not beamed"),
}


class CMBParams(CosmologyParams):
    """Settings of a batch of lensed CMB polarisation skies (module docstring)."""

    kind = param.Selector(
        default="cmb",
        objects=["cmb"],
        constant=True,
        doc="Field kind: lensed CMB polarisation skies on HEALPix (fixed).",
    )
    transfer_function = param.Selector(
        default="boltzmann_camb",
        objects=["boltzmann_camb"],
        constant=True,
        doc="CMB spectra always come from CAMB (fixed).",
    )
    r = param.Number(
        0.01,
        bounds=R_BOUNDS,
        step=0.001,
        doc="Tensor-to-scalar ratio r at k = 0.05 /Mpc (primordial B-modes; dimensionless).",
    )
    noise = param.Number(
        2.0,
        bounds=(0.0, 100.0),
        step=0.1,
        doc="White-noise level of Q and U each, in uK-arcmin (0: noiseless).",
    )
    beam = param.Number(
        5.0,
        bounds=(0.0, 600.0),
        step=0.5,
        doc="FWHM of the Gaussian beam in arcmin (0: none).",
    )
    nside = param.Integer(
        512,
        bounds=(16, 2048),
        doc="HEALPix resolution parameter (a power of 2); maps hold l <= 3*nside - 1.",
    )
    lmax_unlensed = param.Integer(
        0,
        bounds=(0, LMAX_UNLENSED_MAX),
        doc="Highest multipole of the unlensed E, B and of phi used to lens (0: automatic, "
        "min(6000, 3*nside + 1999), >= 99% of the lensed BB in the map band up to nside "
        "1024; at least 2 otherwise).",
    )
    mask = param.Selector(
        default="none",
        objects=["none", "galactic", "small_aperture"],
        doc="Observed-pixel mask written with the maps (the maps are full-sky either way): none, "
        "galactic (|b| >= 20 deg, f_sky 0.66), small_aperture (20-deg-radius disc at RA 0, "
        "Dec -57.5 deg, f_sky 0.03).",
    )
    count = param.Integer(4, bounds=(1, 1_000_000), doc="Number of skies to generate.")
    seed = param.Integer(
        0, bounds=(0, 2**62), doc="Random seed: sky i depends only on (seed, i) and settings."
    )
    workers = param.Integer(
        1,
        bounds=(0, 256),
        doc="Worker processes (0: min(4, CPU count)); the skies do not depend on it.",
    )


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


def check_settings(settings: CMBParams) -> None:
    """Raise :class:`ConfigError` (one line naming the setting and its allowed range) for
    settings that cannot make skies: every setting out of its bounds, nside not a power of 2,
    lmax_unlensed = 1, omega_b >= omega_m."""
    for name in user_settings(type(settings)):
        check_value(type(settings).param[name], name, getattr(settings, name))
    nside = settings.nside
    lo, hi = CMBParams.param["nside"].bounds
    if not (
        isinstance(nside, (int, np.integer)) and lo <= nside <= hi and nside & (nside - 1) == 0
    ):
        raise ConfigError(
            f"nside={nside!r} is not allowed: a power of 2 with {lo} <= nside <= {hi}"
        )
    if settings.lmax_unlensed == 1:
        raise ConfigError(
            f"lmax_unlensed=1 is out of range: allowed 0 (automatic) or 2 <= lmax_unlensed <= "
            f"{LMAX_UNLENSED_MAX}"
        )
    if not settings.omega_b < settings.omega_m:
        raise ConfigError(
            f"omega_b={settings.omega_b} is out of range: allowed omega_b < omega_m="
            f"{settings.omega_m}"
        )


def map_lmax(settings: CMBParams) -> int:
    """Band limit ℓ_max = 3·nside − 1 of every output map."""
    return 3 * int(settings.nside) - 1


def unlensed_lmax(settings: CMBParams) -> int:
    """ℓ_unl: ``settings.lmax_unlensed``, or when 0 min(6000, ℓ_max + 2000) = min(6000,
    3·nside + 1999) (module docstring for its accuracy)."""
    if settings.lmax_unlensed:
        return int(settings.lmax_unlensed)
    return min(LMAX_UNLENSED_MAX, map_lmax(settings) + 2000)


def _workers(settings: CMBParams) -> int:
    return int(settings.workers) or min(4, os.cpu_count() or 1)


def _threads(workers: int) -> int:
    """ducc0 threads per process: OMP_NUM_THREADS (else the usable CPUs) over ``workers``."""
    try:
        total = int(os.environ.get("OMP_NUM_THREADS", "0"))
    except ValueError:
        total = 0
    if total <= 0:
        total = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    return max(1, total // max(1, workers))


def sample_bytes(settings: CMBParams) -> int:
    """Bytes of one written sky (7 float32 maps), for the output checks before generation."""
    return 4 * len(VARIABLES) * 12 * int(settings.nside) ** 2


def work_bytes(settings: CMBParams) -> int:
    """Estimated peak memory of the lensing work of all worker processes, bytes: per process
    ~110 B per point of the Gauss–Legendre grid (≈ 1.4 L² points for band limit
    L = max(ℓ_unl, ℓ_max); measured 690 MB at L = 2191) plus the maps of one sky."""
    grid = max(unlensed_lmax(settings), map_lmax(settings))
    per_process = 110 * 1.4 * grid**2 + 2 * sample_bytes(settings)
    return int(min(_workers(settings), int(settings.count)) * per_process)


def _cosmology(settings: CMBParams) -> dict:
    return {n: float(getattr(settings, n)) for n in ("omega_m", "sigma8", "omega_b", "h", "n_s")}


def _spectra(settings: CMBParams):
    """CAMB spectra to max(ℓ_unl, ℓ_max) (at most :data:`LMAX_UNLENSED_MAX`) at the settings'
    r and cosmology (cached)."""
    lmax = min(LMAX_UNLENSED_MAX, max(unlensed_lmax(settings), map_lmax(settings)))
    return cmb_spectra(lmax, r=float(settings.r), **_cosmology(settings))


def _padded(cl: np.ndarray, lmax: int) -> np.ndarray:
    """``cl`` cut or zero-padded to ℓ = 0 … lmax."""
    cl = np.asarray(cl, dtype=np.float64)[: lmax + 1]
    return np.pad(cl, (0, lmax + 1 - cl.size))


def _input_spectra(settings: CMBParams) -> dict:
    """The C_ℓ the unlensed fields are drawn from, ℓ = 0 … ℓ_unl (float64): EE, BB (µK²), PP
    (dimensionless) and PE (µK, CAMB's lens-potential × E cross-spectrum)."""
    s = _spectra(settings)
    lu = unlensed_lmax(settings)
    pe = s.results.get_lens_potential_cls(lmax=s.lmax, raw_cl=True, CMB_unit="muK")[:, 2]
    out = {
        "EE": np.array(s.unlensed["EE"][: lu + 1]),
        "BB": float(settings.r) * np.array(s.tensor_bb_r1[: lu + 1]),
        "PP": np.array(s.phiphi[: lu + 1]),
        "PE": np.array(pe[: lu + 1], dtype=np.float64),
    }
    for v in out.values():
        v[:2] = 0.0
    return out


# ---------------------------------------------------------------------------------------------
# One sky
# ---------------------------------------------------------------------------------------------


def rng(seed: int, index: int, stream: int) -> np.random.Generator:
    """The numpy generator of stream ``stream`` (0 E, 1 B, 2 φ, 3 noise) of sky ``index``."""
    return np.random.default_rng(
        np.random.SeedSequence([int(seed), _STREAM, int(index), int(stream)])
    )


def _ells(lmax: int) -> np.ndarray:
    """ℓ of each a_ℓm in healpy layout (m-major, mmax = lmax), int64."""
    return np.concatenate([np.arange(m, lmax + 1) for m in range(lmax + 1)])


def _unit_alm(lmax: int, generator: np.random.Generator) -> np.ndarray:
    """Unit-variance Gaussian a_ℓm (healpy layout): a_ℓ0 = x, a_ℓm = (x + iy)/√2 for m > 0, with
    x and y the first and second halves of the draws (as
    :func:`engine.physics.sky.synthesize_alm`)."""
    n = (lmax + 1) * (lmax + 2) // 2
    re = generator.standard_normal(n)
    im = generator.standard_normal(n)
    alm = (re + 1j * im) * math.sqrt(0.5)
    alm[: lmax + 1] = re[: lmax + 1]
    return alm


def _draw(spectra: dict, seed: int, index: int):
    """Unlensed (E, B, φ) a_ℓm (complex128, ℓ ≤ ℓ_unl) of sky ``index``."""
    ee, bb, pp, pe = (spectra[k] for k in ("EE", "BB", "PP", "PE"))
    lmax = len(ee) - 1
    ell = _ells(lmax)
    g_e = _unit_alm(lmax, rng(seed, index, 0))
    g_b = _unit_alm(lmax, rng(seed, index, 1))
    g_p = _unit_alm(lmax, rng(seed, index, 2))
    safe = np.where(ee > 0, ee, 1.0)
    cross = np.where(ee > 0, pe / np.sqrt(safe), 0.0)  # φ = cross·g_E + rest·g_φ
    rest = np.sqrt(np.maximum(pp - cross**2, 0.0))
    elm = g_e * np.sqrt(ee)[ell]
    blm = g_b * np.sqrt(bb)[ell]
    plm = g_e * cross[ell] + g_p * rest[ell]
    return elm, blm, plm


def simulate(settings: CMBParams, index: int, spectra: dict | None = None, threads=None) -> dict:
    """Sky ``index`` of ``settings`` (module docstring): the maps of :data:`VARIABLES`.

    Parameters
    ----------
    settings : CMBParams
    index : int
        Sky number i ≥ 0; the sky depends only on (settings.seed, i) and the settings.
    spectra : dict, optional
        The input spectra (internal; default from CAMB).
    threads : int, optional
        ducc0 threads (default: OMP_NUM_THREADS, else the usable CPUs).

    Returns
    -------
    dict of str -> numpy.ndarray
        ``(12·nside²,) float32`` RING maps: Q, U, Q_lensed, U_lensed, Q_unlensed, U_unlensed (µK),
        phi (dimensionless).

    Raises
    ------
    ConfigError
        Bad settings (:func:`check_settings`).
    """
    check_settings(settings)
    if spectra is None:
        spectra = _input_spectra(settings)
    return _simulate(*_task_args(settings), int(index), spectra, threads or _threads(1))


def _task_args(settings: CMBParams) -> tuple:
    """(nside, B_ℓ, σ_pix, seed) of a worker task: workers need neither healpy nor CAMB."""
    nside = int(settings.nside)
    b_ell = _beam(float(settings.beam), map_lmax(settings))
    return nside, b_ell, noise_sigma(float(settings.noise), nside), int(settings.seed)


def _simulate(nside, b_ell, sigma, seed, index, spectra, threads) -> dict:
    """:func:`simulate` on plain arguments (the worker task): the beam B_ℓ (ℓ ≤ 3·nside − 1)
    and the noise σ_pix per pixel in µK."""
    from lenspyx.remapping.deflection_029 import deflection
    from lenspyx.remapping.utils_geom import Geom
    from lenspyx.utils_hp import alm_copy, almxfl

    lmax = 3 * nside - 1
    elm, blm, plm = _draw(spectra, seed, index)
    lmax_unl = len(spectra["EE"]) - 1
    ell = np.arange(lmax_unl + 1, dtype=np.float64)
    dlm = almxfl(plm, np.sqrt(ell * (ell + 1.0)), None, False)
    eb = np.array([elm, blm]).astype(np.complex64)
    grid = Geom.get_thingauss_geometry(max(lmax_unl, lmax), 2)
    defl = deflection(grid, dlm, None, numthreads=threads, epsilon=EPSILON)
    lensed = np.atleast_2d(defl.lensgclm(eb, None, 2, lmax, None)).astype(np.complex128)
    del defl, grid
    unlensed = np.array([alm_copy(a, None, lmax, lmax) for a in (elm, blm)])
    hp_geom = Geom.get_healpix_geometry(nside)
    out = {}
    for name, alms in (("lensed", lensed), ("unlensed", unlensed)):
        alms = np.array([almxfl(a, b_ell, None, False) for a in alms])
        q, u = hp_geom.synthesis(alms, 2, lmax, lmax, threads)
        out[f"Q_{name}"], out[f"U_{name}"] = q.astype(np.float32), u.astype(np.float32)
    phi = hp_geom.synthesis(alm_copy(plm, None, lmax, lmax), 0, lmax, lmax, threads)
    out["phi"] = np.asarray(phi).reshape(-1).astype(np.float32)
    noise_rng = rng(seed, index, 3)
    for stokes in ("Q", "U"):
        n = noise_rng.standard_normal(12 * nside**2, dtype=np.float32)
        out[stokes] = out[f"{stokes}_lensed"] + np.float32(sigma) * n
    return {k: out[k] for k in VARIABLES}


def _beam(fwhm_arcmin: float, lmax: int) -> np.ndarray:
    """Spin-2 Gaussian beam B_ℓ, ℓ = 0 … lmax (ones for fwhm 0)."""
    import healpy as hp

    if fwhm_arcmin <= 0:
        return np.ones(lmax + 1)
    return np.asarray(hp.gauss_beam(fwhm_arcmin * ARCMIN, lmax=lmax, pol=True))[:, 1].copy()


def noise_sigma(noise: float, nside: int) -> float:
    """Per-pixel standard deviation (µK) of white Q or U noise of ``noise`` µK-arcmin at
    ``nside``: σ_pix = noise / √Ω_pix, Ω_pix = 4π / (12 nside²) sr in arcmin² (the one definition;
    engine.data.cmb and the delensing metrics use it)."""
    return float(noise) / math.sqrt(4.0 * math.pi / (12 * nside**2) / ARCMIN**2)


def sky_mask(settings: CMBParams) -> np.ndarray:
    """The ``mask`` variable: (12·nside²,) float32, 1 observed and 0 masked (module docstring).

    Raises
    ------
    ConfigError
        Bad nside.
    """
    import healpy as hp

    check_settings(settings)
    nside = int(settings.nside)
    npix = 12 * nside**2
    if settings.mask == "none":
        return np.ones(npix, dtype=np.float32)
    vec = np.array(hp.pix2vec(nside, np.arange(npix)))
    if settings.mask == "galactic":
        gal = hp.Rotator(coord=["C", "G"])(vec)
        b = np.degrees(np.arcsin(np.clip(gal[2], -1.0, 1.0)))
        return (np.abs(b) >= GALACTIC_CUT).astype(np.float32)
    ra, dec, radius = SMALL_APERTURE
    centre = hp.ang2vec(ra, dec, lonlat=True)
    return (centre @ vec >= math.cos(math.radians(radius))).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Theory
# ---------------------------------------------------------------------------------------------


def theory(settings: CMBParams) -> xr.Dataset:
    """Expected full-sky spectra of the variables of :func:`engine.physics.cmb_io.generate`, ℓ = 0 … 3·nside − 1.

    From CAMB (:func:`engine.physics.cmb_theory.cmb_spectra`), C_ℓ (not D_ℓ):

    * ``EE``, ``BB``: of the observed Q, U: lensed C_ℓ (lensed scalar + tensor at r) × B_ℓ² + N_ℓ;
    * ``EE_lensed``, ``BB_lensed``: lensed C_ℓ × B_ℓ² (of Q_lensed, U_lensed);
    * ``EE_unlensed``, ``BB_unlensed``: unlensed C_ℓ (BB: r × tensor BB) × B_ℓ², zero above
      ℓ_unl (of Q_unlensed, U_unlensed);
    * ``noise``: N_ℓ = (noise · π/10800)² of E and of B (white, not beamed);
    * ``phiphi``: C_ℓ^φφ (of phi; zero above ℓ_unl), dimensionless;
    * ``beam``: the spin-2 beam B_ℓ (dimensionless).

    The lensed spectra are CAMB's, i.e. those of a sky lensed with all multipoles; the maps
    hold the fraction given in the module docstring for their ℓ_unl (≥ 0.99 with the automatic
    rule up to nside 1024). No pixel window (the maps have none).

    Returns
    -------
    xarray.Dataset
        Variables ``(ell,) float64`` with ``units`` attrs (uK^2 or 1); coord ell (int64);
        attrs nside, lmax, lmax_unlensed, r, beam, noise.

    Raises
    ------
    ConfigError
        Bad settings (:func:`check_settings`).
    """
    check_settings(settings)
    s = _spectra(settings)
    lmax, lu = map_lmax(settings), unlensed_lmax(settings)
    b2 = _beam(settings.beam, lmax) ** 2
    ell = np.arange(lmax + 1)
    below = (ell <= lu).astype(np.float64)
    n_ell = np.full(lmax + 1, (settings.noise * ARCMIN) ** 2)
    n_ell[:2] = 0.0
    ee_l, bb_l = _padded(s.lensed["EE"], lmax), _padded(s.lensed["BB"], lmax)
    ee_u = _padded(s.unlensed["EE"], lmax) * below
    bb_u = float(settings.r) * _padded(s.tensor_bb_r1, lmax) * below
    uk2 = {"units": "uK^2"}
    data = {
        "EE": ("ell", ee_l * b2 + n_ell, uk2),
        "BB": ("ell", bb_l * b2 + n_ell, uk2),
        "EE_lensed": ("ell", ee_l * b2, uk2),
        "BB_lensed": ("ell", bb_l * b2, uk2),
        "EE_unlensed": ("ell", ee_u * b2, uk2),
        "BB_unlensed": ("ell", bb_u * b2, uk2),
        "noise": ("ell", n_ell, uk2),
        "phiphi": ("ell", _padded(s.phiphi, lmax) * below, {"units": "1"}),
        "beam": ("ell", np.sqrt(b2), {"units": "1"}),
    }
    return xr.Dataset(
        data,
        coords={"ell": ("ell", ell)},
        attrs=dict(
            nside=int(settings.nside),
            lmax=lmax,
            lmax_unlensed=lu,
            r=float(settings.r),
            beam=float(settings.beam),
            noise=float(settings.noise),
        ),
    )
