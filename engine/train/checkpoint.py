"""Checkpoints: save atomically, load with ``torch.load(weights_only=True)``, resolve a run
directory to its ``checkpoints/best.pt``, rebuild a checkpoint's networks.

Format (``format`` 2; dicts of plain Python values and tensors)
---------------------------------------------------------------
``format``             2
``task``               the task's registry name (:data:`engine.tasks.TASKS`), e.g. "regression"
``task_state``         the task's own state (:meth:`engine.tasks.base.Task.state`: label box,
                       normalisation, class names, noise schedule, ...)
``networks``           ``{name: {"name": registry name, "kwargs": {...}, "state": weights to use
                       (the EMA weights when EMA is on), "raw_state": optimised weights (EMA
                       only, for resuming)}}``
``optimizers``         ``{name: optimizer.state_dict()}``
``step``, ``epoch``    updates done, 0-based epoch
``best``               ``{"metric", "mode", "value"}``: the validation metric that selects
                       ``best.pt``, "min"/"max", its best value so far
``epochs_since_best``  for early stopping
``config``             the run's settings (flat ``{setting: value}``)
``map_settings``       ``{"kind": ..., setting: value}`` of the training maps
``engine_version``

Checkpoints of format 1 (engine 0.1, single-task regression: ``model_name``, ``model_kwargs``,
``model_state``, ``raw_model_state``, ``optimizer_state``, ``best_val``, ``param_names``,
``prior_low``, ``prior_high``, ``map_scale``, ``task = "parameter_regression"``), such as the
shipped models in ``assets/models/``, are upgraded to format 2 in memory by
:func:`load_checkpoint`; ``python -m engine.train.checkpoint FILE...`` rewrites them on disk.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.nn.registry import build_model
from engine.params import PARAM_NAMES, ConfigError
from engine.runs import atomic_write

#: The checkpoint format written by this engine.
FORMAT = 2


def save_checkpoint(obj: Mapping[str, Any], path: str | Path) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically (temporary file, fsync, ``os.replace``)."""
    with atomic_write(path, binary=True, fsync=True) as f:
        torch.save(dict(obj), f)


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint file of ``path``: a ``.pt`` file, or a run directory's
    ``checkpoints/best.pt`` (``last.pt`` when there is no best).

    Raises
    ------
    ConfigError
        Neither a file nor a run directory with a checkpoint.
    """
    p = Path(path)
    if p.is_dir():
        for name in ("best.pt", "last.pt"):
            if (p / "checkpoints" / name).is_file():
                return p / "checkpoints" / name
        raise ConfigError(f"checkpoint {str(path)!r}: run directory without checkpoints/best.pt")
    if not p.is_file():
        raise ConfigError(f"checkpoint {str(path)!r} does not exist (give a .pt file or a run dir)")
    return p


def upgrade(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint dict in the current format (format-1 regression checkpoints converted;
    current ones returned as a shallow copy).

    Raises
    ------
    ConfigError
        A dict that is not a checkpoint of this engine.
    """
    ckpt = dict(ckpt)
    if ckpt.get("format") == FORMAT or "model_state" not in ckpt:
        return ckpt  # current, or a partial dict (e.g. map settings only): as it is
    if "model_name" not in ckpt:
        raise ConfigError("not a checkpoint of this engine (model_state without model_name)")
    net = {
        "name": ckpt.pop("model_name"),
        "kwargs": dict(ckpt.pop("model_kwargs", {})),
        "state": ckpt.pop("model_state"),
    }
    if ckpt.get("raw_model_state") is not None:
        net["raw_state"] = ckpt.pop("raw_model_state")
    ckpt.pop("raw_model_state", None)
    state = {
        "names": list(ckpt.pop("param_names", PARAM_NAMES)),
        "prior_low": list(ckpt.pop("prior_low")),
        "prior_high": list(ckpt.pop("prior_high")),
        "map_scale": float(ckpt.pop("map_scale")),
        "channels": int(net["kwargs"].get("in_channels", 1)),
        "kind": (ckpt.get("map_settings") or {}).get("kind", ""),
    }
    out = {
        "format": FORMAT,
        "task": "regression",
        "task_state": state,
        "networks": {"model": net},
        "optimizers": {"model": ckpt.pop("optimizer_state")} if "optimizer_state" in ckpt else {},
        "best": {"metric": "loss", "mode": "min", "value": float(ckpt.pop("best_val", "inf"))},
    }
    ckpt.pop("task", None)
    out.update(ckpt)
    return out


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)``, in the current format.

    ``path`` is a ``.pt`` file or a run directory (:func:`resolve_checkpoint`).

    Raises
    ------
    ConfigError
        The file does not exist or is not a readable checkpoint of this engine.
    """
    path = resolve_checkpoint(path)
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle/zip errors of many kinds; report one line
        text = str(exc).strip()  # (an empty file raises an error without a message)
        msg = text.splitlines()[0] if text else f"{type(exc).__name__} (empty or damaged file)"
        raise ConfigError(f"checkpoint {str(path)!r} could not be read: {msg}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"checkpoint {str(path)!r} is not a checkpoint of this engine")
    try:
        return upgrade(raw)
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"checkpoint {str(path)!r}: {exc}") from None


def build_network(entry: Mapping[str, Any], device="cpu") -> nn.Module:
    """The network of a checkpoint's ``networks[name]`` entry, weights loaded, eval mode.

    Raises
    ------
    ConfigError
        Unknown model name, or weights that do not fit the model.
    """
    model = build_model(entry["name"], **entry["kwargs"])
    try:
        model.load_state_dict(entry["state"])
    except RuntimeError as exc:
        text = " ".join(str(exc).split())  # torch's message spans lines: keep one
        text = text if len(text) <= 240 else text[:237] + "..."
        raise ConfigError(f"weights do not fit model {entry['name']!r}: {text}") from None
    return model.to(device).eval()


def load_network(
    path: str | Path, device: str | torch.device = "cpu", name: str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Network ``name`` (default: the primary, first one) of a checkpoint, in eval mode on
    ``device``, and the checkpoint dict.

    Raises
    ------
    ConfigError
        Missing/unreadable checkpoint, no such network, or unusable weights.
    """
    ckpt = load_checkpoint(path, map_location=device)
    nets = ckpt.get("networks")
    if not isinstance(nets, dict) or not nets:
        raise ConfigError(f"checkpoint {str(path)!r} holds no network")
    name = name or next(iter(nets))
    if name not in nets:
        raise ConfigError(
            f"checkpoint {str(path)!r} has no network {name!r}; it has {', '.join(nets)}"
        )
    return build_network(nets[name], device), ckpt


def checkpoint_map_settings(path: str | Path) -> dict[str, Any]:
    """``{"kind": ..., setting: value}``: the map settings a checkpoint's model was trained on.

    From the checkpoint's ``map_settings`` (or, for older checkpoints, its ``config``).

    Raises
    ------
    ConfigError
        Missing or unreadable checkpoint, or one without map settings.
    """
    ckpt = load_checkpoint(path)
    settings = ckpt.get("map_settings") or ckpt.get("config")
    if not isinstance(settings, dict) or "kind" not in settings:
        raise ConfigError(f"checkpoint {str(path)!r} holds no map settings")
    return dict(settings)


def for_inference(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """``ckpt`` without what only resuming needs: the optimiser states and the optimised
    (non-EMA) weights ``raw_state``; the weights used for inference (``state``: the EMA weights
    when EMA was on) stay. About a third of the size for AdamW with EMA (a shipped model);
    ``--resume`` from it is refused (no optimiser state). Marked ``"inference_only": True``."""
    out = dict(ckpt)
    out["optimizers"] = {}
    out["networks"] = {
        name: {k: v for k, v in entry.items() if k != "raw_state"}
        for name, entry in ckpt.get("networks", {}).items()
    }
    out["inference_only"] = True
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m engine.train.checkpoint [--inference] FILE...``: rewrite checkpoints in the
    current format (atomically, in place; ``--inference``: :func:`for_inference`, for shipping
    a model); prints one line per file."""
    args = sys.argv[1:] if argv is None else list(argv)
    inference = "--inference" in args
    paths = [a for a in args if a != "--inference"]
    if not paths:
        print(
            "usage: python -m engine.train.checkpoint [--inference] CHECKPOINT.pt ...",
            file=sys.stderr,
        )
        return 2
    for p in paths:
        try:
            path = resolve_checkpoint(p)
            ckpt = load_checkpoint(path)
            save_checkpoint(for_inference(ckpt) if inference else ckpt, path)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{path}: format {FORMAT}" + (", for inference" if inference else ""))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
