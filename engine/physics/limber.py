r"""Weak-lensing theory: sources n(z), the Limber C_ℓ^κκ of pyccl, shape noise and smoothing.

Shared by flat-sky κ maps (:mod:`engine.physics.lensing`) and HEALPix κ skies
(:mod:`engine.physics.sky`). Units: ℓ dimensionless, C_ℓ in sr, angles in arcmin (settings) or
radians (inside formulas), n_gal in arcmin⁻², σ_e per ellipticity component.

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

C_ℓ is computed on ``N_ELL`` log-spaced ℓ in [ELL_MIN, ELL_MAX] = [2, 1e5]; maps and theory
curves interpolate ln C_ℓ linearly in ln ℓ (error < 1e-3, tested against direct pyccl calls).
Where a stored table exists for the configuration (cosmology settings other than Ω_m and σ8,
matter power, n(z)) and the installed pyccl's major.minor version, ln C_ℓ comes from it
(:class:`ClTable`): pyccl's values on ``N_OM`` = 28 log-spaced Ω_m nodes in [0.07, 1] (those of
:class:`engine.physics.cosmology.LinearPowerTable`) × σ8 nodes every 0.05 in [0.35, 1.25],
Catmull–Rom cubic in ln Ω_m and in σ8 (halofit is not a power law in σ8, unlike the linear
spectrum). Interpolation error against direct pyccl calls: ≤ 6e-4 over the prior box
(tests/test_lensing.py). The table of the default configuration ships in
``engine/physics/tables/`` (``python -m engine.physics.limber build-table`` writes one, ~2.5 min);
any other configuration calls pyccl once per new (Ω_m, σ8) (:func:`_ln_cl_nodes`, ~0.25 s with
halofit, cached). A live slider step then costs < 1 ms of theory instead of one pyccl call.

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

Shape noise and smoothing
-------------------------
Shape noise of σ_e per component and n_gal galaxies per arcmin² has the flat spectrum
N_ℓ = σ_e² / n_gal with n_gal converted to sr⁻¹ (:func:`noise_cl`). Gaussian smoothing of
standard deviation σ_s = ``smoothing`` arcmin (σ, not the FWHM = 2.355 σ) multiplies Fourier modes
by exp(−ℓ² σ_s²/2) (:func:`smoothing_window`), so the expected spectrum of an unmasked map is
(:func:`map_cl`)

    C_ℓ^map = (C_ℓ^κκ + σ_e²/n_gal) exp(−ℓ² σ_s²).

Plots show D_ℓ = ℓ(ℓ+1) C_ℓ / 2π (:func:`d_ell`).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import math
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import param
import pyccl as ccl
import torch
from scipy.integrate import trapezoid

import engine
from engine.params import SIGMA8_BOUNDS, ConfigError, CosmologyParams, to_dict
from engine.physics.cosmology import (
    N_OM,
    OM_MAX,
    OM_MIN,
    _catmull_rom_weights,
    ccl_cosmology,
    check_parameters,
)

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


#: Cosmologies whose ln C_ℓ nodes stay cached (one pyccl call, ~0.2-0.4 s, each).
CL_CACHE_SIZE = 256


@functools.lru_cache(maxsize=CL_CACHE_SIZE)
def _ln_cl_nodes(key: tuple) -> torch.Tensor:
    """ln C_ℓ^κκ on the ℓ nodes, (N_ELL,) float64, for one hashable cosmology + n(z) key."""
    om, s8, omega_b, h, n_s, tf, mp, nz_z, nz = key
    shared = SimpleNamespace(omega_b=omega_b, h=h, n_s=n_s, transfer_function=tf)
    cosmo = lensing_cosmology(om, s8, shared, mp)
    tracer = ccl.WeakLensingTracer(cosmo, dndz=(np.asarray(nz_z), np.asarray(nz)))
    ell = _ell_nodes()
    cl = ccl.angular_cl(cosmo, tracer, tracer, ell) * ell * (ell + 1) / ((ell + 2) * (ell - 1))
    return torch.from_numpy(np.log(cl))


def _config_key(settings: SourceParams) -> tuple:
    """Hashable configuration of C_ℓ other than (Ω_m, σ8): cosmology, matter power, n(z)."""
    z, nz = source_nz(settings)
    return (
        float(settings.omega_b),
        float(settings.h),
        float(settings.n_s),
        settings.transfer_function,
        settings.matter_power,
        tuple(z.tolist()),
        tuple(nz.tolist()),
    )


def _ln_cl_batch(settings: SourceParams, om: np.ndarray, s8: np.ndarray) -> torch.Tensor:
    """ln C_ℓ nodes (B, N_ELL) float64 for per-sample parameters: from the stored table of the
    configuration when there is one (:func:`cl_table`), else one pyccl call per new pair."""
    config = _config_key(settings)
    table = cl_table(config)
    if table is not None:
        return table.ln_cl(om, s8)
    pairs = np.stack([om, s8], axis=1)
    uniq, inverse = np.unique(pairs, axis=0, return_inverse=True)
    tables = [_ln_cl_nodes((float(o), float(s), *config)) for o, s in uniq]
    return torch.stack(tables)[torch.from_numpy(np.asarray(inverse).reshape(-1))]


# ---------------------------------------------------------------------------------------------
# Tabulated C_ℓ(Ω_m, σ8) of one configuration
# ---------------------------------------------------------------------------------------------

#: σ8 nodes of :class:`ClTable`: S8_LO + j·S8_STEP, j < N_S8 (one node beyond each σ8 bound).
S8_STEP = 0.05
S8_LO = SIGMA8_BOUNDS[0] - S8_STEP
N_S8 = round((SIGMA8_BOUNDS[1] - SIGMA8_BOUNDS[0]) / S8_STEP) + 3
#: Folder of the stored tables (one ``cl_<hash>.npz`` per configuration).
TABLE_DIR = Path(__file__).resolve().parent / "tables"


def _om_nodes() -> np.ndarray:
    return np.exp(np.linspace(math.log(OM_MIN), math.log(OM_MAX), N_OM))


def _s8_nodes() -> np.ndarray:
    return S8_LO + S8_STEP * np.arange(N_S8)


def _pyccl_series() -> str:
    return ".".join(ccl.__version__.split(".")[:2])


def config_hash(config: tuple) -> str:
    """First 16 hex digits of the SHA-256 of a configuration key (:func:`_config_key`)."""
    return hashlib.sha256(repr(config).encode()).hexdigest()[:16]


class ClTable:
    """ln C_ℓ^κκ of one configuration on (Ω_m, σ8, ℓ) nodes, interpolated in torch.

    Parameters
    ----------
    ln_cl : ndarray (N_OM, N_S8, N_ELL) float64
        ln C_ℓ (C_ℓ in sr) at :func:`_om_nodes` × :func:`_s8_nodes` × :func:`_ell_nodes`.

    Raises
    ------
    ValueError
        ``ln_cl`` of another shape, or not finite.
    """

    def __init__(self, ln_cl: np.ndarray):
        ln_cl = np.asarray(ln_cl, dtype=np.float64)
        if ln_cl.shape != (N_OM, N_S8, N_ELL) or not np.isfinite(ln_cl).all():
            raise ValueError(
                f"a C_l table must hold finite values of shape {(N_OM, N_S8, N_ELL)}, "
                f"not {ln_cl.shape}"
            )
        self.table = torch.from_numpy(ln_cl)
        self._ln_om0 = math.log(OM_MIN)
        self._dlnom = (math.log(OM_MAX) - math.log(OM_MIN)) / (N_OM - 1)

    def ln_cl(self, omega_m, sigma8) -> torch.Tensor:
        """ln C_ℓ on the ℓ nodes, (B, N_ELL) float64, Catmull–Rom in ln Ω_m and in σ8.

        Parameters
        ----------
        omega_m, sigma8 : array_like (B,)
            Inside the table, Ω_m in [0.07, 1] and σ8 in [0.35, 1.25] (the prior box of
            :class:`~engine.params.CosmologyParams` is checked before).
        """
        om = torch.as_tensor(np.asarray(omega_m, dtype=np.float64))
        s8 = torch.as_tensor(np.asarray(sigma8, dtype=np.float64))
        i, wi = _catmull_rom_weights(om.log(), self._ln_om0, self._dlnom, N_OM)
        j, wj = _catmull_rom_weights(s8, S8_LO, S8_STEP, N_S8)
        rows = self.table[i[:, :, None], j[:, None, :]]  # (B, 4, 4, N_ELL)
        return torch.einsum("bijl,bi,bj->bl", rows, wi, wj)


def build_cl_table(settings: SourceParams, progress: bool = True) -> tuple[np.ndarray, tuple]:
    """ln C_ℓ of ``settings``' configuration on every node (N_OM·N_S8 pyccl calls, ~2.5 min).

    Returns
    -------
    ln_cl : ndarray (N_OM, N_S8, N_ELL) float64
    config : tuple
        The configuration key (:func:`_config_key`).
    """
    from tqdm.auto import tqdm

    config = _config_key(settings)
    pairs = [(o, s) for o in _om_nodes() for s in _s8_nodes()]
    rows = [
        _ln_cl_nodes((float(o), float(s), *config)).numpy()
        for o, s in tqdm(pairs, desc="C_l nodes", unit="cosmology", disable=not progress)
    ]
    return np.asarray(rows).reshape(N_OM, N_S8, N_ELL), config


def write_cl_table(ln_cl: np.ndarray, config: tuple, folder: Path = TABLE_DIR) -> Path:
    """Store a table as ``folder/cl_<hash>.npz`` (written to a temporary name, then renamed)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"cl_{config_hash(config)}.npz"
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(
        tmp, ln_cl=ln_cl, config=np.array(repr(config)), pyccl=np.array(_pyccl_series())
    )
    tmp.replace(path)
    return path


_TABLES: dict = {}
_TABLES_LOCK = threading.Lock()


def cl_table(config: tuple, folder: Path | None = None) -> ClTable | None:
    """The stored :class:`ClTable` of a configuration key, or None (cached per process).

    None when no file exists for the key, or when it was built with another pyccl major.minor
    version or another configuration (hash collision), or cannot be read.
    """
    folder = TABLE_DIR if folder is None else folder
    key = (str(folder), config)
    with _TABLES_LOCK:
        if key not in _TABLES:
            _TABLES[key] = _read_cl_table(folder / f"cl_{config_hash(config)}.npz", config)
        return _TABLES[key]


def _read_cl_table(path: Path, config: tuple) -> ClTable | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as f:
            if str(f["pyccl"]) != _pyccl_series() or str(f["config"]) != repr(config):
                return None
            return ClTable(f["ln_cl"])
    except (OSError, ValueError, KeyError):
        return None


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


def smoothed_noise_cl(settings: SourceParams, ell) -> torch.Tensor:
    """Shape-noise part of :func:`map_cl`, N_ℓ exp(−ℓ²σ_s²), in sr.

    Parameters
    ----------
    settings : SourceParams
        n_gal (arcmin⁻²), sigma_e, smoothing (arcmin σ).
    ell : torch.Tensor or array_like (...), dimensionless

    Returns
    -------
    torch.Tensor (...) float64, sr (zero when ``sigma_e`` = 0).
    """
    return noise_cl(settings) * smoothing_window(settings, ell) ** 2


def d_ell(ell):
    """ℓ(ℓ+1)/2π, the factor turning C_ℓ into the plotted D_ℓ = ℓ(ℓ+1)C_ℓ/2π.

    Parameters
    ----------
    ell : array_like, dimensionless

    Returns
    -------
    numpy.ndarray float64 of ell's shape, dimensionless.
    """
    ell = np.asarray(ell, dtype=np.float64)
    return ell * (ell + 1) / (2 * math.pi)


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


def main(argv=None) -> int:
    """``python -m engine.physics.limber build-table [--nz …]``: store the C_ℓ table of the
    default κ configuration (or of the given cosmology settings and n(z))."""
    ap = argparse.ArgumentParser(prog="python -m engine.physics.limber", description=main.__doc__)
    ap.add_argument("command", choices=["build-table"])
    ap.add_argument("--out", default=str(TABLE_DIR), help="folder of the tables")
    for name in ("omega_b", "h", "n_s"):
        ap.add_argument(f"--{name.replace('_', '-')}", type=float, default=None)
    ap.add_argument("--transfer-function", default=None)
    ap.add_argument("--matter-power", default=None)
    ap.add_argument("--nz", default=None)
    args = ap.parse_args(argv)
    settings = SourceParams()
    try:
        for name in ("omega_b", "h", "n_s", "transfer_function", "matter_power", "nz"):
            if getattr(args, name) is not None:
                setattr(settings, name, getattr(args, name))
        ln_cl, config = build_cl_table(settings)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(write_cl_table(ln_cl, config, Path(args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
