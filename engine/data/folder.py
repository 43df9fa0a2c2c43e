r"""A folder of 2D maps in ``.npy`` / ``.npz`` / ``.fits`` files with a labels CSV.

Spec: ``folder:/d/maps?box_size=25`` (slab maps, Mpc/h), ``folder:/d/maps?fov=5`` (κ, degrees)
or ``folder:/d/lenses?pixel_scale=0.1`` (images, arcsec per pixel).

Layout
------
::

    maps/
      labels.csv        file,omega_m,sigma8[,other labels…][,simulation]
      a.npy             (H, W) or (C, H, W) float array
      b.npz             first array (or the one named by key=NAME)
      c.fits            primary-HDU (or first image HDU) 2D/3D image

* ``labels.csv`` (or ``labels=PATH``): a header row with a ``file`` column (paths relative to the
  folder) and label columns, renamed by :func:`engine.data._common.label_name` (``Omega_m`` →
  ``omega_m``, ``sigma_8`` → ``sigma8``, …); one row per map, in the order of the samples. A
  column whose values are all numbers is numeric (float64); any other column is text, e.g. the
  class names of ``file,substructure`` (``none``, ``cdm``, ``vortex``: the labels of a classifier,
  :mod:`engine.tasks.classification`). An optional integer ``simulation`` column groups maps of
  one simulation for the splits (default: each file its own group).
* Without a labels file (and no ``labels=`` option) every map file of the folder is read in
  name order, unlabelled.
* All maps must share one shape: (H, H) gives dims (sample, y, x); (C, H, H) with C > 1 gives
  (sample, channel, y, x). A (1, H, H) array is read as the (H, H) map it holds.

DeepLense layouts (ML4SCI DeepLense strong-lens sets)
-----------------------------------------------------
``.npy`` files holding a plain (H, W) image, a (1, H, W) image, or an ``[image, label]`` pair
saved as a NumPy object array (or pickled). The pair layout can only be read with Python's
pickle, which runs code stored in the file: it is refused unless the spec says ``pickle=true``
(``folder:DIR?pickle=true``; for files you trust), and only files whose ``.npy`` header says
"object array" (or that are not ``.npy`` at all) are ever unpickled. The pair's image is read
(its label is not: the class comes from ``labels.csv``).

Pixel scale
-----------
``box_size=L`` (Mpc/h: slab maps) or ``fov=θ`` (degrees: κ patches) gives the side of every map
and so its pixel scale (attrs ``box_size`` or ``fov``; x/y coords in Mpc/h or arcmin);
``pixel_scale=s`` (arcsec per pixel: strong-lens images) gives attr ``pixel_scale`` and x/y coords
in arcsec centred on the image centre (as the ``strong_lens`` kind's). Without any of them the
maps carry pixel-index coords and no scale, and
:func:`engine.data.transfer.match_resolution` (domain transfer) refuses them, saying to give one.

Output: ``xarray.DataArray "maps"`` float32 (loaded: folder datasets are small), per-sample coord
``file`` and the label columns; attrs ``kind="folder"``, ``units`` (``units=`` option, default
"dimensionless"), ``size``, ``box_size``, ``fov`` or ``pixel_scale``, ``labels_file``, ``split``.
"""

from __future__ import annotations

import builtins
import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import xarray as xr

import engine
from engine.data._common import (
    as_bool,
    as_count,
    as_float,
    as_split,
    check_finite,
    first_line,
    label_name,
    reject_unknown,
    split_groups,
    xy_coords,
)
from engine.params import ConfigError

#: Options of :func:`open`.
OPTIONS = ("labels", "box_size", "fov", "pixel_scale", "split", "count", "key", "units", "pickle")
#: Map file suffixes read.
SUFFIXES = (".npy", ".npz", ".fits", ".fit", ".fits.gz")
#: Default labels file name.
LABELS_NAME = "labels.csv"


def _npy_is_object(path: Path) -> bool | None:
    """True when the ``.npy`` header of ``path`` says dtype object (an array only pickle can
    load), False for a plain array, None when the file has no ``.npy`` header (e.g. a pickle);
    reads the header only, never unpickles."""
    try:
        with builtins.open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            _shape, _fortran, dtype = read(f)
    except (ValueError, OSError):
        return None
    return bool(dtype.hasobject)


def _pair_image(path: Path, where: str) -> np.ndarray:
    """The image of a DeepLense ``[image, label]`` pair file (unpickled: callers allow it)."""
    try:
        obj = np.load(path, allow_pickle=True)
    except Exception as exc:  # numpy / pickle raise many kinds on bad files
        raise ConfigError(f"{where} is not readable: {first_line(exc)}") from None
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        items = list(obj.reshape(-1)) if obj.ndim else [obj.item()]
    elif isinstance(obj, (list, tuple)):
        items = list(obj)
    else:
        items = []
    if len(items) != 2:
        raise ConfigError(
            f"{where} holds a pickled object that is not an [image, label] pair "
            f"({type(obj).__name__}{getattr(obj, 'shape', '')})"
        )
    try:
        return np.asarray(items[0], dtype=np.float32)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: the first item of its pair is not a number image") from None


def read_map(path: Path, key: str | None = None, allow_pickle: bool = False) -> np.ndarray:
    """One map file → float32 array (H, W) or (C, H, W) (a (1, H, W) array as (H, W)).

    Parameters
    ----------
    path : Path
    key : str, optional
        Array name inside an ``.npz``.
    allow_pickle : bool
        Read DeepLense ``[image, label]`` pairs (``.npy`` object arrays or pickles; module
        docstring): unpickling runs code from the file, so only with the spec's ``pickle=true``.

    Raises
    ------
    ConfigError
        Missing or unreadable file, no such ``key`` in an .npz, a pickled pair without
        ``allow_pickle`` (the message says why and how), an image that is not 2D/3D float/int,
        or NaN/inf values (one line naming the file).
    """
    where = f"map file {str(path)!r}"
    if not path.is_file():
        raise ConfigError(f"{where} does not exist")
    name = path.name.lower()
    try:
        kind = _npy_is_object(path) if name.endswith(".npy") else False
        if kind is None and allow_pickle:  # not .npy: maybe a plain pickle of the pair
            arr = _pair_image(path, where)
        elif kind:
            if not allow_pickle:
                raise ConfigError(
                    f"{where} is a pickled object array (the [image, label] pair layout of "
                    "DeepLense): reading it runs Python's pickle, which can execute code; add "
                    "pickle=true to the spec (folder:DIR?pickle=true) for files you trust"
                )
            arr = _pair_image(path, where)
        elif name.endswith(".npy"):
            arr = np.load(path, allow_pickle=False)
        elif name.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                if not z.files:
                    raise ConfigError(f"{where} holds no arrays")
                if key is not None and key not in z.files:
                    raise ConfigError(f"{where} has no array {key!r}; it has {', '.join(z.files)}")
                arr = z[key or z.files[0]]
        else:
            from astropy.io import fits

            with fits.open(path) as hdul:
                data = next(
                    (
                        h.data
                        for h in hdul
                        if getattr(h, "data", None) is not None
                        and getattr(h.data, "ndim", 0) in (2, 3)
                    ),
                    None,
                )
                if data is None:
                    raise ConfigError(f"{where} has no 2D or 3D image HDU")
                arr = np.array(data)
    except ConfigError:
        raise
    except Exception as exc:  # numpy / astropy raise many kinds on bad files
        raise ConfigError(f"{where} is not readable: {first_line(exc)}") from None
    if arr.ndim not in (2, 3) or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise ConfigError(
            f"{where} must hold a (H, W) or (C, H, W) number array, got {arr.dtype} {arr.shape}"
        )
    arr = arr.astype(np.float32)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    check_finite(arr[None], where, 0)
    return arr


def read_labels(path: Path, folder: Path) -> tuple[list[Path], dict[str, np.ndarray]]:
    """Files and label columns of a labels CSV (module docstring).

    Returns
    -------
    files : list of Path (S,)
    labels : dict name → numpy.ndarray (S,)
        float64 for columns of numbers (``simulation`` as int64), str for text columns (class
        names).

    Raises
    ------
    ConfigError
        Missing or unreadable file, no ``file`` column, no rows, NaN/inf numbers, empty text
        values, or a non-integer ``simulation`` column.
    """
    where = f"labels file {str(path)!r}"
    if not path.is_file():
        raise ConfigError(f"{where} does not exist")
    try:
        with builtins.open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{where} is not a readable CSV: {first_line(exc)}") from None
    if "file" not in header:
        raise ConfigError(f"{where} has no 'file' column (columns: {', '.join(header)})")
    if not rows:
        raise ConfigError(f"{where} has no rows")
    files = [folder / r["file"] for r in rows]
    labels: dict[str, np.ndarray] = {}
    for col in header:
        if col == "file" or not col:
            continue
        name = label_name(col)
        try:
            vals = np.array([float(r[col]) for r in rows], dtype=np.float64)
        except ValueError:  # a text column: class names
            if name == "simulation":
                raise ConfigError(f"{where}: column {col!r} must hold integers") from None
            text = np.array([r[col] for r in rows], dtype=str)
            if (text == "").any():
                raise ConfigError(f"{where}: column {col!r} has empty values") from None
            labels[name] = text
            continue
        if not np.all(np.isfinite(vals)):
            raise ConfigError(f"{where}: column {col!r} holds NaN or inf")
        labels[name] = vals.astype(np.int64) if name == "simulation" else vals
    return files, labels


class _Options(NamedTuple):
    """Checked scalar options of :func:`open`."""

    box: float | None
    fov: float | None
    pixel_scale: float | None
    split: str
    n_keep: int | None
    pickle: bool


def _options(
    folder: Path, where: str, box_size, fov, split, count, pixel_scale=None, pickle=None
) -> _Options:
    """Check the folder exists and the ``box_size``/``fov``/``pixel_scale``, ``split``,
    ``count`` and ``pickle`` options."""
    if not folder.is_dir():
        raise ConfigError(f"{where} is not a folder")
    if sum(v is not None for v in (box_size, fov, pixel_scale)) > 1:
        raise ConfigError(
            f"{where}: give one of box_size (Mpc/h), fov (degrees) or pixel_scale (arcsec/pixel)"
        )
    return _Options(
        box=None if box_size is None else as_float(box_size, "box_size", where, 0.0),
        fov=None if fov is None else as_float(fov, "fov", where, 0.0, 180.0),
        pixel_scale=None
        if pixel_scale is None
        else as_float(pixel_scale, "pixel_scale", where, 0.0),
        split=as_split(split, where),
        n_keep=as_count(count, where),
        pickle=False if pickle is None else as_bool(pickle, "pickle", where),
    )


def _list_maps(
    folder: Path, labels: str | None, where: str
) -> tuple[Path, list[Path], dict[str, np.ndarray]]:
    """Labels file path, map files and label columns (none without a labels file)."""
    lpath = Path(labels) if labels else folder / LABELS_NAME
    if labels or lpath.is_file():
        files, label_cols = read_labels(lpath, folder)
        return lpath, files, label_cols
    files = sorted(p for p in folder.iterdir() if p.name.lower().endswith(SUFFIXES))
    if not files:
        raise ConfigError(f"{where} has no {LABELS_NAME} and no .npy/.npz/.fits maps")
    return lpath, files, {}


def _select(n_files: int, label_cols: dict[str, np.ndarray], opts: _Options, where: str):
    """Indices (R,) int64 of the files kept: whole groups of the split, then the first n_keep."""
    groups = label_cols.get("simulation", np.arange(n_files))
    uniq = np.unique(groups)
    chosen = set(uniq[split_groups(uniq.size, opts.split)].tolist())
    index = np.array([i for i, g in enumerate(groups) if g in chosen], dtype=np.int64)
    if opts.n_keep is not None:
        index = index[: opts.n_keep]
    if index.size == 0:
        raise ConfigError(f"{where} has no maps in split {opts.split!r}")
    return index


def _load_maps(
    files: list[Path], index: np.ndarray, key: str | None, allow_pickle: bool = False
) -> np.ndarray:
    """Read the selected maps, all of one square shape, stacked: (R, [C,] H, H) float32."""
    maps = []
    for i in index:
        arr = read_map(files[i], key, allow_pickle)
        if maps and arr.shape != maps[0].shape:
            raise ConfigError(
                f"map file {str(files[i])!r} has shape {arr.shape}, the first {maps[0].shape}"
            )
        if arr.shape[-1] != arr.shape[-2]:
            raise ConfigError(f"map file {str(files[i])!r} is not square: {arr.shape}")
        maps.append(arr)
    return np.stack(maps)


def _pixel_scale(n: int, opts: _Options) -> tuple[np.ndarray, str, dict[str, Any]]:
    """Pixel centres (n,), their units and the scale attrs, from ``box_size`` or ``fov``."""
    if opts.box is not None:
        centres, cunits = (np.arange(n) + 0.5) * opts.box / n, "Mpc/h"
        return centres, cunits, dict(box_size=opts.box, coordinate_units=cunits)
    if opts.fov is not None:
        centres, cunits = (np.arange(n) + 0.5) * opts.fov * 60.0 / n, "arcmin"
        pixel = opts.fov * 60.0 / n
        return centres, cunits, dict(fov=opts.fov, pixel_size=pixel, coordinate_units=cunits)
    if opts.pixel_scale is not None:
        centres, cunits = (np.arange(n) - (n - 1) / 2) * opts.pixel_scale, "arcsec"
        return centres, cunits, dict(pixel_scale=opts.pixel_scale, coordinate_units=cunits)
    centres, cunits = np.arange(n) + 0.5, "pixel"
    return centres, cunits, dict(coordinate_units=cunits)


def _file_names(files: list[Path], index: np.ndarray, folder: Path) -> np.ndarray:
    """The ``file`` coord: each kept file relative to the folder (else its full path)."""
    return np.array(
        [
            str(files[i].relative_to(folder)) if files[i].is_relative_to(folder) else str(files[i])
            for i in index
        ]
    )


def open(  # noqa: A001 - the reader interface of engine.data
    target: str,
    like: Mapping[str, Any] | None = None,
    labels: str | None = None,
    box_size: str | None = None,
    fov: str | None = None,
    split: str | None = None,
    count: str | None = None,
    key: str | None = None,
    units: str = "dimensionless",
    pixel_scale: str | None = None,
    pickle: str | None = None,
    **unknown: str,
) -> xr.DataArray:
    """Maps of a folder with a labels CSV (module docstring for layout and output).

    Parameters
    ----------
    target : str
        The folder.
    like : mapping, optional
        Not used (maps keep their resolution; see :func:`engine.data.transfer.match_resolution`).
    labels : str, optional
        Labels CSV; default ``labels.csv`` in the folder when present.
    box_size : str, optional
        Side of every map in Mpc/h (slab maps).
    fov : str, optional
        Side of every map in degrees (κ patches). Not together with ``box_size``.
    split : {"train", "val", "test", "all"}, optional
        By file (or by the ``simulation`` column), fixed seed, 80/10/10 %; default ``all``.
    count : str, optional
        Keep only the first ``count`` maps.
    key : str, optional
        Array name inside ``.npz`` files (default: the first).
    units : str
        Units of the map values, stored in attrs (default "dimensionless").
    pixel_scale : str, optional
        Arcsec per pixel of every image (strong-lens images). Only one of ``box_size``, ``fov``
        and ``pixel_scale``.
    pickle : str, optional
        ``true``: read DeepLense ``[image, label]`` pair files, which needs Python's pickle
        (runs code from the files: only for files you trust). Default false: such files are
        refused.

    Returns
    -------
    xarray.DataArray "maps" (sample, y, x) or (sample, channel, y, x) float32.

    Raises
    ------
    ConfigError
        Unknown option or bad value; missing folder, labels file or map file; unreadable files;
        a pickled pair file without ``pickle=true``; maps of different shapes or not square;
        NaN/inf values; an empty split.
    """
    folder = Path(target)
    where = f"folder {str(folder)!r}"
    reject_unknown(where, unknown, OPTIONS)
    opts = _options(folder, where, box_size, fov, split, count, pixel_scale, pickle)
    lpath, files, label_cols = _list_maps(folder, labels, where)
    index = _select(len(files), label_cols, opts, where)
    data = _load_maps(files, index, key, opts.pickle)
    n = data.shape[-1]
    dims = ("sample", "y", "x") if data.ndim == 3 else ("sample", "channel", "y", "x")
    centres, cunits, scale_attrs = _pixel_scale(n, opts)
    attrs: dict[str, Any] = dict(
        kind="folder",
        units=str(units),
        size=int(n),
        labels_file=str(lpath) if label_cols or labels else "",
        split=opts.split,
        long_name=f"maps of folder {folder.name}",
        engine_version=engine.__version__,
        **scale_attrs,
    )
    coords: dict[str, Any] = xy_coords(centres, cunits)
    coords["file"] = ("sample", _file_names(files, index, folder))
    for name, vals in label_cols.items():
        coords[name] = ("sample", vals[index])
    return xr.DataArray(data, dims=dims, coords=coords, name="maps", attrs=attrs)
