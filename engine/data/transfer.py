r"""Domain transfer: put maps of other data on a network's pixel grid, and measure the domain gap.

:func:`match_resolution`
------------------------
A network is trained on N₀² pixels over a side E₀ (``like``: ``box_size`` in Mpc/h for slab
kinds grf/lognormal/2lpt, ``fov`` in degrees for ``kappa``), i.e. pixels of p₀ = E₀/N₀. Data
maps of N² pixels over a side E (attrs ``box_size`` or ``fov``) have pixels of p = E/N. They are

1. **resampled** to pixels of p₀ over the data's extent, M = ⌊E/p₀⌋ pixels per side starting at
   the map's corner, by a separable linear operator R (M × N) applied as R · map · Rᵀ:

   * p₀ > p (coarser network pixels, the usual case): **area averaging** — R[i, j] is the
     length of the overlap of new pixel i, [i p₀, (i+1) p₀), with old pixel j, [j p, (j+1) p),
     divided by p₀. Each new pixel is the exact mean of the data over its area (a pixel of a
     simulated or observed map is itself an area average), the total (mass) and so the mean are
     conserved, it never rings at the edges of non-periodic maps (κ patches, folders), and for an
     integer ratio p₀/p = r it is the r × r block average (e.g. CAMELS 256² over 25 Mpc/h for a
     network of 64² over 25 Mpc/h: 4 × 4 blocks). Its pixel window (sinc² per axis) suppresses
     power only near the new Nyquist frequency; Fourier truncation would instead alias nothing
     but ring on non-periodic maps and does not conserve the pixel values' local means.
   * p₀ < p (finer network pixels): **Fourier (band-limited) interpolation** — R[i, j] =
     (1/N) Σ_m c_m cos(2π m (x'_i − x_j)/E) over the data's frequencies |m| ≤ N/2 (c₀ = 1,
     c_m = 2, c_{N/2} = 1 for even N), the exact trigonometric interpolant of a periodic map at
     the new pixel centres x'_i = (i + ½) p₀ (x_j = (j + ½) p). It adds no power above the data's
     Nyquist frequency: the network sees smoother maps than it was trained on (the domain gap
     shows it).
   * p₀ = p (within 1e-9): no resampling.

2. **cut** into non-overlapping tiles of N₀ × N₀ (a physically bigger map gives ⌊M/N₀⌋² tiles of
   the trained side; leftover pixels at the far edges are dropped), each tile a new sample
   with the per-sample coords of its map, plus ``source_sample``, ``tile_y`` and ``tile_x``.

It refuses (one-line ConfigError) when the data has no pixel scale, is not square, has other
units (Mpc/h vs degrees) than the network, is physically smaller than the trained side, or has
pixels more than :data:`MAX_UPSAMPLING` times coarser than the network's: interpolation cannot
restore the small scales the network was trained to read, so its answer would mean nothing.

:func:`domain_gap`
------------------
P(k) (:func:`engine.physics.stats.power_spectrum`, same default bins of width k_f of the trained box, in
h/Mpc and (Mpc/h)² for slabs; ℓ and sr for κ, box = fov in radians as :mod:`engine.physics.lensing`) and
pixel PDFs (:func:`engine.physics.stats.pixel_pdf`, shared bins over the 0.1–99.9 percentiles of both
sets) of the training kind's generated maps (``engine.data.open_spec(kind, like=like)``) and of
the matched target maps: means and standard deviations of P(k) per bin, for plotting. The
target maps must be in the network's quantity (δ for slab kinds, e.g. ``camels:…?delta=true``;
κ for kappa): no conversion is made here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from engine.params import ConfigError

#: Largest ratio data pixel / network pixel that is interpolated (beyond it: refused).
MAX_UPSAMPLING = 2.0
#: Kinds whose maps are slabs with a side in Mpc/h; ``kappa`` has a field of view in degrees.
SLAB_KINDS = ("grf", "lognormal", "2lpt", "pm")
#: Samples resampled per step (bounds memory for lazily read data).
CHUNK = 64


def trained_grid(like: Mapping[str, Any] | None) -> tuple[str, float, int]:
    """``(unit, side, size)`` of a network's maps: ("Mpc/h", box_size, N) or ("deg", fov, N).

    Settings missing from ``like`` take the kind's defaults (:mod:`engine.kinds`); a network
    trained on a dataset of other maps (camels, quijote, folder, ...) has that data's grid, from
    the ``size`` and ``box_size`` or ``fov`` its checkpoint recorded.

    Raises
    ------
    ConfigError
        ``like`` missing, or of a kind other than grf/lognormal/2lpt/kappa.
    """
    if like and like.get("kind") not in (*SLAB_KINDS, "kappa") and "size" in like:
        # a network trained on a dataset of other maps: its grid is that data's (attrs)
        if like.get("box_size") is not None:
            return "Mpc/h", float(like["box_size"]), int(like["size"])
        if like.get("fov") is not None:
            return "deg", float(like["fov"]), int(like["size"])
    if not like or like.get("kind") not in (*SLAB_KINDS, "kappa"):
        kind = None if not like else like.get("kind")
        raise ConfigError(
            f"domain transfer needs the network's map settings (like) of a kind grf, lognormal, "
            f"2lpt or kappa, or of a dataset with size and box_size or fov; got kind {kind!r}"
        )
    from engine.kinds import get_kind

    kind = get_kind(str(like["kind"]))
    defaults = kind.new_settings()
    size = int(like.get("size", defaults.size))
    if kind.length_unit == "arcmin":  # flat-sky maps: their side is the fov attr, in degrees
        return "deg", float(like.get("fov", defaults.fov)), size
    return "Mpc/h", float(like.get("box_size", defaults.box_size)), size


def data_grid(da: xr.DataArray) -> tuple[str, float, int]:
    """``(unit, side, size)`` of data maps from attrs ``box_size`` (Mpc/h) or ``fov`` (degrees).

    Raises
    ------
    ConfigError
        No pixel scale in the attrs, or maps that are not square.
    """
    src = da.attrs.get("source", da.attrs.get("kind", "the data"))
    if "y" not in da.dims or "x" not in da.dims or da.sizes["y"] != da.sizes["x"]:
        raise ConfigError(f"maps of {src!r} must be square with dims y, x; got {dict(da.sizes)}")
    n = int(da.sizes["x"])
    if da.attrs.get("box_size") is not None:
        return "Mpc/h", float(da.attrs["box_size"]), n
    if da.attrs.get("fov") is not None:
        return "deg", float(da.attrs["fov"]), n
    raise ConfigError(
        f"maps of {src!r} have no pixel scale (attrs box_size or fov), which domain transfer "
        "needs: for a folder dataset add ?box_size=MPC_H or ?fov=DEG to the spec"
    )


def resampling_matrix(n: int, side: float, pixel: float) -> tuple[np.ndarray, str]:
    """The operator R (M × n) of :func:`match_resolution` and its method name.

    Parameters
    ----------
    n : int
        Data pixels per side.
    side : float
        Data side E (any unit; ``pixel`` in the same unit).
    pixel : float
        Target pixel size p₀.

    Returns
    -------
    R : numpy.ndarray (M, n) float64, M = ⌊E/p₀⌋ (1e-6 tolerance)
    method : {"none", "area-average", "fourier"}
    """
    p = side / n
    m = int(math.floor(side / pixel + 1e-6))
    if abs(pixel / p - 1.0) < 1e-9:
        return np.eye(n)[:m], "none"
    if pixel > p:
        lo_new = np.arange(m)[:, None] * pixel
        lo_old = np.arange(n)[None, :] * p
        overlap = np.minimum(lo_new + pixel, lo_old + p) - np.maximum(lo_new, lo_old)
        return np.clip(overlap, 0.0, None) / pixel, "area-average"
    x_new = (np.arange(m) + 0.5) * pixel
    x_old = (np.arange(n) + 0.5) * p
    freqs = np.arange(n // 2 + 1)
    c = np.full(freqs.size, 2.0)
    c[0] = 1.0
    if n % 2 == 0:
        c[-1] = 1.0
    phase = 2 * np.pi * (x_new[:, None] - x_old[None, :]) / side
    r = np.zeros((m, n))
    for f, cf in zip(freqs, c, strict=True):
        r += cf * np.cos(f * phase)
    return r / n, "fourier"


def match_resolution(da: xr.DataArray, like: Mapping[str, Any]) -> xr.DataArray:
    """Resample maps to a network's pixel scale and cut them into tiles of its map size.

    Parameters
    ----------
    da : xarray.DataArray (sample, y, x) or (sample, channel, y, x)
        Maps with attrs ``box_size`` (Mpc/h) or ``fov`` (degrees); lazily read data are read
        :data:`CHUNK` samples at a time.
    like : mapping
        The network's map settings (``kind``, ``size``, ``box_size`` or ``fov``).

    Returns
    -------
    xarray.DataArray float32, same dims, N₀ × N₀ per sample (T² tiles per input map): coords
    x/y at the new pixel centres (Mpc/h, or arcmin for κ), per-sample coords repeated per tile
    plus ``source_sample``, ``tile_y``, ``tile_x``; attrs of ``da`` with ``box_size``/``fov``,
    ``size`` and ``pixel_size`` of the network's grid, and ``resampling`` (method),
    ``resampling_factor`` (p₀/p), ``tiles_per_side``, ``source_side``, ``source_size``.
    Coords on (y, x) other than x/y (e.g. a patch ``mask``) are dropped.

    Raises
    ------
    ConfigError
        No pixel scale, non-square maps, units that differ from the network's (Mpc/h vs
        degrees), maps physically smaller than the network's side, or pixels more than
        :data:`MAX_UPSAMPLING` times coarser than the network's.
    """
    unit0, side0, n0 = trained_grid(like)
    unit, side, n = data_grid(da)
    src = da.attrs.get("source", da.attrs.get("kind", "the data"))
    if unit != unit0:
        raise ConfigError(
            f"maps of {src!r} are in {unit} but the network was trained on maps in {unit0} "
            f"(kind {like['kind']!r}): no domain transfer between them"
        )
    if side < side0 * (1 - 1e-6):
        raise ConfigError(
            f"maps of {src!r} cover {side:g} {unit}, smaller than the network's {side0:g} {unit} "
            "maps: cannot cut a training-size map from them"
        )
    pixel0 = side0 / n0
    if side / n > MAX_UPSAMPLING * pixel0 * (1 + 1e-6):
        raise ConfigError(
            f"maps of {src!r} have {side / n:.4g} {unit} pixels, {side / n / pixel0:.3g}× coarser "
            f"than the network's {pixel0:.4g} {unit}: the small scales it was trained on are "
            f"missing (at most {MAX_UPSAMPLING:g}× finer resampling)"
        )
    r, method = resampling_matrix(n, side, pixel0)
    tiles = r.shape[0] // n0
    sample_dims = [d for d in da.dims if d not in ("y", "x")]
    if sample_dims[0] != "sample":
        raise ConfigError(f"maps of {src!r} must have 'sample' as first dimension: {da.dims}")
    n_in = da.sizes["sample"]
    out_chunks = []
    for start in range(0, n_in, CHUNK):
        block = np.asarray(da.isel(sample=slice(start, start + CHUNK)).values, dtype=np.float64)
        res = np.einsum("ij,...jk,lk->...il", r, block, r, optimize=True)
        res = res[..., : tiles * n0, : tiles * n0]
        lead = res.shape[:-2]
        res = res.reshape(*lead, tiles, n0, tiles, n0)
        res = np.moveaxis(res, (-4, -2), (1, 2))  # (S, ty, tx, [C,] n0, n0)
        out_chunks.append(res.reshape(-1, *res.shape[3:]).astype(np.float32))
    data = np.concatenate(out_chunks)
    per = tiles * tiles
    scale = pixel0 * (60.0 if unit == "deg" else 1.0)
    centres = (np.arange(n0) + 0.5) * scale
    cunit = "arcmin" if unit == "deg" else "Mpc/h"
    coords: dict[str, Any] = {
        "x": ("x", centres, {"units": cunit}),
        "y": ("y", centres, {"units": cunit}),
        "source_sample": ("sample", np.repeat(np.arange(n_in), per)),
        "tile_y": ("sample", np.tile(np.repeat(np.arange(tiles), tiles), n_in)),
        "tile_x": ("sample", np.tile(np.arange(tiles), tiles * n_in)),
    }
    for name, c in da.coords.items():
        if name in ("x", "y") or name in coords:
            continue
        if c.dims == ("sample",):
            coords[name] = ("sample", np.repeat(c.values, per), dict(c.attrs))
        elif "y" not in c.dims and "x" not in c.dims and "sample" not in c.dims:
            coords[name] = (c.dims, c.values, dict(c.attrs))
    attrs = dict(da.attrs)
    attrs.pop("box_size" if unit == "Mpc/h" else "fov", None)
    attrs.update(
        {"box_size" if unit == "Mpc/h" else "fov": side0},
        size=int(n0),
        pixel_size=float(scale),
        resampling=method,
        resampling_factor=float(pixel0 / (side / n)),
        tiles_per_side=int(tiles),
        source_side=float(side),
        source_size=int(n),
    )
    return xr.DataArray(data, dims=da.dims, coords=coords, name=da.name, attrs=attrs)


def domain_gap(
    target_da: xr.DataArray,
    like: Mapping[str, Any],
    count: int = 64,
    bins: int = 64,
    seed: int = 0,
    channel: int = 0,
) -> dict[str, Any]:
    """P(k) and pixel PDFs of the network's training maps and of target data, for plotting.

    Parameters
    ----------
    target_da : xarray.DataArray
        Target maps (any reader's output); matched with :func:`match_resolution` first.
    like : mapping
        The network's map settings (and prior box) — the training kind is ``like["kind"]``.
    count : int
        Generated maps, and at most that many target maps (evenly spaced through the tiles).
    bins : int
        Bins of the pixel PDFs.
    seed : int
        Seed of the generated maps.
    channel : int
        Channel of multi-channel target maps.

    Returns
    -------
    dict with
        ``k`` (K,) bin mean |k| (h/Mpc, or ℓ for κ); ``n_modes`` (K,);
        ``pk_train_mean``, ``pk_train_std``, ``pk_target_mean``, ``pk_target_std`` (K,) in
        (Mpc/h)² (slabs) or sr (κ): mean and standard deviation over maps per bin;
        ``pdf_x`` (bins,) shared bin centres, ``pdf_train``, ``pdf_target`` (bins,) densities;
        ``k_units``, ``pk_units``, ``units_train``, ``units_target``, ``kind``, ``target_kind``,
        ``n_train``, ``n_target``, ``size``, ``side`` (Mpc/h or degrees). Arrays are float64.

    Raises
    ------
    ConfigError
        As :func:`match_resolution`, or from generating the training kind's maps.
    """
    import torch

    from engine.data import open_spec
    from engine.physics.stats import default_edges, pixel_pdf, power_spectrum

    if "channel" in target_da.dims:
        target_da = target_da.isel(channel=channel)
    matched = match_resolution(target_da, like)
    unit, side, n0 = trained_grid(like)
    pick = np.unique(
        np.linspace(0, matched.sizes["sample"] - 1, min(count, matched.sizes["sample"]))
        .round()
        .astype(np.int64)
    )
    target = np.asarray(matched.isel(sample=pick).values, dtype=np.float64)
    gen = open_spec(str(like["kind"]), like=like, count=int(count), seed=int(seed))
    train = np.asarray(gen.values, dtype=np.float64)
    box = side if unit == "Mpc/h" else math.radians(side)
    edges = default_edges((n0, n0), box)
    p_train = power_spectrum(torch.from_numpy(train), box, edges)
    p_target = power_spectrum(torch.from_numpy(target), box, edges)
    both = np.concatenate([train.ravel(), target.ravel()])
    lo, hi = np.percentile(both, [0.1, 99.9])
    if not hi > lo:
        hi = lo + 1.0
    x, pdf_train = pixel_pdf(train, bins=bins, value_range=(float(lo), float(hi)))
    _, pdf_target = pixel_pdf(target, bins=bins, value_range=(float(lo), float(hi)))
    pt, pg = p_train.power.numpy(), p_target.power.numpy()
    return {
        "k": p_train.k.numpy(),
        "n_modes": p_train.n_modes.numpy(),
        "pk_train_mean": pt.mean(axis=0),
        "pk_train_std": pt.std(axis=0, ddof=1) if len(pt) > 1 else np.zeros(pt.shape[1]),
        "pk_target_mean": pg.mean(axis=0),
        "pk_target_std": pg.std(axis=0, ddof=1) if len(pg) > 1 else np.zeros(pg.shape[1]),
        "pdf_x": np.asarray(x, dtype=np.float64),
        "pdf_train": np.asarray(pdf_train, dtype=np.float64),
        "pdf_target": np.asarray(pdf_target, dtype=np.float64),
        "k_units": "h/Mpc" if unit == "Mpc/h" else "ell",
        "pk_units": "(Mpc/h)^2" if unit == "Mpc/h" else "sr",
        "units_train": str(gen.attrs.get("units", "")),
        "units_target": str(matched.attrs.get("units", "")),
        "kind": str(like["kind"]),
        "target_kind": str(matched.attrs.get("kind", "")),
        "n_train": int(train.shape[0]),
        "n_target": int(target.shape[0]),
        "size": int(n0),
        "side": float(side),
    }
