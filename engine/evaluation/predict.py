"""Network predictions from checkpoints, and the CSV files of predictions.

Everything evaluation needs from the training side (checkpoint files, the task that rebuilds a
network's prediction path) is imported in this module only, in the one import block below:
:mod:`engine.evaluation.evaluate` and :mod:`engine.evaluation.compare` reach checkpoints through
the functions here (:func:`checkpoint_path`, :func:`checkpoint_task`, :func:`checkpoint_label`,
:func:`checkpoint_like`, :func:`predict_network`).

A checkpoint records its task (:data:`engine.tasks.TASKS`: ``"regression"``; checkpoints of
engine 0.1 say ``"parameter_regression"``, the same task, see :data:`TASK_ALIASES`); which
tasks evaluation knows is the registry :data:`engine.evaluation.evaluate.EVALUATORS`.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.evaluation.schema import PARAMS
from engine.params import ConfigError
from engine.tasks import ALIASES as TASK_ALIASES
from engine.tasks import task_from_checkpoint
from engine.train.checkpoint import (
    build_network,
    checkpoint_map_settings,
    load_checkpoint,
    resolve_checkpoint,
)

#: Map settings that a network's training maps and the maps it is applied to must share.
NETWORK_SETTINGS = (
    "kind",
    "size",
    "box_size",
    "fov",
    "thickness",
    "redshift",
    "smoothing",
    "noise",
    "sigma_e",
    "n_gal",
)


def same_setting(a, b) -> bool:
    """True if two setting values agree: numbers to a relative 1e-9 (absolute 1e-12), other
    values as text."""
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    except (TypeError, ValueError):
        return str(a) == str(b)


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def checkpoint_path(path: str | Path) -> Path:
    """The checkpoint file of ``path``: a ``.pt`` file, or a run directory's
    ``checkpoints/best.pt`` (``last.pt`` without a best).

    Raises
    ------
    ConfigError
        Neither a file nor a run directory with a checkpoint.
    """
    return resolve_checkpoint(path)


def task_name(ckpt: dict[str, Any]) -> str:
    """The task name of a loaded checkpoint dict (older names mapped by :data:`TASK_ALIASES`);
    ``"regression"`` for a checkpoint that records none."""
    name = str(ckpt.get("task") or "regression")
    return TASK_ALIASES.get(name, name)


def checkpoint_task(path: str | Path) -> str:
    """The task of the checkpoint ``path`` (``.pt`` or run directory), e.g. ``"regression"``.

    Raises
    ------
    ConfigError
        Missing or unreadable checkpoint.
    """
    return task_name(load_checkpoint(path))


def checkpoint_label(path: str | Path) -> str:
    """Display label of a checkpoint's network: its model's registry name (e.g. ``"cnn"``), else
    ``"network"``.

    Raises
    ------
    ConfigError
        Missing or unreadable checkpoint.
    """
    nets = load_checkpoint(path).get("networks") or {}
    first = next(iter(nets.values()), {})
    return str(first.get("name", "network"))


def checkpoint_name(path: str | Path) -> str:
    """Short name of a checkpoint for tables: its run directory's name, else the file's stem."""
    p = Path(path)
    if p.is_dir():
        return p.name
    if p.parent.name == "checkpoints" and p.parent.parent.name:
        return p.parent.parent.name
    return p.stem


def checkpoint_like(path: str | Path) -> dict[str, Any]:
    """Map settings and prior box of a checkpoint's training maps, for :func:`engine.data.open_spec`.

    ``path`` is a ``.pt`` file or a run directory (:func:`checkpoint_path`).

    Returns
    -------
    dict
        :func:`engine.train.checkpoint.checkpoint_map_settings` plus ``omega_m_range`` and
        ``sigma8_range`` ([low, high], the network's prior box, dimensionless).

    Raises
    ------
    ConfigError
        Missing or unreadable checkpoint, or one without map settings.
    """
    path = resolve_checkpoint(path)
    like = checkpoint_map_settings(path)
    state = load_checkpoint(path).get("task_state") or {}
    for j, name in enumerate(PARAMS):
        if "prior_low" in state and "prior_high" in state:
            # (stored as float32: 7 significant digits give back the settings' values)
            like[f"{name}_range"] = [
                float(f"{float(state[key][j]):.7g}") for key in ("prior_low", "prior_high")
            ]
    return like


def checkpoint_training_spec(path: str | Path) -> str | None:
    """The dataset spec a checkpoint's network was trained on: its run settings' ``dataset``
    (``config["dataset"]``, as given to ``train``, e.g. ``data/2lpt64.zarr``; relative paths
    are relative to where training ran), or None for maps generated on the fly (their kind and
    settings are :func:`checkpoint_like`).

    Raises
    ------
    ConfigError
        Missing or unreadable checkpoint.
    """
    config = load_checkpoint(path).get("config") or {}
    spec = config.get("dataset") if isinstance(config, Mapping) else None
    return str(spec) if spec else None


# ---------------------------------------------------------------------------------------------
# Network predictions
# ---------------------------------------------------------------------------------------------


def predict_network(
    maps,
    checkpoint,
    device="cpu",
    batch_size: int = 256,
    strict: bool = True,
    scale: Mapping[str, float] | None = None,
) -> dict[str, np.ndarray]:
    """Posterior mean and std of (Ω_m, σ8) from a trained regression checkpoint.

    Loads the checkpoint (:func:`engine.train.checkpoint.load_checkpoint`), builds its network
    and the regression task's prediction path from its ``task_state``
    (:func:`engine.tasks.task_from_checkpoint`): the maps are divided by the checkpoint's
    ``map_scale`` and the outputs (normalised means and log-stds) mapped to physical units with
    its prior box (:meth:`engine.tasks.regression.Regression.predict`).

    Parameters
    ----------
    maps : torch.Tensor or numpy.ndarray (B, N, N), or xarray.DataArray (sample, y, x)
        Raw maps (not normalised), finite.
    checkpoint : str or Path
        A ``best.pt`` / ``last.pt`` of a training run, or a run directory.
    device : str or torch.device
    batch_size : int
    strict : bool
        For DataArrays, refuse maps whose settings (:data:`NETWORK_SETTINGS`, the pixel count
        from their shape) differ from those of the network's training maps, and maps without a
        pixel scale (attr ``box_size`` in Mpc/h, or ``fov`` in degrees for κ networks) unless
        ``scale`` gives it (:func:`check_pixel_scale`).
    scale : mapping, optional
        ``{"box_size": L}`` (Mpc/h) or ``{"fov": θ}`` (degrees): the side of maps that carry no
        such attr (``strict`` DataArrays only).

    Returns
    -------
    dict: ``mean``, ``std`` (B, 2) float64 in the order of ``PARAMS`` (dimensionless),
    ``outside_prior`` (B,) bool (a mean outside the network's prior box, :func:`outside_prior`),
    and ``truth`` (B, 2) for DataArrays with omega_m / sigma8 coords.

    Raises
    ------
    ConfigError
        Missing or unreadable checkpoint, a checkpoint of another task or of other labels,
        mismatched settings, no pixel scale, maps of a bad shape or with NaN/inf pixels.
    """
    model, task, ckpt = _load_regression(checkpoint, device)
    truth = None
    if hasattr(maps, "dims") and hasattr(maps, "attrs"):
        trained = ckpt.get("map_settings") or ckpt.get("config") or {}
        if strict:
            _check_settings(check_pixel_scale(maps, trained, scale), trained)
        if "omega_m" in maps.coords and "sigma8" in maps.coords:
            truth = np.stack(
                [np.asarray(maps["omega_m"], np.float64), np.asarray(maps["sigma8"], np.float64)],
                axis=-1,
            ).reshape(-1, 2)
        maps = maps.values
    x = torch.as_tensor(np.asarray(maps) if not torch.is_tensor(maps) else maps)
    if x.ndim == 2:
        x = x.unsqueeze(0)
    if x.ndim not in (3, 4) or x.shape[-1] != x.shape[-2]:
        raise ConfigError(f"maps of shape {tuple(x.shape)} are not (B, N, N) or (B, C, N, N)")
    means, stds = [], []
    for start in range(0, x.shape[0], batch_size):
        batch = x[start : start + batch_size]
        _check_finite(batch, start)
        try:
            mean, std = task.predict(model, batch)
        except RuntimeError as exc:  # e.g. channels or sizes the network cannot take
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else "RuntimeError"
            raise ConfigError(
                f"the network cannot take maps of shape {tuple(x.shape)}: {msg}"
            ) from None
        means.append(mean.double().cpu())
        stds.append(std.double().cpu())
    out = {"mean": torch.cat(means).numpy(), "std": torch.cat(stds).numpy()}
    out["outside_prior"] = outside_prior(out["mean"], task)
    if truth is not None:
        out["truth"] = truth
    return out


def _check_finite(batch: torch.Tensor, first: int) -> None:
    """Refuse a batch of maps holding NaN or inf pixels, naming the first such map."""
    if batch.is_floating_point():
        bad = ~torch.isfinite(batch.reshape(batch.shape[0], -1)).all(dim=1)
        if bool(bad.any()):
            i = first + int(torch.nonzero(bad)[0, 0])
            raise ConfigError(
                f"map {i} holds NaN or inf pixels: the network needs finite maps "
                f"({int(bad.sum())} such maps in samples {first}..{first + len(batch) - 1})"
            )


def outside_prior(mean: np.ndarray, task) -> np.ndarray:
    """(B,) bool: maps whose posterior mean (B, P) lies outside the task's prior box in any
    parameter (``task.low`` / ``task.high``, the box of the network's training labels)."""
    low = np.asarray(task.low.detach().cpu(), dtype=np.float64)
    high = np.asarray(task.high.detach().cpu(), dtype=np.float64)
    return ((mean < low) | (mean > high)).any(axis=1)


def _positive(value) -> float | None:
    """``float(value)`` when it is a finite number > 0, else None."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) and x > 0 else None


def _text(value) -> str:
    """A setting value for messages: numbers as ``%g``, others as ``str``."""
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return str(value)


#: Pixel-scale attrs of maps and their units, in the order they are looked for.
SCALE_ATTRS = {"box_size": "Mpc/h", "fov": "degrees"}


def check_pixel_scale(
    maps, trained: Mapping[str, Any], scale: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """The attrs of ``maps`` to check against a network's training settings ``trained``.

    The pixel scale is the maps' ``box_size`` (Mpc/h) or ``fov`` (degrees) attr, the one the
    network's settings have (``box_size`` for slab kinds, ``fov`` for κ); maps without it take
    it from ``scale``, and are refused without either. ``size`` defaults to the maps' last
    dimension.

    Returns
    -------
    dict
        ``maps.attrs`` with ``size`` and the pixel scale filled in.

    Raises
    ------
    ConfigError
        No pixel scale (or only the other one), a ``scale`` that is not a number > 0 or that
        contradicts the maps' attr (one line).
    """
    attrs = dict(maps.attrs)
    attrs.setdefault("size", int(maps.shape[-1]))
    key = next((k for k in SCALE_ATTRS if k in trained), None)
    for given, value in (scale or {}).items():
        if value is None:
            continue
        side = _positive(value)
        if given not in SCALE_ATTRS or side is None:
            raise ConfigError(f"{given}={value!r} is not a pixel scale: give box_size or fov > 0")
        if key is not None and given != key:
            raise ConfigError(
                f"{given} was given but the network's maps have {key} ({SCALE_ATTRS[key]})"
            )
        if given in attrs and not same_setting(attrs[given], side):
            raise ConfigError(
                f"{given}={side:g} was given but the maps say {given}={_text(attrs[given])}"
            )
        attrs[given] = side
    if key is not None and key not in attrs:
        other = next((k for k in SCALE_ATTRS if k in attrs), None)
        why = f"the maps carry {other}, not" if other else "the maps carry no pixel scale"
        unit = SCALE_ATTRS[key]
        raise ConfigError(
            f"{why} {key} ({unit}): give their side with --{key.replace('_', '-')} (the "
            f"network's training maps: {trained.get('size', '?')} pixels over "
            f"{_text(trained[key])} {unit})"
        )
    return attrs


def _load_regression(checkpoint, device):
    """(network in eval mode, regression task for inference, checkpoint dict) of a checkpoint.

    Raises
    ------
    ConfigError
        Unreadable checkpoint, another task, other labels than ``PARAMS``, unusable weights.
    """
    ckpt = load_checkpoint(checkpoint, map_location=device)
    task = task_name(ckpt)
    if task != "regression":
        raise ConfigError(
            f"checkpoint {str(checkpoint)!r} is of task {task!r}; predict knows: regression"
        )
    try:
        model = build_network(next(iter(ckpt["networks"].values())), device)
        predictor = task_from_checkpoint(ckpt, device)
    except Exception as exc:  # a damaged checkpoint fails in many ways; report one line
        text = str(exc).strip()
        msg = text.splitlines()[0] if text else type(exc).__name__
        raise ConfigError(f"checkpoint {str(checkpoint)!r} holds no usable model: {msg}") from None
    names = tuple(getattr(predictor, "names", PARAMS))
    if names != PARAMS:
        raise ConfigError(f"checkpoint predicts {names}, not {PARAMS}")
    box = [tuple(getattr(predictor, k, torch.zeros(len(PARAMS))).shape) for k in ("low", "high")]
    if any(shape != (len(PARAMS),) for shape in box):
        raise ConfigError(
            f"checkpoint {str(checkpoint)!r} holds no usable model: its prior box has shapes "
            f"{box[0]} and {box[1]}, not ({len(PARAMS)},)"
        )
    return model, predictor, ckpt


def load_task_network(checkpoint, device, task: str):
    """(network in eval mode, task rebuilt for inference, checkpoint dict) of a checkpoint of
    task ``task`` (e.g. ``"classification"``; :func:`engine.tasks.task_from_checkpoint`).

    Parameters
    ----------
    checkpoint : str or Path
        A ``.pt`` file or a run directory (:func:`checkpoint_path`).
    device : str or torch.device
    task : str
        The task the checkpoint must be of.

    Raises
    ------
    ConfigError
        Missing or unreadable checkpoint, one of another task, or unusable weights or task state
        (one line).
    """
    ckpt = load_checkpoint(checkpoint, map_location=device)
    name = task_name(ckpt)
    if name != task:
        raise ConfigError(f"checkpoint {str(checkpoint)!r} is of task {name!r}, not {task!r}")
    try:
        model = build_network(next(iter(ckpt["networks"].values())), device)
        predictor = task_from_checkpoint(ckpt, device)
    except Exception as exc:  # a damaged checkpoint fails in many ways; report one line
        text = str(exc).strip()
        msg = text.splitlines()[0] if text else type(exc).__name__
        raise ConfigError(f"checkpoint {str(checkpoint)!r} holds no usable model: {msg}") from None
    return model.eval(), predictor, ckpt


def _check_settings(attrs: dict[str, Any], trained: dict[str, Any]) -> None:
    """Refuse maps whose :data:`NETWORK_SETTINGS` differ from the network's (one line)."""
    bad = [
        f"{k}={attrs[k]!r} (network: {trained[k]!r})"
        for k in NETWORK_SETTINGS
        if k in attrs and k in trained and not same_setting(attrs[k], trained[k])
    ]
    if bad:
        raise ConfigError("the maps differ from the network's training maps: " + ", ".join(bad))


# ---------------------------------------------------------------------------------------------
# Maps files
# ---------------------------------------------------------------------------------------------


def reader_spec(text: str | Path) -> bool:
    """True if ``text`` is a dataset spec of a reader (``folder:``, ``camels:``, ``quijote:``,
    ``des:`` prefix; :data:`engine.data.READERS`) rather than a file path."""
    from engine.data import READERS

    prefix, sep, _ = str(text).partition(":")
    return bool(sep) and prefix in READERS


def load_maps(path: str | Path):
    """The maps of ``predict --maps``: a ``.zarr``/``.nc`` file of ``python -m engine fields``,
    or a reader's dataset spec (``folder:DIR?box_size=100``, ``camels:FILE``, …, read with
    :func:`engine.data.open_spec` and loaded).

    Files: :func:`engine.physics.slabs.load` (the first variable with a ``sample`` dimension,
    loaded), with every failure of a damaged file (empty, truncated chunk, corrupt metadata,
    not a netCDF/zarr store) turned into one line.

    Returns
    -------
    xarray.DataArray (sample, ...) with the file's coords and attrs.

    Raises
    ------
    ConfigError
        A path that is not .zarr/.nc (e.g. a .npy file: read those with a dataset spec), a
        missing, empty or unreadable file, or no variable with a ``sample`` dimension; a spec
        the reader refuses.
    """
    from engine.physics import slabs

    if reader_spec(path):
        from engine.data import open_spec

        return open_spec(str(path)).load()
    p = Path(path)
    where = f"maps file {str(p)!r}"
    if p.suffix not in (".zarr", ".nc"):
        raise ConfigError(
            f"{where} must be a .zarr or .nc file of 'python -m engine fields' (maps in .npy "
            "files: a spec such as folder:DIR or camels:PATH)"
        )
    try:
        if not p.exists():
            raise ConfigError(f"{where} does not exist")
        if p.is_file() and p.stat().st_size == 0:
            raise ConfigError(f"{where} is empty")
        return slabs.load(p)
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(msg if str(p) in msg else f"{where}: {msg}") from None
    except Exception as exc:  # zarr / netCDF / codecs raise many kinds; report one line
        text = str(exc).strip()
        msg = text.splitlines()[0] if text else type(exc).__name__
        raise ConfigError(f"{where} is not readable: {msg}") from None


# ---------------------------------------------------------------------------------------------
# CSV output
# ---------------------------------------------------------------------------------------------


#: Boolean column of network predictions: the posterior mean lies outside the prior box.
FLAG = "outside_prior"


def write_predictions(
    path,
    result: dict,
    names: Sequence[str] = PARAMS,
    truth=None,
    extra: dict | None = None,
) -> Path:
    """Write one CSV row per map atomically (temporary file + ``os.replace``).

    Columns: ``sample``; ``<name>_true`` for each parameter when ``result`` has ``truth``; then
    per parameter ``<name>_mean``, ``<name>_std`` and, when ``result`` has ``map``,
    ``<name>_map``; last ``outside_prior`` (``true``/``false``) when ``result`` has it (network
    predictions, :func:`predict_network`). Values with 8 significant digits.

    ``result`` may also map method names to such dicts (several methods on the same maps, e.g.
    ``{"network": ..., "pk_likelihood": ...}`` of :mod:`engine.evaluation.evaluate`): then the columns are
    ``sample``, ``<name>_true`` (from the first method that has ``truth``) and, per method in
    order, ``<method>_<name>_mean``, ``<method>_<name>_std`` (and ``<method>_<name>_map``), then
    ``<method>_outside_prior`` for the methods that flag maps.

    ``truth`` (B, len(names)), when given, replaces the results' ``truth``; ``extra`` maps column
    names to (B,) arrays written right after ``sample`` (e.g. the tile indices of
    ``engine.evaluation.evaluate``).

    Raises
    ------
    ConfigError
        A path not ending in .csv or in a directory that does not exist, or methods with
        different numbers of maps.
    """
    from engine.runs import atomic_write

    path = Path(path)
    if path.suffix != ".csv":
        raise ConfigError(f"--out {str(path)!r} must end in .csv")
    if not path.parent.is_dir():
        raise ConfigError(f"--out {str(path)!r}: directory {str(path.parent)!r} does not exist")
    groups = [("", result)] if "mean" in result else [(f"{m}_", r) for m, r in result.items()]
    if truth is None:
        truth = next((r["truth"] for _, r in groups if "truth" in r), None)
    n_maps = {len(r["mean"]) for _, r in groups}
    if len(n_maps) > 1:
        raise ConfigError(f"the methods predicted different numbers of maps: {sorted(n_maps)}")
    cols = [(np.asarray(v)[:, None], 0, k) for k, v in (extra or {}).items()]
    if truth is not None:
        cols += [(truth, j, f"{names[j]}_true") for j in range(len(names))]
    for prefix, r in groups:
        keys = [k for k in ("mean", "std", "map") if k in r]
        cols += [(r[k], j, f"{prefix}{names[j]}_{k}") for j in range(len(names)) for k in keys]
    flags = [(np.asarray(r[FLAG]), f"{prefix}{FLAG}") for prefix, r in groups if FLAG in r]
    with atomic_write(path) as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["sample"] + [c[2] for c in cols] + [c[1] for c in flags])
        for i in range(n_maps.pop() if n_maps else 0):
            values = [f"{float(a[i][j]):.8g}" for a, j, _ in cols]
            w.writerow([i, *values, *(str(bool(a[i])).lower() for a, _ in flags)])
    return path
