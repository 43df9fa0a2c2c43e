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

A class-conditional diffusion model (trained with ``label=``, e.g. strong-lens images by
substructure) samples one class at a time::

    em = Emulator.from_checkpoint("runs/lens_diffusion")
    images = em.sample(count=16, seed=1, label="cdm")        # xarray.DataArray "image"

Its images are written as its training images were (the layout saved in the checkpoint: the
DataArray's name, its dims ``(sample, y, x)`` — ``(sample, channel, y, x)`` with several channels
—, pixel coords ``x``, ``y`` with their attrs, and every scalar attr of the training data, e.g.
kind ``strong_lens``, ``pixel_scale`` in arcsec, ``units`` e-/s per pixel), with the class coord
(``substructure``) set on every sample and the continuous labels it is conditioned on, if any;
per-sample physical parameters of the real images that the generator does not draw (θ_E,
subhalo counts…) are absent.
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
        #: Class names of a class-conditional model (empty tuple otherwise).
        self.classes: tuple[str, ...] = tuple(getattr(self.task, "classes", ()) or ())
        #: The class coord of its data (e.g. ``"substructure"``; "" without classes).
        self.label = str(getattr(self.task, "label", "") or "")

    @classmethod
    def from_checkpoint(
        cls, checkpoint: str | Path, device: str | torch.device = "cpu"
    ) -> Emulator:
        """The emulator of a checkpoint ``.pt`` or run directory: ``Emulator(checkpoint,
        device)``.

        Raises
        ------
        ConfigError
            As :class:`Emulator`.
        """
        return cls(checkpoint, device)

    def check_label(self, label: str | None) -> str | None:
        """``label`` checked against the model: a class name of :attr:`classes` for a
        class-conditional model (required), None otherwise.

        Raises
        ------
        ConfigError
            A class-conditional model without a label, a name that is not one of its classes,
            or a label for a model without classes (one line each).
        """
        if not self.classes:
            if label is not None:
                raise ConfigError(
                    f"class {label!r} given, but this generator has no classes: it is "
                    f"conditioned on {', '.join(self.names)} (give those instead)"
                )
            return None
        if label is None or not str(label).strip():
            raise ConfigError(
                f"this generator is conditioned on its {self.label!r} class: give one of "
                f"{', '.join(self.classes)} (engine sample --label CLASS)"
            )
        label = str(label).strip()
        if label not in self.classes:
            raise ConfigError(
                f"class {label!r} is not one of this generator's {self.label!r} classes: "
                f"{', '.join(self.classes)}"
            )
        return label

    @property
    def default_steps(self) -> int | None:
        """Sampling steps of a diffusion model by default (its ``sample_steps``), else None."""
        value = self.config.get("sample_steps")
        return int(value) if value is not None and self.task_name == "diffusion" else None

    @property
    def default_sampler(self) -> str | None:
        """Sampler of a diffusion model by default (its ``sampler`` setting: ``"ddim"`` or
        ``"dpm"``), else None."""
        if self.task_name != "diffusion":
            return None
        return str(self.task.sampler)

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
        theta: np.ndarray | None,
        seed: int = 0,
        steps: int | None = None,
        batch_size: int = 64,
        progress: Callable[[int, int], None] | None = None,
        labels=None,
        guidance: float | None = None,
        sampler: str | None = None,
    ) -> torch.Tensor:
        """Maps ``(B, C, N, N) float32`` in map units at physical ``theta (B, P)`` (checked with
        :meth:`theta` first) and, for a class-conditional model, classes ``labels`` (B,) (class
        names or indices into :attr:`classes`); same seed ⇒ same maps on the same device.

        ``steps``: diffusion sampling steps (default: the model's ``sample_steps``); refused for
        a GAN. ``sampler``: ``"ddim"`` or ``"dpm"`` (DPM-Solver++; default the model's
        ``sampler`` setting); refused for a GAN. ``guidance``: classifier-free guidance weight
        w ≥ 0 (default the model's ``guidance_scale``; only models trained with
        ``p_uncond > 0``). ``progress(done,
        total)`` is called per batch (GAN) or per diffusion step.

        Raises
        ------
        ConfigError
            Bad parameters or classes, steps, sampler or guidance given for a GAN, an unknown
            sampler, guidance for a model without a null class.
        """
        options: dict[str, Any] = {}
        if sampler is not None:  # an unknown one: the task's one-line refusal, before any step
            if self.task_name != "diffusion":
                raise ConfigError(
                    "--sampler applies to diffusion models only (a GAN samples in one pass)"
                )
            options["sampler"] = str(sampler)
        if steps is not None:
            if self.task_name != "diffusion":
                raise ConfigError(
                    "--steps applies to diffusion models only (a GAN samples in one pass)"
                )
            if not 1 <= int(steps) <= 1000:
                raise ConfigError(f"steps={steps} must be in [1, 1000]")
            options["steps"] = int(steps)
        if guidance is not None:
            if self.task_name != "diffusion" or not self.classes:
                raise ConfigError(
                    "--guidance applies to class-conditional diffusion models only "
                    "(classifier-free guidance)"
                )
            options["guidance"] = float(guidance)
        if labels is not None or self.classes:
            if not self.classes:
                raise ConfigError(
                    "a class was given, but this generator has no classes: it is conditioned "
                    f"on {', '.join(self.names)}"
                )
            options["labels"] = labels
            if not self.names:
                theta = None
        gen = torch.Generator(device=self.device).manual_seed(int(seed))
        return self.task.generate(
            self.nets, theta, gen, batch_size=batch_size, progress=progress, **options
        )

    def sample(
        self,
        values: Mapping[str, float] | np.ndarray | None = None,
        count: int = 1,
        seed: int = 0,
        steps: int | None = None,
        batch_size: int = 64,
        progress: Callable[[int, int], None] | None = None,
        label: str | None = None,
        guidance: float | None = None,
        sampler: str | None = None,
    ) -> xr.DataArray:
        """``count`` maps at ``values`` (:meth:`theta`) and, for a class-conditional model, of
        class ``label``, as the training data's DataArray (module docstring), with per-sample
        parameter (and class) coords and the generator in attrs.

        Parameters
        ----------
        values : mapping {name: value} or array (P,) / (count, P), optional
            Physical parameters; None (or {}) for a model conditioned on a class only.
        count : int
            Number of maps (≥ 1).
        seed : int
            Seed of the initial noise (same seed ⇒ same maps on the same device).
        steps : int, optional
            Diffusion sampling steps (default the model's ``sample_steps``).
        batch_size : int
            Maps per network call.
        progress : callable, optional
            ``progress(done, total)`` per batch (GAN) or diffusion step.
        label : str, optional
            Class name (one of :attr:`classes`); required for a class-conditional model,
            refused for another.
        guidance : float, optional
            Classifier-free guidance weight (:meth:`sample_tensor`).
        sampler : {"ddim", "dpm", "sde"}, optional
            Diffusion sampler (default the model's ``sampler`` setting; :meth:`sample_tensor`).

        Returns
        -------
        xarray.DataArray (sample, y, x) or (sample, channel, y, x) float32, map units.

        Raises
        ------
        ConfigError
            Bad parameters, a missing, unknown or unexpected class, count < 1, steps given for
            a GAN, or bad guidance.
        """
        if int(count) < 1:
            raise ConfigError(f"count={count} must be at least 1")
        if values is not None and not isinstance(values, Mapping) and np.ndim(values) == 0:
            raise ConfigError(
                f"values={values!r} must be a mapping {{name: value}} or an array of parameters; "
                "give count= and seed= by keyword"
            )
        label = self.check_label(label)
        theta = self.theta({} if values is None else values, int(count))
        labels = None if label is None else [label] * int(count)
        t0 = time.perf_counter()
        maps = self.sample_tensor(
            theta,
            seed,
            steps,
            batch_size,
            progress,
            labels=labels,
            guidance=guidance,
            sampler=sampler,
        )
        maps = maps.cpu().numpy()
        elapsed = time.perf_counter() - t0
        da = self.to_dataarray(maps, theta, labels)
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
            da.attrs["sampler"] = str(sampler or self.default_sampler)
        if self.classes:
            da.attrs["generator_class"] = label
            da.attrs["guidance"] = float(self.task.check_guidance(guidance))
        return da

    def sample_class(self, label: str, count: int = 1, seed: int = 0, **options) -> xr.DataArray:
        """``count`` images of class ``label`` of a class-conditional model: :meth:`sample`
        with ``label=label`` (``options``: ``values``, ``steps``, ``batch_size``,
        ``progress``, ``guidance``).

        Raises
        ------
        ConfigError
            As :meth:`sample`.
        """
        return self.sample(count=count, seed=seed, label=label, **options)

    def to_dataarray(self, maps: np.ndarray, theta: np.ndarray, labels=None) -> xr.DataArray:
        """Maps ``(B, C, N, N)``, their ``theta (B, P)`` and, for a class-conditional model,
        their class names ``labels (B,)`` as a DataArray like the real data's."""
        from engine.kinds import KINDS, get_kind

        if self.classes:
            return self._class_dataarray(maps, theta, labels)
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

    def _class_dataarray(self, maps: np.ndarray, theta: np.ndarray, labels) -> xr.DataArray:
        """Images of a class-conditional model in the layout of its training data (module
        docstring)."""
        layout = dict(getattr(self.task, "layout", None) or {})
        n = maps.shape[-1]
        pixel = float(self.map_config.get("pixel_scale") or 1.0)
        centres = (np.arange(n) - (n - 1) / 2) * pixel
        coords: dict[str, Any] = {}
        for axis in ("y", "x"):
            values = np.asarray(layout.get(axis) or centres, np.float64)
            if len(values) != n:
                values = centres
            coords[axis] = (axis, values, dict(layout.get(f"{axis}_attrs") or {}))
        names = np.array([str(v) for v in (labels or [])], dtype=object)
        coords[self.label] = ("sample", names, {"flag_meanings": " ".join(self.classes)})
        for j, name in enumerate(self.names):
            coords[name] = ("sample", np.asarray(theta[:, j], np.float64))
        attrs = dict(layout.get("attrs") or {})
        attrs.pop("source", None)
        data = maps.astype(np.float32)
        if data.shape[1] == 1:
            data, dims = data[:, 0], ("sample", "y", "x")
        else:
            dims = ("sample", "channel", "y", "x")
            coords["channel"] = list(self.channel_names)
        return xr.DataArray(
            data, dims=dims, coords=coords, name=layout.get("name") or "image", attrs=attrs
        )

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
