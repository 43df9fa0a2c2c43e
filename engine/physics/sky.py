r"""Full-sky HEALPix convergence maps, flat patches cut from them, HEALPix file reading and C_ℓ.

Everything here uses healpy (Górski et al. 2005, ApJ 622, 759; Zonca et al. 2019, JOSS 4, 1298)
in RING ordering, with angles as (lon, lat) in degrees (lon = RA, lat = Dec when a footprint is
defined in equatorial coordinates; κ skies are statistically isotropic, so the frame is nominal).

Full-sky κ (:func:`generate`)
-----------------------------
The spherical-harmonic coefficients of each sky are drawn from C_ℓ^κκ of :mod:`engine.physics.limber`
(same cosmology, n(z), halofit/linear choice; C_0 = C_1 = 0) for 0 ≤ ℓ ≤ ``lmax`` (default
3·nside − 1): a_ℓ0 ~ N(0, C_ℓ) real and a_ℓm = (x + iy) √(C_ℓ/2), x, y ~ N(0, 1), for m > 0, with a
``numpy.random.Generator`` seeded by ``seed`` (healpy's ``synalm`` draws from numpy's global
state, so it is not used). ``healpy.alm2map`` evaluates the band-limited field at the pixel
centres (no pixel window). Then, as for flat maps:

1. shape noise of spectrum N_ℓ = σ_e² / n_gal[sr⁻¹] (n_gal converted from arcmin⁻²). Without
   smoothing it is white noise of σ_pix = σ_e / √(n_gal Ω_pix) per pixel (Ω_pix in arcmin²),
   exactly as on flat maps (σ_pix² Ω_pix[sr] = N_ℓ). With smoothing, the noise is smoothed with the
   signal, so it is drawn in harmonic space, a_ℓm of spectrum N_ℓ added to the signal's: the same
   for ℓ ≤ lmax, minus the smoothed noise above lmax (a fraction ~ exp(−lmax²σ_s²) of it; e.g.
   < 1 % for 10′ at nside 256), and several times faster than smoothing a pixel noise map with
   ``healpy.smoothing`` (map2alm with 3 iterations: 3.5 s instead of 0.5 s per map at nside 256);
2. Gaussian smoothing of standard deviation σ_s = ``smoothing`` arcmin (σ, not FWHM): a_ℓm are
   multiplied by exp(−ℓ(ℓ+1)σ_s²/2) (the ``healpy.gauss_beam`` of FWHM = √(8 ln 2) σ_s);
3. the footprint: ``footprint="des_like"`` keeps the RA/Dec box 300° ≤ RA < 360° or 0° ≤ RA ≤
   100°, −65° ≤ Dec ≤ −25° (4,400 deg², f_sky = 0.107), a crude single-box stand-in for the
   DES wide-field footprint (~5,000 deg² of the full survey, 4,143 deg² in the Y3 cosmology
   footprint; Sevilla-Noarbe et al. 2021, ApJS 254, 24); ``mask=PATH`` reads a HEALPix mask of
   the same nside (:func:`read_healpix`). Unobserved pixels hold ``healpy.UNSEEN``.

The expected full-sky spectrum is (C_ℓ^κκ + σ_e²/n_gal) exp(−ℓ(ℓ+1)σ_s²) (:func:`sky_cl`).

Flat patches (:func:`extract_patches`)
--------------------------------------
A gnomonic (tangent-plane) projection centred on (lon, lat), built with
``healpy.projector.GnomonicProj(rot=(lon, lat, 0), xsize=size, reso=fov·60/size)``, gives the
sky position of each flat pixel; the value there is the **bilinear interpolation** of the four
nearest HEALPix pixel centres (``healpy.get_interp_weights``, as ``healpy.get_interp_val``), or
with ``interpolation="nearest"`` the value of the containing pixel (as ``healpy.gnomview``).
Row index (y) increases to the north, column index (x) to the west (the sky seen from inside,
healpy's convention). Bilinear interpolation is a low-pass filter: patch power is suppressed by
≈ sinc⁴(ℓ θ_pix/2) (θ_pix = √Ω_pix of the HEALPix map), 6 % at ℓ = 0.2 π/θ_pix and 18 % at
0.35 π/θ_pix (measured ~15 % at ℓ = 250 for nside 256), so cut patches from a sky ≥ 4× finer
than the patch pixels to keep scales near the patch Nyquist ℓ. The tangent plane stretches the
edges by tan(r)/r (0.25 % at 5° from the centre), and a patch is not periodic, so its FFT
spectrum leaks power across ℓ. The spectrum of a patch therefore matches C_ℓ only well below the
HEALPix and patch pixel scales (the test compares 1.5 ℓ_f < ℓ < 0.2 π/θ_pix, 10 % on average).
A flat pixel with any unobserved interpolation neighbour is set to 0 and flagged in ``mask``.

C_ℓ of HEALPix maps (:func:`measure_cl`)
----------------------------------------
``healpy.anafast`` of the map with masked pixels set to ``UNSEEN`` (healpy treats them as 0) and,
by default, the monopole of the observed pixels removed (``healpy.remove_monopole``): the
pseudo-C_ℓ of the masked sky, not deconvolved from the mask (⟨Ĉ_ℓ⟩ ≈ f_sky C_ℓ on scales much
smaller than the mask's features). This is how healpy's WMAP reference spectrum was made.
"""

from __future__ import annotations

import math
from pathlib import Path

import healpy as hp
import numpy as np
import param
import torch
import xarray as xr

import engine
from engine.params import ConfigError
from engine.physics.cosmology import check_parameters
from engine.physics.generation import per_sample
from engine.physics.limber import ARCMIN, SourceParams, noise_cl, settings_attrs, theory_cl

#: The DES-like RA/Dec box (degrees) of ``footprint="des_like"``: RA from 300 through 0 to 100.
DES_LIKE_RA = (300.0, 100.0)
DES_LIKE_DEC = (-65.0, -25.0)


class SkyParams(SourceParams):
    """Settings of a batch of full-sky HEALPix convergence maps."""

    kind = param.Selector(
        default="sky",
        objects=["sky"],
        constant=True,
        doc="Field kind: full-sky HEALPix convergence (fixed).",
    )

    nside = param.Integer(
        256,
        bounds=(1, 2048),
        doc="HEALPix resolution parameter (a power of 2); pixel side ~ 3438/nside arcmin.",
    )
    lmax = param.Integer(
        0,
        bounds=(0, 8191),
        doc="Highest multipole synthesised (0: 3*nside - 1). At most 4*nside.",
    )
    footprint = param.Selector(
        default="full",
        objects=["full", "des_like"],
        doc="Observed region: full sky, or a DES-like RA/Dec box (300..100 deg RA, -65..-25 deg "
        "Dec, 4400 deg^2).",
    )
    mask = param.String(
        None,
        allow_None=True,
        doc="Optional HEALPix FITS mask of the same nside (0: masked), combined with footprint.",
    )


def check_nside(nside: int) -> None:
    """Raise :class:`ConfigError` unless ``nside`` is a power of 2 in [1, 2048]."""
    lo, hi = SkyParams.param["nside"].bounds
    if not (
        isinstance(nside, (int, np.integer))
        and lo <= nside <= hi
        and hp.isnsideok(nside, nest=True)
    ):
        raise ConfigError(
            f"nside={nside!r} is not allowed: a power of 2 with {lo} <= nside <= {hi}"
        )


def effective_lmax(settings: SkyParams) -> int:
    """``settings.lmax``, or 3·nside − 1 when 0; ConfigError if above 4·nside."""
    check_nside(settings.nside)
    lmax = settings.lmax or 3 * settings.nside - 1
    if lmax > 4 * settings.nside:
        raise ConfigError(
            f"lmax={lmax} is out of range: allowed 0 <= lmax <= 4*nside = {4 * settings.nside}"
        )
    return int(lmax)


def sky_cl(settings: SkyParams, omega_m: float, sigma8: float, lmax: int | None = None):
    """Expected spectrum of an unmasked sky, (C_ℓ^κκ + σ_e²/n_gal) exp(−ℓ(ℓ+1)σ_s²), ℓ = 0…lmax.

    Parameters
    ----------
    settings : SkyParams
    omega_m, sigma8 : float
    lmax : int, optional
        Default :func:`effective_lmax`.

    Returns
    -------
    numpy.ndarray (lmax+1,) float64, sr; ℓ = 0, 1 hold only the noise term.
    """
    lmax = effective_lmax(settings) if lmax is None else int(lmax)
    ell = np.arange(lmax + 1, dtype=np.float64)
    cl = theory_cl(settings, torch.from_numpy(ell), float(omega_m), float(sigma8)).numpy()
    beam = np.exp(-0.5 * ell * (ell + 1) * (settings.smoothing * ARCMIN) ** 2)
    return (cl + noise_cl(settings)) * beam**2


def synthesize_alm(cl: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian a_ℓm (healpy layout, mmax = lmax) with ⟨|a_ℓm|²⟩ = C_ℓ.

    Parameters
    ----------
    cl : numpy.ndarray (lmax+1,) float64, >= 0
    rng : numpy.random.Generator

    Returns
    -------
    numpy.ndarray ((lmax+1)(lmax+2)/2,) complex128.
    """
    lmax = len(cl) - 1
    ell, m = hp.Alm.getlm(lmax)
    re = rng.standard_normal(ell.size)
    im = rng.standard_normal(ell.size)
    amp = np.sqrt(np.asarray(cl, np.float64)[ell])
    return np.where(m == 0, re * amp, (re + 1j * im) * amp / math.sqrt(2.0)).astype(np.complex128)


def footprint_mask(settings: SkyParams) -> np.ndarray:
    """Observed pixels of ``settings.footprint`` and ``settings.mask``: (npix,) bool, RING.

    Raises
    ------
    ConfigError
        Bad nside, or a mask file that is missing, not HEALPix or of another nside.
    """
    check_nside(settings.nside)
    npix = hp.nside2npix(settings.nside)
    keep = np.ones(npix, dtype=bool)
    if settings.footprint == "des_like":
        lon, lat = hp.pix2ang(settings.nside, np.arange(npix), lonlat=True)
        ra_lo, ra_hi = DES_LIKE_RA
        in_ra = (lon >= ra_lo) | (lon <= ra_hi)
        keep &= in_ra & (lat >= DES_LIKE_DEC[0]) & (lat <= DES_LIKE_DEC[1])
    if settings.mask not in (None, ""):
        m = read_healpix(settings.mask)
        if len(m) != npix:
            raise ConfigError(
                f"mask={settings.mask!r} has nside {hp.npix2nside(len(m))}, expected nside="
                f"{settings.nside}"
            )
        keep &= _observed(m)
    return keep


def _unseen(m: np.ndarray) -> np.ndarray:
    """Unobserved pixels of a map: UNSEEN (also after a float32 round trip) or non-finite."""
    m = np.asarray(m, dtype=np.float64)
    return ~np.isfinite(m) | np.isclose(m, hp.UNSEEN, rtol=1e-5, atol=0.0)


def _observed(mask: np.ndarray) -> np.ndarray:
    """Observed pixels of a mask: nonzero, finite and not UNSEEN."""
    return (np.asarray(mask, dtype=np.float64) != 0) & ~_unseen(mask)


def generate_maps(settings: SkyParams, omega_m, sigma8, rng: np.random.Generator) -> np.ndarray:
    """Full-sky κ maps (B, npix) float64, RING, one per (omega_m, sigma8); UNSEEN off-footprint.

    Parameters
    ----------
    settings : SkyParams
        nside, lmax, nz, matter_power, n_gal (arcmin⁻²), sigma_e, smoothing (arcmin σ),
        footprint, mask and the shared cosmology settings.
    omega_m, sigma8 : array_like (B,)
    rng : numpy.random.Generator
        Same generator state ⇒ same maps. Signal and noise use two streams spawned from it
        (``rng.spawn(2)``), so the same seed gives the same κ signal with or without noise.

    Raises
    ------
    ConfigError
        Parameters out of range, bad nside/lmax, bad nz or mask file.
    """
    om = np.asarray(omega_m, np.float64).reshape(-1)
    s8 = np.asarray(sigma8, np.float64).reshape(-1)
    check_parameters(torch.from_numpy(om.copy()), torch.from_numpy(s8.copy()))
    nside, lmax = settings.nside, effective_lmax(settings)
    keep = footprint_mask(settings)
    ell = np.arange(lmax + 1, dtype=np.float64)
    sigma_s = settings.smoothing * ARCMIN
    beam = np.exp(-0.5 * ell * (ell + 1) * sigma_s**2)
    n_ell = noise_cl(settings) if settings.sigma_e > 0 else 0.0
    pix_noise = settings.sigma_e > 0 and sigma_s == 0
    if pix_noise:
        pix_arcmin2 = hp.nside2pixarea(nside) / ARCMIN**2
        sigma_pix = settings.sigma_e / math.sqrt(settings.n_gal * pix_arcmin2)
    signal_rng, noise_rng = rng.spawn(2)
    out = np.empty((om.size, hp.nside2npix(nside)), dtype=np.float64)
    for b in range(om.size):
        cl = theory_cl(settings, torch.from_numpy(ell), float(om[b]), float(s8[b])).numpy()
        alm = synthesize_alm(cl, signal_rng)
        if n_ell > 0 and not pix_noise:  # smoothed noise: drawn in harmonic space
            alm = alm + synthesize_alm(np.full(lmax + 1, n_ell), noise_rng)
        alm = hp.almxfl(alm, beam)
        sky = hp.alm2map(alm, nside, lmax=lmax, pixwin=False)
        if pix_noise:
            sky = sky + sigma_pix * noise_rng.standard_normal(sky.size)
        sky[~keep] = hp.UNSEEN
        out[b] = sky
    return out


def generate(settings: SkyParams, omega_m=None, sigma8=None) -> xr.DataArray:
    """Generate ``settings.count`` full-sky κ maps from ``settings.seed``.

    Parameters
    ----------
    settings : SkyParams
    omega_m, sigma8 : float or array_like (count,), optional
        Per-sample parameters; default the scalar settings.

    Returns
    -------
    xarray.DataArray "kappa" (sample, pixel) float32 (HEALPix RING, UNSEEN off-footprint);
    coords omega_m, sigma8 (sample), mask (pixel) uint8 (1 observed); attrs: every setting,
    ``nz_z``/``nz_dndz`` arrays (see :func:`engine.physics.limber.settings_attrs`), ``nside``,
    ``lmax_used``, ordering="RING", pixel_size (arcmin, √Ω_pix), long_name.

    Raises
    ------
    ConfigError
        See :func:`generate_maps`.
    """
    count = settings.count
    om = per_sample(omega_m, settings.omega_m, count, "omega_m")
    s8 = per_sample(sigma8, settings.sigma8, count, "sigma8")
    maps = generate_maps(settings, om, s8, np.random.default_rng(int(settings.seed)))
    return to_dataarray(maps, settings, om, s8)


def to_dataarray(maps: np.ndarray, settings: SkyParams, omega_m, sigma8) -> xr.DataArray:
    """Wrap HEALPix κ skies (B, npix) in the boundary DataArray described in :func:`generate`.

    Parameters
    ----------
    maps : numpy.ndarray (B, npix), RING order, UNSEEN off-footprint
    settings : SkyParams
    omega_m, sigma8 : array_like (B,)

    Raises
    ------
    ConfigError
        Bad nside or mask file (the footprint is recomputed).
    """
    om = np.asarray(omega_m, dtype=np.float64)
    s8 = np.asarray(sigma8, dtype=np.float64)
    attrs = settings_attrs(settings)
    attrs.update(
        long_name="weak-lensing convergence kappa (full-sky HEALPix)",
        ordering="RING",
        lmax_used=effective_lmax(settings),
        pixel_size=math.sqrt(hp.nside2pixarea(settings.nside)) / ARCMIN,
    )
    return xr.DataArray(
        np.asarray(maps).astype(np.float32),
        dims=("sample", "pixel"),
        coords={
            "omega_m": ("sample", om),
            "sigma8": ("sample", s8),
            "mask": ("pixel", footprint_mask(settings).astype(np.uint8)),
        },
        name="kappa",
        attrs=attrs,
    )


def settings_from_attrs(attrs: dict) -> SkyParams:
    """Rebuild the SkyParams a sky DataArray was generated with, from its attrs ("" → None).

    Attrs that are not settings (``nz_z``, ``units``, ``lmax_used``, …) are ignored; numpy
    scalars (netCDF) become Python numbers.
    """
    names = set(SkyParams.param) - {"name"}
    values = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in attrs.items()}
    values = {k: v for k, v in values.items() if k in names}
    if values.get("mask") == "":
        values["mask"] = None
    return SkyParams(**values)


def extract_patches(
    sky, centers, fov: float = 5.0, size: int = 256, sample: int = 0, interpolation="bilinear"
):
    """Cut flat gnomonic patches out of one HEALPix map (module docstring for the method).

    Parameters
    ----------
    sky : xarray.DataArray (sample, pixel) from :func:`generate`, or array_like (npix,)
        RING-ordered map; UNSEEN pixels count as unobserved.
    centers : sequence of (lon, lat) in degrees, length P
    fov : float
        Side of each patch in degrees.
    size : int
        Pixels per side N.
    sample : int
        Which sky of a DataArray batch to cut from.
    interpolation : {"bilinear", "nearest"}
        Bilinear interpolation of the 4 nearest HEALPix pixels (``healpy.get_interp_weights``;
        power transfer ≈ sinc⁴(ℓ θ_pix/2), 0.94 at ℓ = 0.2 π/θ_pix), or the value of the pixel
        containing the point (``healpy.ang2pix``, as ``healpy.gnomview``: no smoothing but the
        HEALPix pixel window and aliasing).

    Returns
    -------
    xarray.DataArray "kappa" (sample, y, x) float32 with one sample per centre: coords x, y in
    arcmin (pixel centres), omega_m, sigma8 (nan for a bare array), lon, lat (degrees), mask
    (sample, y, x) uint8; attrs of the sky (if any) plus fov, size, pixel_size (arcmin),
    projection="gnomonic", interpolation, coordinate_units="arcmin".

    Raises
    ------
    ConfigError
        Not a HEALPix map, bad fov/size/interpolation, or centres not of shape (P, 2) with
        |lat| <= 90.
    """
    from healpy.projector import GnomonicProj

    attrs, om, s8 = {}, math.nan, math.nan
    if isinstance(sky, xr.DataArray):
        attrs = dict(sky.attrs)
        if "sample" in sky.dims:
            sky = sky.isel(sample=sample)
            om = float(sky.omega_m) if "omega_m" in sky.coords else math.nan
            s8 = float(sky.sigma8) if "sigma8" in sky.coords else math.nan
    m = np.asarray(sky, dtype=np.float64).reshape(-1)
    if not hp.isnpixok(m.size):
        raise ConfigError(f"sky map has {m.size} pixels, which is not a HEALPix map (12*nside^2)")
    centers = np.asarray(centers, dtype=np.float64).reshape(-1, 2) if len(centers) else None
    if centers is None or np.any(np.abs(centers[:, 1]) > 90) or not np.all(np.isfinite(centers)):
        raise ConfigError("centers must be a non-empty list of (lon, lat) in degrees, |lat| <= 90")
    if not (0 < fov <= 30.0):
        raise ConfigError(f"fov={fov!r} is out of range: allowed 0 < fov <= 30 (degrees)")
    if not (isinstance(size, (int, np.integer)) and 8 <= size <= 4096):
        raise ConfigError(f"size={size!r} is out of range: allowed 8 <= size <= 4096")
    if interpolation not in ("bilinear", "nearest"):
        raise ConfigError(
            f"interpolation={interpolation!r} is not allowed: one of 'bilinear', 'nearest'"
        )
    nside = hp.npix2nside(m.size)
    good = ~_unseen(m)
    reso = fov * 60.0 / size
    patches = np.zeros((len(centers), size, size), dtype=np.float32)
    masks = np.zeros((len(centers), size, size), dtype=np.uint8)
    for p, (lon, lat) in enumerate(centers):
        proj = GnomonicProj(rot=(lon, lat, 0.0), xsize=size, ysize=size, reso=reso)
        x, y = proj.ij2xy()
        vx, vy, vz = proj.xy2vec(x, y)
        theta, phi = hp.vec2ang(np.stack([vx.ravel(), vy.ravel(), vz.ravel()], axis=1))
        if interpolation == "bilinear":
            pix, w = hp.get_interp_weights(nside, theta, phi)
            ok = np.all(good[pix] | (w == 0), axis=0)
            val = np.sum(np.where(good[pix], m[pix], 0.0) * w, axis=0)
        else:
            pix = hp.ang2pix(nside, theta, phi)
            ok, val = good[pix], m[pix]
        patches[p] = np.where(ok, val, 0.0).reshape(size, size)
        masks[p] = ok.reshape(size, size)
    centres = (np.arange(size) + 0.5) * fov * 60.0 / size
    attrs.update(
        kind="kappa" if attrs.get("kind") == "sky" else "patch",
        fov=float(fov),
        size=int(size),
        distribution=attrs.get("distribution", "gaussian"),
        pixel_size=reso,
        projection="gnomonic",
        interpolation=interpolation,
        coordinate_units="arcmin",
        long_name="weak-lensing convergence kappa (gnomonic patch of a HEALPix sky)",
        units=attrs.get("units", "dimensionless"),
        engine_version=engine.__version__,
    )
    n = len(centers)
    return xr.DataArray(
        patches,
        dims=("sample", "y", "x"),
        coords={
            "x": ("x", centres, {"units": "arcmin"}),
            "y": ("y", centres, {"units": "arcmin"}),
            "omega_m": ("sample", np.full(n, om)),
            "sigma8": ("sample", np.full(n, s8)),
            "lon": ("sample", centers[:, 0], {"units": "degree"}),
            "lat": ("sample", centers[:, 1], {"units": "degree"}),
            "mask": (("sample", "y", "x"), masks),
        },
        name="kappa",
        attrs=attrs,
    )


# ---------------------------------------------------------------------------------------------
# HEALPix files and spectra
# ---------------------------------------------------------------------------------------------


def read_healpix(path, field: int = 0, mask=None) -> np.ndarray:
    """Read one field of a HEALPix FITS map (RING order), with an optional mask applied.

    Parameters
    ----------
    path : str or Path
        FITS file with a HEALPix binary table (implicit or explicit/partial indexing, RING or
        NESTED ordering; NESTED is converted to RING). Masks and UNSEEN-holding maps are fine.
    field : int
        Column to read (0 = first, e.g. temperature I).
    mask : str, Path or array_like (npix,), optional
        Mask of the same nside (a file is read with :func:`read_healpix`); pixels where it is 0,
        UNSEEN or non-finite become ``healpy.UNSEEN`` in the returned map.

    Returns
    -------
    numpy.ndarray (12·nside²,) float64 in the file's units; UNSEEN where unobserved.

    Raises
    ------
    ConfigError
        Missing file, a file that is not a HEALPix FITS map, ``field`` out of range, or a mask
        with another number of pixels (nside) than the map.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"HEALPix file {str(path)!r} does not exist")
    partial = False
    try:
        from astropy.io import fits

        with fits.open(path) as hdul:
            if len(hdul) < 2 or not isinstance(hdul[1], fits.BinTableHDU):
                raise ConfigError(
                    f"{str(path)!r} is not a HEALPix FITS map: no binary table in HDU 1"
                )
            header = hdul[1].header
            n_fields = int(header.get("TFIELDS", 0))
            partial = str(header.get("INDXSCHM", "IMPLICIT")).strip().upper() == "EXPLICIT"
    except ConfigError:
        raise
    except Exception as exc:  # astropy raises OSError / TypeError / ValueError on non-FITS files
        raise ConfigError(
            f"{str(path)!r} is not a HEALPix FITS map: {exc}".splitlines()[0]
        ) from None
    n_data = n_fields - (1 if partial else 0)
    if not (isinstance(field, (int, np.integer)) and 0 <= field < max(n_data, 0)):
        raise ConfigError(
            f"field={field!r} is out of range for {str(path)!r}: allowed 0 <= field <= {n_data - 1}"
        )
    try:
        m = hp.read_map(str(path), field=int(field), dtype=np.float64, partial=partial)
    except Exception as exc:  # healpy raises ValueError / TypeError / KeyError / IndexError
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{str(path)!r} is not a HEALPix FITS map: {msg}") from None
    m = np.asarray(m, dtype=np.float64).reshape(-1)
    if not hp.isnpixok(m.size):
        raise ConfigError(
            f"{str(path)!r} is not a HEALPix FITS map: {m.size} pixels is not 12*nside^2"
        )
    if mask is not None:
        mk = read_healpix(mask) if isinstance(mask, (str, Path)) else np.asarray(mask).reshape(-1)
        if mk.size != m.size:
            raise ConfigError(
                f"mask has {mk.size} pixels but the map {str(path)!r} has {m.size}: nside "
                f"{_nside_or_none(mk.size)} != {hp.npix2nside(m.size)}"
            )
        m = m.copy()
        m[~_observed(mk)] = hp.UNSEEN
    return m


def _nside_or_none(npix: int):
    return hp.npix2nside(npix) if hp.isnpixok(npix) else "invalid"


def measure_cl(map, mask=None, lmax=None, iter=3, remove_monopole=True) -> np.ndarray:  # noqa: A002
    """Angular power spectrum of a HEALPix map with ``healpy.anafast`` (pseudo-C_ℓ if masked).

    Parameters
    ----------
    map : array_like (npix,) float or numpy.ma.MaskedArray, RING order
        UNSEEN, masked-array-masked and non-finite pixels are treated as unobserved.
    mask : array_like (npix,), optional
        0 (or UNSEEN / non-finite) where unobserved; those pixels are set to UNSEEN.
    lmax : int, optional
        Highest multipole; default 3·nside − 1.
    iter : int
        Jacobi iterations of ``healpy.map2alm`` (3 as healpy's default and the WMAP reference).
    remove_monopole : bool
        Subtract the mean of the observed pixels first (``healpy.remove_monopole``).

    Returns
    -------
    numpy.ndarray (lmax+1,) float64: Ĉ_ℓ for ℓ = 0…lmax in map units² (sr for κ), not
    corrected for the mask (multiply by 1/f_sky for a rough full-sky estimate).

    Raises
    ------
    ConfigError
        Not a HEALPix map (12·nside² pixels), mask of another size, or a bad lmax / iter.
    """
    if isinstance(map, np.ma.MaskedArray):
        m = np.ma.filled(map.astype(np.float64), hp.UNSEEN)
    else:
        m = np.array(map, dtype=np.float64).reshape(-1)
    m = m.reshape(-1)
    if not hp.isnpixok(m.size):
        raise ConfigError(f"map has {m.size} pixels, which is not a HEALPix map (12*nside^2)")
    nside = hp.npix2nside(m.size)
    m[_unseen(m)] = hp.UNSEEN  # exact UNSEEN: float32 copies are off by 1e-8 relative
    if mask is not None:
        mk = np.asarray(mask).reshape(-1)
        if mk.size != m.size:
            raise ConfigError(f"mask has {mk.size} pixels but the map has {m.size} (nside {nside})")
        m[~_observed(mk)] = hp.UNSEEN
    if lmax is not None and not (isinstance(lmax, (int, np.integer)) and 0 <= lmax <= 4 * nside):
        raise ConfigError(
            f"lmax={lmax!r} is out of range: allowed 0 <= lmax <= 4*nside = {4 * nside}"
        )
    if not (isinstance(iter, (int, np.integer)) and 0 <= iter <= 20):
        raise ConfigError(f"iter={iter!r} is out of range: allowed 0 <= iter <= 20")
    if remove_monopole:
        m = hp.remove_monopole(m, copy=False)
    return np.asarray(hp.anafast(m, lmax=lmax, iter=int(iter)), dtype=np.float64)
