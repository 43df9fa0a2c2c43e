r"""Quijote 3D density grids → 2D slab maps of the density contrast, read lazily.

Spec: ``quijote:/d/quijote/LH?thickness=100&axis=all&split=test``.

Accepted layout (the Quijote latin-hypercube layout; Villaescusa-Navarro et al. 2020, ApJS 250, 2)
-----------------------------------------------------------------------------------------------
::

    LH/
      latin_hypercube_params.txt     # Omega_m Omega_b h n_s sigma_8   (one row per simulation)
      0/df_m_256_CIC_z=0.npy         # one grid per simulation folder
      1/df_m_256_CIC_z=0.npy
      …

* Simulation folders are the subfolders with integer names; folder ``i`` has the parameters of
  row ``i`` of the table (rows beyond the last folder are ignored; a folder without a row is an
  error naming both).
* The table is ``latin_hypercube_params.txt`` in the folder (else in its parent), or
  ``params=PATH``: whitespace-separated numbers with an optional ``#`` header of names mapped by
  :func:`engine.data._common.label_name` (``Omega_m`` → ``omega_m``, ``sigma_8`` → ``sigma8``,
  ``Omega_b`` → ``omega_b``, ``h``, ``n_s``). Without a header the Quijote column order
  Omega_m, Omega_b, h, n_s, sigma_8 is assumed.
* Each folder holds the grid file named by ``grid=NAME`` (e.g. ``df_m_256_CIC_z=0.npy``, as the
  Quijote density-field files are named), or else its only ``.npy`` file: an (n, n, n) float
  array (any n ≥ 8) over a periodic box of side ``box`` (default 1000 Mpc/h), cell i centred at
  (i + ½) box/n.
* ``values=auto`` (default) reads a grid holding any negative value as the density contrast δ
  and a non-negative one as a density ρ (any units, e.g. the mass per cell of a CIC
  assignment), converted with 1 + δ = ρ / ⟨ρ⟩ (⟨ρ⟩ the mean of the whole grid); ``values=delta``
  or ``values=density`` force one reading. A δ grid with values below −1 is refused.

Projection
----------
Slabs are non-overlapping intervals [s Δ, (s+1) Δ), s = 0 … ⌊L/Δ⌋ − 1, along each chosen array
axis (``axis=0|1|2`` or ``all``), projected as the **mean of 1 + δ over the slab, minus 1** with
the cell-overlap weights of :func:`engine.physics.slabs.slab_weights` (the weighting of
:func:`engine.physics.lpt.project_slab`, extended to slabs starting at s Δ: the overlap of cell j with
[a, b) is b·w_j(b) − a·w_j(a), w_j(t) the weights of [0, t)). A map keeps the two other axes in
array order (axis 0 → (1, 2), axis 1 → (0, 2), axis 2 → (0, 1)). When Δ divides L the slabs of an
axis tile the box and the mean of their maps is the grid's mean δ (0).

Output: ``xarray.DataArray "delta"`` (sample, y, x) float32 dimensionless, samples ordered by
simulation, axis, slab; coords x/y (Mpc/h), per-sample ``simulation``, ``axis``, ``slab``,
``slab_start`` (Mpc/h) and the table's labels (``omega_m``, ``sigma8``, ``omega_b``, ``h``,
``n_s``). attrs: ``kind="quijote"``, ``units``, ``box_size``, ``size``, ``thickness``, ``axis``,
``grid``, ``values``, ``params_file``, ``split``, ``redshift`` (from ``z=`` in the grid name).

Laziness: nothing but the file headers is read at open; maps are computed when values are taken,
one simulation at a time (its grid is read whole, for ⟨ρ⟩ and the NaN/inf check, which raises a
one-line ConfigError naming the grid file). Splits are by simulation (80/10/10 %, fixed seed).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import xarray as xr

import engine
from engine.data._common import (
    LazyMaps,
    as_count,
    as_float,
    as_split,
    label_coords,
    open_npy,
    read_table,
    reject_unknown,
    split_simulations,
    xy_coords,
)
from engine.params import ConfigError

#: Options of :func:`open`.
OPTIONS = ("thickness", "axis", "box", "grid", "params", "values", "split", "count")
#: Default box side, Mpc/h (Quijote).
BOX = 1000.0
#: Name of the parameter table.
PARAMS_NAME = "latin_hypercube_params.txt"
#: Column names assumed for a table without header (Quijote LH order).
DEFAULT_COLUMNS = ("omega_m", "omega_b", "h", "n_s", "sigma8")


def slab_cell_weights(n: int, start: float, thickness: float, box: float) -> np.ndarray:
    """Weights of the n cells in the mean over [start, start + Δ) (sum 1), float64 (n,).

    From :func:`engine.physics.slabs.slab_weights`: overlap(j, [0, t)) = t · w_j(t), so the overlap with
    [a, b) is b w_j(b) − a w_j(a), divided by Δ = b − a. Requires 0 ≤ a < b ≤ box (Mpc/h).
    """
    from engine.physics.mesh import slab_weights

    end = min(start + thickness, box)

    def overlap(t: float) -> np.ndarray:
        if t <= 0:
            return np.zeros(n)
        return t * slab_weights(n, t, box).numpy()

    w = (overlap(end) - overlap(start)) / (end - start)
    return np.clip(w, 0.0, None)


def project(delta: np.ndarray, axis: int, start: float, thickness: float, box: float):
    """Mean of 1 + δ through [start, start + Δ) along ``axis``, minus 1: (n, n) float64."""
    w = slab_cell_weights(delta.shape[axis], start, thickness, box)
    used = np.flatnonzero(w > 0)
    part = np.take(delta, used, axis=axis).astype(np.float64)
    return np.tensordot(np.moveaxis(part, axis, -1), w[used], axes=1)


def _simulations(root: Path, where: str) -> list[tuple[int, Path]]:
    """(number, folder) of the integer-named simulation subfolders of ``root``, sorted."""
    if not root.is_dir():
        raise ConfigError(f"{where} is not a folder")
    sims = sorted(
        (int(p.name), p) for p in root.iterdir() if p.is_dir() and re.fullmatch(r"\d+", p.name)
    )
    if not sims:
        raise ConfigError(f"{where} has no simulation subfolders 0/, 1/, …")
    return sims


def _grid_name(folder: Path, grid: str | None, where: str) -> str:
    """The grid file name: ``grid`` when given, else the folder's only .npy file."""
    if grid:
        return str(grid)
    npys = sorted(p.name for p in folder.glob("*.npy"))
    if len(npys) != 1:
        found = ", ".join(npys[:5]) or "none"
        raise ConfigError(
            f"{where}: folder {str(folder)!r} holds {len(npys)} .npy files ({found}); "
            "give grid=NAME"
        )
    return npys[0]


def _open_grid(path: Path) -> np.ndarray:
    """Memory-map one grid file and check it is an (n, n, n) float grid with n >= 8."""
    where = f"Quijote grid {str(path)!r}"
    arr = open_npy(path, where)
    if arr.ndim != 3 or len(set(arr.shape)) != 1 or arr.shape[0] < 8:
        raise ConfigError(
            f"{where} must be a float (n, n, n) grid, n >= 8: got {arr.dtype} {arr.shape}"
        )
    return arr


def to_delta(grid: np.ndarray, values: str, where: str) -> np.ndarray:
    """δ of a whole grid (float32) read as ``values`` (auto / delta / density; module docstring).

    Raises
    ------
    ConfigError
        NaN/inf, a density grid with negative values or mean ≤ 0, a δ grid below −1.
    """
    g = np.asarray(grid, dtype=np.float32)
    if not np.all(np.isfinite(g)):
        raise ConfigError(f"{where} holds NaN or inf values")
    lo = float(g.min())
    kind = values if values != "auto" else ("delta" if lo < 0 else "density")
    if kind == "density":
        mean = float(g.mean(dtype=np.float64))
        if lo < 0 or mean <= 0:
            raise ConfigError(f"{where}: values=density needs a non-negative grid with mean > 0")
        return (g / np.float32(mean) - 1.0).astype(np.float32)
    if lo < -1.0 - 1e-4:
        raise ConfigError(
            f"{where} has values < -1 ({lo:.3g}): not a density contrast (give values=density?)"
        )
    return g


class _Options(NamedTuple):
    """Checked scalar options of :func:`open`."""

    box_size: float
    thickness: float
    axes: tuple[int, ...]
    split: str
    n_keep: int | None


def _options(where: str, like, thickness, axis, box, values: str, split, count) -> _Options:
    """Check ``box``, ``thickness`` (default ``like``'s, else box/10), ``axis``, ``values``, …."""
    box_size = as_float(box, "box", where, low=0.0)
    if thickness is None and like and like.get("kind") in ("grf", "lognormal", "2lpt", "pm"):
        thickness = like.get("thickness")
    dz = box_size / 10 if thickness is None else as_float(thickness, "thickness", where, 0.0)
    if not dz > 0:  # box/10 of a box of 5e-324 Mpc/h
        raise ConfigError(f"{where}: thickness={dz:g} must be > 0 (box={box_size:g} Mpc/h)")
    if dz > box_size:
        raise ConfigError(f"{where}: thickness={dz:g} is larger than the box ({box_size:g} Mpc/h)")
    axes = {"0": (0,), "1": (1,), "2": (2,), "all": (0, 1, 2)}.get(str(axis).strip())
    if axes is None:
        raise ConfigError(f"{where}: axis={axis!r} is not allowed: one of 0, 1, 2, all")
    if values not in ("auto", "delta", "density"):
        raise ConfigError(f"{where}: values={values!r} is not allowed: one of auto, delta, density")
    return _Options(box_size, dz, axes, as_split(split, where), as_count(count, where))


def _read_params(
    root: Path, params: str | None, sims: list[tuple[int, Path]], where: str
) -> tuple[Path, list[str], np.ndarray]:
    """Path, column names and rows of the parameter table; one row per simulation folder."""
    if params:
        ppath = Path(params)
    else:
        cands = [root / PARAMS_NAME, root.parent / PARAMS_NAME]
        ppath = next((c for c in cands if c.is_file()), cands[0])
    columns, table = read_table(ppath, where)
    if columns[0] == "col0" and table.shape[1] == len(DEFAULT_COLUMNS):
        columns = list(DEFAULT_COLUMNS)
    if sims[-1][0] >= table.shape[0]:
        raise ConfigError(
            f"{where} has simulation folder {sims[-1][0]}/ but parameter file {str(ppath)!r} "
            f"has only {table.shape[0]} rows"
        )
    return ppath, columns, table


def _slab_rows(n_sims: int, n: int, opts: _Options, where: str) -> list[tuple[int, int, int]]:
    """(simulation position, axis, slab) of each map kept: split, then the first ``n_keep``.

    Raises
    ------
    ConfigError
        Slabs thinner than one of the ``n`` cells of the grid (below its resolution; a tiny
        thickness would make billions of maps), or an empty split.
    """
    cell = opts.box_size / n
    if opts.thickness < cell * (1 - 1e-9):
        raise ConfigError(
            f"{where}: thickness={opts.thickness:g} is thinner than one cell of the "
            f"{n}^3 grid ({cell:g} Mpc/h)"
        )
    keep = split_simulations(n_sims, opts.split, where)
    n_slabs = int(math.floor(opts.box_size / opts.thickness + 1e-9))
    rows = [(int(s), a, j) for s in keep for a in opts.axes for j in range(n_slabs)]
    return rows if opts.n_keep is None else rows[: opts.n_keep]


class _QuijoteReader:
    """Computes selected slab maps (R, n, n) float32, one simulation's δ grid cached at a time."""

    def __init__(self, sims, name, first, rows, values, opts):
        self.sims, self.name, self.first, self.rows = sims, name, first, rows
        self.values, self.opts = values, opts
        self.cache: dict[str, Any] = {}

    def volume(self, pos: int) -> np.ndarray:
        """δ grid of the simulation at position ``pos`` (read and checked on first use)."""
        if self.cache.get("pos") != pos:
            self.cache.clear()
            path = self.sims[pos][1] / self.name
            g = self.first if pos == 0 else _open_grid(path)
            if g.shape != self.first.shape:
                raise ConfigError(
                    f"Quijote grid {str(path)!r} has shape {g.shape}, the first {self.first.shape}"
                )
            delta = to_delta(g, self.values, f"Quijote grid {str(path)!r}")
            self.cache.update(pos=pos, delta=delta)
        return self.cache["delta"]

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        """Maps of the samples ``samples`` (int64), computed simulation by simulation."""
        n, dz = self.first.shape[0], self.opts.thickness
        out = np.empty((samples.size, n, n), dtype=np.float32)
        for i in np.argsort([self.rows[s][0] for s in samples], kind="stable"):
            pos, a, j = self.rows[samples[i]]
            out[i] = project(self.volume(pos), a, j * dz, dz, self.opts.box_size)
        return out


def _coords(
    rows: list[tuple[int, int, int]],
    table_rows: np.ndarray,
    n: int,
    opts: _Options,
    columns: list[str],
    table: np.ndarray,
) -> dict[str, Any]:
    """Coords: x/y (Mpc/h), simulation, axis, slab, slab_start (Mpc/h), one per table column."""
    dz = opts.thickness
    coords: dict[str, Any] = xy_coords((np.arange(n) + 0.5) * opts.box_size / n, "Mpc/h")
    coords["simulation"] = ("sample", table_rows)
    coords["axis"] = ("sample", np.array([a for _, a, _ in rows], dtype=np.int64))
    coords["slab"] = ("sample", np.array([j for _, _, j in rows], dtype=np.int64))
    coords["slab_start"] = ("sample", np.array([j * dz for _, _, j in rows]), {"units": "Mpc/h"})
    label_coords(coords, columns, table, table_rows)
    return coords


def open(  # noqa: A001 - the reader interface of engine.data
    target: str,
    like: Mapping[str, Any] | None = None,
    thickness: str | None = None,
    axis: str = "0",
    box: str | float = "1000",
    grid: str | None = None,
    params: str | None = None,
    values: str = "auto",
    split: str | None = None,
    count: str | int | None = None,
    **unknown: str,
) -> xr.DataArray:
    """Lazily project Quijote grids into slab maps of δ (module docstring for layout and output).

    Parameters
    ----------
    target : str
        Folder of simulation subfolders ``0/``, ``1/``, … and the parameter table.
    like : mapping, optional
        Default ``thickness`` from ``like["thickness"]`` (Mpc/h) when it is a slab kind's;
        maps stay at the grid's resolution (see :func:`engine.data.transfer.match_resolution`).
    thickness : str, optional
        Slab thickness Δ in Mpc/h, box/n ≤ Δ ≤ box (at least one cell); default ``like``'s
        thickness, else box/10.
    axis : {"0", "1", "2", "all"}
        Array axis (axes) along which slabs are cut.
    box : str
        Box side L in Mpc/h (default 1000, Quijote).
    grid : str, optional
        Grid file name inside each simulation folder; default the folder's only .npy file.
    params : str, optional
        Parameter table; default ``latin_hypercube_params.txt`` in the folder or its parent.
    values : {"auto", "delta", "density"}
        How to read the grid values (module docstring).
    split : {"train", "val", "test", "all"}, optional
        Simulations to keep (by simulation, fixed seed); default ``all``.
    count : str or int, optional
        Keep only the first ``count`` maps.

    Returns
    -------
    xarray.DataArray "delta" (sample, y, x) float32, dimensionless, lazily computed.

    Raises
    ------
    ConfigError
        Unknown option, bad value, missing folder / table / grid file, a grid that is not
        (n, n, n) float or differs in shape from the first, more folders than table rows, a
        thickness below one cell, an empty split; NaN/inf or bad values in a grid when it is
        read.
    """
    root = Path(target)
    where = f"Quijote folder {str(root)!r}"
    reject_unknown(where, unknown, OPTIONS)
    opts = _options(where, like, thickness, axis, box, values, split, count)
    sims = _simulations(root, where)
    name = _grid_name(sims[0][1], grid, where)
    first = _open_grid(sims[0][1] / name)
    n = first.shape[0]
    ppath, columns, table = _read_params(root, params, sims, where)
    rows = _slab_rows(len(sims), n, opts, where)
    table_rows = np.array([sims[s][0] for s, _, _ in rows], dtype=np.int64)
    reader = _QuijoteReader(sims, name, first, rows, values, opts)
    var = LazyMaps.variable(("sample", "y", "x"), (len(rows), n, n), reader)
    z = re.search(r"z=([0-9.]+?)(?:\.npy)?$", name)
    attrs = dict(
        kind="quijote",
        units="dimensionless",
        box_size=opts.box_size,
        size=int(n),
        thickness=float(opts.thickness),
        axis=str(axis),
        grid=name,
        values=values,
        params_file=str(ppath),
        split=opts.split,
        coordinate_units="Mpc/h",
        long_name="density contrast delta of slabs projected from Quijote grids",
        engine_version=engine.__version__,
    )
    if z:
        attrs["redshift"] = float(z.group(1))
    coords = _coords(rows, table_rows, n, opts, columns, table)
    return xr.DataArray(var, coords=coords, name="delta", attrs=attrs)
