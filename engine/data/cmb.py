r"""Lensed CMB skies for delensing: files of ``engine sky --kind cmb``, HEALPix FITS maps, and the
spin-2-correct rotation and fresh noise of the training augmentation.

Sky files (:class:`CMBSkies`)
-----------------------------
A ``.zarr`` or ``.nc`` file written by ``python -m engine sky --kind cmb`` (:mod:`engine.physics.
cmb`): an ``xarray.Dataset`` with dims ``(sample, pixel)`` in HEALPix RING ordering and float32
variables ``Q``, ``U`` (observed: lensed, beamed, with white noise), ``Q_lensed``/``U_lensed``
(the same without noise), ``Q_unlensed``/``U_unlensed`` (unlensed, same beam, no noise), ``phi``
(lensing potential, dimensionless) and ``mask`` (pixel,) 1/0, all Q/U in µK; its attrs hold every
setting (``nside``, ``noise`` in µK-arcmin, ``beam`` FWHM in arcmin, ``r``, …). A spec is the path
with optional ``?split=train|val|test|all`` and ``count=N`` (the first N skies of the split). Skies
are independent realisations, so the splits are by sky (:func:`engine.data._common.split_groups`:
a fixed permutation, 80/10/10 %). Skies are read one at a time (a 64-sky nside-512 file is
~5 GB).

HEALPix FITS maps (:func:`read_fits_qu`)
----------------------------------------
Standard files as ``healpy.write_map`` writes them: columns I, Q, U (or Q, U), µK, the ordering
(RING or NESTED) from the header's ``ORDERING`` (healpy converts to RING on reading).

Rotation on the sphere (:func:`rotate_qu`)
------------------------------------------
Q/U are spin-2 fields: their pixel values cannot be moved to other pixels (the polarisation
basis turns with the position). A sky is rotated on its harmonic coefficients instead: E and B
coefficients from ``healpy.map2alm_spin`` (spin 2, ℓ ≤ 3·nside − 1, with one Jacobi iteration
like ``healpy.map2alm(iter=1)``: without it, the HEALPix quadrature leaks ~5 % of E into B near
ℓ_max; with it, E→B leakage is 2 × 10⁻⁷ of E at nside 512), rotated by
Euler angles (ψ, θ, φ) with ``ducc0.sht.rotate_alm`` (Reinecke & Seljebotn 2013, A&A 554, A112; the
same operation as ``healpy.Rotator.rotate_alm``, ~100× faster at ℓ_max 1535), and transformed back
with ``healpy.alm2map_spin``. The rotated sky is band-limited to ℓ ≤ 3·nside − 1 (the beam has
already suppressed most power above it: 36 % at ℓ = 1535 for a 5′ beam). Input and target get the
same operation, then fresh white noise is added to the rotated lensed sky (:func:`white_noise`),
so the pairs stay consistent and every epoch sees new noise.
"""

from __future__ import annotations

import math
from pathlib import Path

import healpy as hp
import numpy as np

from engine.data._common import as_count, as_split, reject_unknown, split_groups
from engine.params import ConfigError
from engine.physics.cmb import noise_sigma  # noqa: F401 - re-exported (the one definition)

#: Variables of a sky file (Q/U in µK, phi dimensionless, mask 1/0).
SKY_VARIABLES = ("Q", "U", "Q_lensed", "U_lensed", "Q_unlensed", "U_unlensed", "phi", "mask")
#: Variables the delensing task needs.
REQUIRED = ("Q", "U", "Q_lensed", "U_lensed", "Q_unlensed", "U_unlensed")
#: arcmin in radians.
ARCMIN = math.pi / (180.0 * 60.0)


def _split_spec(spec: str) -> tuple[str, dict[str, str]]:
    path, _, query = str(spec).partition("?")
    options = {}
    for part in filter(None, query.split("&")):
        key, _, value = part.partition("=")
        options[key.strip()] = value.strip()
    return path, options


class CMBSkies:
    """The skies of a CMB sky file, read one at a time (module docstring).

    Parameters
    ----------
    spec : str or Path
        ``PATH[.zarr|.nc][?split=train|val|test|all][&count=N]``.

    Attributes
    ----------
    path : Path
    attrs : dict
        The file's settings (``nside``, ``noise`` µK-arcmin, ``beam`` arcmin FWHM, ``r``, …).
    nside : int
    split : str
    indices : numpy.ndarray (n,) int64
        File rows of the split (first ``count`` of them when given).

    Raises
    ------
    ConfigError
        Missing or unreadable file, not a CMB sky file (variables missing), bad options, or an
        empty split.
    """

    def __init__(self, spec):
        import xarray as xr

        path, options = _split_spec(spec)
        where = f"dataset {str(spec)!r}"
        reject_unknown(where, {k: v for k, v in options.items() if k not in ("split", "count")},
                       ("split", "count"))  # fmt: skip
        self.path = Path(path)
        if not self.path.exists():
            raise ConfigError(f"{where}: no such file or directory")
        try:
            if self.path.suffix == ".zarr" or self.path.is_dir():
                ds = xr.open_zarr(self.path, chunks=None, consolidated=False)
            else:
                ds = xr.open_dataset(self.path, chunks=None)
        except Exception as exc:  # noqa: BLE001 - any reader failure is the file's fault
            raise ConfigError(f"{where}: cannot be read as a sky file ({exc})") from None
        missing = [v for v in REQUIRED if v not in ds.variables]
        if missing:
            raise ConfigError(
                f"{where}: not a CMB sky file (no {', '.join(missing)}); write one with "
                "python -m engine sky --kind cmb"
            )
        self.ds = ds
        self.attrs = dict(ds.attrs)
        npix = int(ds.sizes["pixel"])
        self.nside = int(hp.npix2nside(npix))
        self.split = as_split(options.get("split", "all"), where)
        rows = split_groups(int(ds.sizes["sample"]), self.split)
        count = as_count(options.get("count"), where)
        if count is not None:
            rows = rows[:count]
        if rows.size == 0:
            raise ConfigError(
                f"{where}: split={self.split} holds no sky of the file's {ds.sizes['sample']} "
                "(write more skies, or use split=all)"
            )
        self.indices = rows
        self.spec = str(spec)

    def __len__(self) -> int:
        return int(self.indices.size)

    def rows(self, split: str) -> np.ndarray:
        """File rows of ``split`` (train, val, test, all) of the whole file, ascending."""
        return split_groups(int(self.ds.sizes["sample"]), as_split(split, self.spec))

    def sky(self, row: int, names=REQUIRED) -> dict[str, np.ndarray]:
        """Variables ``names`` of file row ``row``: ``{name: (npix,) float32}`` (RING)."""
        sel = self.ds.isel(sample=int(row))
        return {n: np.asarray(sel[n].values, dtype=np.float32) for n in names}

    def mask(self) -> np.ndarray:
        """The observed-pixel mask ``(npix,) float32`` (all ones when the file has none)."""
        if "mask" in self.ds.variables:
            m = np.asarray(self.ds["mask"].values, dtype=np.float32)
            return m if m.ndim == 1 else m[0]
        return np.ones(hp.nside2npix(self.nside), dtype=np.float32)

    @property
    def noise(self) -> float:
        """White noise of Q and U, µK-arcmin (attr ``noise``; 0 when absent)."""
        return float(self.attrs.get("noise", 0.0))


def white_noise(noise: float, nside: int, rng: np.random.Generator, n: int = 2) -> np.ndarray:
    """``(n, npix) float32`` white noise of ``noise`` µK-arcmin per map (:func:`noise_sigma`)."""
    sigma = noise_sigma(noise, nside)
    return (sigma * rng.standard_normal((n, hp.nside2npix(nside)))).astype(np.float32)


def random_euler(rng: np.random.Generator) -> tuple[float, float, float]:
    """Euler angles (ψ, θ, φ) of a uniformly random rotation (radians): ψ, φ uniform in
    [0, 2π), cos θ uniform in [−1, 1] (Haar measure of SO(3) in the zyz convention)."""
    psi, phi = rng.uniform(0.0, 2 * math.pi, size=2)
    theta = math.acos(rng.uniform(-1.0, 1.0))
    return float(psi), float(theta), float(phi)


def rotate_qu(
    q: np.ndarray, u: np.ndarray, euler: tuple[float, float, float], nthreads: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Rotate a polarisation sky on the sphere by Euler angles (module docstring).

    Parameters
    ----------
    q, u : numpy.ndarray
        ``(npix,)`` Stokes Q and U in RING ordering (any units; returned in the same).
    euler : (psi, theta, phi)
        Active zyz rotation, radians (:func:`random_euler`).
    nthreads : int
        Threads of the rotation (0: all).

    Returns
    -------
    (q, u) : ``(npix,) float32`` each, band-limited to ℓ ≤ 3·nside − 1.

    Raises
    ------
    ConfigError
        q and u of different or non-HEALPix sizes.
    """
    import ducc0

    q = np.asarray(q, dtype=np.float64)
    u = np.asarray(u, dtype=np.float64)
    if q.shape != u.shape or q.ndim != 1 or not hp.isnpixok(q.size):
        raise ConfigError(
            f"rotate_qu: Q and U must be HEALPix maps of one size; got {q.shape}, {u.shape}"
        )
    nside = hp.npix2nside(q.size)
    lmax = 3 * nside - 1
    alm = np.asarray(hp.map2alm_spin([q, u], 2, lmax=lmax))
    # one Jacobi iteration (as healpy's map2alm iter=1): the HEALPix quadrature alone leaks a few
    # 1e-4 of E into B (5 % near lmax); after one iteration, 2e-7 at nside 512
    back = hp.alm2map_spin(list(alm), nside, 2, lmax)
    alm += np.asarray(hp.map2alm_spin([q - back[0], u - back[1]], 2, lmax=lmax))
    psi, theta, phi = euler
    rot = ducc0.sht.rotate_alm(alm, lmax, psi, theta, phi, nthreads=nthreads)
    out = hp.alm2map_spin(list(rot), nside, 2, lmax)
    return np.asarray(out[0], dtype=np.float32), np.asarray(out[1], dtype=np.float32)


def read_fits_qu(path, nside: int | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Q and U of a HEALPix FITS map (module docstring), in RING ordering, float32 µK.

    Parameters
    ----------
    path : str or Path
        A FITS file with I, Q, U columns (fields 1, 2) or Q, U only (fields 0, 1).
    nside : int, optional
        The resolution required (e.g. a delenser's); another nside is refused in one line.

    Returns
    -------
    (q, u, header) : ``(npix,)`` float32 each, and the header as a dict.

    Raises
    ------
    ConfigError
        Missing or unreadable file, fewer than two map columns, or another nside.
    """
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"maps file {str(p)!r} does not exist")
    try:
        maps, header = hp.read_map(p, field=None, h=True, dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 - healpy/astropy errors name nothing useful
        raise ConfigError(f"maps file {str(p)!r} is not a HEALPix FITS map ({exc})") from None
    maps = np.atleast_2d(maps)
    if maps.shape[0] < 2:
        raise ConfigError(f"maps file {str(p)!r} holds {maps.shape[0]} map; Q and U are needed")
    q, u = (maps[1], maps[2]) if maps.shape[0] >= 3 else (maps[0], maps[1])
    got = hp.npix2nside(q.size)
    if nside is not None and got != nside:
        raise ConfigError(
            f"maps file {str(p)!r} has nside {got}; the delenser works at nside {nside} "
            f"(resample with healpy.ud_grade, or train at nside {got})"
        )
    q = np.where(q == hp.UNSEEN, 0.0, q).astype(np.float32)
    u = np.where(u == hp.UNSEEN, 0.0, u).astype(np.float32)
    return q, u, dict(header)


def write_fits_qu(path, q: np.ndarray, u: np.ndarray, extra: dict | None = None) -> None:
    """Write Q and U (µK, RING) as a HEALPix FITS map with columns I (zeros), Q, U, as
    ``healpy.write_map`` does (``COORDSYS`` galactic is not claimed; ``extra`` header cards added).

    Raises
    ------
    ConfigError
        q and u of different or non-HEALPix sizes.
    """
    q = np.asarray(q, dtype=np.float32)
    u = np.asarray(u, dtype=np.float32)
    if q.shape != u.shape or q.ndim != 1 or not hp.isnpixok(q.size):
        raise ConfigError(f"write_fits_qu: Q and U must be HEALPix maps of one size; got {q.shape}")
    cards = [(str(k)[:8].upper(), v) for k, v in (extra or {}).items()]
    hp.write_map(
        str(path),
        [np.zeros_like(q), q, u],
        column_names=["I_STOKES", "Q_STOKES", "U_STOKES"],
        column_units="uK",
        extra_header=cards,
        dtype=np.float32,
        overwrite=True,
    )
