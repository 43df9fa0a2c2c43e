r"""DES Y3-style HEALPix convergence (κ) mass maps → flat gnomonic patches like a network's maps.

Spec: ``des:/d/DES_Y3_kappa.fits?mask=/d/mask.fits&max_masked=0.1&omega_m=0.3&sigma8=0.8``.

Input
-----
A HEALPix FITS map (any nside, RING or NESTED, full or partial-sky indexing; column ``field``,
default 0) read with :func:`engine.physics.sky.read_healpix`. Unobserved pixels are ``UNSEEN`` (or
non-finite) in the map, and/or 0 in a separate HEALPix ``mask=PATH`` of the same nside (the DES
Y3 mass maps of Jeffrey et al. 2021, MNRAS 505, 4626 are distributed this way).

Patches
-------
Centres lie on a grid over the sphere: rows of constant latitude every ``spacing`` degrees
(default ``fov``, so patches barely overlap) from −90 + spacing/2, and along each row
⌊360 cos(lat) / spacing⌋ equally spaced longitudes. A centre is skipped early when a disc of
radius fov/√2 around it (``healpy.query_disc``) is so masked that the square patch inside must
exceed ``max_masked`` (masked area of the square ≥ masked area of the disc − (disc − square)
area, with 0.05 slack for pixelisation); the others are cut with :func:`engine.physics.sky.
extract_patches` (gnomonic projection, bilinear interpolation, ``size`` pixels over ``fov``
degrees) and kept when their masked fraction — the fraction of flat pixels with an unobserved
interpolation neighbour — is ≤ ``max_masked`` (default 0.1). Masked pixels are set to 0.
``size`` and ``fov`` default to ``like``'s (the network's trained patch size and field of view)
when ``like`` is a κ kind, else to the defaults of :class:`engine.physics.lensing.KappaParams`.

Output
------
``xarray.DataArray "kappa"`` (sample, y, x) float32, dimensionless; coords x/y (arcmin, pixel
centres), per-sample ``lon``/``lat`` (degrees), ``masked_fraction``, ``mask`` (sample, y, x)
uint8 (1 observed), and ``omega_m``/``sigma8`` only when given as options (e.g. a fiducial
cosmology; the data has no labels of its own). attrs: ``kind="des"``, ``units``, ``fov``
(degrees), ``size``, ``pixel_size`` (arcmin), ``nside``, ``max_masked``, ``spacing``, ``file``,
``mask_file``, ``projection``, ``interpolation``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import xarray as xr

import engine
from engine.data._common import as_count, as_float, as_int, reject_unknown
from engine.params import ConfigError

#: Options of :func:`open`.
OPTIONS = (
    "mask",
    "size",
    "fov",
    "max_masked",
    "spacing",
    "field",
    "nside",
    "omega_m",
    "sigma8",
    "count",
    "interpolation",
)
#: Patches cut per call of :func:`engine.physics.sky.extract_patches` (bounds memory).
CHUNK = 64
#: Most patch centres tried over the sphere: ``spacing`` >= about 0.2 degrees.
MAX_CENTRES = 1_000_000
#: Area of the sphere in square degrees.
SPHERE_DEG2 = 4 * math.pi * (180 / math.pi) ** 2


def centre_grid(spacing: float) -> np.ndarray:
    """Patch centres (lon, lat) in degrees on iso-latitude rows ``spacing`` degrees apart, (P, 2)."""
    out = []
    lat = -90.0 + spacing / 2
    while lat < 90.0:
        n_lon = max(1, int(math.floor(360.0 * math.cos(math.radians(lat)) / spacing)))
        lon = (np.arange(n_lon) + 0.5) * 360.0 / n_lon
        out.append(np.stack([lon, np.full(n_lon, lat)], axis=1))
        lat += spacing
    return np.concatenate(out)


def _like_patch(like: Mapping[str, Any] | None) -> tuple[int, float]:
    """Default (size, fov in degrees): ``like``'s for a κ kind, else KappaParams' defaults."""
    from engine.physics.lensing import KappaParams

    size, fov = KappaParams.param["size"].default, KappaParams.param["fov"].default
    if like and like.get("kind") == "kappa":
        size, fov = like.get("size", size), like.get("fov", fov)
    return int(size), float(fov)


class _Options(NamedTuple):
    """Checked options of :func:`open`."""

    size: int
    fov: float
    max_masked: float
    spacing: float
    field: int
    n_keep: int | None
    interpolation: str
    labels: dict[str, float]


def _options(
    where: str, like, size, fov, max_masked, spacing, field, count, interpolation, omega_m, sigma8
) -> _Options:
    """Check the patch options (defaults from ``like``) and the ``omega_m``/``sigma8`` labels."""
    size0, fov0 = _like_patch(like)
    n_pix = size0 if size is None else as_int(size, "size", where, 8, 4096)
    fov_deg = fov0 if fov is None else as_float(fov, "fov", where, 0.0, 30.0)
    frac = as_float(max_masked, "max_masked", where, -1e-12, 1.0)
    step = fov_deg if spacing is None else as_float(spacing, "spacing", where, 0.0, 180.0)
    low = math.sqrt(SPHERE_DEG2 / MAX_CENTRES)
    if step < low:  # (a tiny step would make billions of centres)
        raise ConfigError(
            f"{where}: spacing={step:g} degrees is too small: at most {MAX_CENTRES:g} patch "
            f"centres, spacing >= {low:.2g} (default: the fov)"
        )
    col = as_int(field, "field", where, 0)
    n_keep = as_count(count, where)
    if interpolation not in ("bilinear", "nearest"):
        raise ConfigError(f"{where}: interpolation={interpolation!r}: one of bilinear, nearest")
    labels = {}
    for name, value in (("omega_m", omega_m), ("sigma8", sigma8)):
        if value is not None:
            labels[name] = as_float(value, name, where, 0.0)
    return _Options(n_pix, fov_deg, frac, step, col, n_keep, interpolation, labels)


def _read_map(path: Path, col: int, mask: str | None, nside: str | None, where: str):
    """The HEALPix map (Npix,), its nside and its unobserved pixels (Npix,) bool, checked."""
    import healpy as hp

    from engine.physics.sky import read_healpix

    try:
        m = read_healpix(path, field=col, mask=mask)
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(msg if str(path) in msg else f"{where}: {msg}") from None
    map_nside = hp.npix2nside(m.size)
    if nside is not None:
        want = as_int(nside, "nside", where, 1)
        if want != map_nside:
            raise ConfigError(f"{where} has nside {map_nside}, expected nside={want}")
    unseen = ~np.isfinite(m) | np.isclose(m, hp.UNSEEN, rtol=1e-5, atol=0.0)
    if unseen.all():
        raise ConfigError(f"{where} has no observed pixels")
    return m, map_nside, unseen


def _candidate_centres(
    centres: np.ndarray, map_nside: int, unseen: np.ndarray, opts: _Options
) -> list[tuple[float, float]]:
    """The centres (lon, lat) whose disc is not too masked for a patch (module docstring)."""
    import healpy as hp

    radius = math.radians(opts.fov) / math.sqrt(2.0)
    ratio = math.pi / 2.0  # disc of radius fov/sqrt(2) over the square of side fov
    keep = []
    for lon, lat in centres:
        disc = hp.query_disc(map_nside, hp.ang2vec(lon, lat, lonlat=True), radius)
        if disc.size == 0:  # disc smaller than a pixel: test the centre pixel
            disc = np.array([hp.ang2pix(map_nside, lon, lat, lonlat=True)])
        masked_disc = float(unseen[disc].mean())
        if masked_disc >= 1.0 or masked_disc * ratio - (ratio - 1.0) > opts.max_masked + 0.05:
            continue
        keep.append((lon, lat))
    return keep


def _cut_patches(m: np.ndarray, keep: list, opts: _Options) -> list[xr.DataArray]:
    """Patches at ``keep`` with masked fraction ≤ max_masked, CHUNK at a time, to ``n_keep``."""
    from engine.physics.sky import extract_patches

    patches = []
    for start in range(0, len(keep), CHUNK):
        p = extract_patches(
            m,
            keep[start : start + CHUNK],
            fov=opts.fov,
            size=opts.size,
            interpolation=opts.interpolation,
        )
        mf = 1.0 - p["mask"].mean(dim=("y", "x")).values.astype(np.float64)
        good = np.flatnonzero(mf <= opts.max_masked + 1e-12)
        if good.size:
            p = p.isel(sample=good).assign_coords(masked_fraction=("sample", mf[good]))
            patches.append(p)
        if opts.n_keep is not None and sum(q.sizes["sample"] for q in patches) >= opts.n_keep:
            break
    return patches


def open(  # noqa: A001 - the reader interface of engine.data
    target: str,
    like: Mapping[str, Any] | None = None,
    mask: str | None = None,
    size: str | None = None,
    fov: str | None = None,
    max_masked: str = "0.1",
    spacing: str | None = None,
    field: str = "0",
    nside: str | None = None,
    omega_m: str | None = None,
    sigma8: str | None = None,
    count: str | None = None,
    interpolation: str = "bilinear",
    **unknown: str,
) -> xr.DataArray:
    """Flat κ patches cut from a HEALPix mass map (module docstring for the method and output).

    Parameters
    ----------
    target : str
        HEALPix FITS file of κ (dimensionless).
    like : mapping, optional
        The network's map settings: ``size`` and ``fov`` (degrees) of a ``kappa`` kind.
    mask : str, optional
        HEALPix FITS mask of the same nside (0, UNSEEN or non-finite: unobserved).
    size : str, optional
        Pixels per patch side (8 … 4096); default ``like``'s.
    fov : str, optional
        Patch side in degrees (0 < fov ≤ 30); default ``like``'s.
    max_masked : str
        Largest masked fraction of a kept patch, 0 … 1 (default 0.1).
    spacing : str, optional
        Degrees between centres along a row and between rows; default ``fov``; at least about
        0.2 (:data:`MAX_CENTRES`).
    field : str
        FITS column to read (default 0).
    nside : str, optional
        Expected nside: a map of another nside is refused.
    omega_m, sigma8 : str, optional
        Labels given to every patch (dimensionless), e.g. a fiducial cosmology.
    count : str, optional
        Keep at most the first ``count`` patches.
    interpolation : {"bilinear", "nearest"}

    Returns
    -------
    xarray.DataArray "kappa" (sample, y, x) float32.

    Raises
    ------
    ConfigError
        Unknown option or bad value; a missing or unreadable FITS file or mask; a mask or an
        expected ``nside`` that differs from the map's; a footprint with no patch
        whose masked fraction is ≤ ``max_masked``.
    """
    path = Path(target)
    where = f"DES map {str(path)!r}"
    reject_unknown(where, unknown, OPTIONS)
    opts = _options(
        where, like, size, fov, max_masked, spacing, field, count, interpolation, omega_m, sigma8
    )
    m, map_nside, unseen = _read_map(path, opts.field, mask, nside, where)
    centres = centre_grid(opts.spacing)
    patches = _cut_patches(m, _candidate_centres(centres, map_nside, unseen, opts), opts)
    if not patches:
        raise ConfigError(
            f"{where}: no {opts.fov:g} deg patch has a masked fraction <= {opts.max_masked:g} "
            f"({len(centres)} centres tried)"
        )
    da = xr.concat(patches, dim="sample")
    if opts.n_keep is not None:
        da = da.isel(sample=slice(0, opts.n_keep))
    da = da.drop_vars([c for c in ("omega_m", "sigma8") if c in da.coords])
    for name, value in opts.labels.items():
        da = da.assign_coords({name: ("sample", np.full(da.sizes["sample"], value))})
    da.attrs = dict(
        kind="des",
        units="dimensionless",
        fov=float(opts.fov),
        size=int(opts.size),
        pixel_size=opts.fov * 60.0 / opts.size,
        nside=int(map_nside),
        max_masked=float(opts.max_masked),
        spacing=float(opts.spacing),
        field=int(opts.field),
        file=str(path),
        mask_file="" if mask is None else str(mask),
        projection="gnomonic",
        interpolation=opts.interpolation,
        coordinate_units="arcmin",
        long_name="weak-lensing convergence kappa (gnomonic patches of a HEALPix mass map)",
        engine_version=engine.__version__,
    )
    da.name = "kappa"
    return da
