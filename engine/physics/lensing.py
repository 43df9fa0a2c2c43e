r"""Flat-sky weak-lensing convergence κ maps from the Limber C_ℓ^κκ of pyccl, batched in torch.

Angular Fourier convention (written once, used by every κ map and theory curve)
------------------------------------------------------------------------------
A flat map of side θ_box (radians) on N² pixels is treated as a periodic square "box" of side
θ_box, exactly as :mod:`engine.physics.stats` treats a box of side L: the angular wavenumber of the mode
m = (m_x, m_y) is

    ℓ = |k|,   k = 2π m / θ_box   (θ_box in radians; fundamental ℓ_f = 2π/θ_box),

and the flat-sky angular power spectrum C_ℓ (sr) is the 2D spectrum P_2D of the stats module with
``box_size = θ_box`` in radians: ``engine.physics.stats.power_spectrum(kappa, box_size=fov_radians)``
returns binned C_ℓ in sr at bin centres ℓ. The pixel area is A_pix = (θ_box/N)² sr. Maps are
generated directly from their Fourier amplitudes on this periodic grid (no aliasing, no pixel
window; no power from modes longer than the map: periodic flat sky).

Theory
------
C_ℓ^κκ is the Limber-approximation spectrum of pyccl (Chisari et al. 2019, ApJS 242, 2):
``pyccl.angular_cl`` of a ``pyccl.WeakLensingTracer(cosmo, dndz=(z, n(z)))`` (no intrinsic
alignments), converted from shear to convergence by the exact spin factor

    C_ℓ^κκ = C_ℓ^γγ · ℓ(ℓ+1) / ((ℓ+2)(ℓ−1))

(pyccl's shear tracer carries √((ℓ+2)!/(ℓ−2)!)/(ℓ+½)², a convergence tracer ℓ(ℓ+1)/(ℓ+½)²; the
factor is 1.0004 at ℓ = 72 and 1.5 at ℓ = 2). The matter spectrum is nonlinear (halofit, Takahashi
et al. 2012, pyccl's default) unless ``matter_power="linear"``: DES-like maps need the nonlinear
power on arcminute scales. The cosmology is :func:`engine.physics.cosmology.ccl_cosmology`'s (Ω_c = Ω_m −
Ω_b, no massive neutrinos, same transfer function), built here with the chosen
``matter_power_spectrum`` because ``ccl_cosmology`` fixes it to "linear".

C_ℓ is computed once per cosmology (and n(z)) on ``N_ELL`` log-spaced ℓ in [ELL_MIN, ELL_MAX] =
[2, 1e5] and cached (:func:`_ln_cl_nodes`, ~0.3 s per new cosmology with halofit); maps and theory
curves interpolate ln C_ℓ linearly in ln ℓ (error < 1e-3, tested against direct pyccl calls).
Because of this, batches where every map has its own (Ω_m, σ8) cost one pyccl call per map.

Source redshift distribution (``nz="des_y3"``)
--------------------------------------------
A Smail, Ellis & Fitchett (1994, MNRAS 270, 245)-type distribution

    n(z) ∝ z^α exp[−(z/z0)^β],   α = 2, β = 1.5, z0 = 0.63 / 1.5046 = 0.4187,

tabulated on 0 ≤ z ≤ 3 (Δz = 0.01). Its mean redshift z0 Γ((α+2)/β)/Γ((α+1)/β) = 0.63 and its
mode 0.51 approximate the union of the four DES Y3 source bins (Myles et al. 2021, MNRAS 505,
4249; Amon et al. 2022, PRD 105, 023514: bin means ≈ 0.34, 0.52, 0.74, 0.94, roughly equal
weights). It is a smooth stand-in, not the DES Y3 SOMPZ n(z). Any other distribution is a
whitespace-separated text file of two columns (z, n(z)), '#' comments allowed, given as
``nz=PATH``; n(z) is normalised internally.

Map model
---------
``distribution="gaussian"``: a Gaussian random field with spectrum C_ℓ.

``distribution="lognormal"``: the shifted lognormal field κ = κ0 [exp(G − σ_G²/2) − 1] (Hilbert, Hartlap
& Schneider 2011, A&A 536, A85; Xavier et al. 2016, MNRAS 459, 3693), which has mean 0 and
κ ≥ −κ0. Its correlation function is ξ_κ = κ0² (e^{ξ_G} − 1), so G is generated with the spectrum
of ξ_G = ln(1 + ξ_κ/κ0²) on the periodic grid (negative modes of that spectrum are set to 0, as in
:mod:`engine.physics.slabs`). The shift κ0 is ``lognormal_shift`` when > 0, otherwise ("auto", the
default) the n(z)-weighted fit of Hilbert et al. (2011) for a single source redshift (the form
used by FLASK, Xavier et al. 2016),

    κ0(z_s) = 0.008 z_s + 0.029 z_s² − 0.0079 z_s³ + 0.00065 z_s⁴,   κ0 = ∫ n(z) κ0(z) dz,

which gives κ0 = 0.0160 for the DES Y3-like n(z). The fit was made for the Millennium Simulation
cosmology (Ω_m = 0.25, σ8 = 0.9) and is not rescaled with cosmology.

Then, in this order (the DES mass-map practice of smoothing the noisy reconstructed map):

1. shape noise: white Gaussian noise of standard deviation σ_pix = σ_e / √(n_gal A_pix) per pixel,
   A_pix in arcmin² and n_gal in arcmin⁻², σ_e per ellipticity component. Its spectrum is the
   flat N_ℓ = σ_e² / n_gal with n_gal in sr⁻¹ (:func:`noise_cl`);
2. Gaussian smoothing with standard deviation σ_s = ``smoothing`` arcmin (σ, not the FWHM =
   2.355 σ), i.e. Fourier modes × exp(−ℓ² σ_s²/2) with σ_s in radians;
3. the optional mask (an (N, N) ``.npy`` array, 1 observed / 0 masked): masked pixels are set to 0.

The expected spectrum of an unmasked map (:func:`map_cl`) is therefore

    C_ℓ^map = (C_ℓ^κκ + σ_e²/n_gal) exp(−ℓ² σ_s²).

Output (:func:`generate`): ``xarray.DataArray`` "kappa" (sample, y, x) float32; coords x, y in
arcmin (pixel centres), per-sample omega_m, sigma8, the mask as coord (y, x) uint8; attrs hold
every setting plus the n(z) used as 1-D float64 arrays ``nz_z`` and ``nz_dndz`` (netCDF stores 1-D
numeric attributes natively, zarr as JSON lists), so the DataArray round-trips through
:func:`engine.physics.slabs.save` / :func:`engine.physics.slabs.load` as .nc or .zarr.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import param
import pyccl as ccl
import torch
import xarray as xr
from scipy.integrate import trapezoid

import engine
from engine.params import ConfigError, CosmologyParams, to_dict
from engine.physics.cosmology import ccl_cosmology
from engine.physics.slabs import (
    check_parameters,
    gaussian_from_power,
    lognormal_from_power,
    per_sample,
    wavenumber_grid,
)
from engine.physics.stats import bin_isotropic, rfft_weights, wavenumbers

#: One arcminute in radians.
ARCMIN = math.pi / (180.0 * 60.0)
#: ℓ range and sampling (nodes per decade) of the cached C_ℓ tables.
ELL_MIN, ELL_MAX = 2.0, 1.0e5
N_ELL = 50 * 5 + 1  # 50 nodes per decade over [2, 1e5]
#: DES Y3-like Smail parameters (module docstring).
DES_Y3_ALPHA, DES_Y3_BETA, DES_Y3_MEAN_Z = 2.0, 1.5, 0.63


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


class SourceParams(CosmologyParams):
    """Lensing sources, theory and noise shared by flat κ maps and HEALPix κ skies."""

    nz = param.String(
        "des_y3",
        doc="Source redshift distribution: 'des_y3' (Smail-type fit to DES Y3, mean z 0.63) or "
        "the path of a two-column text file (z, n(z)).",
    )
    matter_power = param.Selector(
        default="halofit",
        objects=["halofit", "linear"],
        doc="Matter power spectrum behind C_l: nonlinear (halofit, Takahashi et al. 2012) or linear.",
    )
    n_gal = param.Number(
        8.0,
        bounds=(0.01, 1000.0),
        softbounds=(1.0, 50.0),
        step=0.5,
        doc="Effective number density of source galaxies in arcmin^-2.",
    )
    sigma_e = param.Number(
        0.26,
        bounds=(0.0, 1.0),
        step=0.01,
        doc="Shape noise: ellipticity dispersion per component (dimensionless; 0: no noise).",
    )
    smoothing = param.Number(
        10.0,
        bounds=(0.0, 600.0),
        softbounds=(0.0, 30.0),
        step=0.5,
        doc="Standard deviation sigma (not FWHM) of the Gaussian smoothing kernel in arcmin "
        "(0: none).",
    )
    seed = param.Integer(
        0, bounds=(0, 2**62), doc="Random seed: same seed gives the same maps on CPU."
    )
    count = param.Integer(8, bounds=(1, 1_000_000), doc="Number of maps to generate.")


class KappaParams(SourceParams):
    """Settings of a batch of flat-sky convergence maps."""

    fov = param.Number(
        5.0,
        bounds=(0.1, 30.0),
        step=0.5,
        doc="Side of the square map in degrees (flat-sky periodic approximation).",
    )
    size = param.Integer(
        256, bounds=(8, 4096), doc="Number of pixels per side of the square map (N)."
    )
    kind = param.Selector(
        default="kappa",
        objects=["kappa"],
        constant=True,
        doc="Field kind: weak-lensing convergence (fixed).",
    )
    distribution = param.Selector(
        default="gaussian",
        objects=["gaussian", "lognormal"],
        doc="Gaussian random field, or shifted lognormal field with the same C_l.",
    )
    lognormal_shift = param.Number(
        0.0,
        bounds=(0.0, 1.0),
        step=0.001,
        doc="Lognormal shift kappa0 (kappa >= -kappa0); 0: n(z)-weighted Hilbert et al. (2011) fit.",
    )
    mask = param.String(
        None,
        allow_None=True,
        doc="Optional path of a .npy (size, size) array: 1 observed, 0 masked (set to 0).",
    )


# ---------------------------------------------------------------------------------------------
# Source redshift distribution
# ---------------------------------------------------------------------------------------------


def des_y3_nz() -> tuple[np.ndarray, np.ndarray]:
    """DES Y3-like source n(z) of the module docstring, on z = 0, 0.01, …, 3.

    Returns
    -------
    z : numpy.ndarray (301,) float64
        Redshift nodes.
    nz : numpy.ndarray (301,) float64
        n(z) normalised to ∫ n dz = 1 (trapezoid rule), per unit redshift.
    """
    z = np.linspace(0.0, 3.0, 301)
    z0 = DES_Y3_MEAN_Z * math.gamma((DES_Y3_ALPHA + 1) / DES_Y3_BETA)
    z0 /= math.gamma((DES_Y3_ALPHA + 2) / DES_Y3_BETA)
    nz = z**DES_Y3_ALPHA * np.exp(-((z / z0) ** DES_Y3_BETA))
    return z, nz / trapezoid(nz, z)


@functools.lru_cache(maxsize=16)
def _read_nz_file(path: str, mtime: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    try:
        table = np.loadtxt(path, comments="#", delimiter=None, ndmin=2, dtype=np.float64)
    except (OSError, ValueError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"nz={path!r} is not a two-column text table (z, n(z)): {msg}") from None
    if table.ndim != 2 or table.shape[1] != 2 or table.shape[0] < 3:
        raise ConfigError(
            f"nz={path!r} must hold at least 3 rows of two columns (z, n(z)), got shape {table.shape}"
        )
    z, nz = table[:, 0], table[:, 1]
    if not (np.all(np.isfinite(table)) and np.all(z >= 0) and np.all(np.diff(z) > 0)):
        raise ConfigError(f"nz={path!r}: z must be finite, >= 0 and strictly increasing")
    if np.any(nz < 0) or not trapezoid(nz, z) > 0:
        raise ConfigError(f"nz={path!r}: n(z) must be >= 0 with a positive integral")
    return tuple(z.tolist()), tuple((nz / trapezoid(nz, z)).tolist())


def source_nz(settings: SourceParams) -> tuple[np.ndarray, np.ndarray]:
    """The source redshift distribution of ``settings.nz``.

    Returns
    -------
    z, nz : numpy.ndarray (M,) float64
        Redshift nodes and n(z) normalised to unit integral (per unit redshift).

    Raises
    ------
    ConfigError
        ``nz`` is neither 'des_y3' nor a readable two-column table with z >= 0 increasing and
        n(z) >= 0 of positive integral.
    """
    if settings.nz == "des_y3":
        return des_y3_nz()
    path = Path(str(settings.nz))
    if not path.is_file():
        raise ConfigError(
            f"nz={settings.nz!r} is neither 'des_y3' nor an existing two-column (z, n(z)) file"
        )
    z, nz = _read_nz_file(str(path), path.stat().st_mtime)
    return np.asarray(z), np.asarray(nz)


def hilbert_shift(z) -> np.ndarray:
    """Lognormal κ shift for sources at redshift z, fit of Hilbert, Hartlap & Schneider (2011).

    κ0(z) = 0.008 z + 0.029 z² − 0.0079 z³ + 0.00065 z⁴ (dimensionless); ``z`` array_like float.
    """
    z = np.asarray(z, dtype=np.float64)
    return 0.008 * z + 0.029 * z**2 - 0.0079 * z**3 + 0.00065 * z**4


def lognormal_shift(settings: KappaParams) -> float:
    """Shift κ0 used for ``distribution="lognormal"``: the setting if > 0, else ∫ n(z) κ0_Hilbert(z) dz."""
    if settings.lognormal_shift > 0:
        return float(settings.lognormal_shift)
    z, nz = source_nz(settings)
    return float(trapezoid(nz * hilbert_shift(z), z))


# ---------------------------------------------------------------------------------------------
# Theory
# ---------------------------------------------------------------------------------------------


def lensing_cosmology(
    omega_m: float, sigma8: float, settings: CosmologyParams, matter_power: str = "halofit"
) -> ccl.Cosmology:
    """pyccl cosmology of :func:`engine.physics.cosmology.ccl_cosmology` with a chosen matter spectrum.

    Parameters
    ----------
    omega_m, sigma8 : float
    settings : CosmologyParams
        omega_b, h, n_s, transfer_function.
    matter_power : {"halofit", "linear"}
        pyccl ``matter_power_spectrum``.

    Raises
    ------
    ConfigError
        As :func:`engine.physics.cosmology.ccl_cosmology` (omega_m <= omega_b, CAMB missing).
    """
    # validates the parameters exactly as the rest of the engine does
    ccl_cosmology(
        omega_m, sigma8, settings.omega_b, settings.h, settings.n_s, settings.transfer_function
    )
    return ccl.Cosmology(
        Omega_c=omega_m - settings.omega_b,
        Omega_b=settings.omega_b,
        h=settings.h,
        n_s=settings.n_s,
        sigma8=sigma8,
        transfer_function=settings.transfer_function,
        matter_power_spectrum=matter_power,
    )


def direct_cl(settings: SourceParams, ell, omega_m: float, sigma8: float) -> np.ndarray:
    """C_ℓ^κκ (sr) straight from pyccl at ``ell`` (slow reference: one Limber integral per ℓ).

    Parameters
    ----------
    settings : SourceParams
        Cosmology settings, ``nz`` and ``matter_power``.
    ell : array_like float, ℓ >= 2
    omega_m, sigma8 : float

    Returns
    -------
    numpy.ndarray float64 of ell's shape, sr.
    """
    ell = np.asarray(ell, dtype=np.float64)
    cosmo = lensing_cosmology(float(omega_m), float(sigma8), settings, settings.matter_power)
    tracer = ccl.WeakLensingTracer(cosmo, dndz=source_nz(settings))
    flat = ell.reshape(-1)
    cl = ccl.angular_cl(cosmo, tracer, tracer, flat)
    cl = cl * flat * (flat + 1) / ((flat + 2) * (flat - 1))  # shear -> convergence
    return cl.reshape(ell.shape)


def _ell_nodes() -> np.ndarray:
    return np.exp(np.linspace(math.log(ELL_MIN), math.log(ELL_MAX), N_ELL))


@functools.lru_cache(maxsize=256)
def _ln_cl_nodes(key: tuple) -> torch.Tensor:
    """ln C_ℓ^κκ on the ℓ nodes, (N_ELL,) float64, for one hashable cosmology + n(z) key."""
    om, s8, omega_b, h, n_s, tf, mp, nz_z, nz = key
    shared = SimpleNamespace(omega_b=omega_b, h=h, n_s=n_s, transfer_function=tf)
    cosmo = lensing_cosmology(om, s8, shared, mp)
    tracer = ccl.WeakLensingTracer(cosmo, dndz=(np.asarray(nz_z), np.asarray(nz)))
    ell = _ell_nodes()
    cl = ccl.angular_cl(cosmo, tracer, tracer, ell) * ell * (ell + 1) / ((ell + 2) * (ell - 1))
    return torch.from_numpy(np.log(cl))


def _ln_cl_batch(settings: SourceParams, om: np.ndarray, s8: np.ndarray) -> torch.Tensor:
    """ln C_ℓ nodes (B, N_ELL) float64 for per-sample parameters; one pyccl call per new pair."""
    z, nz = source_nz(settings)
    nz_key = (tuple(z.tolist()), tuple(nz.tolist()))
    pairs = np.stack([om, s8], axis=1)
    uniq, inverse = np.unique(pairs, axis=0, return_inverse=True)
    tables = [
        _ln_cl_nodes(
            (
                float(o),
                float(s),
                float(settings.omega_b),
                float(settings.h),
                float(settings.n_s),
                settings.transfer_function,
                settings.matter_power,
                *nz_key,
            )
        )
        for o, s in uniq
    ]
    return torch.stack(tables)[torch.from_numpy(np.asarray(inverse).reshape(-1))]


def theory_cl(settings: SourceParams, ell, omega_m, sigma8) -> torch.Tensor:
    """Convergence power spectrum C_ℓ^κκ in sr (no noise, no smoothing), interpolated.

    Parameters
    ----------
    settings : SourceParams
        Cosmology settings, ``nz``, ``matter_power``.
    ell : torch.Tensor (...) or array_like, dimensionless multipole
        ℓ < 2 gives 0 (no κ monopole/dipole); ℓ > 1e5 raises.
    omega_m, sigma8 : float or array_like (B,)

    Returns
    -------
    torch.Tensor (B, ...) float64 (or (...) for scalar parameters), on ell's device.

    Raises
    ------
    ConfigError
        Parameters out of the CosmologyParams bounds, ℓ beyond 1e5, bad ``nz``.
    """
    ell = torch.as_tensor(ell)
    scalar = np.ndim(omega_m) == 0 and np.ndim(sigma8) == 0
    om = np.atleast_1d(np.asarray(omega_m, dtype=np.float64)).reshape(-1)
    s8 = np.atleast_1d(np.asarray(sigma8, dtype=np.float64)).reshape(-1)
    om, s8 = np.broadcast_arrays(om, s8)
    check_parameters(torch.from_numpy(om.copy()), torch.from_numpy(s8.copy()))
    if ell.numel() and float(ell.max()) > ELL_MAX * (1 + 1e-9):
        raise ConfigError(
            f"multipole ell={float(ell.max()):.4g} is beyond the tabulated C_l (ell <= {ELL_MAX:g})"
        )
    ln_cl = _ln_cl_batch(settings, om, s8).to(ell.device)  # (B, N_ELL)
    e64 = ell.to(torch.float64)
    dln = (math.log(ELL_MAX) - math.log(ELL_MIN)) / (N_ELL - 1)
    t = (e64.clamp(ELL_MIN, ELL_MAX).log() - math.log(ELL_MIN)) / dln
    i = t.floor().long().clamp(0, N_ELL - 2).reshape(-1)
    frac = (t.reshape(-1) - i).unsqueeze(0)
    lo, hi = ln_cl[:, i], ln_cl[:, i + 1]
    cl = torch.exp(lo + (hi - lo) * frac).reshape(ln_cl.shape[0], *ell.shape)
    cl = torch.where(e64 < ELL_MIN, torch.zeros((), dtype=cl.dtype, device=cl.device), cl)
    return cl[0] if scalar else cl


def noise_cl(settings: SourceParams) -> float:
    """Shape-noise spectrum N_ℓ = σ_e² / n_gal in sr, with n_gal converted from arcmin⁻² to sr⁻¹."""
    return settings.sigma_e**2 / (settings.n_gal / ARCMIN**2)


def smoothing_window(settings: SourceParams, ell) -> torch.Tensor:
    """Gaussian kernel exp(−ℓ² σ_s²/2), σ_s = ``settings.smoothing`` arcmin in radians (float64)."""
    ell = torch.as_tensor(ell).to(torch.float64)
    return torch.exp(-0.5 * (ell * settings.smoothing * ARCMIN) ** 2)


def map_cl(settings: SourceParams, ell, omega_m, sigma8) -> torch.Tensor:
    """Expected spectrum of an unmasked map, (C_ℓ^κκ + σ_e²/n_gal) exp(−ℓ²σ_s²), in sr.

    Shapes and errors as :func:`theory_cl`.
    """
    cl = theory_cl(settings, ell, omega_m, sigma8)
    return (cl + noise_cl(settings)) * smoothing_window(settings, ell).to(cl.device) ** 2


def fov_radians(settings: KappaParams) -> float:
    """Side θ_box of the map in radians (the ``box_size`` for :mod:`engine.physics.stats`)."""
    return math.radians(settings.fov)


def binned_theory(settings: KappaParams, omega_m, sigma8, edges=None):
    """:func:`map_cl` averaged over the Fourier modes of each bin exactly as the estimator.

    Returns a :class:`~engine.physics.stats.PowerSpectrum` (k = ℓ, power in sr) whose ``power`` is the
    expectation of ``engine.physics.stats.power_spectrum(kappa, fov_radians(settings), edges).power`` for
    unmasked Gaussian maps made with ``settings``.
    """
    shape = (settings.size, settings.size)
    box = fov_radians(settings)
    ell = wavenumbers(shape, box)
    return bin_isotropic(map_cl(settings, ell, omega_m, sigma8), shape, box, edges)


def check_resolution(settings: KappaParams) -> None:
    """Raise :class:`ConfigError` if the map's highest |ℓ| (corner mode) exceeds ELL_MAX = 1e5."""
    ell_max = math.sqrt(2) * math.pi * settings.size / fov_radians(settings)
    if ell_max > ELL_MAX:
        raise ConfigError(
            f"pixel size fov/size={settings.fov * 60 / settings.size:.3g} arcmin is too small: the "
            f"theory covers ell <= {ELL_MAX:g}, so fov*60/size must be >= "
            f"{math.sqrt(2) * math.pi / ELL_MAX / ARCMIN:.3g} arcmin"
        )


def load_mask(settings: KappaParams) -> np.ndarray | None:
    """The mask of ``settings.mask`` as (size, size) float32 of 0/1, or None when unset.

    Raises
    ------
    ConfigError
        Missing or unreadable file, wrong shape, or values other than 0 and 1.
    """
    if settings.mask in (None, ""):
        return None
    path = Path(settings.mask)
    if not path.is_file():
        raise ConfigError(f"mask={settings.mask!r} does not exist")
    try:
        m = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"mask={settings.mask!r} is not a .npy array: {exc}".splitlines()[0]
        ) from None
    n = settings.size
    if m.shape != (n, n):
        raise ConfigError(f"mask={settings.mask!r} has shape {m.shape}, expected ({n}, {n})")
    m = np.asarray(m, dtype=np.float32)
    if not np.all((m == 0) | (m == 1)):
        raise ConfigError(f"mask={settings.mask!r} must hold only 0 (masked) and 1 (observed)")
    return m


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------


def generate_maps(
    settings: KappaParams,
    omega_m: torch.Tensor,
    sigma8: torch.Tensor,
    generator: torch.Generator,
    device=None,
) -> torch.Tensor:
    """Generate a batch of convergence maps, one per (omega_m, sigma8) pair (hot path).

    Parameters
    ----------
    settings : KappaParams
        distribution, size N, fov (deg), nz, matter_power, n_gal (arcmin⁻²), sigma_e, smoothing (arcmin σ),
        mask, lognormal_shift and the shared cosmology settings; ``omega_m``, ``sigma8``,
        ``count``, ``seed`` are ignored.
    omega_m, sigma8 : torch.Tensor or array_like (B,)
    generator : torch.Generator
        Source of randomness on ``device``; same generator state ⇒ same maps on CPU.
    device : torch.device or str, optional
        Default: the generator's device.

    Returns
    -------
    torch.Tensor (B, N, N) float32: κ (dimensionless), y along dim 1 and x along dim 2, pixel
    (i, j) centred at ((j + ½) θ/N, (i + ½) θ/N).

    Raises
    ------
    ConfigError
        Parameters out of range, pixels finer than the ℓ table allows, bad nz or mask file, or a
        lognormal shift too small for the spectrum.
    """
    device = torch.device(device) if device is not None else generator.device
    check_resolution(settings)
    n, box = settings.size, fov_radians(settings)
    pix_area = (box / n) ** 2
    om = np.asarray(torch.as_tensor(omega_m, dtype=torch.float64).cpu()).reshape(-1)
    s8 = np.asarray(torch.as_tensor(sigma8, dtype=torch.float64).cpu()).reshape(-1)
    ell = wavenumber_grid(n, box, device)
    cl = theory_cl(settings, ell, om, s8)  # (B, n, n//2+1), zero at ell = 0
    if settings.distribution == "gaussian":
        kappa = gaussian_from_power(cl, n, pix_area, generator)
    elif settings.distribution == "lognormal":
        shift = lognormal_shift(settings)
        try:
            kappa = lognormal_from_power(cl, n, pix_area, generator, shift=shift)
        except ConfigError:
            raise ConfigError(
                f"lognormal_shift={shift:.4g} is too small for this C_l (xi_kappa/kappa0^2 <= -1 "
                "somewhere); use a larger lognormal_shift or distribution='gaussian'"
            ) from None
    else:
        raise ConfigError(
            f"distribution={settings.distribution!r} is not allowed: "
            "distribution must be one of 'gaussian', 'lognormal'"
        )
    if settings.sigma_e > 0:
        sigma_pix = settings.sigma_e / math.sqrt(settings.n_gal * (box / n / ARCMIN) ** 2)
        kappa = kappa + sigma_pix * torch.randn(
            kappa.shape, generator=generator, device=device, dtype=torch.float32
        )
    if settings.smoothing > 0:
        kernel = smoothing_window(settings, ell).to(torch.float32)
        kappa = torch.fft.irfft2(torch.fft.rfft2(kappa) * kernel, s=(n, n))
    mask = load_mask(settings)
    if mask is not None:
        kappa = kappa * torch.from_numpy(mask).to(device)
    return kappa


def map_scale(settings: KappaParams) -> float:
    """Expected standard deviation per pixel of unmasked maps at Ω_m = 0.3, σ8 = 0.8.

    σ² = Σ_ℓ C_ℓ^map / θ² over all modes (engine.physics.stats conventions); a fixed input normalisation
    for networks (dimensionless).
    """
    n, box = settings.size, fov_radians(settings)
    cl = map_cl(settings, wavenumber_grid(n, box, torch.device("cpu")), 0.3, 0.8).clone()
    cl[0, 0] = 0.0
    return float(torch.sqrt((cl * rfft_weights((n, n))).sum() / box**2))


def generate(
    settings: KappaParams,
    omega_m=None,
    sigma8=None,
    device=None,
    batch_size: int = 64,
    progress: bool | None = None,
) -> xr.DataArray:
    """Generate ``settings.count`` κ maps from ``settings.seed`` as a labelled DataArray.

    Parameters
    ----------
    settings : KappaParams
    omega_m, sigma8 : float or array_like (count,), optional
        Per-sample parameters; default the scalar ``settings.omega_m`` / ``settings.sigma8``.
    device : str or torch.device, optional
        Default: CUDA when available, else CPU.
    batch_size : int
        Maps generated per torch call.
    progress : bool, optional
        tqdm progress bar; default only when stderr is a terminal and count > batch_size.

    Returns
    -------
    xarray.DataArray "kappa" (sample, y, x) float32, described by :func:`to_dataarray`.

    Raises
    ------
    ConfigError
        Bad settings or parameters (see :func:`generate_maps`).
    """
    import sys

    from tqdm.auto import tqdm

    from engine.device import default_device

    device = default_device(None if device is None else str(device))
    count = settings.count
    om = per_sample(omega_m, settings.omega_m, count, "omega_m")
    s8 = per_sample(sigma8, settings.sigma8, count, "sigma8")
    check_parameters(torch.from_numpy(om), torch.from_numpy(s8))
    check_resolution(settings)
    gen = torch.Generator(device=device).manual_seed(int(settings.seed))
    if progress is None:
        progress = sys.stderr.isatty() and count > batch_size
    chunks = []
    for start in tqdm(range(0, count, batch_size), disable=not progress, desc="maps", unit="batch"):
        sl = slice(start, min(start + batch_size, count))
        chunks.append(generate_maps(settings, om[sl], s8[sl], gen, device).cpu().numpy())
    return to_dataarray(np.concatenate(chunks), settings, om, s8)


def settings_attrs(settings: SourceParams) -> dict:
    """netCDF/zarr-safe attrs of every setting (None → ""), plus the n(z) as 1-D float64 arrays.

    Keys: every user setting except omega_m, sigma8, count (``nz`` stays the setting's string);
    ``nz_z`` and ``nz_dndz`` (the n(z) actually used, normalised to unit integral, per unit
    redshift); units, engine_version.
    """
    attrs = {
        k: ("" if v is None else v)
        for k, v in to_dict(settings).items()
        if k not in ("omega_m", "sigma8", "count")
    }
    z, nz = source_nz(settings)
    attrs.update(nz_z=np.asarray(z, np.float64), nz_dndz=np.asarray(nz, np.float64))
    attrs.update(kind=settings.kind, units="dimensionless", engine_version=engine.__version__)
    return attrs


def to_dataarray(maps: np.ndarray, settings: KappaParams, omega_m, sigma8) -> xr.DataArray:
    """Wrap κ maps (B, N, N) in the boundary DataArray.

    Returns
    -------
    xarray.DataArray "kappa" (sample, y, x) float32 with coords x, y (arcmin, pixel centres in
    [0, fov·60]), omega_m and sigma8 (sample,), mask (y, x) uint8 (all 1 without a mask); attrs:
    :func:`settings_attrs` plus long_name, coordinate_units="arcmin", pixel_size (arcmin),
    lognormal_shift_used (κ0 for lognormal maps, else 0).
    """
    n = settings.size
    centres = (np.arange(n) + 0.5) * settings.fov * 60.0 / n
    attrs = settings_attrs(settings)
    attrs.update(
        long_name="weak-lensing convergence kappa (flat sky)",
        coordinate_units="arcmin",
        pixel_size=settings.fov * 60.0 / n,
        lognormal_shift_used=lognormal_shift(settings)
        if settings.distribution == "lognormal"
        else 0.0,
    )
    mask = load_mask(settings)
    mask = np.ones((n, n), np.uint8) if mask is None else mask.astype(np.uint8)
    return xr.DataArray(
        np.asarray(maps, dtype=np.float32),
        dims=("sample", "y", "x"),
        coords={
            "x": ("x", centres, {"units": "arcmin"}),
            "y": ("y", centres, {"units": "arcmin"}),
            "omega_m": ("sample", np.asarray(omega_m, dtype=np.float64)),
            "sigma8": ("sample", np.asarray(sigma8, dtype=np.float64)),
            "mask": (("y", "x"), mask, {"description": "1 observed, 0 masked (kappa set to 0)"}),
        },
        name="kappa",
        attrs=attrs,
    )


def settings_from_attrs(attrs: dict) -> KappaParams:
    """Rebuild the KappaParams a κ DataArray was generated with, from its attrs ("" → None)."""
    names = set(KappaParams.param) - {"name"}
    values = {k: v for k, v in attrs.items() if k in names}
    if values.get("mask") == "":
        values["mask"] = None
    return KappaParams(**values)
