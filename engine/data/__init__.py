"""Datasets named by a spec string: generated kinds, our own files and native simulation formats.

One function, :func:`open_spec`, turns a spec string into labelled maps, so the CLI
(``evaluate``, ``compare``, ``predict``), config files and the explorer all accept the same names.

Spec grammar
------------
``[prefix:]target[?key=value&key=value…]``

=================================  ==========================================================
spec                               meaning
=================================  ==========================================================
``grf``, ``lognormal``, ``2lpt``,  maps generated now (:mod:`engine.data.synthetic`), with the
``kappa``                          settings of ``like`` (e.g. a checkpoint's map settings) and
                                   options such as ``?count=256&seed=7&omega_m=0.15:0.45``
``/path/maps.zarr``, ``*.nc``      a file of ``python -m engine fields`` or ``dataset``
                                   (:mod:`engine.data.synthetic`; ``?split=test`` for datasets)
``camels:/d/Maps_Mtot_…npy``       CAMELS Multifield Dataset 2D maps (:mod:`engine.data.camels`)
``quijote:/d/quijote/LH``          Quijote density grids → slabs (:mod:`engine.data.quijote`)
``des:/d/DES_Y3_kappa.fits``       HEALPix κ mass map → gnomonic patches (:mod:`engine.data.des`)
``folder:/d/maps``                 .npy/.npz/.fits maps with a labels CSV (:mod:`engine.data.folder`)
``NAME``                           a short name from a datasets YAML file (:func:`named_specs`)
=================================  ==========================================================

Every reader returns an ``xarray.DataArray`` with dims ``(sample, y, x)`` (or ``(sample,
channel, y, x)``), coords ``x``/``y`` in the map's unit (Mpc/h for slabs, arcmin for κ),
per-sample coords ``omega_m`` and ``sigma8`` when the data has labels, and attrs with at least
``kind`` (grf, lognormal, 2lpt, pm, kappa, camels, quijote, des, folder), ``units``, ``source`` (the
spec) and the pixel scale: ``box_size`` (Mpc/h, for slabs) or ``fov`` (degrees, for κ). Large
files stay lazy (memory-mapped or zarr-backed).

Datasets YAML
-------------
A mapping of short names to specs, e.g.::

    camels-tng: camels:/data/CMD/Maps_Mtot_IllustrisTNG_LH_z=0.00.npy?split=test
    quijote: quijote:/data/quijote/LH?thickness=100

read from ``--datasets FILE``, else ``$ENGINE_DATASETS``, else ``./datasets.yaml`` if present.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import xarray as xr

from engine.data._common import first_line
from engine.params import ConfigError

#: Spec prefixes and the module (under engine.data) that reads each.
READERS = {
    "camels": "camels",
    "quijote": "quijote",
    "des": "des",
    "folder": "folder",
}
#: Kinds generated on demand (engine.data.synthetic).
SYNTHETIC = ("grf", "lognormal", "2lpt", "pm", "kappa")
#: Environment variable naming a datasets YAML file.
DATASETS_ENV = "ENGINE_DATASETS"


def _exists(path: str) -> bool:
    """``Path(path).exists()``, False for a path the system refuses (e.g. a name too long)."""
    try:
        return Path(path).exists()
    except (OSError, ValueError):
        return False


def parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """Split a spec into ``(prefix, target, options)``.

    ``prefix`` is one of :data:`READERS`, ``"synthetic"`` for a kind name, ``"file"`` for a
    path to one of our .zarr/.nc files; ``target`` is the path or kind; ``options`` the query
    ``?key=value&…`` as strings.

    Raises
    ------
    ConfigError
        Empty spec, unknown prefix, or a query that is not ``key=value`` pairs.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("dataset spec is empty: give a kind (grf), a file, or prefix:path")
    spec = spec.strip()
    target, _, query = spec.partition("?")
    try:
        options = dict(parse_qsl(query, keep_blank_values=False, strict_parsing=bool(query)))
    except ValueError:
        raise ConfigError(
            f"dataset spec {spec!r}: options after '?' must be key=value pairs joined by '&'"
        ) from None
    prefix, sep, rest = target.partition(":")
    if sep and prefix in READERS:
        if not rest:
            raise ConfigError(f"dataset spec {spec!r} names no path after {prefix + ':'!r}")
        return prefix, rest, options
    if sep and len(prefix) > 1 and not _exists(target):
        allowed = ", ".join(f"{p}:PATH" for p in READERS)
        raise ConfigError(
            f"dataset spec {spec!r}: unknown prefix {prefix!r}; allowed {allowed}, "
            f"a kind ({', '.join(SYNTHETIC)}) or a .zarr/.nc file"
        )
    if target in SYNTHETIC:
        return "synthetic", target, options
    return "file", target, options


def named_specs(path: str | Path | None = None) -> dict[str, str]:
    """Short dataset names → specs from a datasets YAML file (module docstring).

    Parameters
    ----------
    path : str or Path, optional
        The YAML file; default ``$ENGINE_DATASETS`` or ``./datasets.yaml`` when present.

    Returns
    -------
    dict of str → str; empty when no file is given or found.

    Raises
    ------
    ConfigError
        A given file that is missing, unreadable, or not a mapping of names to strings.
    """
    import yaml

    if path is None:
        path = os.environ.get(DATASETS_ENV) or (
            "datasets.yaml" if Path("datasets.yaml").is_file() else None
        )
        if path is None:
            return {}
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"datasets file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"datasets file {str(path)!r} is not readable YAML: {exc}") from None
    if not isinstance(data, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise ConfigError(f"datasets file {str(path)!r} must map short names to spec strings")
    return dict(data)


def resolve_name(spec: str, datasets_file: str | Path | None = None) -> str:
    """The spec a short name stands for (:func:`named_specs`), or ``spec`` itself."""
    names = named_specs(datasets_file)
    return names.get(spec, spec)


def open_spec(
    spec: str,
    like: Mapping[str, Any] | None = None,
    datasets_file: str | Path | None = None,
    **overrides: Any,
) -> xr.DataArray:
    """Labelled maps for a dataset spec (module docstring for the grammar and the output).

    Parameters
    ----------
    spec : str
        A spec string or a short name from the datasets YAML.
    like : mapping, optional
        Map settings to match (e.g. ``engine.train.checkpoint.checkpoint_map_settings(path)``): synthetic
        kinds are generated with them; readers of other data may use them to choose the patch
        size and pixel scale.
    datasets_file : str or Path, optional
        Datasets YAML (:func:`named_specs`).
    **overrides
        Options that take precedence over the spec's query (same names, e.g. ``count=64``).

    Returns
    -------
    xarray.DataArray (sample, y, x) or (sample, channel, y, x); ``attrs["source"]`` is the spec.

    Raises
    ------
    ConfigError
        Unknown name or prefix, missing or bad file (one line naming the file and the problem;
        also for an ``OSError`` of a reader, e.g. a path name too long).
    """
    full = resolve_name(spec, datasets_file)
    prefix, target, options = parse_spec(full)
    options.update({k: str(v) for k, v in overrides.items() if v is not None})
    if prefix == "synthetic":
        module, func = "synthetic", "generate"
    elif prefix == "file":
        module, func = "synthetic", "open_file"
    else:
        module, func = READERS[prefix], "open"
    reader = getattr(importlib.import_module(f"engine.data.{module}"), func)
    try:
        da = reader(target, like=like, **options)
    except OSError as exc:  # e.g. a name too long or a folder without permission
        raise ConfigError(f"dataset {full!r} could not be read: {first_line(exc)}") from None
    da.attrs["source"] = full
    return da
