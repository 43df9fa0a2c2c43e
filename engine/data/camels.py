r"""CAMELS Multifield Dataset (CMD) 2D maps, read lazily from the native ``.npy`` files.

Spec: ``camels:/d/Maps_Mtot_IllustrisTNG_LH_z=0.00.npy?split=test&fields=Mtot,Mgas&log=true``.

Native format (Villaescusa-Navarro et al. 2022, ApJS 259, 61; camels-multifield-dataset docs)
-----------------------------------------------------------------------------------------------
* ``Maps_{field}_{suite}_{set}_z={z}.npy``: float array (N, H, W), N = 15 × (number of
  simulations); every map covers (25 Mpc/h)² (the CAMELS box), here H = W pixels (256 in CMD).
  Each simulation gives 15 maps (5 slices of 5 Mpc/h along each of the 3 axes), so map ``i``
  belongs to simulation (row) ``i // 15``.
* ``params_{set}_{suite}.txt`` next to it (or ``params=PATH``): one row per simulation,
  whitespace-separated, with a ``#`` header of column names, e.g. ``# Om sigma8 SN1 AGN1 SN2
  AGN2`` (:func:`engine.data._common.label_name` maps them: ``Om``/``Omega_m`` → ``omega_m``,
  ``sigma8``/``sigma_8`` → ``sigma8``, ``SN1`` → ``A_SN1``, ``AGN2`` → ``A_AGN2``, …). For the
  N-body suite ``Nbody_X`` the table ``params_{set}_X.txt`` is also tried.

Output
------
``xarray.DataArray`` named after the field, dims ``(sample, y, x)`` (one field) or ``(sample,
channel, y, x)`` (``fields=`` with several; coord ``channel`` = field names), float32, coords x/y
(pixel centres, Mpc/h), per-sample coords ``simulation`` (params row), ``map_index`` (index in the
file) and one coord per parameter column (``omega_m``, ``sigma8``, ``A_SN1``, …; dimensionless).
attrs: ``kind="camels"``, ``units``, ``box_size`` = 25 (Mpc/h), ``size``, ``thickness`` = 5
(Mpc/h), ``redshift``, ``suite``, ``set``, ``fields``, ``split``, ``maps_per_simulation``,
``files``, ``params_file``, ``log``, ``delta``.

Laziness and checks
-------------------
The files are opened with ``numpy.load(mmap_mode="r")`` (CMD files are 3.9 GB; nothing is read
at open except the file header and, for ``log=true``, the maps of the normalisation sample). The
DataArray is backed by a lazily indexed array: maps are read from disk only when values are
taken (``.values``, ``.load()``, ``isel(...).values`` reads just the selected maps), and every
block read is checked then: NaN or inf in a map raises a one-line ConfigError naming the file
and the map index (and, with ``log=true``, so does a value ≤ 0). Checked at open: file shape
(N, H, W) with a float dtype and H = W, N divisible by 15 and N/15 equal to the number of params
rows (otherwise a ConfigError naming both files), the same shape for every field, a readable
params file.

``log=true`` (standardised log10 maps)
--------------------------------------
x = (log10 m − μ_f) / s_f per field f. The constants are **computed from the data**, not taken
from a table: μ_f and s_f are the mean and standard deviation of log10 m over the pixels of
:data:`LOG_SAMPLE_MAPS` maps evenly spaced through the whole file (all simulations' parameter
range, independent of ``split`` and ``count``, so train and test maps get the same constants).
They are stored in attrs ``log_mean`` and ``log_std`` (one per channel). Fields with zero or
negative pixels (e.g. velocities) are refused.

``delta=true`` (density contrast)
---------------------------------
δ = m / ⟨m⟩ − 1 with ⟨m⟩ the mean of each map (per channel), for comparing mass maps (``Mtot``,
``Mcdm``, ``Mgas``) with the project's δ maps. It is the contrast with respect to the map's own
25 × 25 × 5 (Mpc/h)³ slice, so every map has mean exactly 0 (the slice-to-slice scatter of the
mean density is removed). Not combinable with ``log``.

Splits: by simulation (:func:`engine.data._common.split_groups`: 80 / 10 / 10 %, fixed seed);
``split=all`` (default) keeps every map.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import xarray as xr

import engine
from engine.data._common import (
    LazyMaps,
    as_bool,
    as_count,
    as_split,
    check_finite,
    label_coords,
    open_npy,
    read_table,
    reject_unknown,
    split_simulations,
    xy_coords,
)
from engine.params import ConfigError

#: Options of :func:`open`.
OPTIONS = ("fields", "params", "split", "count", "log", "delta")
#: Maps per simulation in CMD 2D files.
MAPS_PER_SIMULATION = 15
#: Side of every CMD map (the CAMELS box), Mpc/h.
BOX_SIZE = 25.0
#: Thickness of the slice each map projects (5 slices per axis of the 25 Mpc/h box), Mpc/h.
THICKNESS = 5.0
#: Maps (evenly spaced through the file) whose pixels set the ``log=true`` constants.
LOG_SAMPLE_MAPS = 30
#: File name pattern of CMD 2D maps.
NAME_RE = re.compile(
    r"^Maps_(?P<field>[A-Za-z0-9]+)_(?P<suite>.+)_(?P<set>[A-Za-z0-9]+)_z=(?P<z>[0-9.]+)\.npy$"
)
#: Units of CMD 2D fields (CMD documentation); fields not listed keep "as in the CMD files".
FIELD_UNITS = {
    "Mtot": "(Msun/h)/(Mpc/h)^2",
    "Mgas": "(Msun/h)/(Mpc/h)^2",
    "Mcdm": "(Msun/h)/(Mpc/h)^2",
    "Mstar": "(Msun/h)/(Mpc/h)^2",
    "HI": "(Msun/h)/(Mpc/h)^2",
    "T": "K",
    "Vgas": "km/s",
    "Vcdm": "km/s",
    "Z": "dimensionless",
    "MgFe": "dimensionless",
}


class _CamelsReader:
    """Reads selected CMD maps (R, [C,] H, W) float32 from memory-mapped files, checked per read."""

    def __init__(self, memmaps, paths, index, channel, log_consts, delta):
        self.memmaps, self.paths, self.index = memmaps, paths, index
        self.channel, self.log_consts, self.delta = channel, log_consts, delta

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        """Maps of the samples ``samples`` (int64), read in file order, transformed, checked."""
        rows = self.index[samples]
        order = np.argsort(rows, kind="stable")
        inverse = np.argsort(order, kind="stable")
        out = []
        for c, mm in enumerate(self.memmaps):
            block = np.asarray(mm[rows[order]], dtype=np.float32)[inverse]
            out.append(self._transform(block, c, rows))
        return np.stack(out, axis=1) if self.channel else out[0]

    def _transform(self, block: np.ndarray, c: int, rows: np.ndarray) -> np.ndarray:
        """Check a block of channel ``c`` for NaN/inf, then apply ``log`` or ``delta``."""
        where = f"CAMELS file {str(self.paths[c])!r}"
        bad = ~np.isfinite(block.reshape(block.shape[0], -1)).all(axis=1)
        if bad.any():
            raise ConfigError(f"{where}: map {int(rows[np.flatnonzero(bad)[0]])} holds NaN or inf")
        if self.log_consts is not None:
            low = (block.reshape(block.shape[0], -1) <= 0).any(axis=1)
            if low.any():
                raise ConfigError(
                    f"{where}: map {int(rows[np.flatnonzero(low)[0]])} has values <= 0 "
                    "(log=true needs positive maps)"
                )
            mu, sd = self.log_consts[c]
            return ((np.log10(block) - mu) / sd).astype(np.float32)
        if self.delta:
            mean = block.reshape(block.shape[0], -1).mean(axis=1, dtype=np.float64)
            if np.any(mean == 0):
                raise ConfigError(f"{where}: a map has mean 0 (delta=true needs mass maps)")
            shape = (-1,) + (1,) * (block.ndim - 1)
            return (block / mean.reshape(shape) - 1.0).astype(np.float32)
        return block


def _open_npy(path: Path, where: str) -> np.ndarray:
    """Memory-map one CMD maps file and check it is (N, H, H) float with H >= 8."""
    arr = open_npy(path, where)
    if arr.ndim != 3:
        raise ConfigError(f"{where} must hold float maps of shape (N, H, W), got {arr.shape}")
    if arr.shape[1] != arr.shape[2] or arr.shape[1] < 8 or arr.shape[0] < 1:
        raise ConfigError(f"{where} must hold square maps (N, H, H) with H >= 8, got {arr.shape}")
    return arr


def params_candidates(path: Path) -> list[Path]:
    """Parameter tables tried for a CMD maps file, in order (module docstring)."""
    m = NAME_RE.match(path.name)
    if not m:
        return []
    suite, set_ = m["suite"], m["set"]
    names = [f"params_{set_}_{suite}.txt"]
    if suite.startswith("Nbody_"):
        names.append(f"params_{set_}_{suite[len('Nbody_') :]}.txt")
    return [path.parent / n for n in names]


def _log_constants(arr: np.ndarray, where: str) -> tuple[float, float]:
    """(mean, std) of log10 m over :data:`LOG_SAMPLE_MAPS` maps evenly spaced through ``arr``."""
    idx = np.unique(np.linspace(0, arr.shape[0] - 1, min(LOG_SAMPLE_MAPS, arr.shape[0])).round())
    sample = np.asarray(arr[idx.astype(np.int64)], dtype=np.float64)
    check_finite(sample, where, 0, "a map of the log=true normalisation sample")
    if np.any(sample <= 0):
        raise ConfigError(f"{where} has values <= 0: log=true needs positive maps")
    lg = np.log10(sample)
    sd = float(lg.std())
    return float(lg.mean()), (sd if sd > 0 else 1.0)


class _Options(NamedTuple):
    """Checked scalar options of :func:`open`."""

    split: str
    n_keep: int | None
    log: bool
    delta: bool


def _options(where: str, unknown: Mapping[str, str], split, count, log, delta) -> _Options:
    """Check the unknown names, ``split``, ``count``, ``log`` and ``delta`` options, in order."""
    reject_unknown(where, unknown, OPTIONS)
    opts = _Options(
        split=as_split(split, where),
        n_keep=as_count(count, where),
        log=as_bool(log, "log", where),
        delta=as_bool(delta, "delta", where),
    )
    if opts.log and opts.delta:
        raise ConfigError(f"{where}: log=true and delta=true cannot be combined")
    return opts


def _field_names(m: re.Match, fields: str | None, where: str) -> list[str]:
    """Fields to read: the distinct names of ``fields``, else the target's own field."""
    if fields is None or not str(fields).strip():
        return [m["field"]]
    names = [f.strip() for f in str(fields).split(",") if f.strip()]
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"{where}: fields={fields!r} must be distinct comma-separated names")
    return names


def _open_fields(
    path: Path, m: re.Match, names: list[str], where: str
) -> tuple[list[Path], list[np.ndarray]]:
    """Memory-map each field's file (the target's name, field substituted); one shape for all."""
    paths = [path.with_name(f"Maps_{f}_{m['suite']}_{m['set']}_z={m['z']}.npy") for f in names]
    arrays = []
    for f, p in zip(names, paths, strict=True):
        w = f"CAMELS file {str(p)!r}" + ("" if p == path else f" (field {f})")
        arrays.append(_open_npy(p, w))
    if len({a.shape for a in arrays}) != 1:
        shapes = ", ".join(f"{p.name} {a.shape}" for p, a in zip(paths, arrays, strict=True))
        raise ConfigError(f"{where}: fields have different shapes: {shapes}")
    return paths, arrays


def _params_path(path: Path, params: str | None, where: str) -> Path:
    """The parameter table: ``params`` when given, else the first existing candidate."""
    if params:
        return Path(params)
    cands = params_candidates(path)
    found = [c for c in cands if c.is_file()]
    if not found:
        tried = ", ".join(repr(str(c)) for c in cands)
        raise ConfigError(f"{where}: parameter file missing (tried {tried}); give params=PATH")
    return found[0]


def _map_index(n_maps: int, n_sims: int, ppath: Path, opts: _Options, where: str) -> np.ndarray:
    """File indices (R,) int64 of the maps kept: the split's simulations, first ``n_keep``."""
    if n_maps % MAPS_PER_SIMULATION or n_maps // MAPS_PER_SIMULATION != n_sims:
        raise ConfigError(
            f"{where} has {n_maps} maps but parameter file {str(ppath)!r} has {n_sims} rows: "
            f"expected {MAPS_PER_SIMULATION} maps per row ({MAPS_PER_SIMULATION * n_sims} maps)"
        )
    sims = split_simulations(n_sims, opts.split, where)
    index = (sims[:, None] * MAPS_PER_SIMULATION + np.arange(MAPS_PER_SIMULATION)).reshape(-1)
    return index if opts.n_keep is None else index[: opts.n_keep]


def _coords(
    index: np.ndarray, size: int, names: list[str], columns: list[str], table: np.ndarray
) -> dict[str, Any]:
    """Coords: x/y (Mpc/h), simulation, map_index, one per parameter column, channel."""
    sim_of = index // MAPS_PER_SIMULATION
    coords: dict[str, Any] = xy_coords((np.arange(size) + 0.5) * BOX_SIZE / size, "Mpc/h")
    coords["simulation"] = ("sample", sim_of.astype(np.int64))
    coords["map_index"] = ("sample", index.astype(np.int64))
    label_coords(coords, columns, table, sim_of)
    if len(names) > 1:
        coords["channel"] = ("channel", np.asarray(names))
    return coords


def _units(names: list[str], opts: _Options) -> str:
    """The ``units`` attr: dimensionless for log/delta maps, else the fields' CMD units."""
    if opts.log or opts.delta:
        return "dimensionless"
    us = {FIELD_UNITS.get(f, "as in the CMD files") for f in names}
    if len(us) == 1:
        return us.pop()
    return "per channel: " + ", ".join(
        f"{f} {FIELD_UNITS.get(f, 'as in the CMD files')}" for f in names
    )


def _attrs(
    m: re.Match,
    names: list[str],
    paths: list[Path],
    ppath: Path,
    size: int,
    opts: _Options,
    log_consts: list[tuple[float, float]] | None,
) -> dict[str, Any]:
    """The output's attrs (module docstring), with ``log_mean``/``log_std`` for log=true."""
    attrs = dict(
        kind="camels",
        units=_units(names, opts),
        box_size=BOX_SIZE,
        size=int(size),
        thickness=THICKNESS,
        redshift=float(m["z"]),
        suite=m["suite"],
        set=m["set"],
        fields=",".join(names),
        split=opts.split,
        maps_per_simulation=MAPS_PER_SIMULATION,
        files=[str(p) for p in paths],
        params_file=str(ppath),
        log=int(opts.log),
        delta=int(opts.delta),
        coordinate_units="Mpc/h",
        long_name=f"CAMELS Multifield Dataset 2D maps ({', '.join(names)})",
        engine_version=engine.__version__,
    )
    if log_consts is not None:
        attrs["log_mean"] = [c[0] for c in log_consts]
        attrs["log_std"] = [c[1] for c in log_consts]
    return attrs


def open(  # noqa: A001 - the reader interface of engine.data
    target: str,
    like: Mapping[str, Any] | None = None,
    fields: str | None = None,
    params: str | None = None,
    split: str | None = None,
    count: str | int | None = None,
    log: str | bool = "false",
    delta: str | bool = "false",
    **unknown: str,
) -> xr.DataArray:
    """Lazily open CMD 2D maps with their parameters (module docstring for format and output).

    Parameters
    ----------
    target : str
        Path of a ``Maps_{field}_{suite}_{set}_z={z}.npy`` file (N, H, H) float.
    like : mapping, optional
        Not used (maps are returned at their native 25 Mpc/h, H² resolution; see
        :func:`engine.data.transfer.match_resolution`).
    fields : str, optional
        Comma-separated fields stacked as channels, e.g. ``"Mtot,Mgas,HI"``; each file is the
        target's name with the field substituted. Default: the target's field only.
    params : str, optional
        Path of the parameter table; default ``params_{set}_{suite}.txt`` next to the maps.
    split : {"train", "val", "test", "all"}, optional
        Simulations to keep (by simulation, fixed seed, 80/10/10 %); default ``all``.
    count : str or int, optional
        Keep only the first ``count`` maps of the split.
    log : "true" or "false"
        Standardised log10 maps (module docstring).
    delta : "true" or "false"
        Density contrast m/⟨m⟩ − 1 per map (module docstring).

    Returns
    -------
    xarray.DataArray (sample, y, x) or (sample, channel, y, x) float32, lazily read.

    Raises
    ------
    ConfigError
        Unknown option; a missing or unreadable maps file or params file; a file that is not
        (N, H, H) float; N not 15 × the params rows (naming both files); fields of different
        shapes; an empty split; NaN/inf (or, with ``log``, values ≤ 0) in maps when they are read.
    """
    path = Path(target)
    where = f"CAMELS file {str(path)!r}"
    opts = _options(where, unknown, split, count, log, delta)
    m = NAME_RE.match(path.name)
    if m is None:
        raise ConfigError(
            f"{where}: name must be Maps_{{field}}_{{suite}}_{{set}}_z={{z}}.npy as in CMD"
        )
    names = _field_names(m, fields, where)
    paths, arrays = _open_fields(path, m, names, where)
    n_maps, size = arrays[0].shape[0], arrays[0].shape[1]
    ppath = _params_path(path, params, where)
    columns, table = read_table(ppath, where)
    index = _map_index(n_maps, table.shape[0], ppath, opts, where)
    log_consts = (
        [_log_constants(a, f"CAMELS file {str(p)!r}") for a, p in zip(arrays, paths, strict=True)]
        if opts.log
        else None
    )
    channel = len(names) > 1
    reader = _CamelsReader(arrays, paths, index, channel, log_consts, opts.delta)
    dims = ("sample", "channel", "y", "x") if channel else ("sample", "y", "x")
    shape = (index.size, len(names), size, size) if channel else (index.size, size, size)
    return xr.DataArray(
        LazyMaps.variable(dims, shape, reader),
        coords=_coords(index, size, names, columns, table),
        name=names[0] if not channel else "maps",
        attrs=_attrs(m, names, paths, ppath, size, opts, log_consts),
    )
