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
from collections.abc import Sequence
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


# ---------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------
# Network predictions
# ---------------------------------------------------------------------------------------------


def predict_network(
    maps, checkpoint, device="cpu", batch_size: int = 256, strict: bool = True
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
        Raw maps (not normalised).
    checkpoint : str or Path
        A ``best.pt`` / ``last.pt`` of a training run, or a run directory.
    device : str or torch.device
    batch_size : int
    strict : bool
        For DataArrays with a ``kind`` attr, refuse maps whose settings
        (:data:`NETWORK_SETTINGS`) differ from those of the network's training maps.

    Returns
    -------
    dict: ``mean``, ``std`` (B, 2) float64 in the order of ``PARAMS`` (dimensionless), and
    ``truth`` (B, 2) for DataArrays with omega_m / sigma8 coords.

    Raises
    ------
    ConfigError
        Missing or unreadable checkpoint, a checkpoint of another task or of other labels,
        mismatched settings, maps of a bad shape.
    """
    model, task, ckpt = _load_regression(checkpoint, device)
    truth = None
    if hasattr(maps, "dims") and hasattr(maps, "attrs"):
        trained = ckpt.get("map_settings") or ckpt.get("config") or {}
        if strict and "kind" in maps.attrs:
            _check_settings(dict(maps.attrs), trained)
        if "omega_m" in maps.coords and "sigma8" in maps.coords:
            truth = np.stack(
                [np.asarray(maps["omega_m"], np.float64), np.asarray(maps["sigma8"], np.float64)],
                axis=-1,
            ).reshape(-1, 2)
        maps = maps.values
    x = torch.as_tensor(np.asarray(maps) if not torch.is_tensor(maps) else maps)
    if x.ndim == 2:
        x = x.unsqueeze(0)
    if x.ndim not in (3, 4):
        raise ConfigError(f"maps of shape {tuple(x.shape)} are not (B, N, N) or (B, C, N, N)")
    means, stds = [], []
    for start in range(0, x.shape[0], batch_size):
        mean, std = task.predict(model, x[start : start + batch_size])
        means.append(mean.double().cpu())
        stds.append(std.double().cpu())
    out = {"mean": torch.cat(means).numpy(), "std": torch.cat(stds).numpy()}
    if truth is not None:
        out["truth"] = truth
    return out


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
    except (KeyError, RuntimeError, TypeError, StopIteration) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"checkpoint {str(checkpoint)!r} holds no usable model: {msg}") from None
    names = tuple(getattr(predictor, "names", PARAMS))
    if names != PARAMS:
        raise ConfigError(f"checkpoint predicts {names}, not {PARAMS}")
    return model, predictor, ckpt


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
# CSV output
# ---------------------------------------------------------------------------------------------


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
    ``<name>_map``. Values with 8 significant digits.

    ``result`` may also map method names to such dicts (several methods on the same maps, e.g.
    ``{"network": ..., "pk_likelihood": ...}`` of :mod:`engine.evaluation.evaluate`): then the columns are
    ``sample``, ``<name>_true`` (from the first method that has ``truth``) and, per method in
    order, ``<method>_<name>_mean``, ``<method>_<name>_std`` (and ``<method>_<name>_map``).

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
    with atomic_write(path) as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["sample"] + [c[2] for c in cols])
        for i in range(n_maps.pop() if n_maps else 0):
            w.writerow([i] + [f"{float(a[i][j]):.8g}" for a, j, _ in cols])
    return path
