r"""Many lensed CMB skies as ``xarray`` Datasets and files (kind ``cmb``): the dataset and
file plumbing around :func:`engine.physics.cmb.simulate`.

:func:`generate` and :func:`generate_chunks` make ``settings.count`` skies (one process or a
pool of workers) and stack them into Datasets with their attrs; :func:`save` writes them to a
.nc file or a .zarr store atomically; :func:`settings_from_attrs` recovers the settings from a
Dataset's attrs. The physics (spectra, draws, lensing, beam, noise, masks) is in
:mod:`engine.physics.cmb`.

Output (:func:`generate`, :func:`generate_chunks`)
--------------------------------------------------
``xarray.Dataset`` with dims ``(sample, pixel)`` (pixel = 12·nside², RING) and variables, all
float32: ``Q``, ``U`` (observed: beamed lensed + noise, µK), ``Q_lensed``, ``U_lensed`` (beamed
lensed, noiseless, µK), ``Q_unlensed``, ``U_unlensed`` (beamed unlensed, noiseless, µK),
``phi`` (lensing potential, dimensionless, ℓ ≤ ℓ_max, not beamed), and ``mask`` (pixel,)
float32. Coord ``sample`` = i (the sky index, int64). Attrs: every setting, kind="cmb",
ordering="RING", frame, lmax (= 3·nside − 1), lmax_unlensed (resolved), cosmology (a JSON object:
model, omega_m, sigma8, omega_b, h, n_s, tau, A_s, r, n_t), A_s, tau,
pixel_size and noise_pixel, engine_version; each variable has ``units`` and ``long_name``.
:func:`engine.physics.cmb.theory` gives the expected spectra of every variable.

Worker processes: with ``workers`` > 1, skies are made one per task in a
``concurrent.futures.ProcessPoolExecutor`` (forkserver start: workers never inherit the
OpenMP state of CAMB or torch in the parent), each using ``threads // workers`` ducc0 threads;
the skies are identical for any number of workers.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import xarray as xr

from engine.params import ConfigError, set_values, user_settings
from engine.physics.cmb import (
    ARCMIN,
    EPSILON,
    VARIABLES,
    CMBParams,
    _cosmology,
    _input_spectra,
    _simulate,
    _spectra,
    _task_args,
    _threads,
    _workers,
    check_settings,
    map_lmax,
    noise_sigma,
    sky_mask,
    unlensed_lmax,
)
from engine.physics.pool import ordered_map

__all__ = ["generate", "generate_chunks", "save", "settings_from_attrs"]


def _attrs(settings: CMBParams) -> dict:
    import engine

    s = _spectra(settings)
    cosmo = _cosmology(settings)
    nside = int(settings.nside)
    attrs = {k: v for k, v in settings.param.values().items() if k in user_settings(CMBParams)}
    attrs.pop("count")
    attrs.pop("workers")
    attrs.update(
        kind="cmb",
        ordering="RING",
        frame="equatorial (lon = RA, lat = Dec, J2000)",
        lmax=map_lmax(settings),
        lmax_unlensed=unlensed_lmax(settings),
        tau=float(s.params["tau"]),
        A_s=float(s.params["A_s"]),
        cosmology=json.dumps(
            {
                "model": "flat LCDM, no massive neutrinos (CAMB)",
                **cosmo,
                "tau": float(s.params["tau"]),
                "A_s": float(s.params["A_s"]),
                "r": float(settings.r),
                "n_t": -float(settings.r) / 8.0,
            }
        ),
        pixel_size=math.sqrt(4.0 * math.pi / (12 * nside**2)) / ARCMIN,
        noise_pixel=noise_sigma(settings.noise, nside),
        units="uK (Q, U); phi dimensionless",
        beam_units="arcmin (FWHM)",
        noise_units="uK-arcmin",
        pixel_window="none",
        lensing="lenspyx (Reinecke, Belkner & Carron 2023), gradient deflection, epsilon "
        f"{EPSILON:g}",
        engine_version=getattr(engine, "__version__", ""),
    )
    return attrs


def _dataset(maps: dict, start: int, settings: CMBParams, mask: np.ndarray, attrs) -> xr.Dataset:
    n = len(next(iter(maps.values())))
    data = {
        name: (("sample", "pixel"), np.asarray(maps[name], dtype=np.float32),
               {"units": unit, "long_name": long})
        for name, (unit, long) in VARIABLES.items()
    }  # fmt: skip
    data["mask"] = (
        ("pixel",),
        mask,
        {"units": "1", "long_name": f"observed pixels (1) of mask={settings.mask!r}"},
    )
    return xr.Dataset(
        data,
        coords={"sample": ("sample", np.arange(start, start + n, dtype=np.int64))},
        attrs=attrs,
    )


def generate_chunks(
    settings: CMBParams, chunk: int | None = None, progress: bool | None = None
) -> Iterator[xr.Dataset]:
    """The ``settings.count`` skies as consecutive Datasets of ``chunk`` skies (default all),
    generated lazily (one chunk in memory) by one pool of ``workers`` processes; concatenated
    along ``sample`` they equal :func:`generate`. Every chunk holds ``mask`` and the attrs.

    Parameters
    ----------
    settings : CMBParams
    chunk : int, optional
        Skies per Dataset (>= 1).
    progress : bool, optional
        tqdm bar over the skies; default when stderr is a terminal.

    Raises
    ------
    ConfigError
        Bad settings (:func:`check_settings`), before any work; CAMB runs here too.
    """
    check_settings(settings)
    count = int(settings.count)
    chunk = count if chunk is None else max(1, int(chunk))
    if progress is None:
        progress = sys.stderr.isatty()
    spectra = _input_spectra(settings)
    mask = sky_mask(settings)
    attrs = _attrs(settings)
    return _chunks(settings, spectra, mask, attrs, count, chunk, progress)


def _context():
    """forkserver (where available) with this module preloaded: workers start without the
    parent's OpenMP state (CAMB, torch) and without importing lenspyx again."""
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" not in methods:
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["engine.physics.cmb", "lenspyx", "ducc0"])
    return ctx


def _skies(settings: CMBParams, spectra: dict, count: int) -> Iterator[dict]:
    """Skies 0 … count − 1 in order, in this process or a pool of workers
    (:func:`engine.physics.pool.ordered_map`)."""
    workers = min(_workers(settings), count)
    args = _task_args(settings)
    threads = _threads(workers)
    calls = ((*args, i, spectra, threads) for i in range(count))
    context = _context() if workers > 1 else None
    yield from ordered_map(_simulate, calls, workers, context)


def _chunks(settings, spectra, mask, attrs, count, chunk, progress):
    """Generator of :func:`generate_chunks` (settings checked, spectra computed)."""
    from tqdm.auto import tqdm

    held: list[dict] = []
    start = 0
    with tqdm(total=count, disable=not progress, desc="cmb", unit="sky") as bar:
        for maps in _skies(settings, spectra, count):
            held.append(maps)
            bar.update(1)
            if len(held) == chunk:
                stacked = {k: np.stack([m[k] for m in held]) for k in VARIABLES}
                yield _dataset(stacked, start, settings, mask, attrs)
                start += len(held)
                held = []
        if held:
            stacked = {k: np.stack([m[k] for m in held]) for k in VARIABLES}
            yield _dataset(stacked, start, settings, mask, attrs)


def generate(settings: CMBParams, progress: bool | None = None) -> xr.Dataset:
    """``settings.count`` skies from ``settings.seed`` as one Dataset (module docstring).

    Returns
    -------
    xarray.Dataset
        Q, U, Q_lensed, U_lensed, Q_unlensed, U_unlensed (µK), phi: ``(sample, pixel)``
        float32, RING; mask ``(pixel,)`` float32; coord sample (int64); attrs as in the
        module docstring.

    Raises
    ------
    ConfigError
        Bad settings (:func:`check_settings`).
    """
    parts = list(generate_chunks(settings, None, progress))
    return parts[0] if len(parts) == 1 else xr.concat(parts, dim="sample", data_vars="minimal")


def save(data, path, overwrite: bool = False) -> Path:
    """Write skies to ``path`` (.nc or .zarr) atomically (:func:`engine.outputs.staged`).

    Parameters
    ----------
    data : xarray.Dataset or iterable of xarray.Dataset
        The skies, or consecutive chunks of them (e.g. :func:`generate_chunks`: one chunk in
        memory at a time; .zarr only). In a .zarr store every variable is chunked one sky per
        zarr chunk along ``sample``; ``mask`` is written from the first chunk.
    path : str or Path
    overwrite : bool
        Whether an existing ``path`` may be replaced (only once the new output is complete).

    Raises
    ------
    ConfigError
        Other suffix, chunks for a .nc file, no skies, or an output refused by
        :func:`engine.outputs.check_output`.
    """
    from engine.outputs import check_output, staged

    path = Path(path)
    if path.suffix not in (".zarr", ".nc"):
        raise ConfigError(f"--out {str(path)!r} must end in .zarr or .nc")
    chunked = not isinstance(data, xr.Dataset)
    if chunked and path.suffix != ".zarr":
        raise ConfigError(f"--out {str(path)!r}: skies written in chunks need a .zarr store")
    check_output(path, overwrite=overwrite)
    with staged(path, overwrite=overwrite) as target:
        n = 0
        for n, ds in enumerate([data] if not chunked else data, start=1):
            if path.suffix == ".nc":
                ds.to_netcdf(target)
            elif n == 1:
                encoding = {
                    v: {"chunks": (1, ds.sizes["pixel"])}
                    for v in ds.data_vars
                    if ds[v].dims == ("sample", "pixel")
                }
                ds.to_zarr(target, mode="w", consolidated=False, encoding=encoding)
            else:
                extra = [v for v in ds.data_vars if "sample" not in ds[v].dims]
                ds.drop_vars(extra).to_zarr(target, append_dim="sample", consolidated=False)
        if n == 0:
            raise ConfigError(f"--out {str(path)!r}: no skies to write")
    return path


def settings_from_attrs(attrs: dict) -> CMBParams:
    """The settings a Dataset of :func:`generate` was made with, from its attrs (numpy scalars
    become Python numbers; ``lmax_unlensed`` is the resolved value, which makes the same skies).

    Raises
    ------
    ConfigError
        A value out of range.
    """
    names = set(user_settings(CMBParams))
    values = {
        k: (v.item() if getattr(v, "ndim", None) == 0 else v)
        for k, v in attrs.items()
        if k in names
    }
    return set_values(CMBParams(), values)
