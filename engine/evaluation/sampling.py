"""Sampling a trained map emulator (a checkpoint of :mod:`engine.tasks.gan` or
:mod:`engine.tasks.diffusion`): :class:`Emulator` loads it once and draws maps at chosen
parameters as the same DataArrays the simulator writes.

::

    em = Emulator("assets/models/gan64")
    maps = em.sample({"omega_m": 0.3, "sigma8": 0.8}, count=64, seed=1)   # xarray.DataArray

The maps have the dims, coords and attrs of the kind the generator was trained on (through the
kind's own ``to_dataarray`` when it is one of :mod:`engine.kinds`, e.g. ``pm`` slabs with
channels delta and theta; else dims ``(sample, channel, y, x)`` with pixel coords from the
training data's attrs), plus ``generator`` (the checkpoint), ``generator_task``,
``generator_step``, ``sample_steps`` (diffusion) and ``seed`` in attrs.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from engine.params import ConfigError
from engine.train.checkpoint import build_network, load_checkpoint, resolve_checkpoint

#: Tasks whose checkpoints are map emulators.
GENERATOR_TASKS = ("gan", "diffusion")


class Emulator:
    """A trained conditional map generator, ready to sample (module docstring).

    Parameters
    ----------
    checkpoint : str or Path
        A checkpoint ``.pt`` or a run directory (``checkpoints/best.pt``, else ``last.pt``).
    device : str or torch.device
        Where the networks run (``"cpu"``, ``"cuda"``).

    Attributes
    ----------
    task : engine.tasks.generative.GenerativeTask
        The task rebuilt for sampling (labels, label box, map transform).
    names : tuple of str
        The parameters it is conditioned on (e.g. ``("omega_m", "sigma8")``).
    low, high : list of float
        The label box it was trained on (physical units).
    map_config : dict
        ``{"kind": ..., setting: value}`` of its training maps.
    channel_names : list of str

    Raises
    ------
    ConfigError
        Unreadable checkpoint, or one of a task that is not a generator.
    """

    def __init__(self, checkpoint: str | Path, device: str | torch.device = "cpu"):
        from engine.tasks import task_from_checkpoint

        self.path = resolve_checkpoint(checkpoint)
        self.device = torch.device(device)
        ckpt = load_checkpoint(self.path, map_location=self.device)
        task = str(ckpt.get("task", ""))
        if task not in GENERATOR_TASKS:
            raise ConfigError(
                f"checkpoint {str(checkpoint)!r} is of task {task!r}, not a map emulator "
                f"({' or '.join(GENERATOR_TASKS)}); train one with python -m engine train "
                "--preset gan_smoke"
            )
        try:
            self.task = task_from_checkpoint(ckpt, self.device)
            self.nets = {n: build_network(e, self.device) for n, e in ckpt["networks"].items()}
        except ConfigError:
            raise
        except Exception as exc:  # a damaged checkpoint fails in many ways; report one line
            text = str(exc).strip()
            msg = text.splitlines()[0] if text else type(exc).__name__
            raise ConfigError(
                f"checkpoint {str(checkpoint)!r} holds no usable emulator: {msg}"
            ) from None
        self.task_name = task
        self.step = int(ckpt.get("step", 0))
        self.config = dict(ckpt.get("config", {}))
        self.map_config = dict(ckpt.get("map_settings", {}))
        self.names = tuple(self.task.names)
        self.low = [float(v) for v in self.task.low.tolist()]
        self.high = [float(v) for v in self.task.high.tolist()]
        self.channel_names = list(self.task.channel_names)

    @property
    def default_steps(self) -> int | None:
        """Sampling steps of a diffusion model by default (its ``sample_steps``), else None."""
        value = self.config.get("sample_steps")
        return int(value) if value is not None and self.task_name == "diffusion" else None

    def theta(self, values: Mapping[str, float] | np.ndarray, count: int) -> np.ndarray:
        """``(count, P)`` physical parameters from ``{name: value}`` (every name of
        :attr:`names`) or an array ``(P,)`` / ``(count, P)``.

        Raises
        ------
        ConfigError
            A missing or unknown name, a wrong width, or a value outside the training box.
        """
        if isinstance(values, Mapping):
            unknown = [k for k in values if k not in self.names]
            if unknown:
                raise ConfigError(
                    f"{unknown[0]!r} is not a parameter of this generator; it is conditioned "
                    f"on {', '.join(self.names)}"
                )
            missing = [n for n in self.names if n not in values]
            if missing:
                raise ConfigError(
                    f"give {missing[0]} (the generator is conditioned on {', '.join(self.names)})"
                )
            row = np.array([float(values[n]) for n in self.names])
            values = np.broadcast_to(row, (count, len(row)))
        arr = np.asarray(values, dtype=np.float64)
        arr = np.broadcast_to(arr, (count, arr.shape[-1])) if arr.ndim == 1 else arr
        if arr.shape[1] != len(self.names):
            raise ConfigError(
                f"theta has {arr.shape[1]} parameters per map; the generator is conditioned on "
                f"{len(self.names)}: {', '.join(self.names)}"
            )
        for j, name in enumerate(self.names):
            lo, hi = self.low[j], self.high[j]
            bad = (arr[:, j] < lo - 1e-9) | (arr[:, j] > hi + 1e-9) | ~np.isfinite(arr[:, j])
            if bad.any():
                raise ConfigError(
                    f"{name}={arr[bad, j][0]:g} is outside the generator's training range "
                    f"[{lo:g}, {hi:g}]"
                )
        return np.array(arr)

    def sample_tensor(
        self,
        theta: np.ndarray,
        seed: int = 0,
        steps: int | None = None,
        batch_size: int = 64,
        progress: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """Maps ``(B, C, N, N) float32`` in map units at physical ``theta (B, P)`` (checked with
        :meth:`theta` first); same seed ⇒ same maps on the same device.

        ``steps``: diffusion sampling steps (default: the model's ``sample_steps``); refused for
        a GAN. ``progress(done, total)`` is called per batch (GAN) or per diffusion step.
        """
        options: dict[str, Any] = {}
        if steps is not None:
            if self.task_name != "diffusion":
                raise ConfigError(
                    "--steps applies to diffusion models only (a GAN samples in one pass)"
                )
            if not 1 <= int(steps) <= 1000:
                raise ConfigError(f"steps={steps} must be in [1, 1000]")
            options["steps"] = int(steps)
        gen = torch.Generator(device=self.device).manual_seed(int(seed))
        return self.task.generate(
            self.nets, theta, gen, batch_size=batch_size, progress=progress, **options
        )

    def sample(
        self,
        values: Mapping[str, float] | np.ndarray,
        count: int = 1,
        seed: int = 0,
        steps: int | None = None,
        batch_size: int = 64,
        progress: Callable[[int, int], None] | None = None,
    ) -> xr.DataArray:
        """``count`` maps at ``values`` (:meth:`theta`) as the training kind's DataArray
        (module docstring), with per-sample parameter coords and the generator in attrs.

        Raises
        ------
        ConfigError
            Bad parameters, count < 1, or steps given for a GAN.
        """
        if int(count) < 1:
            raise ConfigError(f"count={count} must be at least 1")
        theta = self.theta(values, int(count))
        t0 = time.perf_counter()
        maps = self.sample_tensor(theta, seed, steps, batch_size, progress).cpu().numpy()
        elapsed = time.perf_counter() - t0
        da = self.to_dataarray(maps, theta)
        da.attrs.update(
            generator=str(self.path),
            generator_task=self.task_name,
            generator_step=self.step,
            seed=int(seed),
            count=int(count),
            seconds_per_map=elapsed / max(1, int(count)),
        )
        if self.task_name == "diffusion":
            da.attrs["sample_steps"] = int(steps or self.default_steps or 0)
        return da

    def to_dataarray(self, maps: np.ndarray, theta: np.ndarray) -> xr.DataArray:
        """Maps ``(B, C, N, N)`` and their ``theta (B, P)`` as a DataArray like the real kind's."""
        from engine.kinds import KINDS, get_kind

        kind = str(self.map_config.get("kind", ""))
        cols = {n: theta[:, j] for j, n in enumerate(self.names)}
        if kind in KINDS and {"omega_m", "sigma8"} <= set(cols):
            with contextlib.suppress(ConfigError, TypeError, ValueError, KeyError):
                k = get_kind(kind)
                settings = k.settings_from_attrs(self.map_config)
                data = maps[:, 0] if maps.shape[1] == 1 else maps
                da = k.to_dataarray(data, settings, cols["omega_m"], cols["sigma8"])
                for n, v in cols.items():
                    if n not in da.coords:
                        da = da.assign_coords({n: ("sample", v)})
                return da
        return self._generic(maps, cols)

    def _generic(self, maps: np.ndarray, cols: Mapping[str, np.ndarray]) -> xr.DataArray:
        n = maps.shape[-1]
        extent = self.map_config.get("box_size") or self.map_config.get("fov")
        pixel = float(extent) / n if extent else 1.0
        centres = (np.arange(n) + 0.5) * pixel
        da = xr.DataArray(
            maps.astype(np.float32),
            dims=("sample", "channel", "y", "x"),
            coords={
                "sample": np.arange(len(maps)),
                "channel": list(self.channel_names),
                "y": centres,
                "x": centres,
                **{k: ("sample", v) for k, v in cols.items()},
            },
            attrs={
                k: v
                for k, v in self.map_config.items()
                if isinstance(v, (str, int, float, bool)) and k not in cols
            },
        )
        da.attrs["fields"] = ",".join(self.channel_names)
        return da
