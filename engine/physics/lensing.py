r"""Flat-sky weak-lensing convergence κ maps from the Limber C_ℓ^κκ of pyccl, batched in torch.

The theory (sources n(z), C_ℓ^κκ, shape noise, smoothing) lives in :mod:`engine.physics.limber`;
this module holds the flat maps: settings, generation, their binned theory and DataArrays.

Angular Fourier convention (written once, used by every κ map and theory curve)
------------------------------------------------------------------------------
A flat map of side θ_box (radians) on N² pixels is treated as a periodic square "box" of side
θ_box, exactly as :mod:`engine.physics.stats` treats a box of side L: the angular wavenumber of
the mode m = (m_x, m_y) is

    ℓ = |k|,   k = 2π m / θ_box   (θ_box in radians; fundamental ℓ_f = 2π/θ_box),

and the flat-sky angular power spectrum C_ℓ (sr) is the 2D spectrum P_2D of the stats module with
``box_size = θ_box`` in radians: ``engine.physics.stats.power_spectrum(kappa, box_size=θ_box)``
(θ_box from :func:`fov_radians`) returns binned C_ℓ in sr at bin centres ℓ. The pixel area is A_pix = (θ_box/N)² sr. Maps are
generated directly from their Fourier amplitudes on this periodic grid (no aliasing, no pixel
window; no power from modes longer than the map: periodic flat sky).

Map model
---------
``distribution="gaussian"``: a Gaussian random field with spectrum C_ℓ.

``distribution="lognormal"``: the shifted lognormal field κ = κ0 [exp(G − σ_G²/2) − 1] (Hilbert,
Hartlap & Schneider 2011, A&A 536, A85; Xavier et al. 2016, MNRAS 459, 3693), which has mean 0
and κ ≥ −κ0. Its correlation function is ξ_κ = κ0² (e^{ξ_G} − 1), so G is generated with the
spectrum of ξ_G = ln(1 + ξ_κ/κ0²) on the periodic grid (negative modes of that spectrum are set
to 0, :func:`engine.physics.randomfields.lognormal_from_power`). The shift κ0 is
``lognormal_shift`` when > 0, otherwise ("auto", the default) the n(z)-weighted fit of Hilbert et al. (2011) for a single source redshift (the form
used by FLASK, Xavier et al. 2016),

    κ0(z_s) = 0.008 z_s + 0.029 z_s² − 0.0079 z_s³ + 0.00065 z_s⁴,   κ0 = ∫ n(z) κ0(z) dz,

which gives κ0 = 0.0160 for the DES Y3-like n(z). The fit was made for the Millennium Simulation
cosmology (Ω_m = 0.25, σ8 = 0.9) and is not rescaled with cosmology.

Then, in this order (the DES mass-map practice of smoothing the noisy reconstructed map):

1. shape noise: white Gaussian noise of standard deviation σ_pix = σ_e / √(n_gal A_pix) per pixel
   (:func:`pixel_noise`), A_pix in arcmin² and n_gal in arcmin⁻², σ_e per ellipticity component.
   Its spectrum is the flat N_ℓ = σ_e² / n_gal with n_gal in sr⁻¹
   (:func:`engine.physics.limber.noise_cl`);
2. Gaussian smoothing with standard deviation σ_s = ``smoothing`` arcmin (σ, not the FWHM =
   2.355 σ), i.e. Fourier modes × exp(−ℓ² σ_s²/2) with σ_s in radians;
3. the optional mask (an (N, N) ``.npy`` array, 1 observed / 0 masked): masked pixels are set to 0.

The expected spectrum of an unmasked map (:func:`engine.physics.limber.map_cl`) is therefore

    C_ℓ^map = (C_ℓ^κκ + σ_e²/n_gal) exp(−ℓ² σ_s²).

Output (:func:`generate`): ``xarray.DataArray`` "kappa" (sample, y, x) float32; coords x, y in
arcmin (pixel centres), per-sample omega_m, sigma8, the mask as coord (y, x) uint8; attrs hold
every setting plus the n(z) used as 1-D float64 arrays ``nz_z`` and ``nz_dndz`` (netCDF stores 1-D
numeric attributes natively, zarr as JSON lists), so the DataArray round-trips through
:func:`engine.physics.slabs.save` / :func:`engine.physics.slabs.load` as .nc or .zarr.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import param
import torch
import xarray as xr
from scipy.integrate import trapezoid

from engine.params import FIDUCIAL, ConfigError
from engine.physics.generation import generate_samples
from engine.physics.limber import (
    ARCMIN,
    ELL_MAX,
    SourceParams,
    map_cl,
    settings_attrs,
    smoothing_window,
    source_nz,
    theory_cl,
)
from engine.physics.mesh import wavenumber_grid, wavenumbers
from engine.physics.randomfields import gaussian_from_power, lognormal_from_power
from engine.physics.stats import bin_isotropic, rfft_weights

# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


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
# Lognormal shift
# ---------------------------------------------------------------------------------------------


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
# Geometry, theory and checks of flat maps
# ---------------------------------------------------------------------------------------------


def fov_radians(settings: KappaParams) -> float:
    """Side θ_box of the map in radians (the ``box_size`` for :mod:`engine.physics.stats`)."""
    return math.radians(settings.fov)


def map_extent(settings: KappaParams) -> float:
    """Side of the square map in arcmin: ``settings.fov`` × 60."""
    return float(settings.fov) * 60.0


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


def mode_power(settings: KappaParams, ell, omega_m, sigma8) -> torch.Tensor:
    """Expected spectrum of an unmasked κ map at multipoles ``ell`` (:func:`map_cl`), in sr;
    ``omega_m``, ``sigma8`` floats or arrays/tensors (B,) (converted to numpy for pyccl)."""
    om = torch.as_tensor(omega_m, dtype=torch.float64).detach().cpu().numpy()
    s8 = torch.as_tensor(sigma8, dtype=torch.float64).detach().cpu().numpy()
    return map_cl(settings, ell, om, s8)


def check_spectrum(settings: KappaParams) -> None:
    """Raise :class:`ConfigError` unless maps made with ``settings`` have the spectrum
    :func:`map_cl`: unmasked maps inside the theory's ℓ range.

    Raises
    ------
    ConfigError
        A mask (the spectrum of a masked map is not map_cl), or pixels too small.
    """
    if settings.mask:
        raise ConfigError(
            "masked kappa maps are not supported by the P(k) likelihood: the spectrum of a "
            "masked map is not map_cl (use unmasked maps)"
        )
    check_resolution(settings)


def is_gaussian(settings: KappaParams) -> bool:
    """True for Gaussian κ maps (``distribution="gaussian"``)."""
    return settings.distribution == "gaussian"


def check_resolution(settings: KappaParams) -> None:
    """Raise :class:`ConfigError` if the map's highest |ℓ| (corner mode) exceeds ELL_MAX = 1e5."""
    ell_max = math.sqrt(2) * math.pi * settings.size / fov_radians(settings)
    if ell_max > ELL_MAX:
        raise ConfigError(
            f"pixel size fov/size={settings.fov * 60 / settings.size:.3g} arcmin is too small: the "
            f"theory covers ell <= {ELL_MAX:g}, so fov*60/size must be >= "
            f"{math.sqrt(2) * math.pi / ELL_MAX / ARCMIN:.3g} arcmin"
        )


def pixel_noise(settings: KappaParams) -> float:
    """Shape noise per pixel before smoothing, σ_pix = σ_e / √(n_gal A_pix), dimensionless (κ).

    A_pix = (fov/N)² in arcmin², n_gal in arcmin⁻², σ_e per component; 0 when ``sigma_e`` = 0.
    """
    pix_arcmin = fov_radians(settings) / settings.size / ARCMIN
    return settings.sigma_e / math.sqrt(settings.n_gal * pix_arcmin**2)


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
        kappa = kappa + pixel_noise(settings) * torch.randn(
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
    """Expected standard deviation per pixel of unmasked maps at the fiducial cosmology
    (:data:`engine.params.FIDUCIAL`: Ω_m = 0.3, σ8 = 0.8), dimensionless.

    σ² = Σ_ℓ C_ℓ^map / θ² over all modes (:mod:`engine.physics.stats` conventions); a fixed input
    normalisation for networks.
    """
    n, box = settings.size, fov_radians(settings)
    ell = wavenumber_grid(n, box, torch.device("cpu"))
    cl = map_cl(settings, ell, FIDUCIAL["omega_m"], FIDUCIAL["sigma8"]).clone()
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
    return generate_samples(
        settings,
        generate_maps,
        to_dataarray,
        omega_m=omega_m,
        sigma8=sigma8,
        device=device,
        batch_size=batch_size,
        progress=progress,
        check=check_resolution,
    )


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
