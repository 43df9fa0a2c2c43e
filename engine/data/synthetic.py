"""Readers of :func:`engine.data.open_spec` for generated kinds and for our own files.

* :func:`generate` — ``grf``, ``lognormal``, ``2lpt`` (2D slab maps) or ``kappa`` maps made now,
  with the map settings of ``like`` (e.g. a checkpoint's, :func:`engine.train.checkpoint.
  checkpoint_map_settings`) or the kind's defaults, and per-sample (Ω_m, σ8) uniform in a prior
  box: spec ``grf?count=256&seed=7&omega_m=0.15:0.45&sigma8=0.7:0.9&noise=0.1``.
* :func:`open_file` — a ``.zarr``/``.nc`` file of ``python -m engine fields``
  (:func:`engine.physics.slabs.load`) or a ``.zarr`` dataset of ``python -m engine dataset``
  (:func:`engine.data.store.open_dataset`, one split: ``?split=test``, the default).

Both return the maps as :mod:`engine.data` describes: an ``xarray.DataArray`` ``(sample, y, x)``
float32 with per-sample coords ``omega_m`` and ``sigma8`` (dimensionless; files without labels
have none), coords ``x``/``y`` in Mpc/h (slabs) or arcmin (κ), and the kind's attrs as ``python -m
engine fields`` writes them (``kind``, ``units``, every setting, ``seed``, …). Generated maps also
carry ``omega_m_range`` and ``sigma8_range`` ([low, high], the box they were drawn from).

Options arrive as strings (the query of the spec); an unknown option name raises a one-line
:class:`~engine.params.ConfigError` that lists the allowed ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from engine.params import ConfigError

#: Default prior box of generated maps when ``like`` has none (the training default).
DEFAULT_RANGES = {"omega_m": (0.1, 0.5), "sigma8": (0.6, 1.0)}
#: Options of :func:`generate` besides the settings of the kind's class.
GENERATE_OPTIONS = ("count", "seed", "omega_m", "sigma8", "device")
#: Options of :func:`open_file`.
FILE_OPTIONS = ("split", "count")
#: Settings of a kind that options and ``like`` may not set (fixed here or drawn per sample).
_FIXED = ("kind", "count", "seed", "omega_m", "sigma8", "dim")
#: Kinds whose settings share names *and* units (slabs, Mpc/h) or that are alone (κ, arcmin).
FAMILY = {"grf": "slab", "lognormal": "slab", "2lpt": "slab", "pm": "slab", "kappa": "kappa"}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def like_prior(like: Mapping[str, Any] | None) -> dict[str, tuple[float, float]]:
    """The training prior box held by ``like``, ``{name: (low, high)}`` (possibly empty).

    Recognised keys (first match wins per parameter): ``<name>_range`` ([low, high], dataset
    attrs and :func:`engine.evaluation.predict.checkpoint_like`), ``<name>_min`` / ``<name>_max`` (the
    settings of :class:`engine.train.settings.TrainParams`), ``prior_low`` / ``prior_high`` (two-element
    lists in the order omega_m, sigma8, as checkpoints store them). Boxes with low >= high are
    ignored.
    """
    out: dict[str, tuple[float, float]] = {}
    if not like:
        return out
    for j, name in enumerate(("omega_m", "sigma8")):
        candidates = (
            like.get(f"{name}_range"),
            (like.get(f"{name}_min"), like.get(f"{name}_max")),
            (
                (like.get("prior_low") or [None, None])[j],
                (like.get("prior_high") or [None, None])[j],
            ),
        )
        for c in candidates:
            try:
                lo, hi = (float(v) for v in c)
            except (TypeError, ValueError):
                continue
            if lo < hi:
                out[name] = (lo, hi)
                break
    return out


def generate(
    kind: str,
    like: Mapping[str, Any] | None = None,
    count: str | int = "256",
    seed: str | int = "12345",
    omega_m: str | None = None,
    sigma8: str | None = None,
    device: str = "cpu",
    **setting_overrides: str,
) -> xr.DataArray:
    """Generate labelled maps of a kind now, like a network's training maps.

    Settings, in increasing precedence: the kind's defaults (:meth:`engine.kinds.Kind.
    new_settings`); the settings in ``like`` that the kind's class has, when ``like`` is of the
    same family (slab kinds grf/lognormal/2lpt share names and units, Mpc/h; kappa is alone,
    arcmin; ``like`` of the other family contributes only its prior box); ``setting_overrides``.
    ``2lpt`` always gives 2D slab maps (``dim=2``).

    Parameters
    ----------
    kind : {"grf", "lognormal", "2lpt", "kappa"}
    like : mapping, optional
        ``{"kind": ..., setting: value}`` (e.g. :func:`engine.train.checkpoint.checkpoint_map_settings`)
        and optionally a prior box (:func:`like_prior`).
    count : str or int
        Number of maps, 1 … 1 000 000.
    seed : str or int
        Seed of the maps and of the parameters (same seed ⇒ same output on CPU).
    omega_m, sigma8 : str, optional
        A number (fixed) or a range ``LO:HI`` (uniform per sample,
        :func:`engine.data.store.draw_parameters`); default the prior box of ``like``, else
        :data:`DEFAULT_RANGES` (0.1:0.5 and 0.6:1.0). Dimensionless.
    device : str
        Torch device the maps are generated on (default ``cpu``: reproducible everywhere).
    **setting_overrides : str
        Any other setting of the kind's class (e.g. ``noise="0.1"``, ``size="64"``).

    Returns
    -------
    xarray.DataArray (sample, y, x) float32
        ``delta`` (slabs) or ``kappa`` maps with per-sample coords ``omega_m``, ``sigma8`` and the
        kind's attrs, plus ``omega_m_range`` / ``sigma8_range`` attrs ([low, high]).

    Raises
    ------
    ConfigError
        Unknown option (the message lists the allowed ones), a value out of its bounds, a bad
        range, unusable settings for the kind, or an unavailable device.
    """
    try:
        return _generate(kind, like, count, seed, omega_m, sigma8, device, setting_overrides)
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(
            msg if msg.startswith("dataset ") else f"dataset {kind!r}: {msg}"
        ) from None


def _generate(kind, like, count, seed, omega_m, sigma8, device, setting_overrides):
    from engine.data.store import draw_parameters, pop_ranges
    from engine.device import default_device
    from engine.kinds import get_kind
    from engine.params import set_values, user_settings

    k = get_kind(kind, tuple(FAMILY))
    settings = k.new_settings()
    cls = type(settings)
    names = [n for n in user_settings(cls) if n not in _FIXED]
    unknown = [o for o in setting_overrides if o.replace("-", "_") not in names]
    if unknown:
        raise ConfigError(
            f"dataset {kind!r}: unknown option {unknown[0]!r}; allowed: "
            + ", ".join((*GENERATE_OPTIONS, *names))
        )
    prior = dict(DEFAULT_RANGES)
    if like:
        prior.update(like_prior(like))
        if FAMILY.get(str(like.get("kind"))) == FAMILY[kind]:
            values = {n: like[n] for n in names if n in like}
            if "mask" in values and values["mask"] == "":
                values["mask"] = None
            try:
                set_values(settings, values)
            except ConfigError as exc:
                raise ConfigError(f"dataset {kind!r} like the checkpoint's maps: {exc}") from None
    set_values(settings, {**setting_overrides, "count": count, "seed": seed})
    if "dim" in user_settings(cls):
        set_values(settings, {"dim": 2})
    layer = {
        "omega_m": prior["omega_m"] if omega_m is None else omega_m,
        "sigma8": prior["sigma8"] if sigma8 is None else sigma8,
    }
    plain, ranges = pop_ranges(cls, layer)
    set_values(settings, plain)
    k.check_settings(settings)
    try:
        dev = default_device(str(device))
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"device={device!r}: {_first_line(exc)}") from None
    theta = draw_parameters(settings, ranges, int(settings.count), int(settings.seed))
    da = k.generate(
        settings, device=dev, omega_m=theta["omega_m"], sigma8=theta["sigma8"], progress=False
    )
    for name in ("omega_m", "sigma8"):
        lo, hi = ranges.get(name, (float(getattr(settings, name)),) * 2)
        da.attrs[f"{name}_range"] = [float(lo), float(hi)]
    return da


def _count(value: Any, where: str) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"{where}: count={value!r} must be an integer >= 1")
    return n


def open_file(
    path: str | Path,
    like: Mapping[str, Any] | None = None,
    split: str | None = None,
    count: str | int | None = None,
    **unknown: str,
) -> xr.DataArray:
    """Maps of a ``.zarr``/``.nc`` file of ``python -m engine fields`` or ``dataset``.

    Parameters
    ----------
    path : str or Path
        The file (a ``.zarr`` directory or a ``.nc`` file).
    like : mapping, optional
        Not used (the network checks the maps' settings against its own); accepted so that every
        reader has the same signature.
    split : {"train", "val", "test"}, optional
        For datasets (files with a ``split`` coord): the split to read, default ``test``; refused
        for files without splits.
    count : str or int, optional
        Read only the first ``count`` maps (of the split).

    Returns
    -------
    xarray.DataArray (sample, ...) loaded into memory, with the file's coords and attrs.

    Raises
    ------
    ConfigError
        Unknown option, a path that is not .zarr/.nc, missing or unreadable file, no variable
        with a ``sample`` dimension, a bad split or count (one line naming the file).
    """
    from engine.data import store
    from engine.physics import slabs

    where = f"dataset file {str(path)!r}"
    if unknown:
        raise ConfigError(
            f"{where}: unknown option {next(iter(unknown))!r}; allowed: {', '.join(FILE_OPTIONS)}"
        )
    from engine.data import SYNTHETIC

    p = Path(path)
    if p.suffix not in (".zarr", ".nc"):
        raise ConfigError(
            f"dataset {str(path)!r} is neither a kind ({', '.join(SYNTHETIC)}) nor a .zarr/.nc "
            "file of 'python -m engine fields' or 'dataset' (nor prefix:path)"
        )
    if not p.exists():
        raise ConfigError(f"{where} does not exist")
    n = None if count is None else _count(count, where)
    try:
        if p.suffix == ".zarr":
            ds = xr.open_zarr(p, consolidated=False)
            is_dataset = any("split" in ds[v].coords for v in ds.data_vars)
        else:
            is_dataset = False
        if is_dataset:
            da = store.open_dataset(p)
            split = "test" if split is None else str(split)
            if split not in store.SPLITS:
                raise ConfigError(
                    f"{where}: split={split!r} is not allowed: split must be one of "
                    + ", ".join(store.SPLITS)
                )
            index = np.flatnonzero(da["split"].values == store.SPLITS.index(split))
            if index.size == 0:
                raise ConfigError(f"{where} has no {split} samples")
            da = da.isel(sample=index[:n] if n else index).load()
        else:
            if split is not None:
                raise ConfigError(
                    f"{where} has no splits (option split is for datasets of python -m engine "
                    "dataset)"
                )
            da = slabs.load(p)
            if n:
                da = da.isel(sample=slice(0, n))
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(msg if str(path) in msg else f"{where}: {msg}") from None
    except Exception as exc:  # zarr / netCDF raise many kinds; report one line
        raise ConfigError(f"{where} is not readable: {_first_line(exc)}") from None
    return da
